"""The pretext cache: each distinct pretext stage is computed once and reused.

A pretext result is stored under ``<storage>/pretext-cache/<key>/`` where the key hashes the
settings the pretext stage depends on, the fingerprint of the unlabelled data and the seed. Every
fine-tune trial that needs it — across trials, variants that share it, reruns and other studies
using the same storage — loads it from there. A file lock (``fcntl.flock``, which also works on
NFS v4 and most shared file systems) makes sure two trials that need the same pretext never
compute it twice: the second waits and then reads the first one's result.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from occstudy.method import pretext_cache_key
from occstudy.train import load_checkpoint

RESULT_FILE = "pretext.pt"
WORK_FILE = "work.pt"
META_FILE = "meta.json"

__all__ = ["META_FILE", "RESULT_FILE", "WORK_FILE", "PretextCache", "pretext_cache_key"]


class PretextCache:
    """Pretext results in a folder (the study storage's ``pretext-cache``).

    Args:
        root: Cache folder; created when missing.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def entry(self, key: str) -> Path:
        return self.root / key

    def result_path(self, key: str) -> Path:
        return self.entry(key) / RESULT_FILE

    def work_path(self, key: str) -> Path:
        """Resumable checkpoint of a pretext stage being computed."""
        return self.entry(key) / WORK_FILE

    def has(self, key: str) -> bool:
        return self.result_path(key).is_file()

    def load(self, key: str, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The OccNet state dict of a finished pretext stage."""
        return dict(load_checkpoint(self.result_path(key), map_location)["model"])

    def meta(self, key: str) -> dict[str, Any]:
        path = self.entry(key) / META_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def publish(self, key: str, work: Path, meta: Mapping[str, Any]) -> None:
        """Turn a finished work checkpoint into the cached result (atomic rename)."""
        entry = self.entry(key)
        entry.mkdir(parents=True, exist_ok=True)
        (entry / (META_FILE + ".tmp")).write_text(json.dumps(dict(meta), indent=2, default=str))
        os.replace(entry / (META_FILE + ".tmp"), entry / META_FILE)
        if work.resolve() != self.result_path(key).resolve():
            tmp = entry / (RESULT_FILE + ".tmp")
            shutil.copyfile(work, tmp)
            os.replace(tmp, self.result_path(key))

    def invalidate(self, key: str) -> None:
        """Forget a result (``--no-cache``): the next request recomputes it."""
        for name in (RESULT_FILE, META_FILE, WORK_FILE):
            with contextlib.suppress(FileNotFoundError):
                (self.entry(key) / name).unlink()

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive lock on one entry, across processes and (on shared storage) nodes."""
        entry = self.entry(key)
        entry.mkdir(parents=True, exist_ok=True)
        with open(entry / ".lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
