"""Synthetic occlusion generators: occluded images and their binary masks.

The pretext stage of the method pastes a random synthetic occluder on a face and asks
the network to recover the binary mask ``M`` (1 = occluded pixel); the fine-tune stage mixes in
occluded copies made by the same generator, and the test protocols of the paper occlude the test
set in fixed ways. This module provides all of them:

* :class:`SquareOccluder` — CK+ squares R8 / R16 / R24 (sides defined on 48x48 faces).
* :class:`RegionOccluder` — eye and mouth bands at the positions of an aligned face.
* :class:`ObjectOccluder` — hands, food and drinks (the RAF-DB / AffectNet setting), drawn from a
  bank of procedurally generated silhouettes (nothing is downloaded).
* :class:`OcclusionPolicy` / :func:`make_policy` — random mixtures for training.
* :data:`PROTOCOLS` / :func:`protocol_occluder` / :func:`apply_protocol` — the fixed test-set
  protocols, deterministic for a seed and independent of how the test set is chunked.

Every occluder follows the :class:`Occluder` contract: ``occluder(images, generator)`` with
``images`` float (B, C, H, W) in [0, 1] returns ``(occluded, mask)``, ``occluded`` of the same
shape, dtype and device and ``mask`` float (B, 1, H, W) in {0, 1}. All random parameters (and the
per-pixel noise) are drawn on the CPU from ``generator`` and only then moved to ``images.device``,
so the same seed gives the same occlusions on CPU and GPU (up to float rounding in
``grid_sample`` at the 0.5 silhouette threshold). Pixels outside the mask are never modified.

Speed: work is proportional to the occluded area, not to the image: each occluder renders a patch
or window only as large as its occluder and scatters it into a copy of the batch, because on a
small CPU even one full-resolution ``torch.where`` over a 64x3x224x224 batch costs tens of ms.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from occstudy.method import POLICIES as METHOD_POLICIES
from occstudy.method import SYNTHETIC_PROTOCOLS

__all__ = [
    "FILLS",
    "OBJECT_KINDS",
    "PROTOCOLS",
    "POLICIES",
    "REGION_BOXES",
    "Occluder",
    "SquareOccluder",
    "RegionOccluder",
    "ObjectOccluder",
    "OcclusionPolicy",
    "make_policy",
    "protocol_occluder",
    "apply_protocol",
]

#: Fill styles of the rectangular occluders; "mixed" picks one of these per image.
FILLS: tuple[str, ...] = ("grey", "noise", "texture")
_FILL_CHOICES: tuple[str, ...] = (*FILLS, "mixed")

#: Default region boxes as fractions (y0, y1, x0, x1) of the image, for FER-style aligned faces
#: (FER2013 / FER+ / CK+ crops at 48x48, where the eyes sit at about 35-40% of the height and the
#: mouth at about 75-80%). The eye band spans both eyes and brows' lower edge; the mouth band
#: spans the lips and the corners of the mouth.
REGION_BOXES: dict[str, tuple[float, float, float, float]] = {
    "eyes": (0.25, 0.50, 0.10, 0.90),
    "mouth": (0.65, 0.90, 0.22, 0.78),
}

#: Object kinds of the paper's synthetic occluders (RAF-DB / AffectNet setting).
OBJECT_KINDS: tuple[str, ...] = ("hand", "food", "drink")

#: Test protocols: CK+ squares R8/R16/R24, eye and mouth regions, and objects.
PROTOCOLS: tuple[str, ...] = SYNTHETIC_PROTOCOLS

#: Named training policies of :func:`make_policy` (named in the torch-free ``method``).
POLICIES: tuple[str, ...] = METHOD_POLICIES

# Per-pixel noise is drawn at most at this resolution per patch side and upsampled (nearest):
# drawing 64x3x112x112 uniforms on the CPU takes ~25 ms, while a 48-px grain is already finer
# than any facial feature at 224 px (<= 2.3 px per noise cell for the largest square).
_NOISE_RES_CAP = 48
_BANK_SIZE = 64  # side of the silhouette bank images
_BANK_PER_KIND = 32
_BANK_SEED = 2022
# apply_protocol seeds one generator per block of this many images so that the chunk size (a
# memory knob) can never change which pixels are occluded.
_PROTOCOL_BLOCK = 64
_LUMA = (0.299, 0.587, 0.114)


@runtime_checkable
class Occluder(Protocol):
    """Call contract shared by every occlusion generator."""

    name: str

    def __call__(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Occlude a batch.

        Args:
            images: float (B, C, H, W) in [0, 1], C in {1, 3}, H = W >= 32, any device.
            generator: CPU generator all random parameters are drawn from.

        Returns:
            ``(occluded, mask)``: occluded (B, C, H, W), same dtype/device, values in [0, 1];
            mask float (B, 1, H, W) in {0, 1}, 1 = occluded pixel.
        """
        ...


# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------


def _check_call(owner: str, images: Tensor, generator: torch.Generator) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{owner}: images must be a (B, C, H, W) tensor, got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"{owner}: images must be floating point in [0, 1], got {images.dtype}")
    _, c, h, w = images.shape
    if c not in (1, 3):
        raise ValueError(f"{owner}: images must have 1 or 3 channels, got C={c}")
    if h != w or h < 32:
        raise ValueError(f"{owner}: images must be square with H = W >= 32, got H={h}, W={w}")
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ValueError(f"{owner}: generator must be a CPU torch.Generator, got {generator!r}")


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> Tensor:
    """(n,) float64 CPU uniforms in [lo, hi); float64 so that rounding to pixels is stable."""
    return torch.rand(n, generator=g, dtype=torch.float64) * (hi - lo) + lo


def _to_channels(rgb: Tensor, c: int) -> Tensor:
    """Reduce an RGB fill (n, 3, ...) to ``c`` channels (grey = Rec. 601 luma)."""
    if c == 3:
        return rgb
    w = torch.tensor(_LUMA, dtype=rgb.dtype, device=rgb.device).view(1, 3, *([1] * (rgb.ndim - 2)))
    return (rgb * w).sum(1, keepdim=True)


def _scatter_windows(
    out: Tensor, mask: Tensor, y0: Tensor, x0: Tensor, patch: Tensor, patch_mask: Tensor | None
) -> None:
    """Write per-image windows into ``out`` and ``mask`` in place (vectorised over the batch).

    Args:
        out: (B, C, H, W) contiguous images, modified in place.
        mask: (B, 1, H, W) contiguous mask, modified in place.
        y0: (B,) long top rows of the windows, on ``out.device``; window must lie in the image.
        x0: (B,) long left columns of the windows, on ``out.device``.
        patch: (B, C, h, w) fill.
        patch_mask: (B, h, w) bool, or None for a fully occluded window.
    """
    b, c, h, w = patch.shape
    dev = out.device
    # Flat gather/scatter on contiguous (B, C, H*W) views: several times faster on the CPU than
    # advanced indexing with three broadcast index tensors.
    rows = y0.view(b, 1, 1) + torch.arange(h, device=dev).view(1, h, 1)
    idx = (rows * out.shape[-1] + x0.view(b, 1, 1) + torch.arange(w, device=dev)).view(b, 1, h * w)
    out_flat = out.view(b, c, -1)
    mask_flat = mask.view(b, 1, -1)
    new = patch.reshape(b, c, h * w)
    if patch_mask is None:
        out_flat.scatter_(2, idx.expand(b, c, h * w), new)
        mask_flat.scatter_(2, idx, 1.0)
    else:
        keep = patch_mask.view(b, 1, h * w)
        old = out_flat.gather(2, idx.expand(b, c, h * w))
        out_flat.scatter_(2, idx.expand(b, c, h * w), torch.where(keep, new, old))
        mask_flat.scatter_(2, idx, keep.to(mask.dtype))


def _fill_kinds(fill: str, n: int, g: torch.Generator) -> Tensor:
    """(n,) long CPU fill index into :data:`FILLS` (drawn only for "mixed")."""
    if fill == "mixed":
        return torch.randint(len(FILLS), (n,), generator=g)
    return torch.full((n,), FILLS.index(fill), dtype=torch.long)


def _texture(n: int, c: int, h: int, w: int, g: torch.Generator, dev: torch.device) -> Tensor:
    """Procedural textures (n, c, h, w) in [0, 1]: smoothed noise, stripes or a checkerboard.

    Each image gets two random colours blended with a random contrast, and a pattern of random
    frequency (2-6 cycles per patch), orientation and phase.
    """
    kind = torch.randint(3, (n,), generator=g)
    col_a = torch.rand(n, c, generator=g)
    col_b = torch.rand(n, c, generator=g)
    contrast = _uniform(n, 0.3, 1.0, g).float()
    col_b = col_a + contrast.view(n, 1) * (col_b - col_a)
    freq = _uniform(n, 2.0, 6.0, g).float()
    angle = _uniform(n, 0.0, math.pi, g).float()
    phase = torch.rand(n, 2, generator=g)
    coarse = torch.rand(n, 1, 4, 4, generator=g)

    kind, col_a, col_b, freq, angle, phase, coarse = (
        t.to(dev) for t in (kind, col_a, col_b, freq, angle, phase, coarse)
    )
    v = ((torch.arange(h, device=dev) + 0.5) / h).view(1, h, 1)
    u = ((torch.arange(w, device=dev) + 0.5) / w).view(1, 1, w)
    cos, sin = torch.cos(angle).view(n, 1, 1), torch.sin(angle).view(n, 1, 1)
    f = freq.view(n, 1, 1)
    s = (u * cos + v * sin) * f  # rotated coordinates in cycles
    t = (-u * sin + v * cos) * f
    stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * (s + phase[:, :1, None]))
    checker = torch.remainder(
        torch.floor(s + phase[:, :1, None]) + torch.floor(t + phase[:, 1:, None]), 2.0
    )
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    smooth = ((smooth - 0.5) * 2.0 + 0.5).clamp(0.0, 1.0)  # stretch: bilinear flattens contrast
    k = kind.view(n, 1, 1)
    pattern = torch.where(k == 0, smooth, torch.where(k == 1, stripes, checker))
    return col_a.view(n, c, 1, 1) + (col_b - col_a).view(n, c, 1, 1) * pattern.unsqueeze(1)


def _rect_fill(
    kinds: Tensor, c: int, h: int, w: int, g: torch.Generator, dev: torch.device, dtype: torch.dtype
) -> Tensor:
    """Fill patches (n, c, h, w) in [0, 1] for fill indices ``kinds`` (n,) into :data:`FILLS`.

    Randomness is drawn per fill style on the sub-batch that uses it, in a fixed order, so the
    result is a deterministic function of the generator state.
    """
    n = kinds.shape[0]
    patch = torch.empty(n, c, h, w, device=dev, dtype=dtype)
    for k, style in enumerate(FILLS):
        idx = (kinds == k).nonzero().flatten()
        m = idx.numel()
        if m == 0:
            continue
        if style == "grey":
            sub = torch.rand(m, 1, 1, 1, generator=g).to(dev).expand(m, c, h, w)
        elif style == "noise":
            nh, nw = min(h, _NOISE_RES_CAP), min(w, _NOISE_RES_CAP)
            sub = torch.rand(m, c, nh, nw, generator=g).to(dev)
            if (nh, nw) != (h, w):
                sub = F.interpolate(sub, size=(h, w), mode="nearest")
        else:
            sub = _texture(m, c, h, w, g, dev)
        patch[idx.to(dev)] = sub.to(dtype)
    return patch


# ----------------------------------------------------------------------------------------------
# Rectangular occluders
# ----------------------------------------------------------------------------------------------


def _check_fill(owner: str, fill: str) -> None:
    if fill not in _FILL_CHOICES:
        raise ValueError(f"{owner}: fill must be one of {_FILL_CHOICES}, got {fill!r}")


def scaled_side(side: int, size: int) -> int:
    """Side in pixels at image size ``size`` of a square defined on 48x48 faces (round half up)."""
    return max(1, min(size, int(side * size / 48 + 0.5)))


class SquareOccluder:
    """Square occluder of the CK+ protocol (R8, R16, R24), at a random position inside the image.

    Args:
        side: Side in pixels on a 48x48 face (1..48); scaled to ``round(side * H / 48)``.
        fill: "grey" (uniform random grey level), "noise" (uniform noise), "texture"
            (procedural smoothed noise / stripes / checker with random colours and contrast)
            or "mixed" (each image picks one of the three).
    """

    def __init__(self, side: int, fill: str = "mixed") -> None:
        if isinstance(side, bool) or not isinstance(side, int) or not 1 <= side <= 48:
            raise ValueError(f"SquareOccluder: side must be an int in [1, 48], got {side!r}")
        _check_fill("SquareOccluder", fill)
        self.side = side
        self.fill = fill
        self.name = f"r{side}" if fill == "mixed" else f"r{side}-{fill}"

    def __repr__(self) -> str:
        return f"SquareOccluder(side={self.side}, fill={self.fill!r})"

    def __call__(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Occlude each image with one square; see :class:`Occluder` for shapes."""
        _check_call(self.name, images, generator)
        b, c, h, w = images.shape
        s = scaled_side(self.side, h)
        y0 = torch.randint(0, h - s + 1, (b,), generator=generator)
        x0 = torch.randint(0, w - s + 1, (b,), generator=generator)
        kinds = _fill_kinds(self.fill, b, generator)
        patch = _rect_fill(kinds, c, s, s, generator, images.device, images.dtype)
        out = images.clone(memory_format=torch.contiguous_format)
        mask = torch.zeros(b, 1, h, w, device=images.device, dtype=images.dtype)
        _scatter_windows(out, mask, y0.to(images.device), x0.to(images.device), patch, None)
        return out, mask


class RegionOccluder:
    """Eye- or mouth-band occluder at the position of an aligned face, with small random jitter.

    The band keeps its size; only its position moves by up to ``jitter`` (a fraction of the image
    side) in each direction, clamped so that the band stays inside the image.

    Args:
        region: "eyes" or "mouth" (defaults in :data:`REGION_BOXES`: eyes (0.25, 0.50, 0.10,
            0.90), mouth (0.65, 0.90, 0.22, 0.78)); any name if ``box`` is given.
        box: (y0, y1, x0, x1) fractions of the image with 0 <= y0 < y1 <= 1, 0 <= x0 < x1 <= 1;
            None for the default box of ``region``.
        fill: As for :class:`SquareOccluder`.
        jitter: Maximum shift as a fraction of the image side, in [0, 0.5). The default 0.04
            (about 2 px at 48 px) covers the alignment error of FER-style crops.
    """

    def __init__(
        self,
        region: str,
        box: tuple[float, float, float, float] | None = None,
        fill: str = "mixed",
        jitter: float = 0.04,
    ) -> None:
        if box is None:
            if region not in REGION_BOXES:
                raise ValueError(
                    f"RegionOccluder: region must be one of {tuple(REGION_BOXES)} when no box "
                    f"is given, got {region!r}"
                )
            box = REGION_BOXES[region]
        if len(box) != 4:
            raise ValueError(f"RegionOccluder: box must be (y0, y1, x0, x1), got {box!r}")
        y0, y1, x0, x1 = (float(v) for v in box)
        if not (0.0 <= y0 < y1 <= 1.0 and 0.0 <= x0 < x1 <= 1.0):
            raise ValueError(
                f"RegionOccluder: box must satisfy 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1, "
                f"got {box!r}"
            )
        if not 0.0 <= jitter < 0.5:
            raise ValueError(f"RegionOccluder: jitter must be in [0, 0.5), got {jitter!r}")
        _check_fill("RegionOccluder", fill)
        self.region = region
        self.box = (y0, y1, x0, x1)
        self.fill = fill
        self.jitter = float(jitter)
        self.name = region if fill == "mixed" else f"{region}-{fill}"

    def __repr__(self) -> str:
        return (
            f"RegionOccluder(region={self.region!r}, box={self.box!r}, fill={self.fill!r}, "
            f"jitter={self.jitter!r})"
        )

    def band(self, size: int) -> tuple[int, int, int, int]:
        """Un-jittered band (top, height, left, width) in pixels at image size ``size``."""
        y0, y1, x0, x1 = self.box
        top, left = int(y0 * size + 0.5), int(x0 * size + 0.5)
        bh = max(1, int(y1 * size + 0.5) - top)
        bw = max(1, int(x1 * size + 0.5) - left)
        return top, bh, left, bw

    def __call__(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Occlude the region band of each image; see :class:`Occluder` for shapes."""
        _check_call(self.name, images, generator)
        b, c, h, w = images.shape
        top, bh, left, bw = self.band(h)
        j = self.jitter * h
        dy = _uniform(b, -j, j, generator)
        dx = _uniform(b, -j, j, generator)
        y0 = torch.round(top + dy).long().clamp(0, h - bh)
        x0 = torch.round(left + dx).long().clamp(0, w - bw)
        kinds = _fill_kinds(self.fill, b, generator)
        patch = _rect_fill(kinds, c, bh, bw, generator, images.device, images.dtype)
        out = images.clone(memory_format=torch.contiguous_format)
        mask = torch.zeros(b, 1, h, w, device=images.device, dtype=images.dtype)
        _scatter_windows(out, mask, y0.to(images.device), x0.to(images.device), patch, None)
        return out, mask


# ----------------------------------------------------------------------------------------------
# Procedural object bank
# ----------------------------------------------------------------------------------------------
# Shapes are built from signed distance functions (negative inside) on a [-1, 1]^2 grid, y down,
# then painted back to front into an RGB albedo with an anti-aliased alpha. Bank entry layout:
# (4, S, S) = alpha, R, G, B with RGB premultiplied by alpha (so that bilinear resampling at the
# silhouette edge does not bleed black into the colour).

_Grid = tuple[Tensor, Tensor]


def _grid(size: int) -> _Grid:
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(c, c, indexing="ij")
    return x, y


def _sd_circle(p: _Grid, cx: float, cy: float, r: float) -> Tensor:
    return torch.hypot(p[0] - cx, p[1] - cy) - r


def _sd_ellipse(p: _Grid, cx: float, cy: float, rx: float, ry: float) -> Tensor:
    # Not an exact distance, but close enough for anti-aliasing a 64-px silhouette.
    return (torch.hypot((p[0] - cx) / rx, (p[1] - cy) / ry) - 1.0) * min(rx, ry)


def _sd_capsule(p: _Grid, ax: float, ay: float, bx: float, by: float, r: float) -> Tensor:
    px, py, dx, dy = p[0] - ax, p[1] - ay, bx - ax, by - ay
    t = ((px * dx + py * dy) / max(dx * dx + dy * dy, 1e-9)).clamp(0.0, 1.0)
    return torch.hypot(px - t * dx, py - t * dy) - r


def _sd_box(p: _Grid, cx: float, cy: float, hw: float, hh: float, rr: float = 0.0) -> Tensor:
    qx = (p[0] - cx).abs() - hw + rr
    qy = (p[1] - cy).abs() - hh + rr
    outside = torch.hypot(qx.clamp_min(0), qy.clamp_min(0))
    return outside + torch.maximum(qx, qy).clamp_max(0) - rr


def _sd_taper(p: _Grid, cx: float, cy: float, hw_top: float, hw_bot: float, hh: float) -> Tensor:
    t = ((p[1] - (cy - hh)) / (2 * hh)).clamp(0.0, 1.0)
    return torch.maximum(
        (p[0] - cx).abs() - (hw_top + (hw_bot - hw_top) * t), (p[1] - cy).abs() - hh
    )


def _sd_halfplane(p: _Grid, ax: float, ay: float, bx: float, by: float) -> Tensor:
    """Signed distance to the line a->b, negative on its right-hand side (y down)."""
    dx, dy = bx - ax, by - ay
    n = math.hypot(dx, dy)
    return ((p[0] - ax) * dy - (p[1] - ay) * dx) / -n


class _Canvas:
    """Back-to-front painter of anti-aliased SDF shapes into alpha + RGB albedo."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.p = _grid(size)
        self.alpha = torch.zeros(size, size)
        self.rgb = torch.zeros(3, size, size)

    def cover(self, sd: Tensor) -> Tensor:
        return (0.5 - sd * (self.size / 2)).clamp(0.0, 1.0)

    def paint(
        self,
        sd: Tensor,
        colour: Sequence[float],
        shade: Tensor | float = 1.0,
        clip: Tensor | None = None,
        opaque: bool = True,
    ) -> None:
        a = self.cover(sd)
        if clip is not None:
            a = a * self.cover(clip)
        col = torch.tensor(colour, dtype=torch.float32).view(3, 1, 1) * shade
        self.rgb = self.rgb * (1 - a) + col.clamp(0.0, 1.0) * a
        if opaque:
            self.alpha = torch.maximum(self.alpha, a)

    def result(self) -> Tensor:
        # Paint covers the background as if it were black: un-premultiply then re-premultiply.
        rgb = self.rgb / self.alpha.clamp_min(1e-6)
        return torch.cat([self.alpha[None], rgb * self.alpha[None]], 0)


def _radial_shade(p: _Grid, cx: float, cy: float, r: float) -> Tensor:
    """Sphere-like shading with a highlight to the upper left."""
    d = torch.hypot(p[0] - (cx - 0.35 * r), p[1] - (cy - 0.35 * r)) / (1.6 * r)
    return (1.15 - 0.6 * d).clamp(0.45, 1.2)


def _cyl_shade(p: _Grid, cx: float, hw: float) -> Tensor:
    """Cylinder shading across x with a specular stripe left of the axis."""
    u = ((p[0] - cx) / max(hw, 1e-3)).clamp(-1.0, 1.0)
    spec = 0.35 * torch.exp(-(((u + 0.45) / 0.12) ** 2))
    return 0.55 + 0.45 * torch.cos(u * math.pi / 2 * 0.95) + spec


def _jitter_colour(rng: random.Random, col: Sequence[float], amount: float = 0.08) -> list[float]:
    return [min(1.0, max(0.0, v + rng.uniform(-amount, amount))) for v in col]


def _hand(rng: random.Random, size: int) -> Tensor:
    cv = _Canvas(size)
    p = cv.p
    side = rng.choice((-1.0, 1.0))  # which side the thumb is on
    pw, ph = rng.uniform(0.26, 0.34), rng.uniform(0.24, 0.32)
    pcx, pcy = rng.uniform(-0.05, 0.05), rng.uniform(0.15, 0.3)
    fist = rng.random() < 0.2
    spread = rng.uniform(0.0, 0.28)
    base_len = rng.uniform(0.38, 0.52)
    fr = rng.uniform(0.065, 0.085)

    def skin(sd: Tensor, r: float) -> Tensor:
        # Rounded-limb shading; where limbs overlap, the dark rim of the upper one draws a crease.
        return 0.7 + 0.3 * (-sd / r).clamp(0.0, 1.0).sqrt()

    arm = _sd_capsule(p, pcx, pcy + ph, pcx + rng.uniform(-0.15, 0.15), 1.5, pw * 0.75)
    cv.paint(arm, (1.0, 1.0, 1.0), skin(arm, pw * 0.75))
    palm = _sd_box(p, pcx, pcy, pw, ph, 0.14)
    cv.paint(palm, (1.0, 1.0, 1.0), skin(palm, 0.3))
    # Thumb from the lower side of the palm, pointing up and out.
    ta = side * rng.uniform(0.5, 1.1)
    tlen = rng.uniform(0.3, 0.42) * (0.6 if fist else 1.0)
    tx, ty = pcx + side * pw * 0.8, pcy + ph * 0.2
    thumb = _sd_capsule(p, tx, ty, tx + tlen * math.sin(ta), ty - tlen * math.cos(ta), fr * 1.15)
    cv.paint(thumb, (1.0, 1.0, 1.0), skin(thumb, fr * 1.15))
    factors = [0.78, 0.95, 1.0, 0.92]  # pinky .. index, thumb side last
    if side < 0:
        factors = factors[::-1]
    for i in range(4):
        bx = pcx + (-0.75 + 0.5 * i) * pw
        by = pcy - ph * 0.75
        a = (i - 1.5) * spread + rng.uniform(-0.06, 0.06)
        length = base_len * factors[i]
        if fist or rng.random() < 0.12:
            length *= 0.35  # curled finger: only the knuckle shows above the palm
        r = fr * (0.85 if factors[i] < 0.8 else 1.0)
        fd = _sd_capsule(p, bx, by, bx + length * math.sin(a), by - length * math.cos(a), r)
        cv.paint(fd, (1.0, 1.0, 1.0), skin(fd, r))
    return cv.result()


_FRUIT_COLOURS = (
    (0.8, 0.1, 0.1),
    (0.95, 0.55, 0.1),
    (0.95, 0.85, 0.2),
    (0.45, 0.75, 0.2),
    (0.45, 0.15, 0.35),
)


def _food(rng: random.Random, size: int, variant: int) -> Tensor:
    cv = _Canvas(size)
    p = cv.p
    x, y = p
    if variant == 0:  # fruit: wobbly round body, spots, stem and maybe a leaf
        r0, cx, cy = rng.uniform(0.5, 0.7), rng.uniform(-0.05, 0.05), rng.uniform(0.0, 0.12)
        th = torch.atan2(y - cy, x - cx)
        rr = torch.full_like(x, r0)
        for k in (2, 3, 4):
            rr = rr * (1 + rng.uniform(0.0, 0.05) * torch.cos(k * th + rng.uniform(0, 6.3)))
        rr = rr * (1 - 0.12 * torch.exp(-((th + math.pi / 2) ** 2) / 0.08))  # dimple at the stem
        body = torch.hypot(x - cx, y - cy) - rr
        col = _jitter_colour(rng, rng.choice(_FRUIT_COLOURS))
        stem = _sd_capsule(
            p, cx, cy - r0 * 0.8, cx + rng.uniform(-0.12, 0.12), cy - r0 - 0.18, 0.035
        )
        cv.paint(stem, (0.35, 0.22, 0.1))
        if rng.random() < 0.6:
            leaf = _sd_ellipse(p, cx + 0.15, cy - r0 - 0.08, 0.16, 0.07)
            cv.paint(leaf, (0.2, 0.55, 0.15), 1.0)
        cv.paint(body, col, _radial_shade(p, cx, cy, r0))
        for _ in range(rng.randint(10, 30)):
            a, d = rng.uniform(0, 6.3), r0 * math.sqrt(rng.random()) * 0.9
            spot = _sd_circle(
                p, cx + d * math.cos(a), cy + d * math.sin(a), rng.uniform(0.012, 0.03)
            )
            tone = rng.choice((0.7, 1.3))
            cv.paint(spot, [min(1.0, v * tone) for v in col], 1.0, clip=body, opaque=False)
    elif variant == 1:  # burger: dome bun with seeds, lettuce, cheese, patty, bottom bun
        w = rng.uniform(0.68, 0.85)
        bun = _jitter_colour(rng, (0.85, 0.55, 0.22))
        top = torch.maximum(_sd_ellipse(p, 0.0, 0.0, w, rng.uniform(0.45, 0.6)), y - 0.0)
        lettuce = torch.maximum(
            (y - 0.06).abs() - 0.05 - 0.03 * torch.sin(x * 22 + rng.uniform(0, 6.3)),
            x.abs() - (w + 0.04),
        )
        cheese = torch.maximum((y - 0.15).abs() - 0.04 - 0.03 * torch.sin(x * 9), x.abs() - w)
        patty = _sd_box(p, 0.0, 0.25, w * 0.98, 0.085, 0.06)
        bottom = _sd_box(p, 0.0, 0.41, w * 0.95, 0.09, 0.07)
        cv.paint(bottom, bun, _cyl_shade(p, 0.0, w))
        cv.paint(patty, _jitter_colour(rng, (0.35, 0.18, 0.08)), _cyl_shade(p, 0.0, w))
        cv.paint(cheese, (0.98, 0.78, 0.15))
        cv.paint(lettuce, _jitter_colour(rng, (0.35, 0.7, 0.15)))
        cv.paint(top, bun, _radial_shade(p, 0.0, -0.1, w))
        for _ in range(rng.randint(8, 18)):
            sx, sy = rng.uniform(-0.7, 0.7) * w, rng.uniform(-0.45, -0.08)
            seed = _sd_ellipse(p, sx, sy, 0.035, 0.02)
            cv.paint(seed, (0.98, 0.93, 0.75), 1.0, clip=top, opaque=False)
    elif variant == 2:  # donut with icing and sprinkles, or a cookie with chips
        r0 = rng.uniform(0.55, 0.75)
        if rng.random() < 0.5:
            hole = r0 * rng.uniform(0.28, 0.38)
            ring = torch.maximum(_sd_circle(p, 0, 0, r0), -_sd_circle(p, 0, 0, hole))
            icing = torch.maximum(
                _sd_circle(p, 0, 0, r0 * 0.88) + 0.02 * torch.sin(7 * torch.atan2(y, x)),
                -_sd_circle(p, 0, 0, hole * 1.25),
            )
            cv.paint(ring, _jitter_colour(rng, (0.85, 0.58, 0.28)), _radial_shade(p, 0, 0, r0))
            ic = rng.choice(((0.95, 0.55, 0.7), (0.35, 0.2, 0.1), (0.97, 0.95, 0.9)))
            cv.paint(icing, ic, _radial_shade(p, 0, 0, r0))
            for _ in range(rng.randint(15, 35)):
                a, d = rng.uniform(0, 6.3), rng.uniform(hole * 1.3, r0 * 0.85)
                sx, sy, o = d * math.cos(a), d * math.sin(a), rng.uniform(0, 3.2)
                spr = _sd_capsule(
                    p, sx, sy, sx + 0.06 * math.cos(o), sy + 0.06 * math.sin(o), 0.014
                )
                sc = (rng.random(), rng.random(), rng.random())
                cv.paint(spr, sc, 1.0, clip=icing, opaque=False)
        else:
            th = torch.atan2(y, x)
            rr = r0 * (1 + 0.04 * torch.sin(5 * th + rng.uniform(0, 6.3)))
            body = torch.hypot(x, y) - rr
            cv.paint(body, _jitter_colour(rng, (0.82, 0.6, 0.35)), _radial_shade(p, 0, 0, r0))
            for _ in range(rng.randint(7, 14)):
                a, d = rng.uniform(0, 6.3), r0 * math.sqrt(rng.random()) * 0.85
                chip = _sd_circle(p, d * math.cos(a), d * math.sin(a), rng.uniform(0.04, 0.07))
                cv.paint(chip, (0.25, 0.13, 0.06), 1.0, clip=body, opaque=False)
    elif variant == 3:  # banana-like crescent with dark tips
        big = rng.uniform(0.7, 0.85)
        cy = rng.uniform(0.35, 0.5)
        shift = rng.uniform(0.2, 0.32)
        body = torch.maximum(_sd_circle(p, 0, cy, big), -_sd_circle(p, 0, cy + shift, big * 0.98))
        body = torch.maximum(body, y - (cy + 0.1))  # cut the thin horns off
        col = _jitter_colour(rng, (0.97, 0.85, 0.25))
        shade = 0.8 + 0.3 * (-(y - cy + big) / shift).clamp(-1.0, 1.0)
        cv.paint(body, col, shade)
        for sx in (-1.0, 1.0):
            tip = _sd_circle(p, sx * big * 0.72, cy - 0.05, 0.13)
            cv.paint(tip, (0.35, 0.25, 0.1), 1.0, clip=body, opaque=False)
    elif variant == 4:  # pizza slice with crust and pepperoni
        half, ytop, apex = rng.uniform(0.5, 0.7), rng.uniform(-0.7, -0.5), rng.uniform(0.7, 0.9)
        tri = torch.maximum(
            torch.maximum(ytop - y, _sd_halfplane(p, -half, ytop, 0.0, apex)),
            _sd_halfplane(p, 0.0, apex, half, ytop),
        )
        crust = _sd_capsule(p, -half - 0.02, ytop, half + 0.02, ytop, rng.uniform(0.08, 0.11))
        cv.paint(tri, _jitter_colour(rng, (0.98, 0.8, 0.35)))
        cv.paint(crust, _jitter_colour(rng, (0.8, 0.5, 0.2)), _cyl_shade(p, 0.0, half))
        for _ in range(rng.randint(3, 6)):
            t = rng.uniform(0.15, 0.7)
            py_ = ytop + t * (apex - ytop)
            px_ = rng.uniform(-1, 1) * half * (1 - t) * 0.6
            pep = _sd_circle(p, px_, py_, rng.uniform(0.07, 0.1))
            cv.paint(pep, (0.7, 0.15, 0.1), 1.0, clip=tri, opaque=False)
    else:  # ice-cream cone with one or two scoops
        cone = torch.maximum(
            torch.maximum(-0.05 - y, _sd_halfplane(p, -0.32, -0.05, 0.0, 0.95)),
            _sd_halfplane(p, 0.0, 0.95, 0.32, -0.05),
        )
        waffle = 0.85 + 0.15 * torch.sin(30 * (x + y)) * torch.sin(30 * (x - y))
        cv.paint(cone, _jitter_colour(rng, (0.85, 0.6, 0.3)), waffle)
        scoop_col = rng.choice(((0.98, 0.9, 0.75), (0.45, 0.25, 0.12), (0.95, 0.6, 0.7)))
        r1 = rng.uniform(0.33, 0.42)
        scoop = _sd_circle(p, 0.0, -0.15, r1)
        cv.paint(scoop, _jitter_colour(rng, scoop_col), _radial_shade(p, 0, -0.15, r1))
        if rng.random() < 0.5:
            r2 = r1 * rng.uniform(0.75, 0.9)
            scoop2 = _sd_circle(p, rng.uniform(-0.08, 0.08), -0.15 - r1 - r2 * 0.6, r2)
            c2 = rng.choice(((0.98, 0.9, 0.75), (0.45, 0.25, 0.12), (0.6, 0.85, 0.6)))
            cv.paint(scoop2, c2, _radial_shade(p, 0, -0.15 - r1 - r2 * 0.6, r2))
    return cv.result()


def _bright_colour(rng: random.Random) -> tuple[float, float, float]:
    c = [rng.uniform(0.05, 0.4), rng.uniform(0.3, 0.7), rng.uniform(0.6, 1.0)]
    rng.shuffle(c)
    return (c[0], c[1], c[2])


def _drink(rng: random.Random, size: int, variant: int) -> Tensor:
    cv = _Canvas(size)
    p = cv.p
    x, y = p
    if variant == 0:  # mug with a ring handle
        hw, hh = rng.uniform(0.33, 0.43), rng.uniform(0.45, 0.58)
        cx, cy = -0.15, 0.05
        col = _bright_colour(rng) if rng.random() < 0.7 else (0.95, 0.95, 0.93)
        hr = rng.uniform(0.22, 0.3)
        ring = (torch.hypot(x - (cx + hw), y - (cy - 0.05)) - hr).abs() - 0.065
        handle = torch.maximum(ring, (cx + hw - 0.05) - x)
        cv.paint(handle, col, 0.85)
        body = _sd_box(p, cx, cy, hw, hh, 0.07)
        cv.paint(body, col, _cyl_shade(p, cx, hw))
        top = _sd_ellipse(p, cx, cy - hh + 0.06, hw * 0.85, 0.05)
        cv.paint(top, (0.3, 0.18, 0.08), 1.0, clip=body, opaque=False)
    elif variant == 1:  # bottle: body, shoulder, neck, cap, label
        bw, nw = rng.uniform(0.24, 0.32), rng.uniform(0.08, 0.11)
        glass = rng.choice(
            ((0.2, 0.5, 0.25), (0.45, 0.28, 0.1), (0.6, 0.75, 0.85), (0.85, 0.9, 0.9))
        )
        body = _sd_box(p, 0.0, 0.38, bw, 0.5, 0.08)
        shoulder = _sd_taper(p, 0.0, -0.22, nw, bw, 0.12)
        neck = _sd_box(p, 0.0, -0.55, nw, 0.24, 0.02)
        cap = _sd_box(p, 0.0, -0.84, nw * 1.2, 0.07, 0.02)
        shape = torch.minimum(torch.minimum(body, shoulder), neck)
        cv.paint(shape, _jitter_colour(rng, glass), _cyl_shade(p, 0.0, bw))
        cv.paint(cap, _bright_colour(rng), _cyl_shade(p, 0.0, nw))
        label = _sd_box(p, 0.0, rng.uniform(0.25, 0.45), bw + 0.01, rng.uniform(0.12, 0.22))
        cv.paint(label, _bright_colour(rng), _cyl_shade(p, 0.0, bw), clip=body, opaque=False)
    elif variant == 2:  # can with rims and a wavy band
        hw, hh = rng.uniform(0.28, 0.36), rng.uniform(0.55, 0.7)
        body = _sd_box(p, 0.0, 0.0, hw, hh, 0.05)
        cv.paint(body, _bright_colour(rng), _cyl_shade(p, 0.0, hw))
        band = (y - rng.uniform(-0.2, 0.2) - 0.08 * torch.sin(x * 8)).abs() - rng.uniform(
            0.06, 0.15
        )
        cv.paint(band, _bright_colour(rng), _cyl_shade(p, 0.0, hw), clip=body, opaque=False)
        for ry in (-hh + 0.04, hh - 0.04):
            rim = _sd_box(p, 0.0, ry, hw * 0.94, 0.04, 0.02)
            cv.paint(rim, (0.8, 0.8, 0.82), _cyl_shade(p, 0.0, hw))
    elif variant == 3:  # takeaway cup with lid, sleeve and straw
        top_w, bot_w = rng.uniform(0.38, 0.45), rng.uniform(0.26, 0.32)
        cup = _sd_taper(p, 0.0, 0.25, top_w, bot_w, 0.6)
        straw = _sd_capsule(p, 0.05, -0.4, rng.uniform(0.15, 0.3), -0.95, 0.04)
        cv.paint(straw, _bright_colour(rng), 1.0)
        cup_col = (0.96, 0.95, 0.92) if rng.random() < 0.6 else (0.65, 0.45, 0.3)
        cv.paint(cup, cup_col, _cyl_shade(p, 0.0, top_w))
        sleeve = (y - 0.3).abs() - 0.15
        cv.paint(sleeve, (0.55, 0.38, 0.22), _cyl_shade(p, 0.0, top_w), clip=cup, opaque=False)
        lid = _sd_box(p, 0.0, -0.38, top_w + 0.04, 0.06, 0.03)
        cv.paint(lid, (0.95, 0.95, 0.95) if rng.random() < 0.5 else (0.15, 0.15, 0.15), 0.9)
    else:  # stemmed glass with wine / juice
        rx, ry = rng.uniform(0.3, 0.4), rng.uniform(0.38, 0.48)
        bowl = torch.maximum(_sd_ellipse(p, 0.0, -0.3, rx, ry), -0.6 - y)
        stem = _sd_box(p, 0.0, 0.35, 0.04, 0.32)
        base = _sd_ellipse(p, 0.0, 0.68, rx * 0.9, 0.07)
        glass = (0.82, 0.86, 0.9)
        cv.paint(torch.minimum(stem, base), glass, _cyl_shade(p, 0.0, rx))
        cv.paint(bowl, glass, _cyl_shade(p, 0.0, rx))
        liquid = torch.maximum(_sd_ellipse(p, 0.0, -0.3, rx * 0.9, ry * 0.9), -0.35 - y)
        drink = rng.choice(((0.55, 0.05, 0.12), (0.95, 0.6, 0.1), (0.95, 0.9, 0.6)))
        cv.paint(liquid, drink, _cyl_shade(p, 0.0, rx), clip=bowl, opaque=False)
    return cv.result()


_N_FOOD, _N_DRINK = 6, 5


@lru_cache(maxsize=8)
def _object_bank(kind: str, count: int = _BANK_PER_KIND, size: int = _BANK_SIZE) -> Tensor:
    """Bank of procedural objects of one kind, (count, 4, size, size): alpha, premultiplied RGB.

    Built once per process from a fixed seed (about 0.1 s per kind), so every run and every
    worker sees the same shapes. Variants cycle so that each sub-type is equally represented.
    """
    rng = random.Random(f"{_BANK_SEED}-{kind}")
    shapes: list[Tensor] = []
    for i in range(count):
        if kind == "hand":
            shapes.append(_hand(rng, size))
        elif kind == "food":
            shapes.append(_food(rng, size, i % _N_FOOD))
        else:
            shapes.append(_drink(rng, size, i % _N_DRINK))
    return torch.stack([_tight(s, size) for s in shapes])


def _tight(shape: Tensor, size: int) -> Tensor:
    """Recentre a (4, S, S) bank entry so that its longer side spans the canvas (1 px margin).

    This makes ``scale`` of :class:`ObjectOccluder` mean the size of the object itself rather
    than of a canvas that a slim bottle fills only a third of.
    """
    ys, xs = (shape[0] > 0.05).nonzero(as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    side = max(y1 - y0, x1 - x0) + 2
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    # Crop a square of ``side`` around the centre (zero-padded) by resampling.
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    gy = (cy + c * side) / shape.shape[1] * 2 - 1
    gx = (cx + c * side) / shape.shape[2] * 2 - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], -1)[None]
    out = F.grid_sample(shape[None], grid, mode="bilinear", align_corners=False)[0]
    return out


# Skin tones from light to dark (RGB); hands are tinted by a random point between two neighbours.
_SKIN = torch.tensor(
    [
        [0.98, 0.86, 0.76],
        [0.94, 0.77, 0.64],
        [0.85, 0.65, 0.5],
        [0.7, 0.5, 0.37],
        [0.52, 0.36, 0.25],
        [0.37, 0.25, 0.18],
    ]
)


class ObjectOccluder:
    """Non-rectangular object occluders: hands, food and drinks (the paper's RAF-DB setting).

    A bank of procedurally generated objects (64x64 alpha + shaded RGB albedo, 32 per kind:
    hands with palm, fingers, thumb and forearm in varied poses; fruit, burgers, donuts/cookies,
    bananas, pizza slices, ice creams; mugs, bottles, cans, takeaway cups, stemmed glasses) is
    built once from a fixed seed. Per image: a kind (uniform over ``kinds``), a bank entry, a
    scale (fraction of the image side spanned by the 64x64 canvas), a rotation, a horizontal flip
    and a centre in the central 80% of the image (so objects may run off the edge), plus a colour
    transform (skin tone for hands, colour jitter for food, jitter and a channel permutation for
    drinks) and a linear lighting ramp. All images are resampled with one batched
    ``grid_sample`` call over a window just large enough for the biggest rotated object.

    Args:
        kinds: Non-empty subset of :data:`OBJECT_KINDS`.
        scale: (lo, hi) with 0 < lo <= hi <= 1.5: canvas side as a fraction of the image side.
        rotation: Maximum absolute rotation in degrees, in [0, 180].
    """

    def __init__(
        self,
        kinds: Sequence[str] = OBJECT_KINDS,
        scale: tuple[float, float] = (0.25, 0.5),
        rotation: float = 45.0,
    ) -> None:
        kinds = tuple(kinds)
        if not kinds or any(k not in OBJECT_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
            raise ValueError(
                f"ObjectOccluder: kinds must be distinct values from {OBJECT_KINDS}, got {kinds!r}"
            )
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.5:
            raise ValueError(
                f"ObjectOccluder: scale must be (lo, hi), 0 < lo <= hi <= 1.5, got {scale!r}"
            )
        if not 0.0 <= rotation <= 180.0:
            raise ValueError(f"ObjectOccluder: rotation must be in [0, 180], got {rotation!r}")
        self.kinds = kinds
        self.scale = (float(scale[0]), float(scale[1]))
        self.rotation = float(rotation)
        self.name = "objects" if set(kinds) == set(OBJECT_KINDS) else "objects-" + "+".join(kinds)
        banks = [_object_bank(k) for k in kinds]
        bank = torch.cat(banks)  # (N, 4, S, S)
        self._per_kind = banks[0].shape[0]
        # The bank is laid out as one zero-bordered atlas (1, 4, S + 2, N * (S + 2)) so that the
        # whole batch samples it in one grid_sample call without first gathering a (B, 4, S, S)
        # copy of the selected entries (which cost more than the sampling itself).
        n, ch, sz, _ = bank.shape
        padded = F.pad(bank, (1, 1, 1, 1))
        self._atlas = padded.permute(1, 2, 0, 3).reshape(1, ch, sz + 2, n * (sz + 2)).contiguous()
        self._n_entries = n
        self._entry_size = sz
        self._atlas_on: dict[torch.device, Tensor] = {}

    def __repr__(self) -> str:
        return f"ObjectOccluder(kinds={self.kinds!r}, scale={self.scale!r}, rotation={self.rotation!r})"

    def _atlas_for(self, device: torch.device) -> Tensor:
        if device not in self._atlas_on:
            self._atlas_on[device] = self._atlas.to(device)
        return self._atlas_on[device]

    def _tints(self, kind: Tensor, g: torch.Generator) -> Tensor:
        """(n, 3, 3) colour matrices: skin tone (hands), jitter (food), permuted jitter (drinks)."""
        n = kind.shape[0]
        gains = 1.0 + (torch.rand(n, 3, generator=g) - 0.5) * 0.3
        bright = _uniform(n, 0.8, 1.15, g).float().view(n, 1)
        t = _uniform(n, 0.0, len(_SKIN) - 1 - 1e-6, g)
        lo = t.floor().long()
        frac = (t - lo).float().view(n, 1)
        skin = _SKIN[lo] * (1 - frac) + _SKIN[lo + 1] * frac
        perm = torch.argsort(torch.rand(n, 3, generator=g), dim=1)
        diag = gains * bright
        if "hand" in self.kinds:
            # Hands keep the skin tone; a weaker per-channel jitter varies it a little.
            is_hand = (kind == self.kinds.index("hand")).view(n, 1)
            diag = torch.where(is_hand, skin * bright * (1 + (gains - 1) * 0.3), diag)
        mats = torch.diag_embed(diag)
        if "drink" in self.kinds:
            # Permuting colour channels turns a red can into a blue or green one.
            is_drink = (kind == self.kinds.index("drink")).view(n, 1, 1)
            mats = torch.where(is_drink, mats.gather(1, perm.view(n, 3, 1).expand(n, 3, 3)), mats)
        return mats

    def __call__(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Paste one object on each image; see :class:`Occluder` for shapes."""
        _check_call(self.name, images, generator)
        g = generator
        b, c, h, w = images.shape
        dev = images.device
        kind = torch.randint(len(self.kinds), (b,), generator=g)
        entry = kind * self._per_kind + torch.randint(self._per_kind, (b,), generator=g)
        side = _uniform(b, *self.scale, g) * w  # canvas side in pixels
        theta = _uniform(b, -self.rotation, self.rotation, g) * (math.pi / 180)
        flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0).double()
        cx = _uniform(b, 0.1, 0.9, g) * w
        cy = _uniform(b, 0.1, 0.9, g) * h
        light = _uniform(b, 0.0, 2 * math.pi, g)
        light_amp = _uniform(b, 0.0, 0.25, g)
        tints = self._tints(kind, g)

        # One window size for the batch: the largest rotated canvas (+1 px for bilinear support).
        cos, sin = torch.cos(theta), torch.sin(theta)
        extent = side * (cos.abs() + sin.abs())
        win = int(min(h, math.ceil(float(extent.max())) + 2))
        # Clamping the window into the image keeps every in-image pixel of the object inside it.
        x0 = torch.floor(cx - win / 2).long().clamp(0, w - win)
        y0 = torch.floor(cy - win / 2).long().clamp(0, h - win)
        # Window pixel -> canvas coordinates in [-1, 1] (align_corners=False): rotate by -theta.
        half = side / 2
        coef = torch.stack(
            [
                flip * cos / half,
                flip * sin / half,
                -sin / half,
                cos / half,
                x0.double() + 0.5 - cx,
                y0.double() + 0.5 - cy,
                torch.cos(light) * light_amp,
                torch.sin(light) * light_amp,
            ],
            1,
        ).float()
        coef, tints, x0d, y0d = coef.to(dev), tints.to(dev), x0.to(dev), y0.to(dev)
        ar = torch.arange(win, device=dev, dtype=torch.float32)
        dx = (coef[:, 4].view(b, 1) + ar).view(b, 1, win)
        dy = (coef[:, 5].view(b, 1) + ar).view(b, win, 1)
        gx = coef[:, 0].view(b, 1, 1) * dx + coef[:, 1].view(b, 1, 1) * dy
        gy = coef[:, 2].view(b, 1, 1) * dx + coef[:, 3].view(b, 1, 1) * dy
        # Canvas -> atlas coordinates. Clamping to the centres of the zero border pixels keeps
        # samples far outside the canvas from reading the neighbouring atlas entries.
        sz, n_all = self._entry_size, self._n_entries
        lim = 1.0 + 1.0 / sz
        col = (entry.double() * (sz + 2) + 1 + sz / 2) / (n_all * (sz + 2)) * 2 - 1
        grid = torch.empty(1, b * win, win, 2, device=dev)
        grid[0, ..., 0] = (
            gx.clamp(-lim, lim) * (sz / (n_all * (sz + 2))) + col.float().to(dev).view(b, 1, 1)
        ).view(b * win, win)
        grid[0, ..., 1] = (gy.clamp(-lim, lim) * (sz / (sz + 2))).view(b * win, win)
        sampled = F.grid_sample(
            self._atlas_for(dev), grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        sampled = sampled.view(4, b, win, win).transpose(0, 1)
        alpha = sampled[:, :1]
        obj_mask = alpha[:, 0] > 0.5
        rgb = sampled[:, 1:] / alpha.clamp_min(1e-3)
        rgb = torch.einsum("bij,bjhw->bihw", tints, rgb)
        ramp = (
            1.0
            + coef[:, 6].view(b, 1, 1, 1) * gx.unsqueeze(1)
            + coef[:, 7].view(b, 1, 1, 1) * gy.unsqueeze(1)
        )
        fill = _to_channels((rgb * ramp).clamp(0.0, 1.0), c).to(images.dtype)
        out = images.clone(memory_format=torch.contiguous_format)
        mask = torch.zeros(b, 1, h, w, device=dev, dtype=images.dtype)
        _scatter_windows(out, mask, y0d, x0d, fill, obj_mask)
        return out, mask


# ----------------------------------------------------------------------------------------------
# Policies and protocols
# ----------------------------------------------------------------------------------------------


class OcclusionPolicy:
    """Random mixture of occluders with the :class:`Occluder` contract.

    Each image independently stays clean with probability ``1 - p`` (mask all zero); otherwise it
    gets one occluder drawn with probabilities proportional to ``weights``. Each occluder runs
    once, on the sub-batch that chose it.

    Args:
        occluders: Non-empty sequence of occluders.
        weights: Non-negative weights with a positive sum, one per occluder; None = uniform.
        p: Probability in [0, 1] that an image is occluded.
        name: Name of the policy (default: the occluder names joined by "+").
    """

    def __init__(
        self,
        occluders: Sequence[Occluder],
        weights: Sequence[float] | None = None,
        p: float = 1.0,
        name: str | None = None,
    ) -> None:
        occluders = tuple(occluders)
        if not occluders:
            raise ValueError(f"OcclusionPolicy: occluders must be non-empty, got {occluders!r}")
        if weights is None:
            weights = [1.0] * len(occluders)
        weights = [float(v) for v in weights]
        if len(weights) != len(occluders) or any(not v >= 0 for v in weights) or sum(weights) <= 0:
            raise ValueError(
                f"OcclusionPolicy: weights must be {len(occluders)} non-negative numbers with a "
                f"positive sum, got {weights!r}"
            )
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"OcclusionPolicy: p must be in [0, 1], got {p!r}")
        self.occluders = occluders
        self.weights = tuple(weights)
        self.p = float(p)
        self.name = name if name is not None else "+".join(o.name for o in occluders)
        self._probs = torch.tensor(weights, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"OcclusionPolicy({self.name!r}, weights={self.weights!r}, p={self.p!r})"

    def __call__(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Occlude each image with one sampled occluder (or none); see :class:`Occluder`."""
        _check_call(f"OcclusionPolicy {self.name}", images, generator)
        b, _, h, w = images.shape
        active = torch.rand(b, generator=generator) < self.p
        choice = torch.multinomial(self._probs, b, replacement=True, generator=generator)
        choice = torch.where(active, choice, -1)
        out = images.clone(memory_format=torch.contiguous_format)
        mask = torch.zeros(b, 1, h, w, device=images.device, dtype=images.dtype)
        for k, occluder in enumerate(self.occluders):
            idx = (choice == k).nonzero().flatten()
            if idx.numel() == 0:
                continue
            idx_dev = idx.to(images.device)
            occ, m = occluder(images[idx_dev], generator)
            out[idx_dev] = occ
            mask[idx_dev] = m
        return out, mask


def _squares() -> list[Occluder]:
    return [SquareOccluder(8), SquareOccluder(16), SquareOccluder(24)]


def _regions() -> list[Occluder]:
    return [RegionOccluder("eyes"), RegionOccluder("mouth")]


def make_policy(name: str, p: float = 1.0) -> OcclusionPolicy:
    """Named training policy (uniform weights over its occluders).

    * "squares": R8, R16, R24; "regions": eyes, mouth; "objects": hands / food / drinks;
    * "ckplus": R8, R16, R24, eyes, mouth (the paper's CK+ setting);
    * "all": all six occluders above (each gets 1/6 of the occluded images).

    Args:
        name: One of :data:`POLICIES`.
        p: Probability that an image is occluded.

    Raises:
        ValueError: for an unknown name.
    """
    builders: dict[str, Callable[[], list[Occluder]]] = {
        "squares": _squares,
        "regions": _regions,
        "objects": lambda: [ObjectOccluder()],
        "ckplus": lambda: _squares() + _regions(),
        "all": lambda: _squares() + _regions() + [ObjectOccluder()],
    }
    if name not in builders:
        raise ValueError(f"make_policy: unknown policy name {name!r}; valid: {POLICIES}")
    return OcclusionPolicy(builders[name](), p=p, name=name)


def protocol_occluder(name: str) -> Occluder:
    """Occluder of a test protocol in :data:`PROTOCOLS` (all with "mixed" fills).

    Raises:
        ValueError: for an unknown protocol.
    """
    if name in ("r8", "r16", "r24"):
        return SquareOccluder(int(name[1:]))
    if name == "eye":
        return RegionOccluder("eyes")
    if name == "mouth":
        return RegionOccluder("mouth")
    if name == "objects":
        return ObjectOccluder()
    raise ValueError(f"protocol_occluder: unknown protocol {name!r}; valid: {PROTOCOLS}")


def _block_seed(seed: int, protocol: str, block: int) -> int:
    """Well-mixed 63-bit seed from (seed, protocol, block) (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + PROTOCOLS.index(protocol) * 0xBF58476D1CE4E5B9 + block) & (
        2**64 - 1
    )
    for mult, shift in ((0xBF58476D1CE4E5B9, 30), (0x94D049BB133111EB, 27)):
        z = ((z ^ (z >> shift)) * mult) & (2**64 - 1)
    return (z ^ (z >> 31)) & (2**63 - 1)


def apply_protocol(
    images: Tensor, name: str, seed: int = 0, chunk_size: int = 512
) -> tuple[Tensor, Tensor]:
    """Occlude a whole test set with a protocol, deterministically.

    Images are processed in fixed blocks of 64, each with a generator seeded from
    ``(seed, name, block index)``; ``chunk_size`` only bounds how many images are converted to
    float at once (rounded up to a multiple of 64), so it never changes the result and every
    model is tested on the same occluded pixels.

    Args:
        images: (N, C, H, W) uint8 in [0, 255] or float in [0, 1], on any device.
        name: Protocol, one of :data:`PROTOCOLS`.
        seed: Seed of the protocol draw.
        chunk_size: Images converted per step (memory knob only), >= 1.

    Returns:
        ``(occluded, mask)``: occluded (N, C, H, W) with the dtype of ``images`` (uint8 in,
        uint8 out), mask float32 (N, 1, H, W) in {0, 1} on ``images.device``.

    Raises:
        ValueError: for an unknown protocol, a bad ``chunk_size`` or bad images.
    """
    occluder = protocol_occluder(name)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"apply_protocol: chunk_size must be a positive int, got {chunk_size!r}")
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise ValueError(
            f"apply_protocol: images must be (N, C, H, W), got {getattr(images, 'shape', images)!r}"
        )
    is_uint8 = images.dtype == torch.uint8
    if not is_uint8 and not images.is_floating_point():
        raise ValueError(f"apply_protocol: images must be uint8 or float, got {images.dtype}")
    n, _, h, w = images.shape
    out = torch.empty_like(images)
    mask = torch.zeros(n, 1, h, w, device=images.device, dtype=torch.float32)
    step = -(-chunk_size // _PROTOCOL_BLOCK) * _PROTOCOL_BLOCK
    for start in range(0, n, step):
        chunk = images[start : start + step]
        x = chunk.float() / 255.0 if is_uint8 else chunk
        for b0 in range(0, x.shape[0], _PROTOCOL_BLOCK):
            block = (start + b0) // _PROTOCOL_BLOCK
            g = torch.Generator().manual_seed(_block_seed(seed, name, block))
            occ, m = occluder(x[b0 : b0 + _PROTOCOL_BLOCK], g)
            sl = slice(start + b0, start + b0 + occ.shape[0])
            out[sl] = (occ * 255.0).round().clamp(0, 255).to(torch.uint8) if is_uint8 else occ
            mask[sl] = m.to(torch.float32)
    return out, mask
