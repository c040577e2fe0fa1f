"""The best single model this project trains on a 2-core CPU within two hours.

The ``fast`` recipe with the full ss+mask method: pretext on LFW plus FER2013 Training (labels
ignored) for two epochs, fine-tune 16 epochs on all FER2013 Training labels (selection on
PublicTest), tested on PrivateTest under every protocol and on Occlusion-FERPlus (accuracy per
occluded region included). Long: run it alone, resume with ``--resume`` after an interruption
(every epoch is checkpointed).
"""

from occstudy.study import FinetuneSpec, PretextSpec, Study, TestSpec, data_root

study = Study(
    name="fer2013_best",
    description="one long ss+mask run of the fast recipe on FER2013, CPU budget",
    recipe="fast",
    variants=("ss+mask",),
    pretext=PretextSpec(data=(data_root("lfw"), f"fer2013:{data_root('fer2013')}"), epochs=2),
    finetune=FinetuneSpec(data=f"fer2013:{data_root('fer2013')}", epochs=16),
    test=TestSpec(real=(f"occlusion-ferplus:{data_root()}",)),
)
