"""The best single model this project trains on a 2-core CPU within two hours.

The ``fast`` recipe with affine augmentation (``fast-affine``: random rotation ±15°, zoom
0.9-1.1, shift ±10 % and mirror instead of crop + mirror) and the full ss+mask method: pretext on
LFW plus FER2013 Training (labels ignored) for two epochs, fine-tune 26 epochs on all FER2013
Training labels (selection on PublicTest), tested on PrivateTest under every protocol and on
Occlusion-FERPlus (accuracy per occluded region included). Long: run it alone, resume with
``--resume`` after an interruption (every epoch is checkpointed).

Measured 2026-12-03 on the 2-core machine (``occstudy run studies/fer2013_best.py --data-root
DATA``): **93.5 min** (pretext 2 x 41,239 faces at about 74 images/s, 19 min; fine-tune 26
epochs, about 2.4 min each when the machine was otherwise idle). Best PublicTest accuracy
60.13 % (epoch 23 of 26). PrivateTest: clean 60.88 %, r8 59.54, r16 56.09, r24 48.68, eye 52.69,
mouth 49.26, objects 58.43; Occlusion-FERPlus 54.67 (cheek-hand 47.39, eyewear 63.59, mouth
56.30, upper-face 50.00).
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
