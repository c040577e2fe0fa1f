"""Pretext losses of the method (the paper's equations 1-3, each written out below).

* :func:`similarity_loss` — L_SS, an NT-Xent loss between faces and their occluded copies;
  under DDP it can take the other workers' embeddings as extra negatives (``gather_distributed``).
* :func:`occlusion_loss` — L_mask, per-pixel binary cross-entropy of the predicted occlusion mask.
* :func:`pretext_loss` — L_pre = L_SS + λ·L_mask and its ablation variants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from occstudy.method import PRETEXT_VARIANTS, VARIANTS, get_variant

# The ablation variants are defined in occstudy.method; ``none`` has no pretext stage at all,
# so it has no pretext loss.
__all__ = [
    "PRETEXT_VARIANTS",
    "VARIANTS",
    "PretextLoss",
    "occlusion_loss",
    "pretext_loss",
    "similarity_loss",
]


def _distributed_world() -> int:
    """World size of the default process group; 1 when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 that lets gradients reach every worker's own rows.

    Forward: this worker's (K_r, ...) rows → every worker's rows in rank order, (N, ...) with
    N = Σ K_r (workers may hold different K_r). Backward: the gradient of this worker's loss
    w.r.t. all N rows is summed over workers (all-reduce) and this worker's slice is returned,
    so its rows receive Σ_r ∂L_r/∂z — the other workers' losses use them as negatives too.
    Returning only this worker's slice of its own loss's gradient (as some ``GatherLayer``
    ports of SimCLR do) would drop those terms, and the DDP update would no longer be that of
    the global-batch loss.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int], rank: int) -> Tensor:
        offset = sum(sizes[:rank])
        ctx.rows = (offset, offset + sizes[rank])
        longest = max(sizes)
        # all_gather wants one shape on every worker: pad to the longest batch, then cut.
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        # all_reduce works in place: never write into a gradient autograd may still hold.
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        lo, hi = ctx.rows
        return total[lo:hi], None, None


def _gather_rows(x: Tensor) -> tuple[Tensor, int]:
    """Every worker's rows of ``x`` in rank order (gradient-preserving) and this worker's offset.

    A collective: every worker of the default process group must call it, in the same order.
    """
    world = dist.get_world_size()
    rank = dist.get_rank()
    mine = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    counts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(counts, mine)
    sizes = [int(c.item()) for c in counts]
    gathered: Tensor = _GatherRows.apply(x, sizes, rank)
    return gathered, sum(sizes[:rank])


def similarity_loss(
    z_occluded: Tensor, z_clean: Tensor, tau: float, *, gather_distributed: bool = False
) -> Tensor:
    r"""Similarity loss L_SS (the paper's equations 1-2), the NT-Xent form.

    For K clean faces and their K occluded copies, with ``sim(u, v) = u·v / (|u| |v|)``:

    .. math::
        L^{po}_j = -\log \frac{\exp(\mathrm{sim}(z^{po}_j, z^{pc}_j)/\tau)}
                              {\sum_{z \in \mathcal{Z},\, z \ne z^{po}_j}
                               \exp(\mathrm{sim}(z^{po}_j, z)/\tau)}

    :math:`L^{pc}_j` likewise anchored on :math:`z^{pc}_j`, and
    :math:`L_{SS} = \frac{1}{2K}\sum_j (L^{po}_j + L^{pc}_j)`, the sum over this call's K
    pairs (the anchors). :math:`\mathcal{Z}` is the set of candidates of the denominator:

    * ``gather_distributed=False`` (default), or torch.distributed not initialised, or world
      size 1: :math:`\mathcal{Z}` is this call's own 2K vectors, so the denominator runs over
      the other 2K-1 vectors of the batch, the positive included. Under DDP each worker then
      contrasts only with its own batch — the paper's single-GPU setting, with K the
      per-worker batch size. Logits (2K, 2K).
    * ``gather_distributed=True`` with W > 1 workers: the workers' embeddings are all-gathered
      (worker r holds K_r pairs, N = Σ_r K_r) and :math:`\mathcal{Z}` is the global batch's 2N
      vectors; the anchors stay this worker's 2K, so each worker's loss is the single-process
      loss on the global batch restricted to its local anchors, and the 2N-2 vectors other
      than the anchor's own pair are negatives. Logits (2K, 2N). With equal K_r, the mean of
      the workers' losses is the single-process L_SS on the global batch; the gather's
      backward sums every worker's gradient into the rows it came from, so after DDP's
      gradient averaging the update is that of one process on the global batch. It is a
      collective: every worker must call it on every step (K_r may differ, K_r ≥ 1).

    Args:
        z_occluded: Projections of the occluded faces, shape (K, D).
        z_clean: Projections of the clean faces, shape (K, D); row j pairs with row j.
        tau: Temperature τ > 0.
        gather_distributed: Take the other DDP workers' embeddings as extra negatives (see
            above); no effect without an initialised process group of world size > 1.

    Returns:
        Scalar tensor (float32).

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
    z = F.normalize(torch.cat([z_occluded, z_clean], dim=0).float(), dim=1)  # (2K, D)
    candidates, n, offset = z, k, 0  # Z in the docstring: (2N, D), local pairs at rows offset+j
    if gather_distributed and _distributed_world() > 1:
        # Gather (po_j, pc_j) pairs so that Z can be laid out as the global batch would be.
        pairs, offset = _gather_rows(torch.stack([z[:k], z[k:]], dim=1))  # (N, 2, D)
        n = pairs.shape[0]
        candidates = torch.cat([pairs[:, 0], pairs[:, 1]], dim=0)
    logits = z @ candidates.t() / tau  # (2K, 2N) cosine similarities / τ
    idx = torch.arange(k, device=z.device)
    rows = torch.arange(2 * k, device=z.device)
    # A vector is never its own negative: drop each anchor's own column from its denominator.
    self_cols = torch.cat([idx + offset, idx + n + offset])
    self_mask = torch.zeros(2 * k, 2 * n, dtype=torch.bool, device=z.device)
    self_mask[rows, self_cols] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    targets = torch.cat([idx + n + offset, idx + offset])  # po_j ↔ pc_j
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
    gather_distributed: bool = False,
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
        gather_distributed: L_SS takes the other DDP workers' embeddings as extra negatives
            (see :func:`similarity_loss`; False: each worker contrasts within its own batch).
            A collective for ``ss`` and ``ss+mask``: every worker must call this every step.

    Returns:
        :class:`PretextLoss` with the total and both terms.
    """
    if variant not in PRETEXT_VARIANTS:
        raise ValueError(
            f"pretext_loss: variant must be one of {PRETEXT_VARIANTS}, got {variant!r}"
        )
    if lam < 0:
        raise ValueError(f"pretext_loss: lam must be >= 0, got {lam!r}")
    use_ss, use_mask = get_variant(variant).uses_ss, get_variant(variant).uses_mask
    ref = next(t for t in (z_occluded, mask_logits) if t is not None)
    zero = ref.new_zeros((), dtype=torch.float32)
    ss = zero
    msk = zero
    if use_ss:
        if z_occluded is None or z_clean is None:
            raise ValueError(f"pretext_loss: variant {variant!r} needs z_occluded and z_clean")
        ss = similarity_loss(z_occluded, z_clean, tau, gather_distributed=gather_distributed)
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
