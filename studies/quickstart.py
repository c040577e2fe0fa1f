"""Quick start: the four-variant ablation on the built-in synthetic faces (no data needed).

A budget that runs through Ray in a few minutes on 2 CPU cores: a first look at the whole
path (pretext cache, Tune trials, MLflow runs, ablation table), not a result. Small batches
and a 10x fine-tune learning rate give a ResNet-34 from scratch enough steps to rise above
chance (14 %) in two short epochs; at the paper's batch 64 and lr 1e-4 it stays at chance.
At this budget a variant can also stay near chance by the luck of its initialisation: one
seed says nothing about the method.
"""

from occstudy.study import FinetuneSpec, Fixed, PretextSpec, Study, TestSpec

study = Study(
    name="quickstart",
    description="4 variants x 1 seed on synthetic-faces, a few minutes on 2 CPU cores",
    batch_size=16,
    search_space={"lr": Fixed(1e-3)},
    pretext=PretextSpec(epochs=1, limit=1200),
    finetune=FinetuneSpec(epochs=2, train_limit=1500, synthetic_size=1500),
    test=TestSpec(protocols=("clean", "r16", "mouth", "objects")),
)
