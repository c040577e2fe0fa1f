"""MLflow naming, writing and reading: the one package of occstudy that knows MLflow.

Layout in MLflow:

* one experiment per study, named ``occstudy/<study name>``;
* one *parent* run per study launch (tags ``occstudy.role=study``, ``occstudy.launch``), holding
  the study definition as ``study.json``;
* nested *child* runs (tag ``mlflow.parentRunId``) for every pretext job and every fine-tune
  trial, found again by a stable key (tags ``occstudy.key`` + ``occstudy.kind``) so that a resumed
  launch never duplicates them.

Every call goes through :class:`mlflow.tracking.MlflowClient` with an explicit run id, never the
global active-run stack of ``mlflow.start_run``: many trials log concurrently from different
processes and nodes, and a :class:`RunRef` (three strings) is all a Ray worker needs.

The embedded default store is ``sqlite:///<storage>/mlflow.db`` with artifacts beside it in
``<storage>/mlartifacts``. With a tracking server (``http(s)://...``) workers on other nodes log
to it and artifacts are proxied by the server (``mlflow server --artifacts-destination ...``).

Modules:

* :mod:`~occstudy.tracking.schema`: every tag, param, metric and artifact name (no MLflow, no
  torch);
* :mod:`~occstudy.tracking.store`: URIs, reachability checks, clients and run searches;
* :mod:`~occstudy.tracking.writer`: the study tracker and the logging helpers;
* :mod:`~occstudy.tracking.reader`: a study's runs read back as typed records, and artifacts,
  for ``occstudy report`` and ``occstudy status``.

MLflow is imported lazily, inside the functions, so that :func:`disable_telemetry` always runs
before MLflow is used and ``import occstudy.tracking`` stays cheap for code that never logs.
"""

from occstudy.tracking.schema import (
    ABLATION_ARTIFACT,
    BEST_VAL_ACC,
    CATEGORICAL_PARAMS,
    CHILD_KINDS,
    EXPERIMENT_KIND,
    FINETUNE_MASKS,
    OCCLUDED_AREA,
    PARAM_NAMES,
    PRETEXT_MASKS,
    REGION_SEP,
    RUN_STATUSES,
    TAG_CACHE_KEY,
    TAG_EXPERIMENT_KIND,
    TAG_KEY,
    TAG_KIND,
    TAG_LAUNCH,
    TAG_NOTE,
    TAG_PARENT,
    TAG_ROLE,
    TAG_RUN_NAME,
    TAG_STUDY,
    TRIALS_ARTIFACT,
    VAL_ACC,
    VAL_MACRO_F1,
    confusion_artifact,
    experiment_name,
    mask_artifact,
    method_params,
    method_tags,
    per_protocol,
    real_mask_picture_name,
    region_protocol,
    test_metric,
)
from occstudy.tracking.store import (
    RunRef,
    TrackingError,
    check_reachable,
    default_artifact_root,
    default_tracking_uri,
    disable_telemetry,
    find_runs,
    finish_by_key,
    redact,
    sqlite_path,
)
from occstudy.tracking.writer import (
    StudyTracker,
    confusion_figure,
    log_checkpoint,
    log_files,
    log_json,
    log_mask_picture,
    log_metrics,
    log_params,
    log_results,
    mask_figure,
    run_status,
    set_description,
    set_tags,
)

__all__ = [
    "ABLATION_ARTIFACT",
    "BEST_VAL_ACC",
    "CATEGORICAL_PARAMS",
    "CHILD_KINDS",
    "EXPERIMENT_KIND",
    "FINETUNE_MASKS",
    "OCCLUDED_AREA",
    "PARAM_NAMES",
    "PRETEXT_MASKS",
    "REGION_SEP",
    "RUN_STATUSES",
    "TAG_CACHE_KEY",
    "TAG_KEY",
    "TAG_KIND",
    "TAG_EXPERIMENT_KIND",
    "TAG_LAUNCH",
    "TAG_NOTE",
    "TAG_PARENT",
    "TAG_ROLE",
    "TAG_RUN_NAME",
    "TAG_STUDY",
    "TRIALS_ARTIFACT",
    "VAL_ACC",
    "VAL_MACRO_F1",
    "RunRef",
    "StudyTracker",
    "TrackingError",
    "check_reachable",
    "confusion_artifact",
    "confusion_figure",
    "default_artifact_root",
    "default_tracking_uri",
    "disable_telemetry",
    "experiment_name",
    "find_runs",
    "finish_by_key",
    "log_checkpoint",
    "log_files",
    "log_json",
    "log_mask_picture",
    "log_metrics",
    "log_params",
    "log_results",
    "mask_artifact",
    "mask_figure",
    "method_params",
    "method_tags",
    "per_protocol",
    "real_mask_picture_name",
    "redact",
    "region_protocol",
    "run_status",
    "set_description",
    "set_tags",
    "sqlite_path",
    "test_metric",
]
