"""Quick start: the four-variant ablation on the built-in synthetic faces (no data needed).

A budget that runs through Ray in a few minutes on 2 CPU cores; a first look, not a result.
"""

from occstudy.study import FinetuneSpec, PretextSpec, Study, TestSpec

study = Study(
    name="quickstart",
    description="4 variants x 1 seed on synthetic-faces, tiny budget",
    pretext=PretextSpec(epochs=1, limit=1500),
    finetune=FinetuneSpec(epochs=2, train_limit=1500, synthetic_size=1500),
    test=TestSpec(protocols=("clean", "r16", "mouth", "objects")),
)
