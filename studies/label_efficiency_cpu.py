"""Label efficiency on a 2-core CPU: does the ss+mask pretext help when labels are scarce?

``none`` against ``ss+mask`` at 1 / 5 / 10 / 25 % of FER2013 Training's labels (stratified,
seeded subsets), 3 seeds, with the ``fast`` recipe. The pretext stage sees every unlabelled
face available without touching a validation or test image: LFW plus FER2013 Training with its
labels ignored (a seeded draw of 20,000 of the 42k faces, one epoch). Tests: PrivateTest clean,
r16 and mouth, and Occlusion-FERPlus. ``occstudy report label_efficiency_cpu`` draws the
curves and pairs the two variants by seed.

Measured on the 2-core machine (2026-12-03): 101.8 min (pretext stage 12 min, 24 trials in
90 min). PrivateTest clean, mean over 3 seeds, none vs ss+mask: 1 % 24.4 vs 24.3, 5 % 27.2 vs
25.2, 10 % 33.0 vs 30.9, 25 % 40.2 vs 37.9; no difference significant (paired by seed, Holm).
At this budget the pretext does not help; see the README ("Studies sized for a CPU").
"""

from occstudy.study import FinetuneSpec, PretextSpec, Study, TestSpec, data_root

study = Study(
    name="label_efficiency_cpu",
    description="none vs ss+mask x labels {1, 5, 10, 25} % x 3 seeds, fast recipe, CPU budget",
    recipe="fast",
    variants=("none", "ss+mask"),
    seeds=(0, 1, 2),
    label_fractions=(0.01, 0.05, 0.1, 0.25),
    pretext=PretextSpec(
        data=(data_root("lfw"), f"fer2013:{data_root('fer2013')}"), epochs=1, limit=20_000
    ),
    finetune=FinetuneSpec(data=f"fer2013:{data_root('fer2013')}", epochs=6),
    test=TestSpec(protocols=("clean", "r16", "mouth"), real=(f"occlusion-ferplus:{data_root()}",)),
)
