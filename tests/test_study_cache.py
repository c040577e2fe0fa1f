"""The pretext cache (occstudy.study.cache): results carry a checksum; a damaged entry is
refused with its name, set aside and then computed again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from occstudy.study.cache import CHECKSUM, META_FILE, CacheEntryError, PretextCache
from occstudy.train import save_checkpoint


def _publish(cache: PretextCache, key: str, tmp_path: Path) -> dict[str, torch.Tensor]:
    net = nn.Linear(4, 3)
    work = tmp_path / f"{key}-work.pt"
    save_checkpoint(
        work, model=net, optimizer=None, epoch=0, config={"k": key}, data_fingerprint="d"
    )
    cache.publish(key, work, {"key": key})
    return net.state_dict()


def test_published_results_carry_a_checksum_and_load(tmp_path: Path) -> None:
    cache = PretextCache(tmp_path / "cache")
    state = _publish(cache, "k1", tmp_path)
    assert cache.has("k1") and cache.problem("k1") is None
    assert len(json.loads((cache.entry("k1") / META_FILE).read_text())[CHECKSUM]) == 64
    loaded = cache.load("k1")
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert cache.heal("k1") is None and cache.has("k1")  # intact: left alone


def test_a_truncated_entry_is_refused_set_aside_and_recomputed(tmp_path: Path) -> None:
    cache = PretextCache(tmp_path / "cache")
    _publish(cache, "k2", tmp_path)
    path = cache.result_path("k2")
    path.write_bytes(path.read_bytes()[:100])  # a half-written copy
    why = cache.problem("k2")
    assert why is not None and why.startswith("checksum mismatch (100 bytes")
    with pytest.raises(CacheEntryError, match=r"pretext cache entry .*k2: checksum mismatch"):
        cache.load("k2")
    moved = cache.heal("k2")
    assert moved == cache.root / "k2.bad-1" and (moved / "pretext.pt").stat().st_size == 100
    assert not cache.has("k2")  # the job will be computed again
    _publish(cache, "k2", tmp_path)
    assert cache.problem("k2") is None
    cache.result_path("k2").write_bytes(b"junk")
    assert cache.heal("k2") == cache.root / "k2.bad-2"  # the first one is kept


def test_entries_from_before_checksums(tmp_path: Path) -> None:
    cache = PretextCache(tmp_path / "cache")
    _publish(cache, "old", tmp_path)
    meta = cache.entry("old") / META_FILE
    meta.write_text(json.dumps({"key": "old"}))  # written by an older occstudy: no checksum
    assert cache.problem("old") is None and cache.load("old")
    cache.result_path("old").write_bytes(b"not a checkpoint")
    assert (cache.problem("old") or "").startswith("unreadable")
    with pytest.raises(CacheEntryError, match="no result file"):
        cache.load("absent")
