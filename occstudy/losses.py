"""Pretext losses of the method (the paper's equations 1-3, each written out below).

* :func:`similarity_loss` — L_SS, an NT-Xent loss between faces and their occluded copies.
* :func:`occlusion_loss` — L_mask, per-pixel binary cross-entropy of the predicted occlusion mask.
* :func:`pretext_loss` — L_pre = L_SS + λ·L_mask and its ablation variants.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

#: Ablation variants. ``none`` has no pretext stage at all, so it has no pretext loss.
VARIANTS: tuple[str, ...] = ("none", "ss", "mask", "ss+mask")
PRETEXT_VARIANTS: tuple[str, ...] = ("ss", "mask", "ss+mask")


def similarity_loss(z_occluded: Tensor, z_clean: Tensor, tau: float) -> Tensor:
    r"""Similarity loss L_SS (the paper's equations 1-2), the NT-Xent form.

    For K clean faces and their K occluded copies, with ``sim(u, v) = u·v / (|u| |v|)``:

    .. math::
        L^{po}_j = -\log \frac{\exp(\mathrm{sim}(z^{po}_j, z^{pc}_j)/\tau)}
                              {\sum_{z \ne z^{po}_j} \exp(\mathrm{sim}(z^{po}_j, z)/\tau)}

    :math:`L^{pc}_j` likewise anchored on :math:`z^{pc}_j`, and
    :math:`L_{SS} = \frac{1}{2K}\sum_j (L^{po}_j + L^{pc}_j)`. The denominator runs over the
    other 2K-1 vectors of the batch, the positive included.

    Args:
        z_occluded: Projections of the occluded faces, shape (K, D).
        z_clean: Projections of the clean faces, shape (K, D); row j pairs with row j.
        tau: Temperature τ > 0.

    Returns:
        Scalar tensor.

    Raises:
        ValueError: if τ ≤ 0, the shapes differ, are not 2-D, or K < 1.
    """
    if not tau > 0:
        raise ValueError(f"similarity_loss: tau must be > 0, got {tau!r}")
    if z_occluded.ndim != 2 or z_clean.ndim != 2:
        raise ValueError(
            "similarity_loss: expected z_occluded and z_clean of shape (K, D), got "
            f"{tuple(z_occluded.shape)} and {tuple(z_clean.shape)}"
        )
    if z_occluded.shape != z_clean.shape:
        raise ValueError(
            "similarity_loss: z_occluded and z_clean must have the same shape, got "
            f"{tuple(z_occluded.shape)} and {tuple(z_clean.shape)}"
        )
    k = z_occluded.shape[0]
    if k < 1:
        raise ValueError("similarity_loss: need at least one pair (K >= 1)")
    # Compute in float32 even under autocast: exp(sim/τ) over 2K-1 terms is precision-sensitive.
    z = F.normalize(torch.cat([z_occluded, z_clean], dim=0).float(), dim=1)
    logits = z @ z.t() / tau  # (2K, 2K) cosine similarities / τ
    # A vector is never its own negative: drop the diagonal from every denominator.
    self_mask = torch.eye(2 * k, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    idx = torch.arange(k, device=z.device)
    targets = torch.cat([idx + k, idx])  # po_j ↔ pc_j
    return F.cross_entropy(logits, targets)


def occlusion_loss(mask_logits: Tensor, mask: Tensor) -> Tensor:
    r"""Occlusion loss L_mask (the paper's equation 3).

    Per-pixel binary cross-entropy between the predicted occlusion probability
    :math:`\hat M = \sigma(\text{logits})` and the true mask M (1 = occluded), averaged over
    H × W and the batch:

    .. math::
        L_{mask} = -\frac{1}{KHW}\sum_{k,h,w} M \log \hat M + (1-M)\log(1-\hat M)

    Args:
        mask_logits: Logits of U_o, shape (K, 1, H, W) or (K, H, W).
        mask: Binary mask, same shape as ``mask_logits`` (any float or bool dtype).

    Returns:
        Scalar tensor.

    Raises:
        ValueError: if the shapes differ or are not (K, 1, H, W) / (K, H, W).
    """
    if mask_logits.shape != mask.shape:
        raise ValueError(
            "occlusion_loss: mask_logits and mask must have the same shape, got "
            f"{tuple(mask_logits.shape)} and {tuple(mask.shape)}"
        )
    if mask_logits.ndim == 4 and mask_logits.shape[1] != 1 or mask_logits.ndim not in (3, 4):
        raise ValueError(
            f"occlusion_loss: expected shape (K, 1, H, W) or (K, H, W), got {tuple(mask.shape)}"
        )
    return F.binary_cross_entropy_with_logits(mask_logits.float(), mask.float())


@dataclass(frozen=True)
class PretextLoss:
    """The terms of one pretext loss evaluation (all scalar tensors)."""

    total: Tensor
    ss: Tensor
    mask: Tensor


def pretext_loss(
    variant: str,
    *,
    z_occluded: Tensor | None = None,
    z_clean: Tensor | None = None,
    mask_logits: Tensor | None = None,
    mask: Tensor | None = None,
    tau: float = 2.0,
    lam: float = 0.2,
) -> PretextLoss:
    """Pretext loss L_pre of a variant: ``ss`` = L_SS, ``mask`` = L_mask, ``ss+mask`` = L_SS + λ·L_mask.

    A term the variant does not use is reported as a zero (not computed), so the caller can log
    every term under the same names for every variant.

    Args:
        variant: One of ``ss``, ``mask``, ``ss+mask``.
        z_occluded: (K, D) projections of occluded faces; needed for ``ss`` and ``ss+mask``.
        z_clean: (K, D) projections of clean faces; needed for ``ss`` and ``ss+mask``.
        mask_logits: (K, 1, H, W) logits of U_o on the occluded faces; needed for ``mask`` variants.
        mask: (K, 1, H, W) true occlusion masks.
        tau: Temperature τ > 0 of L_SS.
        lam: Weight λ ≥ 0 of L_mask in ``ss+mask``.

    Returns:
        :class:`PretextLoss` with the total and both terms.
    """
    if variant not in PRETEXT_VARIANTS:
        raise ValueError(
            f"pretext_loss: variant must be one of {PRETEXT_VARIANTS}, got {variant!r}"
        )
    if lam < 0:
        raise ValueError(f"pretext_loss: lam must be >= 0, got {lam!r}")
    use_ss = variant in ("ss", "ss+mask")
    use_mask = variant in ("mask", "ss+mask")
    ref = next(t for t in (z_occluded, mask_logits) if t is not None)
    zero = ref.new_zeros((), dtype=torch.float32)
    ss = zero
    msk = zero
    if use_ss:
        if z_occluded is None or z_clean is None:
            raise ValueError(f"pretext_loss: variant {variant!r} needs z_occluded and z_clean")
        ss = similarity_loss(z_occluded, z_clean, tau)
    if use_mask:
        if mask_logits is None or mask is None:
            raise ValueError(f"pretext_loss: variant {variant!r} needs mask_logits and mask")
        msk = occlusion_loss(mask_logits, mask)
    if variant == "ss":
        total = ss
    elif variant == "mask":
        total = msk
    else:
        total = ss + lam * msk
    return PretextLoss(total=total, ss=ss, mask=msk)
