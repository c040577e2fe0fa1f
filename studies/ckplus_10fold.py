"""The paper's CK+ protocol: 48x48 faces, 10 subject-independent folds, square (R8/R16/R24),
eye and mouth occluders in both stages, tested under each of them.

CK+ and VGGFace2 are licence-gated: put CK+48 under ``$OCCSTUDY_DATA/ckplus`` and VGGFace2
(or any folder of unlabelled faces, named by ``$OCCSTUDY_PRETEXT_DATA``) under
``$OCCSTUDY_DATA/vggface2``.
"""

import os

from occstudy.study import FinetuneSpec, PretextSpec, Study, TestSpec, data_root

study = Study(
    name="ckplus_10fold",
    description="CK+ 10-fold by subject, 4 variants, squares/eye/mouth occluders",
    pretext=PretextSpec(
        data=os.environ.get("OCCSTUDY_PRETEXT_DATA") or data_root("vggface2"),
        epochs=10,
        policy="ckplus",
    ),
    # CK+ has ~1k images per fold's training part: more epochs than FER2013 for the same steps.
    finetune=FinetuneSpec(
        data=f"ckplus:{data_root('ckplus')}", epochs=30, policy="ckplus", folds=10
    ),
    test=TestSpec(protocols=("clean", "r8", "r16", "r24", "eye", "mouth")),
)
