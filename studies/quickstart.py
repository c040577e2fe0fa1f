"""Quick start: the four-variant ablation on the built-in synthetic faces (no data needed).

A budget that runs through Ray in about 7 minutes on 2 CPU cores: a first look at the whole
path (pretext cache, Tune trials, MLflow runs, ablation table), not a result. Small batches
and a 10x fine-tune learning rate (125 steps) let a ResNet-34 from scratch leave chance level
(14 %) in some runs; at the paper's batch 64 and lr 1e-4 it never does. Even so, a trial
often ends near chance here, and which one does moves with the seed and the data size: one
seed at this budget says nothing about the method. Raise ``train_limit`` and ``epochs``
(and add seeds) for numbers worth comparing.
"""

from occstudy.study import FinetuneSpec, Fixed, PretextSpec, Study, TestSpec

study = Study(
    name="quickstart",
    description="4 variants x 1 seed on synthetic-faces, about 7 minutes on 2 CPU cores",
    batch_size=16,
    search_space={"lr": Fixed(1e-3)},
    pretext=PretextSpec(epochs=1, limit=800),
    finetune=FinetuneSpec(epochs=2, train_limit=1000, synthetic_size=1000),
    test=TestSpec(protocols=("clean", "r16", "mouth", "objects")),
)
