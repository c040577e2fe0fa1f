"""Read a study's runs back from MLflow into typed records (for ``occstudy report`` and
``occstudy status``), and their artifacts.

One search per run kind (``study``, ``finetune``, ``pretext``) fetches every run with its
params, tags and latest metrics; artifacts (confusion JSON, mask PNGs) are read
only for the few runs a report shows, straight from the file system when the artifact store is
local (the sqlite default), else downloaded concurrently. Everything a report shows was logged
by the trials themselves (metrics, confusion matrices, mask pictures): a report loads no model
and no data set.
"""

from __future__ import annotations

import json
import math
import tempfile
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.request import url2pathname

from occstudy.tracking import schema, store

if TYPE_CHECKING:
    from mlflow.entities import Run

__all__ = [
    "MLFLOW_PARAMS",
    "ArtifactReader",
    "LaunchRecord",
    "PretextRecord",
    "ReportError",
    "StudyRuns",
    "TrialRecord",
    "collect_runs",
    "launch_statuses",
    "select_launches",
]

#: Numeric study parameter name -> MLflow param name (λ is ``lam`` in studies, ``lambda`` in
#: MLflow): the names :mod:`occstudy.tracking.writer` writes.
MLFLOW_PARAMS: dict[str, str] = {
    name: mlflow
    for name, mlflow in schema.PARAM_NAMES.items()
    if name not in schema.CATEGORICAL_PARAMS
}
#: Categorical study parameters, kept as text (MLflow param of the same name).
CATEGORICAL_PARAMS: tuple[str, ...] = schema.CATEGORICAL_PARAMS


class ReportError(RuntimeError):
    """The report cannot be made (no runs, unknown launch, unreadable store)."""


@dataclass(frozen=True)
class LaunchRecord:
    """The parent run of one study launch.

    Attributes:
        run_id: MLflow run id.
        launch: Launch name (``launch-N``).
        status: MLflow status.
        start_time: Start, ms since the epoch.
    """

    run_id: str
    launch: str
    status: str
    start_time: int


@dataclass(frozen=True)
class TrialRecord:
    """One fine-tune trial (an MLflow child run of kind ``finetune``).

    Attributes:
        run_id: MLflow run id.
        name: Trial name (``trial`` tag, else the run name).
        launch: Launch the trial belongs to (prefix of its ``occstudy.key``).
        status: ``FINISHED``, ``FAILED``, ``KILLED``, ``RUNNING``, ...
        dataset: Name of the fine-tune dataset (``fer2013``).
        variant: ``none``, ``ss``, ``mask`` or ``ss+mask``.
        seed: Seed (None when the run lacks it).
        fold: Fold of a k-fold study, else None.
        label_fraction: Fraction of the training labels used.
        params: Method parameters as numbers, by study name (``lam``, ``tau``, ``lr``,
            ``pretext_lr``).
        acc: Test accuracy per protocol, fractions in [0, 1].
        macro_f1: Test macro-F1 per protocol.
        mask_iou: Mask IoU per protocol (models with U_o, synthetic protocols).
        metrics: Every latest metric of the run (for search metrics other than val_acc).
        start_time: Start, ms since the epoch.
        artifact_uri: Root of the run's artifacts.
        cache_key: Key of the pretext result the trial started from (None for ``none``).
        choices: Categorical method parameters by study name (``arch``).
        occluded_area: Mean share of the image the protocol's occluder covers, per synthetic
            protocol, as the evaluation measured it on this trial's test images
            (``test.<p>.occluded_area``; absent in trials logged before it was recorded).
    """

    run_id: str
    name: str
    launch: str
    status: str
    dataset: str
    variant: str
    seed: int | None
    fold: int | None
    label_fraction: float | None
    params: Mapping[str, float]
    acc: Mapping[str, float]
    macro_f1: Mapping[str, float]
    mask_iou: Mapping[str, float]
    metrics: Mapping[str, float]
    start_time: int
    artifact_uri: str
    cache_key: str | None = None
    choices: Mapping[str, str] = field(default_factory=dict)
    occluded_area: Mapping[str, float] = field(default_factory=dict)

    @property
    def unit(self) -> str:
        """The replication unit: ``s<seed>``, or ``s<seed>/k<fold>`` in k-fold studies."""
        base = f"s{self.seed}"
        return base if self.fold is None else f"{base}/k{self.fold}"

    @property
    def complete(self) -> bool:
        """Whether the trial enters the statistics: FINISHED and with test results."""
        return self.status == "FINISHED" and bool(self.acc)


@dataclass(frozen=True)
class PretextRecord:
    """One pretext job (child run of kind ``pretext``), shared by the trials of its cache key."""

    run_id: str
    cache_key: str
    variant: str
    status: str
    artifact_uri: str


@dataclass(frozen=True)
class StudyRuns:
    """Every run of the launches a report covers.

    Attributes:
        study_name: The study.
        tracking_uri: Where the runs live.
        launches: The launches covered, oldest first.
        parents: Their parent runs (the last one receives the report's artifacts).
        trials: Fine-tune trials of those launches, oldest first.
        pretext: Pretext jobs by cache key (shared across launches).
    """

    study_name: str
    tracking_uri: str
    launches: tuple[str, ...]
    parents: tuple[LaunchRecord, ...]
    trials: tuple[TrialRecord, ...]
    pretext: Mapping[str, PretextRecord]


def _float(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _int(text: str | None) -> int | None:
    value = _float(text)
    return None if value is None else int(value)


def _trial(run: Run) -> TrialRecord:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    key = tags.get(schema.TAG_KEY, "")
    dataset = tags.get("dataset") or params.get("dataset", "?").split(":", 1)[0]
    numbers = {
        study_name: value
        for study_name, mlflow_name in MLFLOW_PARAMS.items()
        if (value := _float(params.get(mlflow_name))) is not None
    }
    return TrialRecord(
        run_id=run.info.run_id,
        name=tags.get("trial") or run.info.run_name or run.info.run_id,
        launch=key.split("/", 1)[0] if "/" in key else "",
        status=run.info.status,
        dataset=dataset,
        variant=tags.get("variant") or params.get("variant", "?"),
        seed=_int(params.get("seed", tags.get("seed"))),
        fold=_int(params.get("fold", tags.get("fold"))),
        label_fraction=_float(params.get("label_fraction", tags.get("label_fraction"))),
        params=numbers,
        acc=schema.per_protocol(metrics, "acc"),
        macro_f1=schema.per_protocol(metrics, "macro_f1"),
        mask_iou=schema.per_protocol(metrics, "mask_iou"),
        metrics={k: float(v) for k, v in metrics.items()},
        start_time=int(run.info.start_time or 0),
        artifact_uri=run.info.artifact_uri or "",
        cache_key=tags.get(schema.TAG_CACHE_KEY) or None,
        choices={name: params[name] for name in CATEGORICAL_PARAMS if params.get(name)},
        occluded_area=schema.per_protocol(metrics, schema.OCCLUDED_AREA),
    )


def select_launches(
    parents: Sequence[LaunchRecord], launch: str | None, known: Sequence[str] = ()
) -> tuple[str, ...]:
    """The launches a report covers.

    Args:
        parents: Parent runs of the study, oldest first.
        launch: A launch name, ``all``, or None for the last launch.
        known: Launch names in the study's ``launches.json`` (last = current), if any.

    Raises:
        ReportError: For an unknown launch name, or when the study has no launch at all.
    """
    names = list(dict.fromkeys([*known, *(p.launch for p in parents)]))
    if not names:
        raise ReportError("the study has no launch in MLflow yet: run it first")
    if launch is None:
        return (known[-1],) if known else (parents[-1].launch,)
    if launch == "all":
        return tuple(names)
    if launch not in names:
        raise ReportError(f"no launch {launch!r}; this study has: {', '.join(names)}, all")
    return (launch,)


def collect_runs(
    tracking_uri: str,
    study_name: str,
    *,
    launch: str | None = None,
    known_launches: Sequence[str] = (),
) -> StudyRuns:
    """Fetch a study's parent runs, fine-tune trials and pretext jobs from MLflow.

    Args:
        tracking_uri: Tracking URI.
        study_name: Study name (experiment ``occstudy/<name>``).
        launch: A launch, ``all``, or None for the last one.
        known_launches: The study's ``launches.json``, when the storage has it.

    Raises:
        ReportError: When the study has no runs, or for an unknown launch.
    """
    store.disable_telemetry()
    parents = tuple(
        LaunchRecord(
            run_id=r.info.run_id,
            launch=r.data.tags.get(schema.TAG_LAUNCH, ""),
            status=r.info.status,
            start_time=int(r.info.start_time or 0),
        )
        for r in store.find_runs(tracking_uri, study_name, kind="study")
    )
    if not parents:
        raise ReportError(
            f"study {study_name!r} has no runs in {store.redact(tracking_uri)}: run it first "
            "(or pass the --storage/--tracking-uri it was run with)"
        )
    launches = select_launches(parents, launch, known_launches)
    chosen = set(launches)
    trials = tuple(
        t
        for t in (_trial(r) for r in store.find_runs(tracking_uri, study_name, kind="finetune"))
        if t.launch in chosen
    )
    pretext: dict[str, PretextRecord] = {}
    for r in store.find_runs(tracking_uri, study_name, kind="pretext"):
        key = r.data.tags.get(schema.TAG_CACHE_KEY) or r.data.tags.get(schema.TAG_KEY, "")
        pretext[key] = PretextRecord(
            run_id=r.info.run_id,
            cache_key=key,
            variant=r.data.tags.get("variant", "?"),
            status=r.info.status,
            artifact_uri=r.info.artifact_uri or "",
        )
    return StudyRuns(
        study_name=study_name,
        tracking_uri=tracking_uri,
        launches=launches,
        parents=tuple(p for p in parents if p.launch in chosen),
        trials=trials,
        pretext=pretext,
    )


def launch_statuses(
    tracking_uri: str, study_name: str, launch: str
) -> tuple[dict[str, str], dict[str, str]]:
    """MLflow status of every fine-tune trial of one launch and of every pretext job.

    Returns:
        ``(trials, pretext)``: trial name (its key without the launch) -> status, and pretext
        key -> status.
    """
    trials: dict[str, str] = {}
    for run in store.find_runs(tracking_uri, study_name, kind="finetune"):
        key = run.data.tags.get(schema.TAG_KEY, "")
        if key.startswith(f"{launch}/"):
            trials[key.split("/", 1)[1]] = run.info.status
    pretext = {
        run.data.tags.get(schema.TAG_KEY, "?"): run.info.status
        for run in store.find_runs(tracking_uri, study_name, kind="pretext")
    }
    return trials, pretext


def _means_missing(exc: Exception) -> bool:
    """Whether an MLflow download error says the artifact does not exist."""
    code = getattr(exc, "error_code", "")
    text = str(exc).lower()
    return (
        code == "RESOURCE_DOES_NOT_EXIST"
        or any(s in text for s in ("does not exist", "not found", "no such file", "404"))
        or isinstance(exc, FileNotFoundError)
    )


class ArtifactReader:
    """Reads run artifacts: from disk for ``file:`` artifact stores, else through MLflow.

    Missing artifacts read as None: a trial that failed before logging its confusion matrices
    leaves a gap in the report, not an error. An artifact that exists but cannot be read (a
    failed download, a corrupt JSON file) also reads as None, and the reason is kept in
    :attr:`problems`, which the report shows.

    Args:
        tracking_uri: Tracking URI (needed to resolve ``mlflow-artifacts:`` locations).
        workers: Concurrent downloads for remote stores.
    """

    def __init__(self, tracking_uri: str, workers: int = 8) -> None:
        self.tracking_uri = tracking_uri
        self.workers = workers
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        #: One line per artifact that exists but could not be read (run artifact URI, name, why).
        self.problems: list[str] = []

    @staticmethod
    def local_root(artifact_uri: str) -> Path | None:
        """Folder of a ``file:`` artifact URI (or a plain path), None for remote stores."""
        parts = urllib.parse.urlsplit(artifact_uri)
        if parts.scheme == "file":
            return Path(url2pathname(parts.path))
        if parts.scheme == "" and artifact_uri:
            return Path(artifact_uri)
        return None

    def path(self, artifact_uri: str, artifact: str) -> Path | None:
        """Local file of one artifact (downloaded when remote), or None when it is missing."""
        root = self.local_root(artifact_uri)
        if root is not None:
            file = root / artifact
            return file if file.is_file() else None
        return self._download(artifact_uri, artifact)

    def _download(self, artifact_uri: str, artifact: str) -> Path | None:
        import mlflow.artifacts

        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="occstudy-report-")
        # One folder per run: the same artifact name occurs in every run.
        dst = Path(self._tmp.name) / urllib.parse.quote(artifact_uri, safe="")
        dst.mkdir(parents=True, exist_ok=True)
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{artifact_uri.rstrip('/')}/{artifact}",
                dst_path=str(dst),
                tracking_uri=self.tracking_uri,
            )
        except Exception as exc:
            # MLflow raises several exception types for "no such artifact": those mean a gap;
            # anything else (a server error, a refused connection) is reported.
            if not _means_missing(exc):
                self._problem(artifact_uri, artifact, f"{type(exc).__name__}: {exc}")
            return None
        file = Path(local)
        return file if file.is_file() else None

    def read_bytes(self, artifact_uri: str, artifact: str) -> bytes | None:
        """Bytes of one artifact, or None when it is missing."""
        file = self.path(artifact_uri, artifact)
        return None if file is None else file.read_bytes()

    def read_json(self, artifact_uri: str, artifact: str) -> Any:
        """Parsed JSON artifact, or None when it is missing or not JSON."""
        data = self.read_bytes(artifact_uri, artifact)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            self._problem(artifact_uri, artifact, f"not JSON ({exc})")
            return None

    def _problem(self, artifact_uri: str, artifact: str, why: str) -> None:
        self.problems.append(f"could not read {artifact} of {artifact_uri}: {why}")

    def read_many_json(self, items: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        """Many ``(artifact_uri, artifact)`` JSON files at once (concurrently when remote)."""
        todo = list(dict.fromkeys(items))
        if all(self.local_root(uri) is not None for uri, _ in todo):
            return {item: self.read_json(*item) for item in todo}
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            values = list(pool.map(lambda item: self.read_json(*item), todo))
        return dict(zip(todo, values, strict=True))

    def close(self) -> None:
        """Remove downloaded files."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
