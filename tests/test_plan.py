"""The cost estimate of a study (occstudy.study.plan, ``occstudy run --plan``)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from occstudy.cli import main
from occstudy.study import FinetuneSpec, PretextSpec, Resources, Study, TestSpec
from occstudy.study.plan import OVERHEADS, NetConfig, makespan, plan_study, throughput
from occstudy.study.progress import Progress

TINY = Study(
    name="tinyplan",
    image_size=32,
    batch_size=8,
    variants=("none", "ss", "ss+mask"),
    seeds=(0, 1),
    label_fractions=(0.5, 1.0),
    pretext=PretextSpec(epochs=2, limit=24),
    finetune=FinetuneSpec(epochs=3, train_limit=40, synthetic_size=96),
    test=TestSpec(protocols=("clean", "r16")),
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("OCCSTUDY_CACHE", str(folder))
    return folder


def test_makespan_by_hand() -> None:
    assert makespan([], 2) == 0.0
    assert makespan([3.0, 1.0, 2.0], 2) == 3.0  # 3 | 1 then 2 → 3
    assert makespan([5.0, 5.0, 5.0], 2) == 10.0
    assert makespan([5.0, 5.0, 5.0], 1) == 15.0
    assert makespan([1.0, 1.0], 8) == 1.0


def test_throughput_is_measured_once_per_machine_and_config(cache: Path) -> None:
    net = NetConfig(arch="resnet18", stem="imagenet", image_size=32, batch_size=8, threads=1)
    with pytest.raises(LookupError, match="no throughput measured"):
        throughput(net, measure=False)
    first, cached = throughput(net)
    assert not cached
    assert first.finetune > 0 and first.test > 0
    assert set(first.pretext) == {"ss", "mask", "ss+mask"}
    again, cached = throughput(net, measure=False)
    assert cached and again == first
    stored = json.loads((cache / "throughput.json").read_text())
    assert len(stored) == 1
    # Another configuration is another measurement.
    with pytest.raises(LookupError):
        throughput(dataclasses.replace(net, image_size=40), measure=False)


def test_plan_of_a_tiny_study(cache: Path, tmp_path: Path) -> None:
    plan = plan_study(TINY, storage=str(tmp_path / "st"), num_cpus=2)
    # 3 variants x 2 seeds x 2 fractions; pretext jobs: ss and ss+mask per seed.
    assert len(plan.finetune) == 12
    assert len(plan.pretext) == 4 and not any(j.cached for j in plan.pretext)
    assert {j.variant for j in plan.pretext} == {"ss", "ss+mask"}
    assert all(j.images == 24 and j.epochs == 2 for j in plan.pretext)
    half, full = sorted({j.images for j in plan.finetune})
    # train_limit, then a stratified half of it (rounded per class)
    assert abs(full - 40) <= 3 and abs(half - full / 2) <= 3
    for j in plan.finetune:
        assert j.seconds == pytest.approx(sum(j.parts.values()))
        assert j.parts["fixed"] == OVERHEADS.trial
        assert j.parts["train"] > 0 and j.parts["test"] > 0
    # One trial at a time with both CPUs.
    assert (plan.concurrent, plan.cpus_per_trial) == (1, 2)
    s1, s2 = plan.stage_seconds
    assert s1 == pytest.approx(sum(j.seconds for j in plan.pretext) + OVERHEADS.stage)
    assert s2 == pytest.approx(
        sum(j.seconds for j in plan.finetune) + OVERHEADS.stage + OVERHEADS.launch
    )
    text = plan.format()
    assert "12 fine-tune trials, 4 pretext jobs to compute (0 cached)" in text
    assert "estimated wall time" in text and "assumes:" in text
    # Two at a time with one CPU each: the same jobs in about half the time.
    two = plan_study(
        Study(**{**TINY.__dict__, "resources": Resources(max_concurrent=2)}),
        storage=str(tmp_path / "st"),
        num_cpus=2,
    )
    assert (two.concurrent, two.cpus_per_trial) == (2, 1)


def test_cli_plan_prints_without_training(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study_file = tmp_path / "tinyplan.py"
    study_file.write_text(
        "from occstudy.study import FinetuneSpec, PretextSpec, Study, TestSpec\n"
        "study = Study(name='tinyplan', image_size=32, batch_size=8, variants=('none',),\n"
        "    finetune=FinetuneSpec(epochs=1, train_limit=16, synthetic_size=48),\n"
        "    test=TestSpec(protocols=('clean',)))\n"
    )
    storage = tmp_path / "st"
    rc = main(["run", str(study_file), "--plan", "--storage", str(storage), "--num-cpus", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "1 fine-tune trials" in out and "estimated wall time" in out
    assert "measured now" in out
    assert not (storage / "tinyplan").exists()  # nothing launched, nothing recorded
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()


def test_progress_eta_scales_with_the_trials_that_ended() -> None:
    p = Progress("finetune", 4, None, "max", False, estimates=dict.fromkeys("abcd", 10.0))
    assert p.eta() == pytest.approx(40.0)
    p.start -= 40.0  # the first two trials took twice their estimate
    p.on_trial_complete(0, [], "a")
    p.on_trial_complete(0, [], "b")
    assert p.eta() == pytest.approx(40.0, rel=0.05)  # 20 s left, at twice the estimate
    assert Progress("finetune", 1, None, "max", False).eta() is None
