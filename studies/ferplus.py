"""FER+ with the published 8-class protocol (majority votes; model selection on Valid, report
on Test), and Occlusion-FERPlus labelled by FER+ votes (the loader follows the model's label
space). Pretext on LFW.
"""

from occstudy.study import FinetuneSpec, PretextSpec, Study, TestSpec, data_root

study = Study(
    name="ferplus",
    description="FER+ 8 classes, 4 variants x 3 seeds, Occlusion-FERPlus by FER+ votes",
    pretext=PretextSpec(data=data_root("lfw"), epochs=10),
    finetune=FinetuneSpec(data=f"ferplus:{data_root('ferplus')}", epochs=10),
    test=TestSpec(real=(f"occlusion-ferplus:{data_root()}",)),
    seeds=(0, 1, 2),
)
