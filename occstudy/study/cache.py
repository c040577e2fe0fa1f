"""The pretext cache: each distinct pretext stage is computed once and reused.

A pretext result is stored under ``<storage>/pretext-cache/<key>/`` where the key hashes the
settings the pretext stage depends on, the fingerprint of the unlabelled data and the seed. Every
fine-tune trial that needs it — across trials, variants that share it, reruns and other studies
using the same storage — loads it from there. A file lock (``fcntl.flock``, which also works on
NFS v4 and most shared file systems) makes sure two trials that need the same pretext never
compute it twice: the second waits and then reads the first one's result.

Each result carries the SHA-256 of its file in ``meta.json``. An entry whose file does not
match (truncated, overwritten, half-copied) is not a result: :meth:`PretextCache.heal` moves it
aside (``<key>.bad-<n>``, kept for inspection) so that the job is computed again, and
:meth:`PretextCache.load` refuses it with a message naming the entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from occstudy.method import pretext_cache_key
from occstudy.train import load_checkpoint, write_error

RESULT_FILE = "pretext.pt"
WORK_FILE = "work.pt"
META_FILE = "meta.json"

__all__ = [
    "META_FILE",
    "RESULT_FILE",
    "WORK_FILE",
    "CacheEntryError",
    "PretextCache",
    "pretext_cache_key",
]

#: meta.json field holding the SHA-256 of the result file.
CHECKSUM = "sha256"


class CacheEntryError(RuntimeError):
    """A pretext-cache entry exists but is not an intact result (the message names it)."""


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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

    def problem(self, key: str) -> str | None:
        """Why the entry's result is not intact (None when it is, or when there is none).

        Results written before checksums were recorded count as intact when they load.
        """
        path = self.result_path(key)
        if not path.is_file():
            return None
        want = self.meta(key).get(CHECKSUM)
        if want is None:
            try:
                load_checkpoint(path, "cpu")
            except Exception as exc:  # any unreadable file is a bad entry, said below
                return f"unreadable ({exc})"
            return None
        got = sha256_of(path)
        if got != want:
            size = path.stat().st_size
            return (
                f"checksum mismatch ({size} bytes, sha256 {got[:12]}..., expected {want[:12]}...)"
            )
        return None

    def heal(self, key: str) -> Path | None:
        """Move a bad entry aside (``<key>.bad-<n>`` next to it) so that it is computed again.

        Returns:
            Where the bad entry went, or None when the entry is intact or absent.
        """
        if self.problem(key) is None:
            return None
        n = 1
        while (self.root / f"{key}.bad-{n}").exists():
            n += 1
        target = self.root / f"{key}.bad-{n}"
        os.replace(self.entry(key), target)
        return target

    def load(self, key: str, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The OccNet state dict of a finished pretext stage.

        Raises:
            CacheEntryError: naming the entry when its file is missing or not intact.
        """
        path = self.result_path(key)
        if not path.is_file():
            raise CacheEntryError(f"pretext cache entry {self.entry(key)}: no result file")
        why = self.problem(key)
        if why is not None:
            raise CacheEntryError(
                f"pretext cache entry {self.entry(key)}: {why}; launch the study again with "
                "--resume: the bad entry is set aside and recomputed"
            )
        return dict(load_checkpoint(path, map_location)["model"])

    def meta(self, key: str) -> dict[str, Any]:
        path = self.entry(key) / META_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def publish(self, key: str, work: Path, meta: Mapping[str, Any]) -> None:
        """Turn a finished work checkpoint into the cached result (atomic rename)."""
        entry = self.entry(key)
        entry.mkdir(parents=True, exist_ok=True)
        result = self.result_path(key)
        tmp = entry / (RESULT_FILE + ".tmp")
        meta_tmp = entry / (META_FILE + ".tmp")
        copied = work.resolve() != result.resolve()
        try:
            if copied:
                shutil.copyfile(work, tmp)
            else:
                os.replace(result, tmp)
            meta = {**dict(meta), CHECKSUM: sha256_of(tmp)}
            meta_tmp.write_text(json.dumps(meta, indent=2, default=str))
            os.replace(meta_tmp, entry / META_FILE)
            os.replace(tmp, result)
        except OSError as exc:
            # The work checkpoint stays: a resumed job publishes it without training again.
            meta_tmp.unlink(missing_ok=True)
            if copied:
                tmp.unlink(missing_ok=True)
            elif tmp.exists():
                os.replace(tmp, result)
            raise write_error(result, exc, work.stat().st_size) from None

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
