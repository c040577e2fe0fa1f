"""Links into the MLflow UI (occstudy.tracking.views): the compare view holds exactly the
launch's fine-tune trials, the shared view states are valid MLflow searches that find exactly
them, and the report page is linked once it is logged."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, unquote

import pytest

from occstudy import tracking
from occstudy.tracking import views
from occstudy.tracking.reader import ReportError


def _launch(tracker: tracking.StudyTracker, launch: str, variants: dict[str, str]) -> dict:
    parent = tracker.parent_run(launch, {"name": "vw", "seeds": [0]}, resume=False)
    runs = {"parent": parent}
    for name, variant in variants.items():
        run = tracker.child_run(
            parent,
            kind="finetune",
            key=f"{launch}/{name}",
            name=name,
            tags={"variant": variant, "seed": "0", "trial": name},
            params={"variant": variant, "seed": 0, "lambda": 0.2, "tau": 2.0, "lr": 1e-3},
        )
        tracking.log_metrics(run, {"test.clean.acc": 0.5, "test.r16.acc": 0.4, "best_val_acc": 0.6})
        tracker.finish(run)
        runs[name] = run
    tracker.child_run(parent, kind="pretext", key=f"{launch}-pre", name="pre", tags={}, params={})
    return runs


def test_compare_path_is_mlflows_route() -> None:
    path = views.compare_runs_path(["b", "a", "a"], ["7"])
    assert path.startswith("#/compare-runs?")
    query = parse_qs(path.split("?", 1)[1])
    assert json.loads(unquote(query["runs"][0])) == ["a", "b"]  # sorted, once each
    assert json.loads(query["experiments"][0]) == ["7"]


def test_launch_views_link_the_last_launchs_trials(tmp_path: Path) -> None:
    uri = tracking.default_tracking_uri(tmp_path)
    tracker = tracking.StudyTracker(uri, "vw")
    _launch(tracker, "launch-1", {"old-a": "none"})
    second = _launch(tracker, "launch-2", {"t-ss": "ss", "t-none": "none"})

    v = views.launch_views(uri, "vw")
    assert v.launch == "launch-2" and v.parent_run_id == second["parent"].run_id
    assert v.trials == ("t-none", "t-ss")  # by variant, then seed
    query = parse_qs(v.compare.split("?", 1)[1])
    want = sorted([second["t-ss"].run_id, second["t-none"].run_id])
    assert json.loads(query["runs"][0]) == want
    assert json.loads(query["experiments"][0]) == [v.experiment_id]
    assert v.report is None
    urls = v.urls("http://127.0.0.1:5000")
    assert urls["compare"].startswith("http://127.0.0.1:5000/#/compare-runs?")
    assert urls["trials"].endswith("viewStateShareKey=occstudy-launch-2")
    assert "compareRunsMode=CHART" in urls["charts"]

    # The shared view states are stored on the experiment, and their filter is a valid MLflow
    # search that finds exactly the launch's fine-tune trials (no pretext job, no other launch).
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    tags = client.get_experiment(v.experiment_id).tags
    table = json.loads(tags[views.SHARED_VIEW_PREFIX + "occstudy-launch-2"])
    charts = json.loads(tags[views.SHARED_VIEW_PREFIX + "occstudy-launch-2-by-variant"])
    found = client.search_runs([v.experiment_id], table["searchFilter"])
    assert sorted(r.info.run_id for r in found) == want
    assert "params.`variant`" in table["selectedColumns"]
    assert "params.`lambda`" in table["selectedColumns"]
    assert "metrics.`test.r16.acc`" in table["selectedColumns"]
    assert table["groupBy"] is None
    assert charts["groupBy"]["groupByKeys"] == [{"mode": "param", "groupByData": "variant"}]

    # An earlier launch by name; then the report page is linked once logged.
    assert views.launch_views(uri, "vw", launch="launch-1").trials == ("old-a",)
    page = tmp_path / "report.html"
    page.write_text("<html></html>")
    tracking.log_files(uri, second["parent"].run_id, {page: "report"})
    v = views.launch_views(uri, "vw", share=False)
    assert v.report is not None and v.report.endswith(
        f"/runs/{second['parent'].run_id}/artifactPath/report/report.html"
    )


def test_launch_views_of_a_study_without_runs(tmp_path: Path) -> None:
    uri = tracking.default_tracking_uri(tmp_path)
    with pytest.raises(ReportError, match="run it first"):
        views.launch_views(uri, "nothing-here")
