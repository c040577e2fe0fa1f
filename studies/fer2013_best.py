"""The best single model this project trains on a 2-core CPU within two hours.

The ``fast`` recipe with affine augmentation (``fast-affine``: random rotation ±15°, zoom
0.9-1.1, shift ±10 % and mirror instead of crop + mirror) and the full ss+mask method: pretext on
LFW plus FER2013 Training (labels ignored) for two epochs, fine-tune 26 epochs on all FER2013
Training labels (selection on PublicTest), tested on PrivateTest under every protocol and on
Occlusion-FERPlus (accuracy per occluded region included). Long: run it alone, resume with
``--resume`` after an interruption (every epoch is checkpointed).
"""

from dataclasses import replace

from occstudy.recipes import FAST
from occstudy.study import FinetuneSpec, PretextSpec, Study, TestSpec, data_root

study = Study(
    name="fer2013_best",
    description="one long ss+mask run of the fast recipe with affine augmentation on FER2013",
    recipe=replace(FAST, name="fast-affine", augment="affine-flip"),
    variants=("ss+mask",),
    pretext=PretextSpec(data=(data_root("lfw"), f"fer2013:{data_root('fer2013')}"), epochs=2),
    finetune=FinetuneSpec(data=f"fer2013:{data_root('fer2013')}", epochs=26),
    test=TestSpec(real=(f"occlusion-ferplus:{data_root()}",)),
)
