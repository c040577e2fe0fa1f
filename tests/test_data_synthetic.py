"""Synthetic faces: determinism and expressions confined to eyes/brows/mouth."""

from __future__ import annotations

import torch

from occstudy.data import EMOTIONS7, load, synthetic_faces
from occstudy.data.synthetic import expression_params, region_boxes, render, sample_identities


def test_deterministic_by_seed() -> None:
    a, b = synthetic_faces(64, seed=5), synthetic_faces(64, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, synthetic_faces(64, seed=6).images)
    assert a.images.shape == (64, 1, 48, 48) and a.classes == EMOTIONS7
    assert synthetic_faces(4, image_size=32).images.shape == (4, 1, 32, 32)


def test_registry_splits_differ() -> None:
    tr = load("synthetic-faces", None, "train", n=20)
    te = load("synthetic-faces", None, "test", n=20, channels=3)
    assert te.images.shape == (20, 3, 48, 48)
    assert not torch.equal(tr.images, te.images[:, :1])
    assert len(load("synthetic-faces", None, "val")) == 1000


def test_classes_differ_only_in_eye_and_mouth_regions() -> None:
    n = 16
    ident = sample_identities(n, torch.Generator().manual_seed(0))
    base = render(ident, expression_params(torch.zeros(n, dtype=torch.int64)), 48)
    boxes = region_boxes(ident, 48)
    allowed = torch.zeros(n, 48, 48, dtype=torch.bool)
    for i in range(n):
        for key in ("eyes", "mouth"):
            x0, y0, x1, y1 = boxes[key][i].tolist()
            allowed[i, y0:y1, x0:x1] = True
    for c in range(1, len(EMOTIONS7)):
        other = render(ident, expression_params(torch.full((n,), c)), 48)
        diff = (other - base).abs()[:, 0]
        assert diff[~allowed].max() == 0, EMOTIONS7[c]
        assert diff[allowed].sum() > 0, EMOTIONS7[c]
