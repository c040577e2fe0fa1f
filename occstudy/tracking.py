"""MLflow naming and logging: the one module of occstudy that knows MLflow.

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

MLflow is imported lazily, inside the functions, so that :func:`disable_telemetry` always runs
before MLflow is used and ``import occstudy.tracking`` stays cheap for code that never logs.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import math
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from occstudy.method import PARAMETERS, mlflow_param_name

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from occstudy.method import MethodConfig

__all__ = [
    "ABLATION_ARTIFACT",
    "CATEGORICAL_PARAMS",
    "FINETUNE_MASKS",
    "PRETEXT_MASKS",
    "TRIALS_ARTIFACT",
    "PARAM_NAMES",
    "RUN_STATUSES",
    "RunRef",
    "StudyTracker",
    "TrackingError",
    "check_reachable",
    "confusion_artifact",
    "default_artifact_root",
    "default_tracking_uri",
    "disable_telemetry",
    "experiment_name",
    "find_runs",
    "log_checkpoint",
    "log_json",
    "log_mask_picture",
    "log_metrics",
    "log_params",
    "log_results",
    "mask_artifact",
    "method_params",
    "method_tags",
    "real_mask_picture_name",
    "redact",
    "run_status",
    "set_tags",
]

log = logging.getLogger(__name__)

#: Terminal statuses accepted by :meth:`StudyTracker.finish`.
RUN_STATUSES: tuple[str, ...] = ("FINISHED", "FAILED", "KILLED")

# Tag names. The occstudy.* tags are how runs are found again; keep them stable across versions.
TAG_ROLE = "occstudy.role"
TAG_KIND = "occstudy.kind"
TAG_KEY = "occstudy.key"
TAG_LAUNCH = "occstudy.launch"
TAG_STUDY = "occstudy.study"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"

CHILD_KINDS: tuple[str, ...] = ("pretext", "finetune")

# Largest number of samples drawn in a mask picture: more columns become unreadable.
_MAX_MASK_COLUMNS = 16


class TrackingError(RuntimeError):
    """The tracking store cannot be used (unreachable server, unwritable folder, bad argument)."""


@dataclass(frozen=True)
class RunRef:
    """Address of one MLflow run: small and picklable, sent to Ray workers.

    Attributes:
        run_id: MLflow run id.
        experiment_id: Id of the study's experiment.
        tracking_uri: Where the run lives (may hold credentials: print it only through
            :func:`redact`).
    """

    run_id: str
    experiment_id: str
    tracking_uri: str


# --------------------------------------------------------------------------------------------
# URIs, telemetry, reachability


def disable_telemetry() -> None:
    """Turn MLflow's usage telemetry (and its run-URL printing) off, unless the user decided.

    MLflow 3 reads ``MLFLOW_DISABLE_TELEMETRY`` (and the cross-tool ``DO_NOT_TRACK``) each time it
    would send an event, so setting them before the first client call is enough. ``setdefault``
    leaves an explicit user choice alone. Environment variables are inherited by Ray workers
    started afterwards, and every helper here calls this again in its own process anyway.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    # Ending a run on a server prints "View run ... at <tracking uri>" to stdout: noise from
    # every Ray trial, and the URI printed as given, credentials included.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def default_tracking_uri(storage: str | Path) -> str:
    """Embedded store of a study: ``sqlite:///<absolute storage>/mlflow.db``.

    Args:
        storage: The study's storage folder.

    Returns:
        A SQLAlchemy sqlite URI (four slashes for an absolute POSIX path).
    """
    return f"sqlite:///{(Path(storage).expanduser().resolve() / 'mlflow.db').as_posix()}"


def default_artifact_root(storage: str | Path) -> str:
    """Artifact root beside the embedded store: ``file:///<absolute storage>/mlartifacts``."""
    return (Path(storage).expanduser().resolve() / "mlartifacts").as_uri()


_SECRET_QUERY_KEYS = re.compile(r"(pass|pwd|secret|token|key|auth|credential)", re.IGNORECASE)


def redact(uri: str) -> str:
    """Strip credentials from a URI so it can be printed or logged.

    Removes ``user:password@`` and blanks query values whose names suggest a secret
    (``token``, ``password``, ``key``, ...). Anything that is not a URI is returned unchanged.

    Args:
        uri: Any string, typically a tracking URI.

    Returns:
        The URI without credentials.
    """
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        # Malformed URIs still must not leak a password: cut anything between // and @.
        return re.sub(r"//[^/@\s]*@", "//", uri)
    netloc = parts.netloc.rsplit("@", 1)[-1] if "@" in parts.netloc else parts.netloc
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = urllib.parse.urlencode(
            [(k, "***" if _SECRET_QUERY_KEYS.search(k) else v) for k, v in pairs], safe="*"
        )
    if netloc == parts.netloc and query == parts.query:
        return uri
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _sqlite_path(uri: str) -> Path | None:
    """File of a ``sqlite:///`` URI, or None for in-memory databases."""
    rest = uri[len("sqlite://") :]
    if not rest.startswith("/"):
        raise TrackingError(f"Cannot read the sqlite URI {redact(uri)!r}: expected sqlite:///PATH.")
    path = rest[1:].split("?", 1)[0]
    if path in ("", ":memory:"):
        return None
    return Path(path)


def _unreachable(uri: str, reason: str) -> TrackingError:
    return TrackingError(
        f"MLflow tracking server at {redact(uri)} is not reachable: {reason}. "
        "Start it, or drop --tracking-uri to use the local store."
    )


def _auth_header(uri: str) -> tuple[str, dict[str, str]]:
    """URI without user info, and a Basic auth header from it or MLflow's env variables."""
    parts = urllib.parse.urlsplit(uri)
    headers: dict[str, str] = {}
    user, password = parts.username, parts.password
    if user is None:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user is not None:
        raw = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(raw.encode()).decode()
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    bare = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return bare, headers


def _check_http(uri: str, timeout_s: float) -> None:
    base, headers = _auth_header(uri)
    # One plain request per endpoint, no retries: MLflow's own client would retry with backoff
    # for minutes before saying anything, and the study must stop quickly and clearly instead.
    # /health answers without authentication; the REST search proves it is an MLflow tracking
    # server (not an artifacts-only one, or another service on that port) that accepts us.
    search = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
    context = None
    if base.startswith("https:"):
        # Same TLS settings as MLflow's own client, so a server it accepts passes here too.
        import ssl

        if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            context = ssl._create_unverified_context()
        else:
            cafile = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None
            context = ssl.create_default_context(cafile=cafile)
    for url in (f"{base}/health", search):
        req = urllib.request.Request(url, headers=headers, method="GET")
        try:
            with urllib.request.urlopen(req, timeout=timeout_s, context=context) as resp:
                resp.read(1024)
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise TrackingError(
                    f"MLflow tracking server at {redact(uri)} refused the credentials "
                    f"(HTTP {e.code}). Set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD "
                    "or MLFLOW_TRACKING_TOKEN."
                ) from None
            raise _unreachable(
                uri, f"GET {redact(url)} answered HTTP {e.code} {e.reason}"
            ) from None
        except urllib.error.URLError as e:
            raise _unreachable(uri, str(e.reason)) from None
        except (TimeoutError, OSError) as e:
            raise _unreachable(uri, f"{type(e).__name__}: {e}" if str(e) else repr(e)) from None


def _check_sqlite(uri: str) -> None:
    path = _sqlite_path(uri)
    if path is None:
        return
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrackingError(
            f"Cannot create the folder {folder} of the MLflow store {redact(uri)}: {e}."
        ) from None
    target = path if path.exists() else folder
    if not os.access(target, os.W_OK):
        raise TrackingError(f"The MLflow store {redact(uri)} is not writable ({target}).")


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any training, when the tracking store cannot be used.

    Args:
        uri: Tracking URI: ``http(s)://...`` (a server), ``sqlite:///...`` or ``file:...``.
            Other schemes (``postgresql://`` and friends) are left to MLflow.
        timeout_s: Timeout of each HTTP request.

    Raises:
        TrackingError: With a message naming the (redacted) URI and the reason.
    """
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        _check_http(uri, timeout_s)
    elif scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme in ("file", ""):
        folder = Path(urllib.parse.urlsplit(uri).path if scheme else uri)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"Cannot create the MLflow store {redact(uri)}: {e}.") from None
        if not os.access(folder, os.W_OK):
            raise TrackingError(f"The MLflow store {redact(uri)} is not writable.")


# --------------------------------------------------------------------------------------------
# Clients and small helpers

_clients: dict[str, MlflowClient] = {}
_clients_lock = threading.Lock()


def _client(tracking_uri: str) -> MlflowClient:
    """One client per URI and process: building a sqlite store checks its schema (slow)."""
    disable_telemetry()
    with _clients_lock:
        client = _clients.get(tracking_uri)
        if client is None:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=tracking_uri)
            _clients[tracking_uri] = client
        return client


def experiment_name(study_name: str) -> str:
    """MLflow experiment name of a study."""
    return f"occstudy/{study_name}"


def _quote(value: str) -> str:
    """Quote a string literal for an MLflow filter string."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"A tracking key cannot hold both quote characters: {value!r}")


def _tag_filter(tags: Mapping[str, str]) -> str:
    # Backticks because the tag names hold dots.
    return " and ".join(f"tags.`{k}` = {_quote(v)}" for k, v in tags.items())


def _search_all(
    client: MlflowClient, experiment_id: str, filter_string: str, order_by: list[str]
) -> list[Run]:
    runs: list[Run] = []
    token: str | None = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string, max_results=1000, order_by=order_by, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


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
            db = _sqlite_path(tracking_uri)
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
# Artifact names (written by the trials and the driver, read back by the report)

#: Mask picture of a pretext job (synthetic object occluders), under ``masks/``.
PRETEXT_MASKS = "pretext-objects.png"
#: Mask picture of a fine-tune trial (synthetic object occluders), under ``masks/``.
FINETUNE_MASKS = "finetune-objects.png"
#: A launch's finished trials and its ablation table (artifacts of the launch's parent run).
TRIALS_ARTIFACT = "trials.json"
ABLATION_ARTIFACT = "ablation.json"


def mask_artifact(name: str) -> str:
    """Artifact path of a mask picture called ``name`` (``masks/<name>``)."""
    return f"masks/{name}"


def confusion_artifact(protocol: str, ext: str = "json") -> str:
    """Artifact path of a trial's confusion matrix on ``protocol`` (``json`` or ``png``)."""
    return f"confusion/{protocol}.{ext}"


# --------------------------------------------------------------------------------------------
# The params and tags of a run of the method (the names every study's runs share)

#: MLflow param name of each method parameter that has one of its own (λ is ``lam`` in
#: configs and studies, ``lambda`` in MLflow), from :data:`occstudy.method.PARAMETERS`.
PARAM_NAMES: dict[str, str] = {name: mlflow_param_name(name) for name in PARAMETERS}
#: Categorical method parameters, logged (and read back) as text.
CATEGORICAL_PARAMS: tuple[str, ...] = tuple(n for n, p in PARAMETERS.items() if p.categorical)
#: MethodConfig fields logged under their own name, after the parameters.
_CONFIG_PARAMS: tuple[str, ...] = (
    "label_fraction",
    "epochs",
    "pretext_epochs",
    "batch_size",
    "image_size",
    "recipe",
    "stem",
    "optimizer",
    "weight_decay",
    "schedule",
    "warmup_epochs",
    "label_smoothing",
    "augment",
    "tta_flip",
    "pretext_policy",
    "finetune_policy",
    "balanced",
)


def _fold(config: MethodConfig) -> int | None:
    fold = dict(config.data.options).get("fold")
    return None if fold is None else int(fold)


def method_params(config: MethodConfig) -> dict[str, Any]:
    """MLflow params of a run: the same names in every run of every study (``fold`` only in
    k-fold studies, ``gather_negatives`` only where it is on)."""
    fold = _fold(config)
    return {
        **({"fold": fold} if fold is not None else {}),
        "variant": config.variant,
        "seed": config.seed,
        **{PARAM_NAMES[name]: getattr(config, name) for name in PARAMETERS},
        "dataset": str(config.data),
        "pretext_data": ",".join(config.pretext_data),
        **{name: getattr(config, name) for name in _CONFIG_PARAMS},
        **({"gather_negatives": True} if config.gather_negatives else {}),
    }


def method_tags(config: MethodConfig, trial: str) -> dict[str, str]:
    """Tags of a run that the MLflow UI filters on (``tags.variant = 'ss'``)."""
    fold = _fold(config)
    return {
        **({"fold": str(fold)} if fold is not None else {}),
        "dataset": config.data.name,
        "variant": config.variant,
        "seed": str(config.seed),
        "label_fraction": str(config.label_fraction),
        "trial": trial,
    }


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


def log_json(run: RunRef, obj: Any, artifact_file: str) -> None:
    """Log an object as a JSON artifact (dataclasses, paths, tensors are converted)."""
    _client(run.tracking_uri).log_text(run.run_id, _to_json(obj), artifact_file)


def log_checkpoint(run: RunRef, path: str | Path, artifact_path: str = "checkpoints") -> None:
    """Log a checkpoint file (e.g. ``finetune/best.pt``) under ``artifact_path``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"No checkpoint to log at {p}")
    _client(run.tracking_uri).log_artifact(run.run_id, str(p), artifact_path)


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
        metrics[f"test.{p}.acc"] = float(r["acc"])
        metrics[f"test.{p}.macro_f1"] = float(r["macro_f1"])
        if r.get("mask_iou") is not None:
            metrics[f"test.{p}.mask_iou"] = float(r["mask_iou"])
        for k, v in (r.get("extra") or {}).items():
            metrics[f"test.{p}.{k}"] = float(v)
        regions = r.get("regions") or {}
        for region, m in regions.items():
            key = f"test.{p}.region.{_metric_key(str(region))}"
            metrics[f"{key}.acc"] = float(m["acc"])
            metrics[f"{key}.n"] = float(m["n"])
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


def real_mask_picture_name(test_set: str) -> str:
    """File name (under ``masks/``) of a trial's predicted masks on a real-occlusion test set:
    ``real-<set>.png``, the set's name (its ``test.<set>.*`` protocol) made file-safe.

    The fine-tune trial logs it (:func:`occstudy.study.worker.log_real_mask_examples`) and the
    report reads it back under this name.
    """
    return f"real-{re.sub(r'[^A-Za-z0-9_.-]', '_', test_set)}.png"


def find_runs(
    tracking_uri: str, study_name: str, *, kind: str | None = None, status: str | None = None
) -> list[Run]:
    """Runs of a study, oldest first, for ``occstudy status`` and reports.

    Args:
        tracking_uri: Tracking URI.
        study_name: Study name.
        kind: ``study`` (parent runs), ``pretext`` or ``finetune``; all runs when None.
        status: ``RUNNING``, ``FINISHED``, ``FAILED``, ``KILLED``; any when None.

    Returns:
        The matching runs (none when the study has no experiment yet).
    """
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment_name(study_name))
    if exp is None:
        return []
    clauses = []
    if kind is not None:
        clauses.append(_tag_filter({TAG_KIND: kind}))
    if status is not None:
        clauses.append(f"attributes.status = {_quote(status)}")
    return _search_all(
        client,
        exp.experiment_id,
        " and ".join(clauses),
        ["attributes.start_time ASC", "attributes.run_id ASC"],
    )


def finish_by_key(tracking_uri: str, study_name: str, *, kind: str, key: str, status: str) -> bool:
    """Terminate the child run with this key if it is still RUNNING (a trial that Tune stopped
    or lost before the trial itself could). Returns whether a run was changed."""
    if status not in RUN_STATUSES:
        raise ValueError(f"status must be one of {RUN_STATUSES}, not {status!r}")
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment_name(study_name))
    if exp is None:
        return False
    found = client.search_runs(
        [exp.experiment_id], _tag_filter({TAG_KEY: key, TAG_KIND: kind}), max_results=1
    )
    if not found or found[0].info.status != "RUNNING":
        return False
    client.set_terminated(found[0].info.run_id, status=status)
    return True
