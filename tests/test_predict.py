"""Tests of occstudy.predict: checkpoint -> model, image files -> predictions, overlays, text.

The machine is shared with long benchmarks, so the whole module builds only two ResNet-34s
(the saved network and the one load_model rebuilds) at 32 px; class-name and error tests use
checkpoints of tiny stand-in modules whose state-dict keys look like OccNet's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from occstudy.data import EMOTIONS, EMOTIONS7, synthetic_faces
from occstudy.models import Classifier, MaskHead, OccNet
from occstudy.predict import (
    ModelInfo,
    Prediction,
    format_predictions,
    load_model,
    predict_images,
    read_model_info,
    save_overlay,
)
from occstudy.train import save_checkpoint

SIZE = 32
CONFIG = {
    "image_size": SIZE,
    "in_chans": 1,
    "stem": "imagenet",
    "data": "synthetic-faces",
    "variant": "ss+mask",
}


def _save(path: Path, model: nn.Module, config: dict | None = None, extra=None) -> Path:
    return save_checkpoint(
        path,
        model=model,
        optimizer=None,
        epoch=0,
        config=CONFIG if config is None else config,
        data_fingerprint="x",
        extra=extra,
    )


class _HeadsOnly(nn.Module):
    """Stand-in with OccNet's head names but no ResNet: cheap checkpoints for metadata tests."""

    def __init__(self, num_classes: int | None = 7, mask: bool = False) -> None:
        super().__init__()
        self.mask_head = MaskHead() if mask else None
        self.classifier = Classifier(num_classes=num_classes) if num_classes else None


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Checkpoints with and without U_o (one network), 3 face PNGs, the loaded model."""
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    net = OccNet(heads=("classifier", "mask"), num_classes=7)
    with_mask = _save(root / "best.pt", net)
    # Same network minus U_o: covers fine-tunes whose pretext stage had no mask head
    # without building a third ResNet.
    net.mask_head = None
    without_mask = _save(root / "nomask.pt", net)
    faces = synthetic_faces(3, image_size=48)
    paths = []
    for i in range(3):
        p = root / f"face{i}.png"
        Image.fromarray(faces.images[i, 0].numpy(), "L").save(p)
        paths.append(p)
    model, info = load_model(with_mask)
    return {
        "root": root,
        "with_mask": with_mask,
        "without_mask": without_mask,
        "paths": paths,
        "model": model,
        "info": info,
        "no_mask_net": net,
    }


def test_load_model_reads_architecture_and_classes(setup):
    model, info = setup["model"], setup["info"]
    assert isinstance(model, OccNet) and not model.training
    assert model.mask_head is not None and model.projector is None
    assert (info.image_size, info.in_chans, info.stem) == (SIZE, 1, "imagenet")
    assert info.heads == ("mask", "classifier") and info.has_mask
    assert info.classes == EMOTIONS7 and info.classes_source == "data:synthetic-faces"
    assert info.checkpoint == setup["with_mask"]


def test_predict_images(setup):
    preds = predict_images(setup["model"], setup["info"], setup["paths"])
    assert [p.path for p in preds] == [str(p) for p in setup["paths"]]
    for p in preds:
        assert list(p.probabilities) == list(EMOTIONS7)
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert p.label == max(p.probabilities, key=lambda k: p.probabilities[k])
        assert p.mask is not None and p.mask.shape == (SIZE, SIZE)
        assert p.mask.dtype == torch.float32
        assert float(p.mask.min()) >= 0.0 and float(p.mask.max()) <= 1.0
        assert p.occluded_fraction == pytest.approx(float((p.mask > 0.5).float().mean()))
        assert p.image_size == SIZE
    # Eval mode (BatchNorm running statistics): batching must not change any result.
    again = predict_images(setup["model"], setup["info"], setup["paths"], batch_size=2)
    for a, b in zip(preds, again, strict=True):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)
        assert torch.allclose(a.mask, b.mask, atol=1e-5)


def test_predict_accepts_colour_and_any_size(setup, tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    path = tmp_path / "colour.jpg"
    Image.fromarray(rgb, "RGB").save(path)
    (pred,) = predict_images(setup["model"], setup["info"], path)  # a single path is fine too
    assert pred.mask is not None and pred.mask.shape == (SIZE, SIZE)


def test_model_without_mask_head(setup):
    info = read_model_info(setup["without_mask"])
    assert info.heads == ("classifier",) and not info.has_mask
    preds = predict_images(setup["no_mask_net"], info, setup["paths"][:1])
    assert preds[0].mask is None and preds[0].occluded_fraction is None
    assert sum(preds[0].probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert "-" in format_predictions(preds).splitlines()[1]


def test_save_overlay(setup, tmp_path):
    (pred,) = predict_images(setup["model"], setup["info"], setup["paths"][:1])
    out = save_overlay(pred, setup["paths"][0], tmp_path / "sub" / "overlay.png")
    assert out == tmp_path / "sub" / "overlay.png"
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (SIZE * 4, SIZE * 4) and img.mode == "RGB"


def test_save_overlay_tints_masked_pixels_red(tmp_path):
    grey = tmp_path / "grey.png"
    Image.new("L", (SIZE, SIZE), 128).save(grey)
    mask = torch.zeros(SIZE, SIZE)
    mask[:, : SIZE // 2] = 1.0  # left half occluded
    pred = Prediction(str(grey), {"neutral": 0.9, "anger": 0.1}, "neutral", mask, 0.5)
    with Image.open(save_overlay(pred, grey, tmp_path / "o.png", scale=2)) as img:
        arr = np.asarray(img)
    assert arr.shape == (SIZE * 2, SIZE * 2, 3)
    left, right = arr[-4, 4], arr[-4, -4]  # bottom row: away from the label text
    assert left[0] > 190 and left[1] < 70 and left[2] < 70  # red at 55% over grey 128
    assert tuple(right) == (128, 128, 128)  # untouched
    # No mask: the size comes from the prediction.
    plain = Prediction(str(grey), {"neutral": 1.0}, "neutral", None, None, image_size=16)
    with Image.open(save_overlay(plain, grey, tmp_path / "p.png")) as img:
        assert img.size == (64, 64)


def test_missing_and_corrupt_images(setup, tmp_path):
    model, info = setup["model"], setup["info"]
    missing = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        predict_images(model, info, [setup["paths"][0], missing])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        save_overlay(Prediction("x", {"a": 1.0}, "a", None, None, 32), missing, tmp_path / "o.png")
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    with pytest.raises(ValueError, match="broken.png"):
        predict_images(model, info, [corrupt])
    with pytest.raises(ValueError, match="sub"):
        (tmp_path / "sub").mkdir()
        predict_images(model, info, [tmp_path / "sub"])


def test_bad_checkpoints(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pt"):
        load_model(text)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_model(tmp_path / "absent.pt")
    # A pretext checkpoint (no classifier) cannot predict expressions.
    pretext = _save(tmp_path / "pretext.pt", _HeadsOnly(num_classes=None, mask=True))
    with pytest.raises(ValueError, match="pretext.pt.*no classifier"):
        read_model_info(pretext)
    no_size = _save(tmp_path / "nosize.pt", _HeadsOnly(), config={"data": "fer2013:/x"})
    with pytest.raises(ValueError, match="nosize.pt.*image_size"):
        load_model(no_size)
    with pytest.raises(ValueError, match="device"):
        load_model(no_size, device="no-such-device")


@pytest.mark.parametrize(
    ("data", "n", "expected", "source"),
    [
        ("fer2013:/data/fer2013", 7, EMOTIONS7, "data:fer2013"),
        ("synthetic-faces", 7, EMOTIONS7, "data:synthetic-faces"),
        ("ferplus:/data/ferplus", 8, EMOTIONS, "data:ferplus"),
        ("ferplus:/data/ferplus?classes=7", 7, EMOTIONS7, "data:ferplus"),
        ("affectnet:/data/affectnet@train?classes=8", 8, EMOTIONS, "data:affectnet"),
        ("ckplus:/data/ck", 8, EMOTIONS, "data:ckplus"),
        ("ckplus:/data/ck", 7, tuple(f"class{i}" for i in range(7)), "generic"),
        ("mystery:/x", 5, tuple(f"class{i}" for i in range(5)), "generic"),
    ],
)
def test_class_names_from_data(tmp_path, data, n, expected, source):
    path = _save(tmp_path / "c.pt", _HeadsOnly(num_classes=n), config={**CONFIG, "data": data})
    info = read_model_info(path)
    assert info.classes == expected and info.classes_source == source
    assert info.num_classes == n and info.heads == ("classifier",)


def test_class_names_from_checkpoint_extra(tmp_path):
    names = ["calm", "joy", "rage"]
    path = _save(tmp_path / "c.pt", _HeadsOnly(num_classes=3), extra={"classes": names})
    info = read_model_info(path)
    assert info.classes == tuple(names) and info.classes_source == "checkpoint"
    bad = _save(tmp_path / "bad.pt", _HeadsOnly(num_classes=3), extra={"classes": ["a"]})
    with pytest.raises(ValueError, match="bad.pt.*3 outputs"):
        read_model_info(bad)


def test_info_must_match_model(setup):
    info = dataclasses.replace(setup["info"], classes=EMOTIONS)
    with pytest.raises(ValueError, match="does not match"):
        predict_images(setup["model"], info, setup["paths"][:1])


def test_format_predictions():
    mask = torch.zeros(4, 4)
    mask[0] = 1.0
    preds = [
        Prediction(
            "a.png", {"neutral": 0.1, "happiness": 0.7, "anger": 0.2}, "happiness", mask, 0.25
        ),
        Prediction("dir/b.png", {"neutral": 0.6, "happiness": 0.4}, "neutral", None, None),
    ]
    lines = format_predictions(preds).splitlines()
    assert len(lines) == 3
    assert lines[0].split() == ["file", "label", "top-3", "occluded"]
    assert lines[1].startswith("a.png") and "happiness 0.70  anger 0.20  neutral 0.10" in lines[1]
    assert lines[1].endswith("25.0%") and lines[2].endswith("-")
    assert format_predictions([]).splitlines()[0].startswith("file")
    assert isinstance(ModelInfo, type)
