"""Sensitivity to λ, the weight of L_mask (the paper's Table 4), for the full method.

Same data and budget as ``paper_ablation``.
"""

from occstudy.study import FinetuneSpec, Grid, PretextSpec, Study, TestSpec, data_root

study = Study(
    name="lambda_sensitivity",
    description="ss+mask at lambda in {0.02, 0.2, 2, 20} x 3 seeds",
    pretext=PretextSpec(data=data_root("lfw"), epochs=10),
    finetune=FinetuneSpec(data=f"fer2013:{data_root('fer2013')}", epochs=10),
    test=TestSpec(real=(f"occlusion-ferplus:{data_root()}",)),
    variants=("ss+mask",),
    seeds=(0, 1, 2),
    search_space={"lam": Grid((0.02, 0.2, 2.0, 20.0))},
)
