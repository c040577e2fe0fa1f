"""Links into the MLflow UI that open where a researcher looks first.

The MLflow UI (3.17) is a single-page app with its state in the URL fragment. Three views of a
study's launch are worth a link:

* **compare**: MLflow's compare-runs page of the launch's fine-tune trials
  (``#/compare-runs?runs=[...]&experiments=[...]``): one column per trial, every param
  (variant, seed, label fraction, λ, τ, lr, ...) and every metric (``test.<protocol>.acc``, ...)
  side by side, plus MLflow's parallel-coordinates and scatter plots.
* **trials**: the experiment's runs table showing only those trials, with the columns a
  researcher would otherwise add by hand.
* **charts**: the same trials in MLflow's chart view, grouped by variant (mean per variant):
  per-epoch validation accuracy (``val_acc``, step = epoch) and test accuracy per protocol.

The runs table and chart view take their column choice and grouping from a *shared view
state*: an experiment tag ``mlflow.sharedViewState.<key>`` holding the view as JSON, opened
with ``?viewStateShareKey=<key>``. That is what MLflow's own "Share" button writes; occstudy
writes one per launch under a key derived from the launch name (no random part, so the link
stays the same when the view is written again).

Imports MLflow only inside functions; no torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from occstudy.tracking import schema, store
from occstudy.tracking.reader import collect_runs

#: Experiment-tag prefix of MLflow's shared view states.
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
#: Artifact path of the report page on the launch's parent run (see :mod:`occstudy.report`).
REPORT_PAGE = "report/report.html"
#: Params shown as columns of the trials table (MLflow names), when the trials have them.
TABLE_PARAMS: tuple[str, ...] = (
    "variant",
    "seed",
    "label_fraction",
    schema.PARAM_NAMES["lam"],
    schema.PARAM_NAMES["tau"],
    schema.PARAM_NAMES["lr"],
)


def _column(kind: str, name: str) -> str:
    # The runs table's canonical column key: params.`variant`, metrics.`test.clean.acc`.
    return f"{kind}.`{name}`"


def _fragment_json(values: Sequence[str]) -> str:
    return quote(json.dumps(list(values)), safe="")


def compare_runs_path(run_ids: Sequence[str], experiment_ids: Sequence[str]) -> str:
    """The fragment of MLflow's compare-runs page for ``run_ids`` (sorted, as MLflow does)."""
    runs = _fragment_json(sorted(set(run_ids)))
    experiments = _fragment_json(sorted(set(experiment_ids)))
    return f"#/compare-runs?runs={runs}&experiments={experiments}"


def share_key(launch: str, view: str = "") -> str:
    """The share key of a launch's view (``occstudy-launch-2``, ``occstudy-launch-2-by-variant``)."""
    return f"occstudy-{launch}" + (f"-{view}" if view else "")


def trials_filter(parent_run_id: str) -> str:
    """MLflow search filter of a launch's fine-tune trials (children of its parent run)."""
    return (
        f"tags.`{schema.TAG_PARENT}` = '{parent_run_id}' and tags.`{schema.TAG_KIND}` = 'finetune'"
    )


def view_state(
    parent_run_id: str, params: Sequence[str], metrics: Sequence[str], *, by_variant: bool
) -> dict[str, Any]:
    """A shared view state (search facets and UI state of MLflow's experiment page).

    Args:
        parent_run_id: The launch's parent run: the view shows its fine-tune trials.
        params: MLflow param names to show as columns.
        metrics: Metric names to show as columns.
        by_variant: Group the runs by the ``variant`` param (charts show each group's mean).
    """
    state: dict[str, Any] = {
        "searchFilter": trials_filter(parent_run_id),
        "orderByKey": _column("params", "variant"),
        "orderByAsc": True,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": [
            *(_column("params", p) for p in params),
            *(_column("metrics", m) for m in metrics),
        ],
        "groupBy": None,
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
    }
    if by_variant:
        # Accuracy charts first (val_acc per epoch, test.<protocol>.acc), not throughput & co.
        state["chartsSearchFilter"] = "acc"
        state["groupBy"] = {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "param", "groupByData": "variant"}],
        }
    return state


@dataclass(frozen=True)
class LaunchViews:
    """Where to look at one launch in the MLflow UI (fragments of the UI's base URL).

    Attributes:
        launch: The launch (``launch-N``).
        experiment_id: The study's experiment.
        parent_run_id: The launch's parent run.
        trials: Names of the launch's fine-tune trials, in table order.
        compare: Compare-runs page of the trials.
        table: Runs table of the trials, with their columns.
        charts: Chart view of the trials, grouped by variant.
        report: The report page logged to the launch (None before ``occstudy report``).
    """

    launch: str
    experiment_id: str
    parent_run_id: str
    trials: tuple[str, ...]
    compare: str
    table: str
    charts: str
    report: str | None

    def urls(self, base: str) -> dict[str, str]:
        """Every view as a full URL under the UI's ``base`` (``http://127.0.0.1:5000``)."""
        base = base.rstrip("/") + "/"
        out = {"compare": base + self.compare, "trials": base + self.table}
        out["charts"] = base + self.charts
        if self.report is not None:
            out["report"] = base + self.report
        return out


def launch_views(
    tracking_uri: str,
    study_name: str,
    *,
    launch: str | None = None,
    known_launches: Sequence[str] = (),
    share: bool = True,
) -> LaunchViews:
    """The MLflow UI views of a launch (the last one by default).

    Args:
        tracking_uri: Where the study's runs live.
        study_name: The study.
        launch: A launch name, or None for the last one.
        known_launches: The study's ``launches.json``, when the storage has it.
        share: Write the runs table's and chart view's shared view states to the experiment
            (idempotent); without them those two links open MLflow's default view.

    Raises:
        ReportError: When the study has no runs, or for an unknown launch.
    """
    if launch == "all":
        raise ValueError("launch_views: one launch (or None for the last), not 'all'")
    runs = collect_runs(tracking_uri, study_name, launch=launch, known_launches=known_launches)
    name = runs.launches[-1]
    parent = next(p for p in reversed(runs.parents) if p.launch == name)
    client = store._client(tracking_uri)
    experiment = client.get_experiment_by_name(schema.experiment_name(study_name))
    assert experiment is not None  # collect_runs found runs in it
    exp_id = experiment.experiment_id
    trials = sorted(runs.trials, key=lambda t: (t.variant, t.seed or 0, t.name))
    protocols = sorted({p for t in trials for p in t.acc if schema.REGION_SEP not in p})
    present = {k for t in trials for k in t.metrics}
    metrics = [
        m
        for m in (schema.BEST_VAL_ACC, *(schema.test_metric(p, "acc") for p in protocols))
        if m in present
    ]
    params = list(TABLE_PARAMS)
    if share:
        for view, by_variant in (("", False), ("by-variant", True)):
            state = view_state(parent.run_id, params, metrics, by_variant=by_variant)
            client.set_experiment_tag(
                exp_id, SHARED_VIEW_PREFIX + share_key(name, view), json.dumps(state)
            )
    tab = f"#/experiments/{exp_id}/runs?viewStateShareKey="
    report = None
    parent_artifacts = [a.path for a in client.list_artifacts(parent.run_id, "report")]
    if REPORT_PAGE in parent_artifacts:
        report = f"#/experiments/{exp_id}/runs/{parent.run_id}/artifactPath/{REPORT_PAGE}"
    return LaunchViews(
        launch=name,
        experiment_id=exp_id,
        parent_run_id=parent.run_id,
        trials=tuple(t.name for t in trials),
        compare=compare_runs_path([t.run_id for t in trials], [exp_id]),
        table=tab + share_key(name),
        charts=tab + share_key(name, "by-variant") + "&compareRunsMode=CHART",
        report=report,
    )
