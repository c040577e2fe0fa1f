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
    random_affine_flip,
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


def _affine_reference(img: torch.Tensor, theta: float, zoom: float, shift, mirror: float):
    # Slow and obvious: for every output pixel centre, map to input coordinates by the equation
    # p_in = M(mirror) R(-theta) p_out / zoom + t in [-1, 1] coordinates, reflect at the border,
    # and interpolate bilinearly.
    import math

    c, h, w = img.shape
    out = torch.empty_like(img)

    def reflect(v: float, n: int) -> float:
        # grid_sample's reflection (align_corners=False) reflects about the outer pixel edges.
        lo, hi = -0.5, n - 0.5
        span = hi - lo
        v = abs(v - lo) % (2 * span)
        return lo + (v if v <= span else 2 * span - v)

    for i in range(h):
        for j in range(w):
            xo, yo = (2 * j + 1) / w - 1, (2 * i + 1) / h - 1
            ct, st = math.cos(theta) / zoom, math.sin(theta) / zoom
            xi = ct * mirror * xo - st * yo + shift[0]
            yi = st * mirror * xo + ct * yo + shift[1]
            px = reflect(((xi + 1) * w - 1) / 2, w)
            py = reflect(((yi + 1) * h - 1) / 2, h)
            x0, y0 = math.floor(px), math.floor(py)
            ax, ay = px - x0, py - y0
            val = torch.zeros(c)
            for dy, wy in ((0, 1 - ay), (1, ay)):
                for dx, wx in ((0, 1 - ax), (1, ax)):
                    yy = min(max(y0 + dy, 0), h - 1)
                    xx = min(max(x0 + dx, 0), w - 1)
                    val += wy * wx * img[:, yy, xx]
            out[:, i, j] = val
    return out


def test_random_affine_flip_matches_its_equation() -> None:
    import math

    f = torch.rand(3, 1, 12, 12)
    g = torch.Generator().manual_seed(4)
    out = random_affine_flip(f, g, degrees=20.0, scale=(0.8, 1.2), translate=0.15)
    # Replay the draws in the order the function makes them.
    g = torch.Generator().manual_seed(4)
    theta = (torch.rand(3, generator=g) * 2 - 1) * (20.0 * math.pi / 180)
    zoom = 0.8 + torch.rand(3, generator=g) * 0.4
    shift = (torch.rand(3, 2, generator=g) * 2 - 1) * 0.3
    mirror = torch.where(torch.rand(3, generator=g) < 0.5, -1.0, 1.0)
    for k in range(3):
        ref = _affine_reference(
            f[k], float(theta[k]), float(zoom[k]), shift[k].tolist(), float(mirror[k])
        )
        assert torch.allclose(out[k], ref, atol=1e-4), k


def test_random_affine_flip_identity_mirror_determinism_and_errors() -> None:
    f = torch.rand(6, 1, 16, 16)
    # No rotation, zoom or shift: each output is the image or its mirror (hand-checkable case).
    z = random_affine_flip(
        f, torch.Generator().manual_seed(0), degrees=0.0, scale=(1.0, 1.0), translate=0.0
    )
    kinds = set()
    for i in range(6):
        if torch.allclose(z[i], f[i], atol=1e-5):
            kinds.add("same")
        else:
            assert torch.allclose(z[i], f[i].flip(-1), atol=1e-5)
            kinds.add("mirror")
    assert kinds == {"same", "mirror"}  # both drawn for this seed
    a = random_affine_flip(f, torch.Generator().manual_seed(1))
    b = random_affine_flip(f, torch.Generator().manual_seed(1))
    assert a.shape == f.shape and a.dtype == f.dtype and torch.equal(a, b)
    assert not torch.equal(a, random_affine_flip(f, torch.Generator().manual_seed(2)))
    assert a.min() >= 0 and a.max() <= 1  # bilinear with reflection stays in range
    with pytest.raises(DataError, match="float"):
        random_affine_flip(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), torch.Generator())
    with pytest.raises(DataError, match="scale"):
        random_affine_flip(f, torch.Generator(), scale=(1.2, 1.0))
