"""How much each pretext variant helps when labels are scarce: fine-tune on stratified, seeded
subsets of FER2013 Training (1 % ... 100 %), pretext on LFW.
"""

from occstudy.study import FinetuneSpec, PretextSpec, Study, TestSpec, data_root

study = Study(
    name="label_efficiency",
    description="4 variants x label fractions {0.01, 0.05, 0.1, 0.25, 1} x 3 seeds on FER2013",
    pretext=PretextSpec(data=data_root("lfw"), epochs=10),
    finetune=FinetuneSpec(data=f"fer2013:{data_root('fer2013')}", epochs=10),
    test=TestSpec(real=(f"occlusion-ferplus:{data_root()}",)),
    seeds=(0, 1, 2),
    label_fractions=(0.01, 0.05, 0.1, 0.25, 1.0),
)
