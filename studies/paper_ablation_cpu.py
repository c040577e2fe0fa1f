"""``paper_ablation.py`` at a budget that fits a 2-core CPU machine in under 90 minutes.

Same data, variants, seeds and tests as the paper ablation, trained with the ``fast`` recipe
(ResNet-18, AdamW with warm-up + cosine, label smoothing, crop + flip, test-time flip; see
``occstudy/recipes.py``) at a CPU budget: pretext two epochs on 4,000 LFW faces, fine-tune six
epochs on a stratified 10 % of FER2013 Training (2,871 images; the scarce-label regime the
method targets), model selection on PublicTest. Tests are the full PrivateTest and
Occlusion-FERPlus, so the numbers are comparable with the full study's, only less trained.

Measured on an idle 2-core machine (2026-12-03): 66.7 min (pretext stage 11.3 min, 12
fine-tune trials about 4.5 min each). PrivateTest clean, mean over 3 seeds: none 33.0 %,
ss 30.4 %, mask 31.9 %, ss+mask 31.0 % (majority class 24.5 %); Occlusion-FERPlus 29.3-31.5 %.
No difference is significant: at ~270 fine-tune steps the budget shows the path and the
occlusion drop, not the method's effect. Full table: README, "Studies sized for a CPU".
"""

from dataclasses import replace
from pathlib import Path

from occstudy.study import load_study

_full = load_study(Path(__file__).with_name("paper_ablation.py"))

study = replace(
    _full,
    name="paper_ablation_cpu",
    description="paper ablation, CPU budget: 4 variants x 3 seeds, fast recipe, 10 % of FER2013",
    recipe="fast",
    pretext=replace(_full.pretext, epochs=2, limit=4000),
    finetune=replace(_full.finetune, epochs=6),
    label_fractions=(0.1,),
)
