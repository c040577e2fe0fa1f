"""Where a study keeps its files: the one description of the storage layout.

A storage root (``--storage``, default ``./occstudy-runs``; a shared folder on a cluster)
holds one folder per study and the pretext cache that every study in it shares::

    <storage>/
      pretext-cache/<key>/          pretext results (occstudy.study.cache)
      <study>/
        study.json                  the study definition of the last launch
        launches.json               launch names, oldest first (the last one is current)
        mlartifacts/                the embedded store's artifacts
        mlflow.db                   the embedded MLflow store (when no server is given;
                                    tracking.default_tracking_uri)
        report/                     the last report built
        tune/                       Ray Tune's experiment folders

The runner writes these; ``status``, ``report``, ``ui`` and the CLI read them through here.
Nothing in this module imports torch, Ray or MLflow.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from occstudy.tracking import default_tracking_uri

__all__ = ["DEFAULT_STORAGE", "StudyLayout", "storage_problem"]

#: Storage root when a launch names none (relative to the working directory).
DEFAULT_STORAGE = "occstudy-runs"
PRETEXT_CACHE = "pretext-cache"
STUDY_FILE = "study.json"
LAUNCHES_FILE = "launches.json"
MLFLOW_DB = "mlflow.db"
REPORT_DIR = "report"
ARTIFACTS_DIR = "mlartifacts"


def storage_problem(storage: str | os.PathLike[str] | None) -> str | None:
    """Why ``storage`` cannot be a storage root, or None.

    The storage root must be a folder every node sees (a local disk on one machine; NFS,
    EFS, a CephFS or a mounted bucket on a cluster): the pretext cache takes file locks so that
    two trials never compute the same pretext twice, checkpoints are renamed into place
    atomically, and the embedded MLflow store is a SQLite file. An object store URI offers none
    of these, so ``s3://``, ``gs://``... are refused here rather than half-working.
    """
    if storage is None:
        return None
    text = os.fspath(storage)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        return (
            f"--storage {text}: a {scheme}:// URI is not supported; the storage root must be a "
            "folder every node sees (the pretext cache locks files, checkpoints are renamed "
            "into place): use a shared file system, or mount the bucket (e.g. s3fs, mountpoint-s3)"
        )
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        return f"--storage {text}: not a folder"
    return None


@dataclass(frozen=True)
class StudyLayout:
    """The files of one study in one storage root.

    Attributes:
        storage: The storage root, absolute.
        name: The study's name (its folder's name).
    """

    storage: Path
    name: str

    def __post_init__(self) -> None:
        # The study's folder must lie inside the storage root, whatever name a user typed.
        if (
            not self.name
            or self.name in (".", "..")
            or "/" in self.name
            or "\\" in self.name
            or "\x00" in self.name
        ):
            raise ValueError(
                f"study name {self.name!r}: not a folder name (it would point outside the "
                f"storage root {self.storage})"
            )

    @classmethod
    def of(cls, name: str, storage: str | os.PathLike[str] | None = None) -> StudyLayout:
        """The layout of study ``name`` under ``storage`` (default :data:`DEFAULT_STORAGE`).

        Raises:
            ValueError: for a URI (``s3://...``) or a path that is a file: the storage root is
                a folder (see :func:`storage_problem`).
        """
        why = storage_problem(storage)
        if why is not None:
            raise ValueError(why)
        return cls(Path(storage or DEFAULT_STORAGE).expanduser().resolve(), name)

    @property
    def study_dir(self) -> Path:
        return self.storage / self.name

    @property
    def cache_dir(self) -> Path:
        """The pretext cache, shared by every study of the storage root."""
        return self.storage / PRETEXT_CACHE

    @property
    def study_file(self) -> Path:
        return self.study_dir / STUDY_FILE

    @property
    def report_dir(self) -> Path:
        return self.study_dir / REPORT_DIR

    @property
    def mlflow_db(self) -> Path:
        return self.study_dir / MLFLOW_DB

    def tracking_uri(self, explicit: str | None = None) -> str:
        """``explicit``, else ``$MLFLOW_TRACKING_URI``, else the study's embedded store."""
        return (
            explicit
            or os.environ.get("MLFLOW_TRACKING_URI")
            or default_tracking_uri(self.study_dir)
        )

    def artifact_root(self, tracking_uri: str) -> str | None:
        """Where the embedded store keeps artifacts (``<study>/mlartifacts``); None for a
        tracking server, which decides itself."""
        if tracking_uri.startswith("sqlite:"):
            return (self.study_dir / ARTIFACTS_DIR).as_uri()
        return None

    def launches(self) -> list[str]:
        """Launch names, oldest first; empty when the study never ran or the file is unreadable
        (readers: a report or a status shows what MLflow holds either way)."""
        try:
            return self._read_launches()
        except ValueError:
            return []

    def _read_launches(self) -> list[str]:
        path = self.study_dir / LAUNCHES_FILE
        if not path.is_file():
            return []
        try:
            launches = json.loads(path.read_text())
        except ValueError as exc:
            raise ValueError(f"{path}: not a JSON list of launch names ({exc})") from None
        if not isinstance(launches, list):
            raise ValueError(f"{path}: not a JSON list of launch names")
        return [str(x) for x in launches]

    def last_launch(self) -> str | None:
        launches = self.launches()
        return launches[-1] if launches else None

    def start_launch(self, resume: bool) -> str:
        """``launch-N``: a new N per fresh launch (recorded), the last one again on ``resume``.

        Raises:
            ValueError: when the launches file exists but cannot be read; numbering from 1
                again would give a new launch the name (and MLflow run keys) of an old one.
        """
        launches = self._read_launches()
        if resume and launches:
            return launches[-1]
        name = f"launch-{len(launches) + 1}"
        launches.append(name)
        self.study_dir.mkdir(parents=True, exist_ok=True)
        (self.study_dir / LAUNCHES_FILE).write_text(json.dumps(launches))
        return name
