"""Writing runs: the study tracker (experiment, parent and child runs of a launch, driver side)
and stateless helpers that log params, metrics, results and pictures to a run from any process
given a :class:`~occstudy.tracking.store.RunRef`.

Every call goes through :class:`mlflow.tracking.MlflowClient` with an explicit run id, never the
global active-run stack of ``mlflow.start_run``: many trials log concurrently from different
processes and nodes, and a RunRef (three strings) is all a Ray worker needs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from occstudy.tracking.schema import (
    CHILD_KINDS,
    EXPERIMENT_KIND,
    RUN_STATUSES,
    TAG_EXPERIMENT_KIND,
    TAG_KEY,
    TAG_KIND,
    TAG_LAUNCH,
    TAG_NOTE,
    TAG_PARENT,
    TAG_ROLE,
    TAG_RUN_NAME,
    TAG_STUDY,
    confusion_artifact,
    experiment_name,
    mask_artifact,
    region_protocol,
    test_metric,
)
from occstudy.tracking.store import (
    RunRef,
    TrackingError,
    _client,
    _tag_filter,
    check_reachable,
    default_artifact_root,
    redact,
    sqlite_path,
)

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# Largest number of samples drawn in a mask picture: more columns become unreadable.
_MAX_MASK_COLUMNS = 16


def _json_default(obj: Any) -> Any:
    """Make study definitions and results JSON-serialisable (paths, tuples, tensors, ...)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if hasattr(obj, "tolist"):  # numpy arrays/scalars, torch tensors
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


def _to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=_json_default, allow_nan=True)


def _param_value(value: Any) -> str:
    """One string form per value, so that the same setting compares equal across runs."""
    if isinstance(value, str):
        # A data path or URI with credentials must not end up in the UI.
        return redact(value) if "://" in value else value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, default=_json_default)
    if isinstance(value, (Sequence, set, frozenset)) and not isinstance(value, (bytes, bytearray)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return ",".join(_param_value(v) for v in items)
    return str(value)


_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /:]")


def _metric_key(key: str) -> str:
    """MLflow allows alphanumerics, ``_ - . / :`` and spaces in keys; replace anything else."""
    return _BAD_KEY_CHARS.sub("_", key)


def _now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------------------------
# Study tracker (driver side)


class StudyTracker:
    """Experiment, parent and child runs of one study: used by the driver of a study launch.

    Args:
        tracking_uri: Tracking URI (see :func:`default_tracking_uri`).
        study_name: Name of the study; the experiment is ``occstudy/<study_name>``.
        artifact_root: Artifact location of a newly created experiment. For sqlite stores it
            defaults to ``mlartifacts`` beside the database (MLflow's own default, ``./mlruns``,
            would depend on the working directory); for servers leave it None so that the
            server chooses (proxied ``mlflow-artifacts:`` locations).

    Raises:
        TrackingError: When the store is unreachable or not writable (checked first, quickly).
    """

    def __init__(self, tracking_uri: str, study_name: str, artifact_root: str | None = None):
        if not study_name:
            raise TrackingError("A study needs a non-empty name to be tracked.")
        check_reachable(tracking_uri)
        self.tracking_uri = tracking_uri
        self.study_name = study_name
        if artifact_root is None and tracking_uri.startswith("sqlite:"):
            db = sqlite_path(tracking_uri)
            if db is not None:
                artifact_root = default_artifact_root(db.parent)
        self.artifact_root = artifact_root
        self.experiment_id: str = self._get_or_create_experiment()

    @property
    def _client(self) -> MlflowClient:
        return _client(self.tracking_uri)

    def _get_or_create_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        name = experiment_name(self.study_name)
        client = self._client
        exp = client.get_experiment_by_name(name)
        if exp is None:
            try:
                return client.create_experiment(name, artifact_location=self.artifact_root)
            except MlflowException as e:
                # Another process created it between our lookup and our create.
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = client.get_experiment_by_name(name)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            # A deleted experiment still owns its name; bring it back rather than fail.
            log.warning("Restoring the deleted MLflow experiment %r.", name)
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    def describe_experiment(self, description: str) -> None:
        """Mark the study's experiment as model training for the MLflow UI (which otherwise
        opens MLflow 3's GenAI traces view) and show ``description`` as its description."""
        client = self._client
        client.set_experiment_tag(self.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        if description:
            client.set_experiment_tag(self.experiment_id, TAG_NOTE, description)

    def _ref(self, run_id: str) -> RunRef:
        return RunRef(run_id, self.experiment_id, self.tracking_uri)

    def parent_run(self, launch: str, study_dict: Mapping[str, Any], *, resume: bool) -> RunRef:
        """Get or create the parent run of one study launch.

        Args:
            launch: Name of the launch (e.g. a timestamp or a user-given label).
            study_dict: The study definition as plain data; logged as ``study.json``.
            resume: Reuse the most recent parent run tagged with this launch (any status) and
                set it RUNNING again; a new run is created when there is none.

        Returns:
            Reference to the parent run.
        """
        client = self._client
        tags = {TAG_ROLE: "study", TAG_KIND: "study", TAG_LAUNCH: launch}
        existing: Run | None = None
        if resume:
            found = client.search_runs(
                [self.experiment_id],
                _tag_filter(tags),
                max_results=1,
                order_by=["attributes.start_time DESC"],
            )
            existing = found[0] if found else None
        params = _study_params(self.study_name, study_dict)
        if existing is not None:
            ref = self._ref(existing.info.run_id)
            client.update_run(ref.run_id, status="RUNNING")
            changed = {
                k: v
                for k, v in params.items()
                if k in existing.data.params and existing.data.params[k] != v
            }
            if changed:
                # MLflow forbids changing a param; the new definition is still in study.json.
                log.warning(
                    "Resumed launch %r has a changed study definition (%s); params keep their "
                    "first values, study.json is replaced.",
                    launch,
                    ", ".join(sorted(changed)),
                )
            # Params the first launch did not have yet are still added.
            log_params(ref, {k: v for k, v in params.items() if k not in changed})
        else:
            run = client.create_run(
                self.experiment_id,
                tags={**tags, TAG_STUDY: self.study_name},
                run_name=f"{self.study_name}:{launch}",
            )
            ref = self._ref(run.info.run_id)
            log_params(ref, params)
        log_json(ref, study_dict, "study.json")
        return ref

    def child_run(
        self,
        parent: RunRef,
        *,
        kind: str,
        key: str,
        name: str,
        tags: Mapping[str, str],
        params: Mapping[str, Any],
    ) -> RunRef:
        """Get or create a nested run for a pretext job or a fine-tune trial.

        Runs are found by ``occstudy.key`` and ``occstudy.kind`` within the experiment, so a
        pretext job reused by a later launch, or a trial of a resumed launch, is found again
        rather than duplicated. A run found again keeps its original parent and params (MLflow
        forbids changing a param value); its name and user tags are refreshed, and a FAILED or
        KILLED run is set RUNNING again. A FINISHED one stays FINISHED (see :func:`run_status`).

        Args:
            parent: The launch's parent run.
            kind: ``pretext`` or ``finetune``.
            key: Stable identity of the job (e.g. a hash of its configuration).
            name: Display name.
            tags: User tags (dataset, variant, seed, trial, ...).
            params: Params, logged only when the run is created.

        Returns:
            Reference to the child run.
        """
        if kind not in CHILD_KINDS:
            raise ValueError(f"kind must be one of {CHILD_KINDS}, not {kind!r}")
        if not key:
            raise ValueError("A child run needs a non-empty key.")
        client = self._client
        ident = {TAG_KEY: key, TAG_KIND: kind}
        filt = _tag_filter(ident)
        order = ["attributes.start_time ASC", "attributes.run_id ASC"]
        user_tags = {str(k): str(v) for k, v in tags.items()}
        found = client.search_runs([self.experiment_id], filt, max_results=1, order_by=order)
        if found:
            run = found[0]
            ref = self._ref(run.info.run_id)
            set_tags(ref, {TAG_RUN_NAME: name, **user_tags})
            if run.info.status in ("FAILED", "KILLED", "SCHEDULED"):
                client.update_run(ref.run_id, status="RUNNING")
            return ref
        all_tags = {
            **user_tags,
            **ident,
            TAG_ROLE: kind,
            TAG_STUDY: self.study_name,
            TAG_PARENT: parent.run_id,
        }
        run = client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        # Two launches may create the same key at once: the oldest run wins, the other goes.
        found = client.search_runs([self.experiment_id], filt, max_results=1, order_by=order)
        if found and found[0].info.run_id != run.info.run_id:
            client.delete_run(run.info.run_id)
            return self._ref(found[0].info.run_id)
        ref = self._ref(run.info.run_id)
        log_params(ref, params)
        return ref

    def finish(self, run: RunRef, status: str = "FINISHED") -> None:
        """Mark a run terminated.

        Args:
            run: The run.
            status: ``FINISHED``, ``FAILED`` or ``KILLED``.
        """
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, not {status!r}")
        _client(run.tracking_uri).set_terminated(run.run_id, status=status)


def _study_params(study_name: str, study_dict: Mapping[str, Any]) -> dict[str, str]:
    """A few top-level params of a parent run, read defensively from the study definition."""
    params: dict[str, Any] = {"study": study_name}
    variants = study_dict.get("variants")
    if variants is not None:
        params["variants"] = variants
    seeds = study_dict.get("seeds")
    if isinstance(seeds, Sequence) and not isinstance(seeds, str):
        params["n_seeds"] = len(seeds)
    elif isinstance(seeds, int):
        params["n_seeds"] = seeds
    return {k: _param_value(v) for k, v in params.items()}


# --------------------------------------------------------------------------------------------
# Stateless helpers, usable from any process given a RunRef


def run_status(run: RunRef) -> str:
    """Current status of a run (``RUNNING``, ``FINISHED``, ``FAILED``, ``KILLED``, ...)."""
    return _client(run.tracking_uri).get_run(run.run_id).info.status


def log_params(run: RunRef, params: Mapping[str, Any]) -> None:
    """Log params; values already logged identically are skipped.

    Values are turned into strings one way everywhere (sequences comma-joined, mappings as
    sorted JSON, credentials stripped from URIs) so the same setting compares equal across runs
    in the MLflow UI.

    Raises:
        TrackingError: When a param already holds a different value (MLflow forbids changes).
    """
    from mlflow.entities import Param

    if not params:
        return
    client = _client(run.tracking_uri)
    values = {str(k): _param_value(v) for k, v in params.items()}
    existing = client.get_run(run.run_id).data.params
    conflicts = {
        k: (existing[k], v) for k, v in values.items() if k in existing and existing[k] != v
    }
    if conflicts:
        detail = ", ".join(
            f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(conflicts.items())
        )
        raise TrackingError(f"Run {run.run_id} already has different values for params ({detail}).")
    new = [Param(k, v) for k, v in values.items() if k not in existing]
    if new:
        client.log_batch(run.run_id, params=new)


def log_metrics(run: RunRef, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log metrics in one batch call; non-finite values are skipped with a warning.

    Args:
        run: The run.
        metrics: Metric name -> value (numbers, 0-d tensors or numpy scalars).
        step: Step of all values (the epoch for per-epoch metrics); 0 when None.
    """
    from mlflow.entities import Metric

    ts = _now_ms()
    batch = []
    skipped = []
    for key, value in metrics.items():
        v = float(value)
        if not math.isfinite(v):
            skipped.append(f"{key}={v}")
            continue
        batch.append(Metric(_metric_key(key), v, ts, step or 0))
    if skipped:
        log.warning(
            "Run %s step %s: skipped non-finite metrics %s", run.run_id, step, ", ".join(skipped)
        )
    if batch:
        _client(run.tracking_uri).log_batch(run.run_id, metrics=batch)


def set_tags(run: RunRef, tags: Mapping[str, str]) -> None:
    """Set (or overwrite) tags of a run in one batch call."""
    from mlflow.entities import RunTag

    if tags:
        batch = [RunTag(str(k), str(v)) for k, v in tags.items()]
        _client(run.tracking_uri).log_batch(run.run_id, tags=batch)


#: MLflow's limit on a run tag's value, hence on a run description.
_MAX_NOTE = 8000


def set_description(run: RunRef, markdown: str, *, more: str = "") -> None:
    """Show ``markdown`` as the run's description in the MLflow UI (rendered as Markdown).

    MLflow caps a run tag at 8,000 characters: a longer text is cut at a line break and ends
    with a line saying so, and ``more`` (where the whole text is).
    """
    text = markdown
    if len(text) > _MAX_NOTE:
        tail = f"\n\n_(cut at MLflow's {_MAX_NOTE:,}-character limit{'; ' + more if more else ''})_"
        head = text[: _MAX_NOTE - len(tail)]
        text = head[: head.rfind("\n")] + tail if "\n" in head else head + tail
    set_tags(run, {TAG_NOTE: text})


def log_json(run: RunRef, obj: Any, artifact_file: str) -> None:
    """Log an object as a JSON artifact (dataclasses, paths, tensors are converted)."""
    _client(run.tracking_uri).log_text(run.run_id, _to_json(obj), artifact_file)


def log_checkpoint(run: RunRef, path: str | Path, artifact_path: str = "checkpoints") -> None:
    """Log a checkpoint file (e.g. ``finetune/best.pt``) under ``artifact_path``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"No checkpoint to log at {p}")
    _client(run.tracking_uri).log_artifact(run.run_id, str(p), artifact_path)


def log_files(tracking_uri: str, run_id: str, files: Mapping[Path, str]) -> None:
    """Log local files to a run, each under its artifact folder.

    Args:
        tracking_uri: Where the run lives.
        run_id: The run.
        files: Local file -> artifact folder (``report``, ``report/figures``).
    """
    client = _client(tracking_uri)
    for path, folder in files.items():
        client.log_artifact(run_id, str(path), folder)


def _log_figure(run: RunRef, fig: Figure, artifact_file: str) -> None:
    _client(run.tracking_uri).log_figure(
        run.run_id, fig, artifact_file, save_kwargs={"dpi": 100, "bbox_inches": "tight"}
    )


def _as_result_dict(result: Any) -> dict[str, Any]:
    if hasattr(result, "to_dict"):
        return dict(result.to_dict())
    if isinstance(result, Mapping):
        return dict(result)
    raise TypeError(f"Expected a ProtocolResult or its to_dict(), got {type(result).__name__}")


def log_results(run: RunRef, results: Mapping[str, Any]) -> None:
    """Log final test metrics and confusion matrices, one set per test protocol.

    Metrics ``test.<p>.acc``, ``test.<p>.macro_f1``, ``test.<p>.mask_iou`` (when the model has
    U_o and the protocol has masks), ``test.<p>.<extra>`` and, for a real-occlusion set broken
    down by occluded region, ``test.<p>.region.<region>.acc`` / ``.n`` (the names of
    :func:`occstudy.evaluate.summarize`); artifacts ``confusion/<p>.json`` (with the per-region
    results under ``regions``) and ``confusion/<p>.png``.

    Args:
        run: The run (a fine-tune trial).
        results: Protocol name -> :class:`occstudy.evaluate.ProtocolResult` or its ``to_dict()``.
    """
    metrics: dict[str, float] = {}
    client = _client(run.tracking_uri)
    for protocol, result in results.items():
        r = _as_result_dict(result)
        p = _metric_key(str(r.get("protocol") or protocol))
        metrics[test_metric(p, "acc")] = float(r["acc"])
        metrics[test_metric(p, "macro_f1")] = float(r["macro_f1"])
        if r.get("mask_iou") is not None:
            metrics[test_metric(p, "mask_iou")] = float(r["mask_iou"])
        for k, v in (r.get("extra") or {}).items():
            metrics[test_metric(p, k)] = float(v)
        regions = r.get("regions") or {}
        for region, m in regions.items():
            q = region_protocol(p, _metric_key(str(region)))
            metrics[test_metric(q, "acc")] = float(m["acc"])
            metrics[test_metric(q, "n")] = float(m["n"])
        doc = {
            "protocol": p,
            "dataset": r.get("dataset"),
            "label_space": r.get("label_space"),
            "n": r.get("n"),
            "acc": r["acc"],
            "macro_f1": r["macro_f1"],
            "mask_iou": r.get("mask_iou"),
            "classes": list(r["classes"]),
            "matrix": r["confusion"],
            "per_class_acc": r.get("per_class_acc"),
            "regions": regions,
        }
        client.log_text(run.run_id, _to_json(doc), confusion_artifact(p))
        fig = confusion_figure(
            r["confusion"],
            list(r["classes"]),
            title=f"{p}  acc {float(r['acc']):.1%}  ({r.get('label_space', '?')})",
        )
        _log_figure(run, fig, confusion_artifact(p, "png"))
    log_metrics(run, metrics)


def confusion_figure(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> Figure:
    """Confusion matrix picture: counts written in the cells, colours normalised per true class.

    Row-normalised colours make a rare class's errors as visible as a frequent one's; the counts
    keep the absolute numbers.
    """
    import numpy as np
    from matplotlib.figure import Figure

    cm = np.asarray(matrix, dtype=float).reshape(len(classes), len(classes))
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(classes)
    # Figure, not pyplot: no global state and no GUI backend, safe in Ray worker threads.
    fig = Figure(figsize=(1.0 + 0.75 * k, 0.8 + 0.7 * k))
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    for t in range(k):
        for p in range(k):
            ax.text(
                p,
                t,
                str(int(cm[t, p])),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if norm[t, p] > 0.5 else "black",
            )
    ax.set_xticks(range(k), list(classes), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), list(classes), fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    return fig


def mask_figure(
    inputs: torch.Tensor, true_masks: torch.Tensor | None, pred_logits: torch.Tensor
) -> Figure:
    """Grid picture: a column per sample, rows input | true mask | predicted probability."""
    import torch
    from matplotlib.figure import Figure

    n = min(int(inputs.shape[0]), _MAX_MASK_COLUMNS)
    x = inputs[:n].detach().float().cpu().clamp(0, 1)
    prob = torch.sigmoid(pred_logits[:n].detach().float().cpu())
    true = true_masks[:n].detach().float().cpu() if true_masks is not None else None
    rows = [("input", x)] + ([("true mask", true)] if true is not None else [])
    rows.append(("predicted P(occluded)", prob))
    fig = Figure(figsize=(1.3 * n + 0.6, 1.4 * len(rows)))
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        assert imgs is not None
        for c in range(n):
            ax = axes[r][c]
            img = imgs[c]
            if img.shape[0] == 3:
                ax.imshow(img.permute(1, 2, 0).numpy())
            else:
                ax.imshow(img[0].numpy(), cmap="gray" if r == 0 else "magma", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=7)
            if label.startswith("predicted") and true is not None and img.shape == true[c].shape:
                pred = img > 0.5
                gt = true[c] > 0.5
                union = (pred | gt).sum().item()
                iou = (pred & gt).sum().item() / union if union else 1.0
                ax.set_title(f"IoU {iou:.2f}", fontsize=7)
    return fig


def log_mask_picture(
    run: RunRef,
    inputs: torch.Tensor,
    true_masks: torch.Tensor | None,
    pred_logits: torch.Tensor,
    name: str = "masks.png",
) -> None:
    """Log a picture of predicted occlusion masks next to the inputs as ``masks/<name>``.

    Args:
        run: The run.
        inputs: Float images (N, C, H, W) in [0, 1], C = 1 or 3.
        true_masks: True masks (N, 1, H, W), or None (e.g. real occlusions).
        pred_logits: U_o's mask logits (N, 1, H, W).
        name: File name of the PNG.
    """
    if inputs.ndim != 4 or pred_logits.ndim != 4:
        raise ValueError("inputs and pred_logits must be (N, C, H, W) tensors")
    _log_figure(run, mask_figure(inputs, true_masks, pred_logits), mask_artifact(name))
