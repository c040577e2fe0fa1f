import pytest
import torch

from occstudy.losses import pretext_loss
from occstudy.models import OccNet, PretextNet, heads_for_pretext


@pytest.mark.parametrize(
    "stem,size,expect_c1",
    [
        ("imagenet", 48, 24),
        ("imagenet", 64, 32),
        ("small", 48, 48),
        ("imagenet", 112, 56),
        ("stride2", 48, 24),
    ],
)
def test_shapes(stem: str, size: int, expect_c1: int) -> None:
    net = OccNet(
        in_chans=1, stem=stem, heads=("classifier", "mask", "projector"), num_classes=7
    ).eval()
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        assert net.extractor.forward_conv1(x).shape == (2, 64, expect_c1, expect_c1)
        assert net.forward_features(x).shape == (2, 512)
        assert net(x).shape == (2, 7)
        assert net.predict_mask(x).shape == (2, 1, size, size)
        z_o, z_c, m = net.forward_pretext(x, x)
    assert z_o is not None and z_c is not None and m is not None
    assert z_o.shape == z_c.shape == (2, 128) and m.shape == (2, 1, size, size)


def test_rgb_input() -> None:
    net = OccNet(in_chans=3, num_classes=8).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 64, 64)).shape == (2, 8)


@pytest.mark.parametrize("variant", ["ss", "mask", "ss+mask"])
def test_pretext_every_parameter_gets_a_gradient(variant: str) -> None:
    torch.manual_seed(0)
    net = OccNet(heads=heads_for_pretext(variant))
    model = PretextNet(net).train()
    x = torch.randn(4, 1, 48, 48)
    x_occ = x.clone()
    x_occ[:, :, 10:26, 10:26] = 0.0
    mask = torch.zeros(4, 1, 48, 48)
    mask[:, :, 10:26, 10:26] = 1.0
    need_z = variant != "mask"
    z_o, z_c, m = model(x, x_occ, need_z=need_z, need_mask=variant != "ss")
    loss = pretext_loss(
        variant, z_occluded=z_o, z_clean=z_c, mask_logits=m, mask=mask, tau=2.0, lam=0.2
    )
    assert torch.isfinite(loss.total)
    loss.total.backward()
    for name, p in model.named_parameters():
        if not need_z and ".layer" in name:
            # L_mask reaches only conv1 of F (U_o attaches there), by the method's design.
            assert p.grad is None, name
            continue
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize(
    "arch,stem", [("resnet34", "imagenet"), ("resnet18", "stride2"), ("resnet18", "small")]
)
def test_finetune_every_parameter_gets_a_gradient(arch: str, stem: str) -> None:
    torch.manual_seed(0)
    net = OccNet(heads=("classifier",), num_classes=7, arch=arch, stem=stem).train()
    out = net(torch.randn(4, 1, 48, 48))
    assert not torch.isnan(out).any()
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="in_chans"):
        OccNet(in_chans=2)
    with pytest.raises(ValueError, match="stem"):
        OccNet(stem="tiny")
    with pytest.raises(ValueError, match="heads"):
        OccNet(heads=("decoder",))
    with pytest.raises(ValueError, match="arch"):
        OccNet(arch="resnet50")
    with pytest.raises(RuntimeError, match="classifier"):
        OccNet(heads=("mask",))(torch.randn(1, 1, 48, 48))


def test_classifier_init_does_not_depend_on_the_other_heads() -> None:
    torch.manual_seed(3)
    plain = OccNet(heads=("classifier",))
    torch.manual_seed(3)
    with_mask = OccNet(heads=("classifier", "mask"))
    for a, b in zip(plain.classifier.parameters(), with_mask.classifier.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resnet18_is_smaller_and_stride2_keeps_no_maxpool() -> None:
    def n_params(net: torch.nn.Module) -> int:
        return sum(p.numel() for p in net.parameters())

    r18 = OccNet(arch="resnet18", stem="stride2", num_classes=7)
    r34 = OccNet(arch="resnet34", stem="stride2", num_classes=7)
    assert n_params(r18) < 0.6 * n_params(r34)
    # After a 3x3/2 stem and no max-pool, layer4 sees 48 / 16 = 3 pixels a side.
    feats = r18.extractor.forward_conv1(torch.randn(1, 1, 48, 48))
    assert feats.shape[-1] == 24
