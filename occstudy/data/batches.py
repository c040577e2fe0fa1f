"""In-memory batch iteration (no DataLoader), deterministic and shardable for DDP."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from .errors import DataError
from .faceset import FaceSet


def num_batches(n: int, batch_size: int, drop_last: bool, world_size: int = 1) -> int:
    """Number of batches each rank gets from :func:`iterate_batches` for ``n`` images.

    Args:
        n: Images per epoch (``len(ds)``).
        batch_size: Images per batch.
        drop_last: Whether the last incomplete batch is dropped.
        world_size: Number of ranks sharing the epoch.

    Returns:
        Batches per rank per epoch.
    """
    if batch_size < 1 or world_size < 1 or n < 0:
        raise DataError(f"bad batching: n={n}, batch_size={batch_size}, world_size={world_size}")
    per_rank = math.ceil(n / world_size)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # Mix seed and epoch so (seed, epoch) pairs never collide for realistic values.
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63))


def epoch_order(
    labels: torch.Tensor, *, shuffle: bool, seed: int, epoch: int, balanced: bool
) -> torch.Tensor:
    """Indices of one epoch before sharding.

    Args:
        labels: int64 ``(N,)``.
        shuffle: Random permutation (else ``0..N-1``); ignored when ``balanced``.
        seed: Run seed.
        epoch: Epoch number.
        balanced: Class-balanced sampling with replacement (weights ``1 / class count``).

    Returns:
        int64 ``(N,)`` indices.
    """
    n = labels.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.int64)
    g = _epoch_generator(seed, epoch)
    if balanced:
        # -1 (unlabelled) is treated as its own class rather than rejected.
        _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        weights = 1.0 / counts[inverse].to(torch.float64)
        return torch.multinomial(weights, n, replacement=True, generator=g)
    if shuffle:
        return torch.randperm(n, generator=g)
    return torch.arange(n)


def shard(indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's part of an epoch, padded like ``DistributedSampler``.

    Args:
        indices: int64 ``(N,)`` epoch order.
        rank: Rank in ``[0, world_size)``.
        world_size: Number of ranks.

    Returns:
        int64 ``(ceil(N / world_size),)``; the epoch is padded by repeating its start so
        every rank gets the same number of items.
    """
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
    if world_size == 1 or indices.numel() == 0:
        return indices
    total = math.ceil(indices.numel() / world_size) * world_size
    pad = total - indices.numel()
    if pad:
        reps = math.ceil(pad / indices.numel())
        indices = torch.cat([indices, indices.repeat(reps)[:pad]])
    return indices[rank:total:world_size]


def iterate_batches(
    ds: FaceSet,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    balanced: bool = False,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield the batches of one epoch; order is a pure function of ``(seed, epoch)``.

    Args:
        ds: The face set.
        batch_size: Images per batch.
        shuffle: Shuffle the epoch.
        seed: Run seed.
        epoch: Epoch number (different order every epoch).
        balanced: Class-balanced sampling with replacement, ``len(ds)`` samples per epoch.
        drop_last: Drop this rank's last incomplete batch.
        rank: This process's rank.
        world_size: Number of processes sharing the epoch.

    Yields:
        ``(images, labels)``: uint8 ``(B, C, H, W)`` and int64 ``(B,)``.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    order = epoch_order(ds.labels, shuffle=shuffle, seed=seed, epoch=epoch, balanced=balanced)
    mine = shard(order, rank, world_size)
    n_batches = num_batches(len(ds), batch_size, drop_last, world_size)
    for b in range(n_batches):
        idx = mine[b * batch_size : (b + 1) * batch_size]
        yield ds.images[idx], ds.labels[idx]
