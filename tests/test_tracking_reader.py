"""Reading a study's runs back (occstudy.tracking.reader): what the writer logged comes back as
typed records under the same names; launches are selected as the report and status expect;
unreadable artifacts are reported, missing ones are gaps."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from occstudy import tracking
from occstudy.evaluate import ProtocolResult
from occstudy.tracking.reader import (
    ArtifactReader,
    LaunchRecord,
    ReportError,
    collect_runs,
    launch_statuses,
    select_launches,
)


def _result(protocol: str, acc: float) -> ProtocolResult:
    return ProtocolResult(
        protocol=protocol,
        dataset="synthetic-faces:test",
        label_space="synthetic-7",
        n=10,
        acc=acc,
        macro_f1=acc - 0.1,
        per_class_acc={"a": acc, "b": acc},
        confusion=[[3, 2], [2, 3]],
        classes=("a", "b"),
    )


def test_written_runs_read_back(tmp_path: Path) -> None:
    uri = tracking.default_tracking_uri(tmp_path)
    tracker = tracking.StudyTracker(uri, "rd")
    parent = tracker.parent_run("launch-1", {"name": "rd", "seeds": [0]}, resume=False)
    trials = {}
    for name, variant in (("t-a", "none"), ("t-b", "ss")):
        params = {"variant": variant, "seed": 0, "lambda": 0.5, "tau": 2.0, "arch": "resnet18"}
        tags = {"dataset": "fer2013", "variant": variant, "seed": "0", "trial": name}
        if variant == "ss":
            tags[tracking.TAG_CACHE_KEY] = "pk"
        run = tracker.child_run(
            parent, kind="finetune", key=f"launch-1/{name}", name=name, tags=tags, params=params
        )
        trials[name] = run
    ofp = dataclasses.replace(
        _result("occlusion-ferplus", 0.5), regions={"mouth": {"n": 4.0, "acc": 0.25}}
    )
    tracking.log_results(trials["t-a"], {"clean": _result("clean", 0.7), "ofp": ofp})
    tracking.log_metrics(trials["t-a"], {tracking.BEST_VAL_ACC: 0.66})
    tracker.finish(trials["t-a"], "FINISHED")
    tracker.finish(trials["t-b"], "FAILED")
    pre = tracker.child_run(
        parent, kind="pretext", key="pk", name="pre", tags={"variant": "ss"}, params={}
    )
    tracking.set_tags(pre, {tracking.TAG_CACHE_KEY: "pk"})

    runs = collect_runs(uri, "rd")
    assert runs.launches == ("launch-1",)
    by_name = {t.name: t for t in runs.trials}
    a, b = by_name["t-a"], by_name["t-b"]
    assert a.acc == {
        "clean": pytest.approx(0.7),
        "occlusion-ferplus": pytest.approx(0.5),
        tracking.region_protocol("occlusion-ferplus", "mouth"): pytest.approx(0.25),
    }
    assert a.params == {"lam": 0.5, "tau": 2.0}  # λ is logged as "lambda", read as "lam"
    assert a.choices == {"arch": "resnet18"}
    assert a.metrics[tracking.BEST_VAL_ACC] == pytest.approx(0.66)
    assert (a.status, a.complete, a.seed, a.launch) == ("FINISHED", True, 0, "launch-1")
    assert (b.status, b.complete, b.cache_key) == ("FAILED", False, "pk")
    assert set(runs.pretext) == {"pk"}

    statuses, pretext = launch_statuses(uri, "rd", "launch-1")
    assert statuses == {"t-a": "FINISHED", "t-b": "FAILED"}
    assert pretext == {"pk": "RUNNING"}
    assert launch_statuses(uri, "rd", "launch-2") == ({}, {"pk": "RUNNING"})
    with pytest.raises(ReportError, match="has no runs"):
        collect_runs(uri, "other")


def test_launch_selection() -> None:
    parents = [
        LaunchRecord("a", "launch-1", "FINISHED", 1),
        LaunchRecord("b", "launch-2", "RUNNING", 2),
    ]
    assert select_launches(parents, None) == ("launch-2",)
    assert select_launches(parents, None, known=["launch-1", "launch-2", "launch-3"]) == (
        "launch-3",
    )
    assert select_launches(parents, "all") == ("launch-1", "launch-2")
    assert select_launches(parents, "launch-1") == ("launch-1",)
    with pytest.raises(ReportError, match="no launch 'x'; this study has: launch-1, launch-2, all"):
        select_launches(parents, "x")
    with pytest.raises(ReportError, match="no launch"):
        select_launches([], None)


def test_unreadable_artifacts_are_reported_missing_ones_are_gaps(tmp_path: Path) -> None:
    run_dir = tmp_path / "artifacts"
    (run_dir / "confusion").mkdir(parents=True)
    (run_dir / "confusion" / "clean.json").write_text('{"acc": 0.5}')
    (run_dir / "confusion" / "r16.json").write_text('{"acc": 0.5')  # cut short
    reader = ArtifactReader("sqlite:///unused.db")
    uri = run_dir.as_uri()
    assert reader.read_json(uri, "confusion/clean.json") == {"acc": 0.5}
    assert reader.read_json(uri, "confusion/r8.json") is None  # never logged: a gap
    assert reader.problems == []
    assert reader.read_json(uri, "confusion/r16.json") is None
    (problem,) = reader.problems
    assert "confusion/r16.json" in problem and "not JSON" in problem
