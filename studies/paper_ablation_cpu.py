"""``paper_ablation.py`` at a budget that fits a 2-core CPU machine in about an hour.

Same data, variants, seeds and tests as the paper ablation; smaller stages: pretext one epoch on
2,000 LFW faces, fine-tune two epochs on a stratified 10 % of FER2013 Training (2,871 images;
the scarce-label regime the method targets). Tests are the full PrivateTest and
Occlusion-FERPlus, so the numbers are comparable with the full study's, only less trained.
"""

from dataclasses import replace
from pathlib import Path

from occstudy.study import load_study

_full = load_study(Path(__file__).with_name("paper_ablation.py"))

study = replace(
    _full,
    name="paper_ablation_cpu",
    description="paper ablation, CPU budget: 4 variants x 3 seeds, 10 % of FER2013 labels",
    pretext=replace(_full.pretext, epochs=1, limit=2000),
    finetune=replace(_full.finetune, epochs=2),
    label_fractions=(0.1,),
)
