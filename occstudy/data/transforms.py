"""Batched image transforms on tensors (any device), used by training loops.

All functions take ``(B, C, H, W)`` batches; randomness is drawn on CPU from an explicit
generator so that results do not depend on the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import DataError


def _check_batch(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise DataError(f"{what}: expected a (B, C, H, W) tensor, got {tuple(x.shape)}")


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Convert uint8 images to float32 in ``[0, 1]``.

    Args:
        images: uint8 ``(B, C, H, W)``.

    Returns:
        float32 ``(B, C, H, W)``.
    """
    if images.dtype != torch.uint8:
        raise DataError(f"to_float: expected uint8 images, got {images.dtype}")
    return images.to(torch.float32).div_(255.0)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased square resize; a no-op when already ``size x size``.

    Args:
        x: ``(B, C, h, w)``, uint8 or float.
        size: Output side length.

    Returns:
        ``(B, C, size, size)`` of the input dtype (uint8 is rounded and clamped).
    """
    _check_batch(x, "resize")
    if size < 1:
        raise DataError(f"resize: size must be >= 1, got {size}")
    if x.shape[-2:] == (size, size):
        return x
    y = F.interpolate(
        x.to(torch.float32), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    if x.dtype == torch.uint8:
        return y.round_().clamp_(0, 255).to(torch.uint8)
    return y.to(x.dtype)


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    # Reflect without repeating the edge pixel, like F.pad(mode="reflect"); valid for |pad| < n.
    i = torch.where(i < 0, -i, i)
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def random_crop_flip(
    x: torch.Tensor, generator: torch.Generator, padding: int | None = None
) -> torch.Tensor:
    """Per-image random crop after reflect padding, and random horizontal flip.

    Vectorised as one gather: the padded image is never materialised.

    Args:
        x: ``(B, C, H, W)`` of any dtype and device.
        generator: CPU generator; offsets and flips are drawn on CPU, then moved to
            ``x.device``, so results are identical across devices.
        padding: Reflect padding in pixels; default ``H // 8``.

    Returns:
        ``(B, C, H, W)``, same dtype and device.
    """
    _check_batch(x, "random_crop_flip")
    b, _, h, w = x.shape
    pad = h // 8 if padding is None else int(padding)
    if pad < 0 or pad >= min(h, w):
        raise DataError(f"random_crop_flip: padding {pad} must be in [0, {min(h, w)})")
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    rows = _reflect(oy[:, None] + torch.arange(h) - pad, h)  # (B, H)
    cols = _reflect(ox[:, None] + torch.arange(w) - pad, w)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(-1), cols)
    dev = x.device
    rows, cols = rows.to(dev), cols.to(dev)
    bidx = torch.arange(b, device=dev)[:, None, None]
    # Advanced indexing puts the indexed dims first: (B, H, W, C).
    out = x.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def random_affine_flip(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    degrees: float = 15.0,
    scale: tuple[float, float] = (0.9, 1.1),
    translate: float = 0.1,
) -> torch.Tensor:
    """Per-image random rotation, zoom, shift and horizontal flip, as one ``grid_sample``.

    Faces in FER sets are roughly aligned but tilted and framed differently; a crop only shifts
    them. The output pixel at normalised position ``p`` samples the input at
    ``F · R(-θ) · p / s + t`` (bilinear, reflection at the border), with θ uniform in
    ``[-degrees, degrees]``, zoom ``s`` uniform in ``scale``, shift ``t`` uniform in
    ``[-translate, translate]`` of the side per axis, and ``F`` a mirror with probability 1/2.

    Args:
        x: float ``(B, C, H, W)`` on any device.
        generator: CPU generator; all parameters are drawn on CPU, so results are identical
            across devices.
        degrees: Largest rotation, in degrees.
        scale: Range of the zoom factor (> 1 zooms in).
        translate: Largest shift as a fraction of the side.

    Returns:
        ``(B, C, H, W)``, same dtype and device.
    """
    _check_batch(x, "random_affine_flip")
    if not x.is_floating_point():
        raise DataError(f"random_affine_flip: expected float images, got {x.dtype}")
    if not (0 < scale[0] <= scale[1]) or degrees < 0 or not 0 <= translate < 1:
        raise DataError(
            f"random_affine_flip: degrees={degrees}, scale={scale}, translate={translate} "
            "out of range (degrees >= 0, 0 < scale[0] <= scale[1], 0 <= translate < 1)"
        )
    b = x.shape[0]
    theta = (torch.rand(b, generator=generator) * 2 - 1) * (degrees * torch.pi / 180)
    zoom = scale[0] + torch.rand(b, generator=generator) * (scale[1] - scale[0])
    # Normalised coordinates span [-1, 1], so a shift of a fraction f of the side is 2f.
    shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * (2 * translate)
    mirror = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(theta) / zoom, torch.sin(theta) / zoom
    matrix = torch.stack(
        [
            torch.stack([cos * mirror, -sin, shift[:, 0]], dim=1),
            torch.stack([sin * mirror, cos, shift[:, 1]], dim=1),
        ],
        dim=1,
    )  # (B, 2, 3)
    matrix = matrix.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(matrix, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def normalize(x: torch.Tensor, mean: float = 0.5, std: float = 0.5) -> torch.Tensor:
    """Standardise float images: ``(x - mean) / std``.

    Args:
        x: float ``(B, C, H, W)`` in ``[0, 1]``.
        mean: Mean to subtract.
        std: Standard deviation to divide by.

    Returns:
        float ``(B, C, H, W)``.
    """
    if not x.is_floating_point():
        raise DataError(f"normalize: expected float images (use to_float first), got {x.dtype}")
    if std <= 0:
        raise DataError(f"normalize: std must be > 0, got {std}")
    return (x - mean) / std
