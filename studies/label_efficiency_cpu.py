"""Label efficiency on a 2-core CPU: does the ss+mask pretext help when labels are scarce?

``none`` against ``ss+mask`` at 1 / 5 / 10 / 25 % of FER2013 Training's labels (stratified,
seeded subsets), 3 seeds, with the ``fast`` recipe. The pretext stage sees every unlabelled
face available without touching a validation or test image: LFW plus FER2013 Training with its
labels ignored (a seeded draw of 20,000 of the 42k faces, one epoch). Tests: PrivateTest clean,
r16 and mouth, and Occlusion-FERPlus. ``occstudy report label_efficiency_cpu`` draws the
curves and pairs the two variants by seed.

Sized from measured step throughput (about 180 images/s fine-tune, ResNet-18 at 48 px, 2 cores);
see the README ("Studies sized for a CPU") for what has been measured end to end.
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
