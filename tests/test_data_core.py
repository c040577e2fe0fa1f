"""FaceSet, batching and transforms."""

from __future__ import annotations

import pytest
import torch

from occstudy.data import (
    EMOTIONS7,
    DataError,
    FaceSet,
    iterate_batches,
    normalize,
    num_batches,
    random_crop_flip,
    resize,
    to_float,
)


def make_set(n: int = 50, n_classes: int = 7) -> FaceSet:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % n_classes
    labels[: n // 2] = 0  # imbalanced: class 0 dominates
    return FaceSet(
        images=torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8),
        labels=labels.to(torch.int64),
        classes=EMOTIONS7,
        name="toy",
        label_space="toy-7",
    )


def test_faceset_validation_and_basics() -> None:
    ds = make_set()
    assert len(ds) == 50
    with pytest.raises(DataError, match="uint8"):
        FaceSet(ds.images.float(), ds.labels, EMOTIONS7, "x", "toy")
    with pytest.raises(DataError, match="labels"):
        FaceSet(ds.images, ds.labels[:3], EMOTIONS7, "x", "toy")
    sub = ds.subset([3, 1])
    assert sub.labels.tolist() == [ds.labels[3].item(), ds.labels[1].item()]
    counts = ds.class_counts()
    assert sum(counts.values()) == 50 and list(counts) == list(EMOTIONS7)
    assert ds.fingerprint() == make_set().fingerprint()
    assert ds.fingerprint() != ds.subset(range(49)).fingerprint()
    assert len(ds.concat(ds)) == 100


def test_stratified_fraction() -> None:
    ds = make_set()
    a = ds.stratified_fraction(0.2, seed=1)
    assert a.fingerprint() == ds.stratified_fraction(0.2, seed=1).fingerprint()
    assert all(v >= 1 for v in a.class_counts().values())  # rare classes survive
    assert len(a) < len(ds)
    with pytest.raises(DataError):
        ds.stratified_fraction(0.0, seed=1)


def test_batches_deterministic_and_epoch_dependent() -> None:
    ds = make_set()

    def labels(epoch: int) -> list[int]:
        return torch.cat(
            [y for _, y in iterate_batches(ds, 8, shuffle=True, seed=3, epoch=epoch)]
        ).tolist()

    assert labels(0) == labels(0)
    order0 = [x for x, _ in iterate_batches(ds, 8, shuffle=True, seed=3, epoch=0)]
    order1 = [x for x, _ in iterate_batches(ds, 8, shuffle=True, seed=3, epoch=1)]
    assert not torch.equal(torch.cat(order0), torch.cat(order1))
    batches = list(iterate_batches(ds, 8, shuffle=False))
    assert len(batches) == num_batches(50, 8, False) == 7
    assert batches[0][0].shape == (8, 1, 8, 8) and batches[-1][0].shape[0] == 2
    assert len(list(iterate_batches(ds, 8, shuffle=False, drop_last=True))) == 6


def test_sharding_covers_epoch() -> None:
    ds = make_set(n=23)
    ds = FaceSet(ds.images, ds.labels, ds.classes, "t", "t")
    seen: list[torch.Tensor] = []
    counts = set()
    for rank in range(4):
        bs = list(iterate_batches(ds, 2, shuffle=True, seed=0, rank=rank, world_size=4))
        counts.add(len(bs))
        seen.extend(x for x, _ in bs)
    assert counts == {num_batches(23, 2, False, world_size=4)}
    all_imgs = torch.cat(seen)
    assert all_imgs.shape[0] == 24  # padded to a multiple of world_size
    flat = {tuple(img.flatten().tolist()) for img in all_imgs}
    assert flat == {tuple(img.flatten().tolist()) for img in ds.images}


def test_balanced_sampling_roughly_balanced() -> None:
    ds = make_set(n=700)
    ys = torch.cat([y for _, y in iterate_batches(ds, 64, shuffle=True, balanced=True)])
    assert ys.numel() == 700
    frac = torch.bincount(ys, minlength=7).float() / 700
    assert frac.min() > 0.08 and frac.max() < 0.22  # vs 0.5 for class 0 unbalanced


def test_transforms_shapes_and_determinism() -> None:
    x = torch.randint(0, 256, (5, 1, 48, 48), dtype=torch.uint8)
    f = to_float(x)
    assert f.dtype == torch.float32 and f.min() >= 0 and f.max() <= 1
    assert resize(x, 48) is x
    assert resize(x, 32).shape == (5, 1, 32, 32) and resize(x, 32).dtype == torch.uint8
    a = random_crop_flip(f, torch.Generator().manual_seed(0))
    b = random_crop_flip(f, torch.Generator().manual_seed(0))
    assert a.shape == f.shape and torch.equal(a, b)
    c = random_crop_flip(f, torch.Generator().manual_seed(1))
    assert not torch.equal(a, c)
    # padding 0: each output is the image or its mirror.
    z = random_crop_flip(f, torch.Generator().manual_seed(2), padding=0)
    for i in range(5):
        assert torch.equal(z[i], f[i]) or torch.equal(z[i], f[i].flip(-1))
    n = normalize(f)
    assert torch.allclose(n, f * 2 - 1)
    with pytest.raises(DataError):
        normalize(x)
