import json
import math

import pytest
import torch

from occstudy.data import normalize
from occstudy.losses import pretext_loss
from occstudy.models import (
    NORM_MEAN,
    NORM_STD,
    ModelConfig,
    OccNet,
    PretextNet,
    heads_for_pretext,
)


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
        assert net.forward_head(net.forward_features(x), pre_logits=True).shape == (2, 512)
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


# ------------------------------------------------------------------ forward_features / head


@pytest.mark.parametrize(
    "stem,size,side",
    [("imagenet", 48, 2), ("imagenet", 64, 2), ("small", 48, 3), ("stride2", 40, 3)],
)
def test_forward_features_and_head(stem: str, size: int, side: int) -> None:
    torch.manual_seed(0)
    net = OccNet(arch="resnet18", stem=stem, heads=("classifier", "mask"), num_classes=5).eval()
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        feats = net.forward_features(x)
        assert feats.shape == (2, 512, side, side)
        logits = net.forward_head(feats)
        h = net.forward_head(feats, pre_logits=True)
        assert logits.shape == (2, 5) and h.shape == (2, 512)
        # Same operations in the same order: equal, not merely close.
        assert torch.equal(logits, net(x))
        assert torch.equal(h, net.extractor(x))
        assert torch.equal(net.extractor.forward_head(feats), h)
        assert torch.equal(net.forward_with_mask(x)[0], logits)


def test_forward_head_checks_its_input() -> None:
    net = OccNet(arch="resnet18", heads=("mask",)).eval()
    feats = torch.randn(1, 512, 2, 2)
    assert net.forward_head(feats, pre_logits=True).shape == (1, 512)
    with pytest.raises(RuntimeError, match="classifier"):
        net.forward_head(feats)
    with pytest.raises(ValueError, match=r"\(B, 512, h, w\).*\(1, 512\)"):
        net.forward_head(torch.randn(1, 512), pre_logits=True)


# ------------------------------------------------------------------------------ ModelConfig

NAMES = ("calm", "joy", "rage")


def _config(**overrides: object) -> ModelConfig:
    kwargs: dict[str, object] = {
        "arch": "resnet18",
        "stem": "stride2",
        "in_chans": 1,
        "image_size": 48,
        "class_names": NAMES,
    }
    kwargs.update(overrides)
    return ModelConfig(**kwargs)  # type: ignore[arg-type]


def test_model_config_defaults_are_what_training_normalises_with() -> None:
    cfg = _config()
    assert cfg.mean == (NORM_MEAN,) and cfg.std == (NORM_STD,) and cfg.num_classes == 3
    x = torch.rand(2, 1, 4, 4)
    assert torch.equal(normalize(x), (x - cfg.mean[0]) / cfg.std[0])


def test_model_config_round_trip_is_plain_python() -> None:
    cfg = _config(in_chans=3, image_size=64, mean=(0.4, 0.5, 0.6), std=[0.25])
    assert cfg.std == (0.25,)  # lists are stored as tuples
    d = cfg.to_dict()
    assert d == json.loads(json.dumps(d))  # only str, int, float and lists
    assert d["class_names"] == list(NAMES) and d["image_size"] == 64
    back = ModelConfig.from_dict(d)
    assert back == cfg and back.class_names == NAMES and isinstance(back.class_names, tuple)
    with pytest.raises(AttributeError):
        cfg.image_size = 32  # type: ignore[misc]


@pytest.mark.parametrize(
    "field,value,why",
    [
        ("arch", "resnet50", "must be one of"),
        ("stem", "tiny", "must be one of"),
        ("in_chans", 2, "1 or 3"),
        ("in_chans", True, "1 or 3"),
        ("image_size", 10**6, r"int in \[32, 1024\]"),
        ("image_size", 16, r"int in \[32, 1024\]"),
        ("image_size", 48.0, "int in"),
        ("class_names", "calm,joy", "tuple of class names"),
        ("class_names", ("calm",), "at least 2"),
        ("class_names", ("calm", ""), "non-empty str"),
        ("class_names", ("calm", 1), "non-empty str"),
        ("class_names", ("calm", "joy", "calm"), r"unique, repeated: \['calm'\]"),
        ("mean", (0.5, 0.5), "1 value .* or 1"),
        ("mean", (math.nan,), "finite"),
        ("mean", 0.5, "tuple of numbers"),
        ("std", (0.0,), "> 0"),
        ("std", (True,), "finite numbers"),
    ],
)
def test_model_config_validation_names_field_and_value(field: str, value: object, why: str) -> None:
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field}=.*: .*{why}") as err:
        _config(**{field: value})
    assert repr(value)[:8] in str(err.value)


def test_model_config_from_dict_rejects_unknown_and_missing_keys() -> None:
    d = _config().to_dict()
    with pytest.raises(ValueError, match=r"unknown keys \['num_classes'\]"):
        ModelConfig.from_dict({**d, "num_classes": 3})
    partial = {k: v for k, v in d.items() if k not in ("std", "image_size")}
    with pytest.raises(ValueError, match=r"missing keys \['image_size', 'std'\]"):
        ModelConfig.from_dict(partial)
    with pytest.raises(ValueError, match="expected a mapping, got list"):
        ModelConfig.from_dict([("arch", "resnet18")])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"ModelConfig\.image_size=1000000"):
        ModelConfig.from_dict({**d, "image_size": 10**6})


def test_occnet_from_config() -> None:
    cfg = _config(in_chans=3, stem="small")
    net = OccNet.from_config(cfg, heads=("classifier", "mask"))
    assert (net.extractor.arch, net.extractor.stem, net.extractor.in_chans) == (
        "resnet18",
        "small",
        3,
    )
    assert net.mask_head is not None and net.projector is None
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)
