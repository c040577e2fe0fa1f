"""Tests of the synthetic occlusion generators (occstudy.occlusion)."""

from __future__ import annotations

import pytest
import torch

from occstudy.occlusion import (
    FILLS,
    PROTOCOLS,
    REGION_BOXES,
    ObjectOccluder,
    Occluder,
    OcclusionPolicy,
    RegionOccluder,
    SquareOccluder,
    apply_protocol,
    make_policy,
    protocol_occluder,
    scaled_side,
)


def _images(b: int = 4, c: int = 3, size: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, size, size, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _all_occluders() -> list[Occluder]:
    occs: list[Occluder] = [SquareOccluder(s, fill=f) for s in (8, 16, 24) for f in FILLS]
    occs += [SquareOccluder(16), RegionOccluder("eyes"), RegionOccluder("mouth")]
    occs += [ObjectOccluder(), ObjectOccluder(kinds=("hand",)), make_policy("all")]
    return occs


@pytest.mark.parametrize("occ", _all_occluders(), ids=lambda o: o.name)
@pytest.mark.parametrize("size", [48, 96])
@pytest.mark.parametrize("c", [1, 3])
def test_contract(occ: Occluder, size: int, c: int) -> None:
    images = _images(6, c, size)
    before = images.clone()
    out, mask = occ(images, _gen())
    assert isinstance(occ, Occluder)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert mask.shape == (6, 1, size, size) and mask.dtype == images.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(images, before), "input must not be modified"
    keep = (mask == 0).expand_as(out)
    assert torch.equal(out[keep], images[keep]), "pixels outside the mask must be unchanged"
    changed = (out != images).any(1, keepdim=True)
    assert not (changed & (mask == 0)).any()
    assert (mask.flatten(1).sum(1) > 0).all(), "every image must be occluded (p = 1)"


def test_float64_input() -> None:
    images = _images(3).double()
    out, mask = make_policy("all")(images, _gen())
    assert out.dtype == torch.float64 and mask.dtype == torch.float64


@pytest.mark.parametrize(
    ("side", "size", "expected"),
    [(8, 48, 8), (16, 48, 16), (24, 48, 24), (16, 96, 32), (8, 224, 37), (24, 64, 32)],
)
def test_square_side_scales(side: int, size: int, expected: int) -> None:
    assert scaled_side(side, size) == expected
    _, mask = SquareOccluder(side)(_images(3, 1, size), _gen())
    assert (mask.flatten(1).sum(1) == expected**2).all()
    rows = mask[:, 0].any(2).sum(1)
    cols = mask[:, 0].any(1).sum(1)
    assert (rows == expected).all() and (cols == expected).all()


def test_r16_covers_256_pixels_at_48() -> None:
    _, mask = SquareOccluder(16)(_images(8), _gen(3))
    assert (mask.flatten(1).sum(1) == 256).all()


@pytest.mark.parametrize("occ", _all_occluders(), ids=lambda o: o.name)
def test_determinism(occ: Occluder) -> None:
    images = _images(8)
    a = occ(images, _gen(5))
    b = occ(images, _gen(5))
    c = occ(images, _gen(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_square_positions_vary() -> None:
    _, mask = SquareOccluder(8)(_images(16), _gen())
    assert len({tuple(m.nonzero()[0].tolist()) for m in mask}) > 4


@pytest.mark.parametrize("region", ["eyes", "mouth"])
def test_region_band(region: str) -> None:
    size = 96
    occ = RegionOccluder(region)
    _, mask = occ(_images(8, 3, size), _gen())
    y0, y1, x0, x1 = REGION_BOXES[region]
    j = occ.jitter * size + 1
    for m in mask[:, 0]:
        rows = m.any(1).nonzero().flatten()
        cols = m.any(0).nonzero().flatten()
        assert (
            abs(rows.min().item() - y0 * size) <= j and abs(rows.max().item() + 1 - y1 * size) <= j
        )
        assert (
            abs(cols.min().item() - x0 * size) <= j and abs(cols.max().item() + 1 - x1 * size) <= j
        )
        # A full rectangle: area equals its bounding box.
        assert m.sum().item() == len(rows) * len(cols)
    # The band centre lies in the expected half of the face.
    centre = mask[:, 0].nonzero()[:, 1].float().mean().item() / size
    assert (centre < 0.5) if region == "eyes" else (centre > 0.6)


def test_region_custom_box_and_no_jitter() -> None:
    occ = RegionOccluder("brow", box=(0.1, 0.2, 0.0, 1.0), jitter=0.0)
    _, mask = occ(_images(2, 1, 50), _gen())
    expected = torch.zeros(50, 50)
    expected[5:10, :] = 1
    assert torch.equal(mask[0, 0], expected) and torch.equal(mask[1, 0], expected)


def test_objects_non_rectangular_and_varied() -> None:
    _, mask = ObjectOccluder()(_images(16, 3, 96), _gen())
    shapes = set()
    for m in mask[:, 0]:
        area = m.sum().item()
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        bbox = (rows.max() - rows.min() + 1).item() * (cols.max() - cols.min() + 1).item()
        assert 0 < area < bbox
        shapes.add((area, bbox))
    assert len(shapes) >= 12


@pytest.mark.parametrize("kind", ["hand", "food", "drink"])
def test_object_kinds(kind: str) -> None:
    occ = ObjectOccluder(kinds=(kind,), scale=(0.5, 0.5), rotation=0.0)
    assert occ.name == f"objects-{kind}"
    _, mask = occ(_images(4, 3, 64), _gen())
    areas = mask.flatten(1).sum(1)
    # The object's longer side spans half the image; it may run off the edge.
    assert (areas > 0).all() and (areas < 0.25 * 64 * 64).all()


def test_policy_p0_leaves_images_clean() -> None:
    images = _images(8)
    out, mask = OcclusionPolicy([SquareOccluder(8), ObjectOccluder()], p=0.0)(images, _gen())
    assert torch.equal(out, images) and not mask.any()


def test_policy_mixes_and_respects_weights() -> None:
    images = _images(64)
    policy = OcclusionPolicy([SquareOccluder(8), SquareOccluder(24)], weights=[0.0, 1.0], p=0.5)
    _, mask = policy(images, _gen())
    areas = mask.flatten(1).sum(1)
    assert set(areas.unique().tolist()) == {0.0, 576.0}
    _, mask = make_policy("ckplus")(images, _gen())
    assert len(set(mask.flatten(1).sum(1).tolist())) >= 4


@pytest.mark.parametrize("name", ["squares", "regions", "objects", "ckplus", "all"])
def test_make_policy(name: str) -> None:
    policy = make_policy(name)
    assert policy.name == name
    out, mask = policy(_images(4), _gen())
    assert out.shape == (4, 3, 48, 48) and mask.any()


def test_protocols() -> None:
    assert PROTOCOLS == ("r8", "r16", "r24", "eye", "mouth", "objects")
    for name in PROTOCOLS:
        assert isinstance(protocol_occluder(name), Occluder)


@pytest.mark.parametrize("name", ["r16", "mouth", "objects"])
def test_apply_protocol_chunk_independent_uint8(name: str) -> None:
    images = (_images(150, 1, 48) * 255).to(torch.uint8)
    a, ma = apply_protocol(images, name, seed=1, chunk_size=512)
    b, mb = apply_protocol(images, name, seed=1, chunk_size=7)
    c, mc = apply_protocol(images, name, seed=1, chunk_size=64)
    assert a.dtype == torch.uint8 and ma.dtype == torch.float32 and ma.shape == (150, 1, 48, 48)
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(ma, mb) and torch.equal(ma, mc)
    keep = (ma == 0).expand_as(a)
    assert torch.equal(a[keep], images[keep])
    assert (ma.flatten(1).sum(1) > 0).all()
    d, md = apply_protocol(images, name, seed=2)
    assert not torch.equal(ma, md)


def test_apply_protocol_float_and_protocols_differ() -> None:
    images = _images(10, 3, 48)
    a, ma = apply_protocol(images, "r8")
    b, mb = apply_protocol(images, "r24")
    assert a.dtype == images.dtype and not torch.equal(ma, mb)
    assert (ma.flatten(1).sum(1) == 64).all() and (mb.flatten(1).sum(1) == 576).all()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="nope"):
        make_policy("nope")
    with pytest.raises(ValueError, match="squares"):
        make_policy("nope")
    with pytest.raises(ValueError, match="r32"):
        protocol_occluder("r32")
    with pytest.raises(ValueError, match="r32"):
        apply_protocol(_images(2), "r32")
    with pytest.raises(ValueError, match="chunk_size"):
        apply_protocol(_images(2), "r8", chunk_size=0)
    with pytest.raises(ValueError, match="side"):
        SquareOccluder(0)
    with pytest.raises(ValueError, match="fill"):
        SquareOccluder(8, fill="plaid")
    with pytest.raises(ValueError, match="region"):
        RegionOccluder("nose")
    with pytest.raises(ValueError, match="box"):
        RegionOccluder("x", box=(0.5, 0.2, 0.0, 1.0))
    with pytest.raises(ValueError, match="jitter"):
        RegionOccluder("eyes", jitter=-0.1)
    with pytest.raises(ValueError, match="kinds"):
        ObjectOccluder(kinds=("cat",))
    with pytest.raises(ValueError, match="scale"):
        ObjectOccluder(scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="rotation"):
        ObjectOccluder(rotation=-1.0)
    with pytest.raises(ValueError, match="weights"):
        OcclusionPolicy([SquareOccluder(8)], weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="p must"):
        OcclusionPolicy([SquareOccluder(8)], p=1.5)
    occ = SquareOccluder(8)
    with pytest.raises(ValueError, match="H = W >= 32"):
        occ(torch.rand(1, 3, 16, 16), _gen())
    with pytest.raises(ValueError, match="channels"):
        occ(torch.rand(1, 2, 48, 48), _gen())
    with pytest.raises(ValueError, match="floating"):
        occ(torch.zeros(1, 3, 48, 48, dtype=torch.uint8), _gen())
