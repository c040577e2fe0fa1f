import math

import pytest
import torch
import torch.nn.functional as F

from occstudy.losses import occlusion_loss, pretext_loss, similarity_loss


def reference_similarity_loss(z_po: torch.Tensor, z_pc: torch.Tensor, tau: float) -> float:
    """L_SS as :func:`occstudy.losses.similarity_loss` writes it out, with loops."""
    k = z_po.shape[0]
    vectors = [z_po[j] for j in range(k)] + [z_pc[j] for j in range(k)]

    def sim(u: torch.Tensor, v: torch.Tensor) -> float:
        return float(u @ v / (u.norm() * v.norm()))

    total = 0.0
    for j in range(k):
        for anchor_idx, pos_idx in ((j, k + j), (k + j, j)):  # L_spo_j, then L_spc_j
            anchor = vectors[anchor_idx]
            num = math.exp(sim(anchor, vectors[pos_idx]) / tau)
            den = sum(
                math.exp(sim(anchor, vectors[i]) / tau) for i in range(2 * k) if i != anchor_idx
            )
            total += -math.log(num / den)
    return total / (2 * k)


def reference_occlusion_loss(logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Equation 3: mean per-pixel binary cross-entropy, with explicit loops."""
    flat_l = logits.flatten().tolist()
    flat_m = mask.flatten().tolist()
    total = 0.0
    for lg, m in zip(flat_l, flat_m, strict=True):
        p = 1 / (1 + math.exp(-lg))
        total += -(m * math.log(p) + (1 - m) * math.log(1 - p))
    return total / len(flat_l)


@pytest.mark.parametrize("k,d,tau", [(1, 3, 0.5), (4, 8, 2.0), (7, 5, 0.1)])
def test_similarity_loss_matches_reference(k: int, d: int, tau: float) -> None:
    g = torch.Generator().manual_seed(k * 100 + d)
    z_po = torch.randn(k, d, generator=g, dtype=torch.float64)
    z_pc = torch.randn(k, d, generator=g, dtype=torch.float64)
    got = similarity_loss(z_po, z_pc, tau).item()
    assert got == pytest.approx(reference_similarity_loss(z_po, z_pc, tau), rel=1e-5)


def test_similarity_loss_hand_computed() -> None:
    # K=2, τ=1: each vector has cosine 1 with its partner and 0 with both others, so every term
    # is -log(e / (e + 1 + 1)) = log(1 + 2/e).
    z_po = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z_pc = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # norms must not matter
    assert similarity_loss(z_po, z_pc, 1.0).item() == pytest.approx(
        math.log(1 + 2 / math.e), rel=1e-6
    )


def test_similarity_loss_prefers_aligned_pairs() -> None:
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    aligned = similarity_loss(z, z + 0.01, 0.5)
    shuffled = similarity_loss(z, z.roll(1, 0), 0.5)
    assert aligned < shuffled


@pytest.mark.parametrize("tau", [0.0, -1.0])
def test_similarity_loss_rejects_bad_tau(tau: float) -> None:
    with pytest.raises(ValueError, match="tau"):
        similarity_loss(torch.randn(2, 3), torch.randn(2, 3), tau)


def test_similarity_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        similarity_loss(torch.randn(2, 3), torch.randn(3, 3), 1.0)
    with pytest.raises(ValueError, match=r"\(K, D\)"):
        similarity_loss(torch.randn(2, 3, 1), torch.randn(2, 3, 1), 1.0)


def test_similarity_loss_gather_without_process_group_is_local() -> None:
    # No torch.distributed group in this process: gather_distributed must change nothing.
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())
    g = torch.Generator().manual_seed(3)
    base = torch.randn(2, 5, 4, generator=g)
    results = []
    for gather in (False, True):
        z_po, z_pc = (t.clone().requires_grad_(True) for t in base)
        loss = similarity_loss(z_po, z_pc, 0.3, gather_distributed=gather)
        loss.backward()
        results.append((loss.detach(), z_po.grad, z_pc.grad))
    for off, on in zip(*results, strict=True):
        assert torch.equal(off, on)
    assert torch.equal(results[0][0], similarity_loss(base[0], base[1], 0.3))


@pytest.mark.parametrize("shape", [(3, 1, 4, 5), (2, 6, 6)])
def test_occlusion_loss_matches_reference(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(*shape, generator=g, dtype=torch.float64)
    mask = (torch.rand(*shape, generator=g) > 0.5).double()
    assert occlusion_loss(logits, mask).item() == pytest.approx(
        reference_occlusion_loss(logits, mask), rel=1e-5
    )


def test_occlusion_loss_hand_computed() -> None:
    # σ(0) = 1/2 everywhere, so the loss is log 2 whatever the mask.
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert occlusion_loss(torch.zeros_like(mask), mask).item() == pytest.approx(math.log(2))


def test_occlusion_loss_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        occlusion_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match=r"\(K, 1, H, W\)"):
        occlusion_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4))


def test_pretext_loss_variants_combine_terms() -> None:
    g = torch.Generator().manual_seed(2)
    z_po, z_pc = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    logits = torch.randn(4, 1, 6, 6, generator=g)
    mask = (torch.rand(4, 1, 6, 6, generator=g) > 0.5).float()
    kw = dict(z_occluded=z_po, z_clean=z_pc, mask_logits=logits, mask=mask, tau=0.7, lam=3.0)
    ss = similarity_loss(z_po, z_pc, 0.7)
    lm = F.binary_cross_entropy_with_logits(logits, mask)
    assert pretext_loss("ss", **kw).total.item() == pytest.approx(ss.item())
    assert pretext_loss("mask", **kw).total.item() == pytest.approx(lm.item())
    both = pretext_loss("ss+mask", **kw)
    assert both.total.item() == pytest.approx(ss.item() + 3.0 * lm.item(), rel=1e-6)
    assert both.ss.item() == pytest.approx(ss.item()) and both.mask.item() == pytest.approx(
        lm.item()
    )


def test_pretext_loss_rejects_unknown_variant_and_missing_inputs() -> None:
    with pytest.raises(ValueError, match="variant"):
        pretext_loss("none", z_occluded=torch.zeros(2, 2), z_clean=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="mask_logits"):
        pretext_loss("ss+mask", z_occluded=torch.randn(2, 2), z_clean=torch.randn(2, 2))
