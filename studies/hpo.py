"""Hyper-parameter search for the full method: Optuna TPE over λ, τ and the fine-tune lr,
with ASHA stopping weak trials after each fine-tune epoch.

Trials are compared on FER2013 PublicTest (``val_acc``) only; the test numbers each trial
reports are never used to choose.
"""

from occstudy.study import (
    FinetuneSpec,
    LogUniform,
    PretextSpec,
    SearchSpec,
    Study,
    TestSpec,
    data_root,
)

study = Study(
    name="hpo",
    description="TPE + ASHA over lam, tau, lr for ss+mask, tuned on validation",
    pretext=PretextSpec(data=data_root("lfw"), epochs=10),
    finetune=FinetuneSpec(data=f"fer2013:{data_root('fer2013')}", epochs=6),
    test=TestSpec(real=(f"occlusion-ferplus:{data_root()}",)),
    variants=("ss+mask",),
    search_space={
        "lam": LogUniform(0.01, 20.0),
        "tau": LogUniform(0.1, 5.0),
        "lr": LogUniform(1e-5, 1e-3),
    },
    search=SearchSpec(algorithm="tpe", num_samples=16, scheduler="asha", grace_period=1),
)
