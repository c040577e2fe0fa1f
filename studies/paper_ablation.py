"""The paper's ablation (none / ss / mask / ss+mask) on the data available here.

Pretext on LFW (the stand-in for VGGFace2), fine-tune on FER2013 Training (model selection on
PublicTest), test on PrivateTest clean and under each synthetic occlusion type, and on the real
occlusions of Occlusion-FERPlus (labelled by the FER2013 labels, the model's label space).
"""

from occstudy.study import FinetuneSpec, PretextSpec, Study, TestSpec, data_root

study = Study(
    name="paper_ablation",
    description="ablation: 4 variants x 3 seeds, LFW pretext, FER2013 fine-tune",
    # The paper gives no epoch counts; these fit the 28k FER2013 / 13k LFW images.
    pretext=PretextSpec(data=data_root("lfw"), epochs=10),
    finetune=FinetuneSpec(data=f"fer2013:{data_root('fer2013')}", epochs=10),
    test=TestSpec(real=(f"occlusion-ferplus:{data_root()}",)),
    seeds=(0, 1, 2),
)
