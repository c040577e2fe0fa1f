"""Where the runs live: tracking URIs, reachability checks, one MLflow client per URI, and the
searches that find a study's runs again.

MLflow is imported lazily, inside the functions, so that :func:`disable_telemetry` always runs
before MLflow is used and importing this module stays cheap.
"""

from __future__ import annotations

import base64
import functools
import logging
import math
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from occstudy.tracking.schema import RUN_STATUSES, TAG_KEY, TAG_KIND, experiment_name

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)


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
    # MLflow's client retries a failed request 7 times with backoff, silently, for about four
    # minutes; occstudy's clients wait for a server that stopped answering themselves (see
    # :func:`tracking_wait_s`) and say so while they wait.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


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


def sqlite_path(uri: str) -> Path | None:
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
    path = sqlite_path(uri)
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


#: Tracking URI schemes MLflow serves (a database scheme may carry a driver: ``+psycopg2``).
_SCHEMES = (
    "http",
    "https",
    "sqlite",
    "file",
    "postgresql",
    "mysql",
    "mssql",
    "databricks",
    "databricks-uc",
    "uc",
)


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any training, when the tracking store cannot be used.

    Args:
        uri: Tracking URI: ``http(s)://...`` (a server), ``sqlite:///...`` or ``file:...``.
            Other schemes (``postgresql://`` and friends) are left to MLflow.
        timeout_s: Timeout of each HTTP request.

    Raises:
        TrackingError: With a message naming the (redacted) URI and the reason, or the bad
            ``OCCSTUDY_TRACKING_WAIT_S`` value.
    """
    tracking_wait_s()  # a bad value fails now, not at the first call that waits
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    base = scheme.split("+", 1)[0]  # postgresql+psycopg2 -> postgresql
    if scheme and base not in _SCHEMES and len(scheme) > 1:  # "C:\\..." is a Windows path
        raise TrackingError(
            f"--tracking-uri {redact(uri)!r}: unsupported scheme {scheme!r} (use http(s)://, "
            "sqlite:///, file: or a folder)"
        )
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

#: Environment variable: how long (seconds) a tracking call waits for a store that stopped
#: answering before it gives up (default :data:`DEFAULT_TRACKING_WAIT_S`; 0: do not wait).
TRACKING_WAIT_ENV = "OCCSTUDY_TRACKING_WAIT_S"
DEFAULT_TRACKING_WAIT_S = 900.0
# Longest pause between two attempts, and between two "still waiting" messages.
_MAX_PAUSE_S = 30.0
_REPEAT_MESSAGE_S = 60.0

# MLflow's REST client turns a refused or dropped connection, a timeout, and a 429/5xx answer
# (once its own retries, which occstudy turns off, are spent) into these messages.
_UNAVAILABLE = re.compile(
    r"^API request to \S+ failed with (?:timeout )?exception"
    r"|^API request to endpoint \S+ failed with error code (?:429|5\d\d) "
)


# The gist of such a message, first match wins: (pattern with one group, how to show it).
_REASONS = (
    (r"\[Errno -?\d+\] ([^\"')]+)", "{}"),
    (r"(Read timed out)", "{}"),
    (r"error code (\d+)", "HTTP {}"),
)


def tracking_wait_s() -> float:
    """How long a tracking call waits for a store that stopped answering (``OCCSTUDY_TRACKING_WAIT_S``).

    Raises:
        TrackingError: The variable is not a finite number >= 0.
    """
    raw = os.environ.get(TRACKING_WAIT_ENV, "")
    if not raw.strip():
        return DEFAULT_TRACKING_WAIT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise TrackingError(f"{TRACKING_WAIT_ENV}={raw!r}: must be a number of seconds >= 0")
    return value


def unavailable_reason(exc: BaseException) -> str | None:
    """Why a tracking call failed, when the failure means "the store is not answering now"
    (worth waiting for); None for any other failure (a bad request, a missing run, ...)."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException) or not _UNAVAILABLE.search(str(exc)):
        return None
    message = str(exc)
    # The interesting part of "... (Caused by NewConnectionError(...: [Errno 111] Connection
    # refused"))" or "... failed with error code 503 != 200. Response body: ...".
    for pattern, template in _REASONS:
        found = re.search(pattern, message)
        if found:
            return template.format(found.group(1))
    return message.split(" failed with ", 1)[-1][:120]


class _PatientClient:
    """An :class:`~mlflow.tracking.MlflowClient` whose calls wait for a store that stopped
    answering (a restarted or overloaded server), saying so while they wait, for up to
    :func:`tracking_wait_s`; then they raise :class:`TrackingError` naming the store and call.

    A long study must not lose a trial (or its metrics) because the tracking server restarted:
    the trial waits, its metrics are logged once the server is back.
    """

    def __init__(self, client: MlflowClient, tracking_uri: str) -> None:
        self._inner = client
        self._uri = tracking_uri

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return _patiently(attr, name, self._uri, args, kwargs)

        return call


def _patiently(
    fn: Callable[..., Any], name: str, uri: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    limit = tracking_wait_s()
    start = time.monotonic()
    pause = 1.0
    told_at: float | None = None
    while True:
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            reason = unavailable_reason(exc)
            if reason is None:
                raise
            waited = time.monotonic() - start
            if waited + pause > limit:
                raise TrackingError(
                    f"MLflow tracking store {redact(uri)} did not answer {name} for "
                    f"{waited:.0f} s ({reason}); gave up ({TRACKING_WAIT_ENV}={limit:g} s)"
                ) from None
            if told_at is None or time.monotonic() - told_at >= _REPEAT_MESSAGE_S:
                log.warning(
                    "MLflow tracking store %s is not answering (%s); %s waits and retries, "
                    "for up to %.0f s more (%s)",
                    redact(uri),
                    reason,
                    name,
                    limit - waited,
                    TRACKING_WAIT_ENV,
                )
                told_at = time.monotonic()
            time.sleep(pause)
            pause = min(2 * pause, _MAX_PAUSE_S)
            continue
        if told_at is not None:
            log.warning(
                "MLflow tracking store %s answers again after %.0f s; %s went through",
                redact(uri),
                time.monotonic() - start,
                name,
            )
        return result


_clients: dict[str, MlflowClient] = {}
_clients_lock = threading.Lock()


def _client(tracking_uri: str) -> MlflowClient:
    """One client per URI and process (building a sqlite store checks its schema: slow), whose
    calls wait for a store that stopped answering (see :class:`_PatientClient`)."""
    disable_telemetry()
    with _clients_lock:
        client = _clients.get(tracking_uri)
        if client is None:
            from mlflow.tracking import MlflowClient

            client = cast("MlflowClient", _PatientClient(MlflowClient(tracking_uri), tracking_uri))
            _clients[tracking_uri] = client
        return client


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
