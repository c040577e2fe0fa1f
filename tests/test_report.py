"""``occstudy report`` on MLflow runs logged with occstudy's own tracking module.

One sqlite store (created once per session: MLflow's schema migrations take seconds) holds
three small studies whose test accuracies are chosen here, so every number the report computes
can be checked against a hand computation (formulas in the comments):

* ``rep``: 4 variants x 3 seeds x label fractions {0.25, 1}; at 1 every variant ran, one trial
  FAILED (after logging a test accuracy that must not count), one variant lacks the
  real-occlusion result (a missing cell); at 0.25 only none and ss+mask finished and one ss
  trial is still RUNNING.
* ``rep1``: one seed: no interval, no test.
* ``replam``: ss+mask on a λ grid x 2 seeds, one trial stopped before testing.

:func:`report_fixture` is shared with ``test_report_html.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from occstudy import tracking
from occstudy.cli import main
from occstudy.data import synthetic_faces
from occstudy.evaluate import OCCLUDED_AREA, ProtocolResult
from occstudy.models import OccNet
from occstudy.report import ReportResult, StudyInfo, build_report, compute_report
from occstudy.report.render import MISSING, TEMPLATES_ENV, render_html
from occstudy.report.tables import Column, Setting, ablation_table, select_trials, significance
from occstudy.study import FinetuneSpec, Grid, PretextSpec, Study, TestSpec
from occstudy.study.worker import log_real_mask_examples
from occstudy.tracking.reader import (
    ArtifactReader,
    StudyRuns,
    TrialRecord,
)

T975 = {1: 12.706204736174707, 2: 4.302652729749464}  # t_{0.975, df}
DS = "synthetic-faces"
REAL = "occlusion-ferplus"
CLASSES = ("neutral", "happiness", "anger")
CLEAN, R16, REALC = Column(DS, "clean"), Column(DS, "r16"), Column(DS, REAL)


def p_df2(t: float) -> float:
    """Two-sided p of Student t with 2 df: 1 - |t| / sqrt(t^2 + 2)."""
    return 1 - abs(t) / math.sqrt(t * t + 2)


def p_df1(t: float) -> float:
    """Two-sided p of Student t with 1 df: 1 - 2 atan|t| / pi."""
    return 1 - 2 * math.atan(abs(t)) / math.pi


# Test accuracies per (label fraction, variant, protocol): one value per seed 0, 1, 2;
# None = not logged.
ACC: dict[tuple[float, str], dict[str, list[float | None]]] = {
    (1.0, "none"): {
        "clean": [0.60, 0.62, 0.64],
        "r16": [0.40, 0.42, 0.41],
        REAL: [0.30, 0.31, 0.35],
    },
    (1.0, "ss"): {"clean": [0.63, 0.66, 0.66], "r16": [0.45, 0.44, 0.46], REAL: [None, None, None]},
    (1.0, "mask"): {
        "clean": [0.62, 0.63, 0.99],
        "r16": [0.47, 0.49, 0.99],
        REAL: [0.33, 0.36, 0.99],
    },
    (1.0, "ss+mask"): {
        "clean": [0.66, 0.69, 0.70],
        "r16": [0.52, 0.55, 0.53],
        REAL: [0.38, 0.40, 0.39],
    },
    (0.25, "none"): {
        "clean": [0.50, 0.52, 0.51],
        "r16": [0.30, 0.33, 0.31],
        REAL: [0.20, 0.22, 0.21],
    },
    (0.25, "ss+mask"): {
        "clean": [0.58, 0.60, 0.57],
        "r16": [0.40, 0.41, 0.45],
        REAL: [0.27, 0.30, 0.26],
    },
}
FAILED = {(1.0, "mask", 2)}  # logged 0.99 everywhere, then failed: must not count
# Real-occlusion accuracy per occluded region, per seed (fraction 1, none and ss+mask only: the
# other variants' region cells are missing, and so is the whole fraction-0.25 region table),
# logged as test.occlusion-ferplus.region.<region>.acc / .n like evaluate.summarize names them.
REGION_ACC: dict[str, dict[str, list[float]]] = {
    "none": {"mouth": [0.20, 0.25, 0.30], "eyewear": [0.40, 0.35, 0.39]},
    "ss+mask": {"mouth": [0.35, 0.40, 0.42], "eyewear": [0.41, 0.40, 0.36]},
}
REGION_IMAGES = {"mouth": 20, "eyewear": 30}
MOUTH = Column(DS, f"{REAL}.region.mouth")
EYEWEAR = Column(DS, f"{REAL}.region.eyewear")
# Clean confusion matrices of `none` at fraction 1, seeds 0..2; their sum is checked.
NONE_CONFUSION = [
    [[2, 1, 0], [0, 3, 0], [1, 0, 2]],
    [[3, 0, 0], [1, 2, 0], [0, 1, 2]],
    [[2, 0, 1], [0, 3, 0], [0, 0, 3]],
]
# None: stopped before testing (an ASHA stop: the runner ends such a run KILLED).
LAM_ACC = {0.02: [0.60, 0.62], 0.2: [0.66, 0.68], 2.0: [0.61, None]}
LAM_VAL = {0.02: [0.50, 0.52], 0.2: [0.58, 0.57], 2.0: [0.55, 0.40]}
# Mean occluded share of the image under r16, as the evaluation logs it with each r16 result
# (test.r16.occluded_area); the fraction-0.25 trials leave it out, as trials of older versions.
R16_AREA = 0.1234


def _studies(missing_data: Path) -> dict[str, Study]:
    real = (f"{REAL}:{missing_data}",)
    # Square occluders only: validating a study with the "all" policy draws the object bank
    # (seconds of CPU), and nothing is trained here.
    stages = {"pretext": PretextSpec(policy="squares"), "finetune": FinetuneSpec(policy="squares")}
    return {
        "rep": Study(
            name="rep",
            description="report test study",
            test=TestSpec(protocols=("clean", "r16"), real=real),
            seeds=(0, 1, 2),
            label_fractions=(0.25, 1.0),
            **stages,
        ),
        "rep1": Study(
            name="rep1",
            test=TestSpec(protocols=("clean",)),
            variants=("none", "ss+mask"),
            seeds=(0,),
            **stages,
        ),
        "replam": Study(
            name="replam",
            test=TestSpec(protocols=("clean",)),
            variants=("ss+mask",),
            seeds=(0, 1),
            search_space={"lam": Grid((0.02, 0.2, 2.0))},
            **stages,
        ),
    }


@dataclass(frozen=True)
class Fixture:
    storage: Path
    uri: str
    studies: dict[str, Study]
    main: ReportResult
    parents: dict[str, str]


_CACHE: dict[str, Fixture] = {}


def _doc(protocol: str, acc: float, matrix: list[list[int]]) -> dict[str, Any]:
    return {
        "protocol": protocol,
        "dataset": "synthetic-faces:test",
        "label_space": "synthetic-3",
        "n": sum(map(sum, matrix)),
        "acc": acc,
        "macro_f1": acc - 0.1,
        "mask_iou": None,
        "classes": list(CLASSES),
        "matrix": matrix,
        "per_class_acc": None,
    }


def _trial(
    tracker: tracking.StudyTracker,
    parent: tracking.RunRef,
    *,
    variant: str,
    seed: int,
    fraction: float = 1.0,
    lam: float = 0.2,
    cache_key: str | None = None,
) -> tracking.RunRef:
    name = f"{variant.replace('+', '-')}_s{seed}_f{fraction:g}_lam{lam:g}"
    params = {
        "variant": variant,
        "seed": seed,
        "lambda": lam,
        "tau": 2.0,
        "lr": 1e-4,
        "pretext_lr": 1e-4,
        "label_fraction": fraction,
        "dataset": DS,
        "epochs": 2,
    }
    tags = {
        "dataset": DS,
        "variant": variant,
        "seed": str(seed),
        "label_fraction": str(fraction),
        "trial": name,
        **({"cache_key": cache_key} if cache_key else {}),
    }
    return tracker.child_run(
        parent, kind="finetune", key=f"launch-1/{name}", name=name, tags=tags, params=params
    )


def _mask_picture(run: tracking.RunRef, name: str) -> None:
    # One tiny sample: drawing the picture is most of the fixture's logging time.
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 8, 8, generator=g)
    masks = (torch.rand(1, 1, 8, 8, generator=g) > 0.5).float()
    tracking.log_mask_picture(run, x, masks, torch.randn(1, 1, 8, 8, generator=g), name=name)


def _log_main(uri: str, study: Study, study_dir: Path) -> str:
    tracker = tracking.StudyTracker(uri, study.name, (study_dir / "mlartifacts").as_uri())
    parent = tracker.parent_run("launch-1", study.to_dict(), resume=False)
    pre = tracker.child_run(
        parent,
        kind="pretext",
        key="ssm-key",
        name="pretext-ssm-key",
        tags={"cache_key": "ssm-key", "variant": "ss+mask"},
        params={},
    )
    _mask_picture(pre, "pretext-objects.png")
    tracker.finish(pre)
    for (fraction, variant), per_protocol in ACC.items():
        for seed in range(3):
            key = "ssm-key" if variant == "ss+mask" else None
            run = _trial(
                tracker, parent, variant=variant, seed=seed, fraction=fraction, cache_key=key
            )
            tracking.log_metrics(run, {"val_acc": 0.5, "train.loss": 1.0}, step=0)
            accs = {p: v[seed] for p, v in per_protocol.items() if v[seed] is not None}
            if fraction == 1.0 and variant == "ss+mask" and seed == 0:
                # The real logging path for clean: metrics, confusion JSON and PNG.
                result = ProtocolResult(
                    protocol="clean",
                    dataset="synthetic-faces:test",
                    label_space="synthetic-3",
                    n=9,
                    acc=float(accs["clean"]),
                    macro_f1=float(accs["clean"]) - 0.1,
                    per_class_acc={},
                    confusion=[[3, 0, 0], [0, 3, 0], [0, 1, 2]],
                    classes=CLASSES,
                )
                r16 = dataclasses.replace(
                    result, protocol="r16", acc=float(accs["r16"]), extra={OCCLUDED_AREA: R16_AREA}
                )
                tracking.log_results(run, {"clean": result, "r16": r16})
                tracking.log_metrics(run, {f"test.{REAL}.acc": float(accs[REAL])})
                _mask_picture(run, "finetune-objects.png")
                # The trial-time picture of U_o's masks on a real-occlusion set (2 images).
                log_real_mask_examples(
                    run,
                    OccNet(heads=("classifier", "mask"), num_classes=len(CLASSES)),
                    synthetic_faces(2, seed=3, image_size=32),
                    32,
                    REAL,
                )
            else:
                tracking.log_metrics(run, {f"test.{p}.acc": float(a) for p, a in accs.items()})
                if fraction == 1.0 and "r16" in accs:
                    tracking.log_metrics(run, {f"test.r16.{OCCLUDED_AREA}": R16_AREA})
                if fraction == 1.0 and "clean" in accs:
                    matrix = (
                        NONE_CONFUSION[seed]
                        if variant == "none"
                        else [[3, 0, 0], [0, 2, 1], [0, 0, 3]]
                    )
                    tracking.log_json(
                        run, _doc("clean", float(accs["clean"]), matrix), "confusion/clean.json"
                    )
            if fraction == 1.0 and variant in REGION_ACC:
                regions: dict[str, float] = {}
                for region, values in REGION_ACC[variant].items():
                    regions[f"test.{REAL}.region.{region}.acc"] = values[seed]
                    regions[f"test.{REAL}.region.{region}.n"] = REGION_IMAGES[region]
                tracking.log_metrics(run, regions)
            tracking.log_metrics(run, {"best_val_acc": 0.5 + 0.01 * seed})
            tracker.finish(run, "FAILED" if (fraction, variant, seed) in FAILED else "FINISHED")
    # Still running: no metrics yet, and no status change.
    _trial(tracker, parent, variant="ss", seed=0, fraction=0.25)
    return parent.run_id


def _log_one_seed(uri: str, study: Study, study_dir: Path) -> str:
    tracker = tracking.StudyTracker(uri, study.name, (study_dir / "mlartifacts").as_uri())
    parent = tracker.parent_run("launch-1", study.to_dict(), resume=False)
    for variant, acc in (("none", 0.55), ("ss+mask", 0.60)):
        run = _trial(tracker, parent, variant=variant, seed=0)
        tracking.log_metrics(run, {"test.clean.acc": acc, "best_val_acc": 0.5})
        tracker.finish(run)
    return parent.run_id


def _log_lambda(uri: str, study: Study, study_dir: Path) -> str:
    tracker = tracking.StudyTracker(uri, study.name, (study_dir / "mlartifacts").as_uri())
    parent = tracker.parent_run("launch-1", study.to_dict(), resume=False)
    for lam, accs in LAM_ACC.items():
        for seed, acc in enumerate(accs):
            run = _trial(tracker, parent, variant="ss+mask", seed=seed, lam=lam)
            if acc is None:
                tracking.log_metrics(run, {"val_acc": LAM_VAL[lam][seed]}, step=0)
                tracker.finish(run, "KILLED")
                continue
            tracking.log_metrics(run, {"best_val_acc": LAM_VAL[lam][seed], "test.clean.acc": acc})
            tracker.finish(run)
    return parent.run_id


def report_fixture(base: Path) -> Fixture:
    """The three studies logged into one sqlite store under ``base``, and the main study's
    report (built with the default output folder and logged to its parent run)."""
    if "fixture" in _CACHE:
        return _CACHE["fixture"]
    storage = base / "storage"
    studies = _studies(base / "no-such-data")
    dirs = {name: storage / name for name in studies}
    for name, study in studies.items():
        dirs[name].mkdir(parents=True)
        (dirs[name] / "study.json").write_text(json.dumps(study.to_dict()))
        (dirs[name] / "launches.json").write_text(json.dumps(["launch-1"]))
    # The main study's default store; the other studies use it too (one migration only).
    uri = tracking.default_tracking_uri(dirs["rep"])
    parents = {
        "rep": _log_main(uri, studies["rep"], dirs["rep"]),
        "rep1": _log_one_seed(uri, studies["rep1"], dirs["rep1"]),
        "replam": _log_lambda(uri, studies["replam"], dirs["replam"]),
    }
    result = build_report(studies["rep"], storage=str(storage))
    _CACHE["fixture"] = Fixture(storage, uri, studies, result, parents)
    return _CACHE["fixture"]


@pytest.fixture()
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return report_fixture(tmp_path_factory.getbasetemp() / "report-store")


# ---------------------------------------------------------------------------------------------


def test_ablation_table_by_hand(fx: Fixture) -> None:
    report = fx.main.report
    table = report.tables[0]
    assert report.main == table.setting
    assert table.setting.label_fraction == 1.0  # main: the setting with most trials
    assert table.variants == ("none", "ss", "mask", "ss+mask")
    assert table.columns == (CLEAN, R16, REALC)
    none = table.cell("none", CLEAN).summary
    assert none is not None
    # (0.60, 0.62, 0.64): mean 0.62, s 0.02, half-width t_{.975,2} * 0.02 / sqrt 3
    assert (none.n, none.mean, none.sd) == (3, pytest.approx(0.62), pytest.approx(0.02))
    assert none.half_width == pytest.approx(T975[2] * 0.02 / math.sqrt(3))
    # The FAILED seed-2 trial logged 0.99 and is excluded: (0.62, 0.63) only, n = 2.
    mask = table.cell("mask", CLEAN).summary
    assert mask is not None and mask.n == 2 and mask.mean == pytest.approx(0.625)
    assert mask.half_width == pytest.approx(T975[1] * 0.005)
    assert table.cell("mask", CLEAN).units == ("s0", "s1")
    # Missing cell: ss never logged the real-occlusion result.
    assert table.cell("ss", REALC).summary is None
    # Best per column: ss+mask everywhere (0.6833, 0.5333, 0.39).
    assert [v for v in table.variants if table.cell(v, CLEAN).best] == ["ss+mask"]
    assert [v for v in table.variants if table.cell(v, R16).best] == ["ss+mask"]
    assert [v for v in table.variants if table.cell(v, REALC).best] == ["ss+mask"]
    # Second table: fraction 0.25, where only none and ss+mask finished.
    low = report.tables[1]
    assert low.setting == Setting(0.25, ())
    assert low.cell("ss", CLEAN).summary is None
    assert low.cell("ss+mask", CLEAN).summary.mean == pytest.approx(0.35 / 0.6)  # type: ignore[union-attr]


def test_region_table_by_hand(fx: Fixture) -> None:
    report = fx.main.report
    # Region columns stay out of the ablation table (and its tests: 15 comparisons, checked in
    # test_significance_by_hand) and form one region table, at fraction 1 only.
    assert report.columns == (CLEAN, R16, REALC)
    (rt,) = report.region_tables
    assert rt.table.setting == report.tables[0].setting == Setting(1.0, ())
    assert rt.real == REALC and rt.regions == (EYEWEAR, MOUTH)  # regions by name
    assert rt.table.columns == (REALC, EYEWEAR, MOUTH)
    assert MOUTH.label == f"{DS} · {REAL} · mouth" and MOUTH.base == REAL and REALC.region is None
    assert rt.images == {EYEWEAR: (30,), MOUTH: (20,)}
    # The overall column is the ablation table's cell, from the same trials.
    for v in rt.table.variants:
        assert rt.table.cell(v, REALC).summary == report.tables[0].cell(v, REALC).summary
    # none, mouth: (0.20, 0.25, 0.30): mean 0.25, s 0.05, half-width t_{.975,2} * 0.05 / sqrt 3
    mouth = rt.table.cell("none", MOUTH).summary
    assert mouth is not None and (mouth.n, mouth.mean) == (3, pytest.approx(0.25))
    assert mouth.half_width == pytest.approx(T975[2] * 0.05 / math.sqrt(3))
    # Best per column: ss+mask on mouth (0.39 vs 0.25) and on eyewear (0.39 vs 0.38).
    assert [v for v in rt.table.variants if rt.table.cell(v, MOUTH).best] == ["ss+mask"]
    assert [v for v in rt.table.variants if rt.table.cell(v, EYEWEAR).best] == ["ss+mask"]
    assert rt.table.cell("ss", MOUTH).summary is None  # ss logged no region result
    assert rt.table.cell("mask", MOUTH).summary is None
    # Files: right under the fraction-1 ablation table in the Markdown (and the HTML, which
    # renders the same views); cells.csv, trials.csv and report.json hold the numbers.
    out = fx.storage / "rep" / "report"
    md = md_text(out)
    caption = f"**By occluded region: {DS} · {REAL}, labels 100 %**"
    assert md.index("**Ablation: labels 100 %**") < md.index(caption)
    assert md.index(caption) < md.index("**Ablation: labels 25 %**")
    assert "| variant | all regions | eyewear (30 images) | mouth (20 images) |" in md
    # all regions = the ablation cell of none: (0.30, 0.31, 0.35), s = sqrt(0.0014 / 2)
    assert f"| none | 32.00 ± {100 * T975[2] * math.sqrt(0.0007 / 3):.2f} (n=3) |" in md
    assert 'id="regions-0"' in (out / "report.html").read_text()
    cells = (out / "cells.csv").read_text().splitlines()
    row = next(r for r in cells if f",none,{DS},{REAL}.region.mouth," in r)
    assert row.startswith("labels 100 %") and ",3,0.25," in row and "s0 s1 s2" in row
    # The overall column is not repeated: one none / occlusion-ferplus row per setting.
    assert sum(f",none,{DS},{REAL}," in r for r in cells) == 2
    assert f"test.{REAL}.region.mouth.acc" in (out / "trials.csv").read_text().splitlines()[0]
    data = json.loads((out / "report.json").read_text())
    assert data["region_tables"] == [
        {
            "setting": "labels 100 %",
            "dataset": DS,
            "protocol": REAL,
            "regions": [
                {"region": "eyewear", "protocol": EYEWEAR.protocol, "images": [30]},
                {"region": "mouth", "protocol": MOUTH.protocol, "images": [20]},
            ],
        }
    ]
    assert any(c["protocol"] == MOUTH.protocol for c in data["cells"])


def _comparison(comps: Any, column: Column, variant: str, reference: str) -> Any:
    return next(
        c for c in comps if (c.column, c.variant, c.reference) == (column, variant, reference)
    )


def test_significance_by_hand(fx: Fixture) -> None:
    comps = fx.main.report.comparisons[0]
    pairs = [(c.variant, c.reference) for c in comps if c.column == CLEAN]
    assert pairs == [
        ("ss", "none"),
        ("mask", "none"),
        ("ss+mask", "none"),
        ("ss", "ss+mask"),
        ("mask", "ss+mask"),
    ]
    # clean, ss+mask - none: d = (0.06, 0.07, 0.06), s_d = 0.0057735, t = 19, df = 2
    c = _comparison(comps, CLEAN, "ss+mask", "none")
    assert c.test.differences == pytest.approx((0.06, 0.07, 0.06))
    assert c.test.t == pytest.approx(19.0)
    assert c.test.p_t == pytest.approx(p_df2(19.0))
    assert c.test.p_sign_flip == pytest.approx(0.25)
    # clean, mask - none: paired on s0, s1 only: d = (0.02, 0.01), t = 3, df = 1
    c = _comparison(comps, CLEAN, "mask", "none")
    assert (c.test.n, c.test.units) == (2, ("s0", "s1"))
    assert c.test.p_t == pytest.approx(p_df1(3.0))
    # r16, mask - none: d = (0.07, 0.07): constant, no t-test.
    c = _comparison(comps, R16, "mask", "none")
    assert c.test.p_t is None and c.p_holm is None and "constant" in c.note
    # Missing cell: ss has no real-occlusion value, so nothing to pair.
    c = _comparison(comps, REALC, "ss", "none")
    assert c.test.n == 0 and c.p_holm is None and not c.significant
    # Holm over the 12 defined t-tests of the table (15 comparisons, 3 without a test); the
    # smallest p is r16 ss+mask - none: d = (0.12, 0.13, 0.12), t = 37 -> p_holm = 12 p.
    defined = [x for x in comps if x.test.p_t is not None]
    assert len(comps) == 15 and len(defined) == 12
    c = _comparison(comps, R16, "ss+mask", "none")
    assert c.test.t == pytest.approx(37.0)
    assert min(x.test.p_t for x in defined) == pytest.approx(p_df2(37.0))
    assert c.p_holm == pytest.approx(12 * p_df2(37.0))
    assert c.significant


def test_label_efficiency_by_hand(fx: Fixture) -> None:
    le = fx.main.report.label_efficiency
    assert le is not None
    assert le.fractions == (0.25, 1.0)
    curve = next(c for c in le.curves if c.variant == "none" and c.column == CLEAN)
    assert curve.x == (0.25, 1.0)
    assert [s.mean for s in curve.summaries] == pytest.approx([0.51, 0.62])
    # ss+mask - none per fraction (t, df = 2):
    #   0.25: clean d=(.08,.08,.06) t=11; r16 d=(.10,.08,.14) t=6.0474; real d=(.07,.08,.05) t=7.5593
    #   1.00: clean t=19; r16 t=37; real d=(.08,.09,.04) t=4.5826
    # Holm, m = 6: sorted p*k = .00073*6, .00276*5, .00816*4, .01706*3 = .0512, ...
    # -> significant: 1.0 r16, 1.0 clean, 0.25 clean (Holm p <= 0.05); the rest not.
    c = next(x for x in le.comparisons if x.column == CLEAN and x.at == 0.25)
    assert c.test.t == pytest.approx(11.0)
    assert c.p_holm == pytest.approx(4 * p_df2(11.0))
    assert le.significant == {CLEAN.label: (0.25, 1.0), R16.label: (1.0,), REALC.label: ()}


def test_counts_and_excluded(fx: Fixture) -> None:
    report = fx.main.report
    c = report.counts
    # Expected: 4 variants x 3 seeds x 2 fractions; found 12 + 6 + the running one.
    assert (c.expected, c.total, c.complete, c.selected) == (24, 19, 17, 17)
    assert (c.failed, c.running, c.stopped) == (1, 1, 0)
    excluded = {(e.name, e.status) for e in report.excluded}
    assert excluded == {("mask_s2_f1_lam0.2", "FAILED"), ("ss_s0_f0.25_lam0.2", "RUNNING")}


def test_files_confusion_masks_and_logging(fx: Fixture) -> None:
    result = fx.main
    out = fx.storage / "rep" / "report"  # the default output folder
    assert result.out_dir == out
    for name in ("report.html", "report.md", "report.json", "trials.csv", "cells.csv"):
        assert (out / name).is_file(), name
    data = json.loads((out / "report.json").read_text())
    # Summed confusion matrices of none (clean, fraction 1): the three seeds' matrices added.
    none = next(x for x in data["confusion"] if x["variant"] == "none" and x["protocol"] == "clean")
    assert none["matrix"] == [[7, 1, 1], [1, 8, 0], [1, 1, 7]] and none["runs"] == 3
    assert none["classes"] == list(CLASSES)
    figures = set(data["figures"])
    real_png = f"figures/masks-ss-mask-real-{REAL}.png"
    assert {
        "figures/robustness.png",
        "figures/label-efficiency.png",
        "figures/masks-ss-mask-finetune.png",
        "figures/masks-ss-mask-pretext.png",
        real_png,
    } <= figures
    for f in figures:
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The masks on real occlusions are the picture the trial logged, read back, not redrawn.
    (trial,) = [
        r
        for r in tracking.find_runs(fx.uri, "rep", kind="finetune")
        if r.data.tags.get("trial") == "ss-mask_s0_f1_lam0.2"
    ]
    logged_png = ArtifactReader(fx.uri).read_bytes(
        trial.info.artifact_uri, f"masks/real-{REAL}.png"
    )
    assert logged_png is not None and (out / real_png).read_bytes() == logged_png
    # The mask variant's trial logged no pictures: explained, not faked.
    notes = data["notes"]["masks"]
    assert sorted(n for n in notes if n.startswith("mask: ")) == [
        "mask: trial mask_s0_f1_lam0.2 logged no masks/finetune-objects.png",
        f"mask: trial mask_s0_f1_lam0.2 logged no masks/real-{REAL}.png",
    ]
    assert not any(n.startswith("ss+mask") for n in notes)
    assert "figures/masks-mask-finetune.png" not in figures
    # The robustness curve's x labels: the r16 area the trials logged (clean and the real set
    # have none), so the report has nothing to say about missing areas.
    assert fx.main.report.occluded_areas == {R16: pytest.approx(R16_AREA)}
    assert data["occluded_areas"] == [{"dataset": DS, "protocol": "r16", "area": R16_AREA}]
    assert "robustness" not in data["notes"]
    # Raw numbers: the none / clean cell with its values.
    cells = (out / "cells.csv").read_text().splitlines()
    row = next(
        r for r in cells if r.startswith("labels 100 %") and ",none,synthetic-faces,clean," in r
    )
    assert ",3,0.62," in row and "s0 s1 s2" in row
    # The summed matrix as a table, each row in % of its true class: 7/9, 1/9, 1/9, ...
    assert "| neutral | 78 | 11 | 11 |" in md_text(out)
    assert "| anger | 11 | 11 | 78 |" in md_text(out)
    # Markdown holds the same table: header, best in bold, missing cell, n per cell.
    md = (out / "report.md").read_text()
    assert (
        "| variant | synthetic-faces · clean | synthetic-faces · r16 | synthetic-faces · occlusion-ferplus |"
        in md
    )
    assert f"| 62.00 ± {100 * T975[2] * 0.02 / math.sqrt(3):.2f} (n=3) |" in md
    assert f"| {MISSING} |" in md
    assert "**68.33 ± " in md
    # Logged to the launch's parent run under report/.
    from mlflow.tracking import MlflowClient

    assert result.logged_to == fx.parents["rep"]
    logged = {a.path for a in MlflowClient(fx.uri).list_artifacts(fx.parents["rep"], "report")}
    assert {"report/report.html", "report/report.md", "report/report.json"} <= logged
    assert "report/figures" in logged


def md_text(out: Path) -> str:
    return (out / "report.md").read_text()


def test_one_seed_says_no_interval(fx: Fixture, tmp_path: Path) -> None:
    result = build_report(
        fx.studies["rep1"], storage=str(fx.storage), tracking_uri=fx.uri, out=tmp_path, log=False
    )
    table = result.report.tables[0]
    s = table.cell("none", CLEAN).summary
    assert s is not None and (s.n, s.mean, s.half_width) == (1, 0.55, None)
    (c,) = result.report.comparisons[0]
    assert (c.variant, c.reference, c.test.n, c.test.p_t, c.p_holm) == (
        "ss+mask",
        "none",
        1,
        None,
        None,
    )
    md = (tmp_path / "report.md").read_text()
    assert "| none | 55.00 (n=1) |" in md
    assert "| ss+mask | **60.00** (n=1) |" in md
    assert "single seed: no confidence interval and no test can be given" in md
    assert "no interval and no test can be given" in md


def test_lambda_grid_and_search(fx: Fixture, tmp_path: Path) -> None:
    result = build_report(
        fx.studies["replam"], storage=str(fx.storage), tracking_uri=fx.uri, out=tmp_path, log=False
    )
    report = result.report
    lam = report.lam
    assert lam.mode == "grid" and lam.values == (0.02, 0.2, 2.0)
    (curve,) = lam.curves
    assert curve.x == (0.02, 0.2, 2.0)
    # λ 0.02: (0.60, 0.62) -> 0.61 ± 12.706 * 0.01414 / 1.414; λ 2: one trial was stopped early.
    assert [s.mean for s in curve.summaries] == pytest.approx([0.61, 0.67, 0.61])
    assert curve.summaries[0].half_width == pytest.approx(T975[1] * 0.01)
    assert curve.summaries[2].n == 1 and curve.summaries[2].half_width is None
    assert report.counts.stopped == 1
    # Best configuration by validation (0.58 at λ 0.2, seed 0), not by test (0.68 at seed 1).
    (best,) = report.search
    assert best.trial == "ss-mask_s0_f1_lam0.2" and best.objective == pytest.approx(0.58)
    assert report.search_params == ("lam",)
    names = {f.name for f in report.figures}
    assert {"lambda", "search-ss-mask-history", "search-ss-mask-parallel"} <= names
    assert "search-ss-mask-importance" in names
    # One ablation table per λ value; the main one has the most trials (ties: grid order).
    assert [t.setting.grid for t in report.tables] == [
        (("lam", 0.02),),
        (("lam", 0.2),),
        (("lam", 2.0),),
    ]


def test_a_report_loads_neither_torch_nor_the_runner(fx: Fixture, tmp_path: Path) -> None:
    # Collect, compute and write the main report in a fresh interpreter: everything it shows
    # was logged by the trials, so no model, data set or occluder is needed.
    (tmp_path / "info.pkl").write_bytes(pickle.dumps(fx.main.report.info))
    code = f"""
import pickle, sys
from pathlib import Path
from occstudy.report import compute_report
from occstudy.tracking.reader import ArtifactReader, collect_runs
from occstudy.report.render import write_report
info = pickle.loads(Path({str(tmp_path / "info.pkl")!r}).read_bytes())
runs = collect_runs({fx.uri!r}, "rep", known_launches=["launch-1"])
report = compute_report(info, runs, reader=ArtifactReader({fx.uri!r}))
write_report(report, Path({str(tmp_path / "out")!r}))
heavy = ("torch", "torchvision", "occstudy.occlusion", "occstudy.study.runner")
print(len(report.figures), *[m for m in heavy if m in sys.modules])
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(len(fx.main.report.figures))]
    assert (tmp_path / "out" / f"figures/masks-ss-mask-real-{REAL}.png").is_file()


def test_robustness_areas_come_from_the_trials_metrics() -> None:
    r24 = Column(DS, "r24")
    info = StudyInfo(
        name="areas", variants=("none",), seeds=(0, 1), protocols=("clean", "r16", "r24")
    )

    def trial(seed: int, areas: dict[str, float]) -> TrialRecord:
        t = _record(seed, val=0.5, test=0.6, start=1, variant="none")
        acc = {"clean": 0.6, "r16": 0.5, "r24": 0.4, REAL: 0.3}
        return dataclasses.replace(t, acc=acc, occluded_area=areas)

    # Seed 1 was logged before the areas were recorded: seed 0's r16 area labels the curve.
    trials = (trial(0, {"r16": 0.25}), trial(1, {}))
    runs = StudyRuns("areas", "sqlite:///unused.db", ("launch-1",), (), trials, {})
    report = compute_report(info, runs)
    assert report.columns == (CLEAN, R16, r24, REALC)
    assert report.occluded_areas == {R16: 0.25}
    # r24 has no area (the real set needs none): said, and the curve is still drawn.
    assert report.notes["robustness"] == (
        "No trial logged the occluded area (test.<protocol>.occluded_area) of "
        f"{r24.label}: trials logged before occstudy recorded it lack it; labelled by name only.",
    )
    assert "robustness" in {f.name for f in report.figures}


def test_packaged_template_and_a_folder_of_ones_own(
    fx: Fixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = fx.main.report
    monkeypatch.delenv(TEMPLATES_ENV, raising=False)
    monkeypatch.delenv("OCCSTUDY_DASHBOARDS", raising=False)
    page = render_html(report)  # the package's own template and styles
    assert "<h1>Study report: rep</h1>" in page and "--ink: #1d232a;" in page
    own = tmp_path / "own"
    own.mkdir()
    (own / "report.html.j2").write_text("<p>{{ study }}</p><style>{{ css }}</style>")
    (own / "report.css").write_text("p { color: red } </x>")
    monkeypatch.setenv(TEMPLATES_ENV, str(own))
    # Autoescaped variables; the styles are inlined with "</" defused.
    assert render_html(report) == "<p>rep</p><style>p { color: red } <\\/x></style>"
    monkeypatch.delenv(TEMPLATES_ENV)
    monkeypatch.setenv("OCCSTUDY_DASHBOARDS", str(own))  # the older name still works
    assert render_html(report).startswith("<p>rep</p>")
    (own / "report.css").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"no report\.css in .*own \(named by \$OCCSTUDY_DASH"
    ):
        render_html(report)


def _record(
    seed: int,
    val: float,
    test: float,
    start: int,
    variant: str = "ss+mask",
    fold: int | None = None,
) -> TrialRecord:
    return TrialRecord(
        run_id=f"r{variant}{seed}-{fold}-{start}",
        name=f"t{variant}{seed}-{fold}-{start}",
        launch="launch-1",
        status="FINISHED",
        dataset=DS,
        variant=variant,
        seed=seed,
        fold=fold,
        label_fraction=1.0,
        params={"lam": 0.2},
        acc={"clean": test},
        macro_f1={},
        mask_iou={},
        metrics={"best_val_acc": val},
        start_time=start,
        artifact_uri="",
    )


def test_selection_uses_validation_never_test() -> None:
    info = StudyInfo(name="x", variants=("ss+mask",), seeds=(0,))
    good_val = _record(0, val=0.70, test=0.50, start=1)
    good_test = _record(0, val=0.60, test=0.90, start=2)
    chosen = select_trials([good_val, good_test], info)
    assert list(chosen.values()) == [good_val]
    # mode min flips the choice; equal values go to the latest trial.
    flipped = StudyInfo(name="x", mode="min")
    assert list(select_trials([good_val, good_test], flipped).values()) == [good_test]
    tie = _record(0, val=0.70, test=0.10, start=3)
    assert list(select_trials([good_val, tie], info).values()) == [tie]


def test_kfold_units_pair_by_seed_and_fold() -> None:
    info = StudyInfo(name="k", variants=("none", "ss+mask"), seeds=(0, 1), folds=2)
    # ss+mask beats none by 0.02, 0.03, 0.01, 0.04 on the units s0/k0, s0/k1, s1/k0, s1/k1.
    gains = {(0, 0): 0.02, (0, 1): 0.03, (1, 0): 0.01, (1, 1): 0.04}
    trials = []
    for (seed, fold), gain in gains.items():
        base = 0.5 + 0.1 * fold + 0.01 * seed
        trials.append(_record(seed, 0.5, base, 1, variant="none", fold=fold))
        trials.append(_record(seed, 0.5, base + gain, 1, variant="ss+mask", fold=fold))
    selected = select_trials(trials, info)
    table = ablation_table(selected, Setting(1.0, ()), info.variants, (CLEAN,))
    assert table.cell("none", CLEAN).units == ("s0/k0", "s0/k1", "s1/k0", "s1/k1")
    (c,) = significance(table)
    assert (c.variant, c.reference, c.test.n) == ("ss+mask", "none", 4)
    assert c.test.differences == pytest.approx((0.02, 0.03, 0.01, 0.04))
    # d = (.02, .03, .01, .04): mean .025, s_d = .012910, t = .025 / (.012910 / 2) = 3.873, df 3
    assert c.test.t == pytest.approx(0.025 / (math.sqrt(5 / 3) / 100 / 2))
    assert c.test.p_sign_flip == pytest.approx(2 / 16)


def test_cli_report(fx: Fixture, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["report", "rep1", "--storage", str(fx.storage), "--tracking-uri", fx.uri]
    assert main([*base, "--no-log", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert f"HTML:     {tmp_path / 'r' / 'report.html'}" in out
    assert "report built in" in out and "logged to" not in out
    assert (tmp_path / "r" / "report.md").is_file()
    assert main([*base, "--no-log", "--launch", "nope"]) == 2
    assert "no launch 'nope'" in capsys.readouterr().err
    assert main(["report", "nostudy", "--storage", str(fx.storage)]) == 2
