"""Tests of occstudy.predict: checkpoint -> model, image files -> predictions, overlays, text.

The machine is shared with long benchmarks, so the whole module builds only two ResNet-34s
(the saved network and the one load_model rebuilds) at 32 px, plus a few ResNet-18s for one
pipeline-written checkpoint; class-name and error tests use checkpoints of tiny stand-in
modules whose state-dict keys look like OccNet's.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from occstudy.data import EMOTIONS, EMOTIONS7, synthetic_faces
from occstudy.models import Classifier, MaskHead, ModelConfig, OccNet
from occstudy.pipeline import MethodConfig, build_finetune_model, run_finetune
from occstudy.predict import (
    InferredConfigWarning,
    ModelInfo,
    Prediction,
    format_predictions,
    load_model,
    predict_images,
    read_model_info,
    save_overlay,
)
from occstudy.train import Runtime, load_checkpoint, save_checkpoint

SIZE = 32
CONFIG = {
    "image_size": SIZE,
    "in_chans": 1,
    "stem": "imagenet",
    "data": "synthetic-faces",
    "variant": "ss+mask",
}


MODEL_CONFIG = ModelConfig(
    arch="resnet34", stem="imagenet", in_chans=1, image_size=SIZE, class_names=EMOTIONS7
)


def _save(
    path: Path,
    model: nn.Module,
    config: dict | None = None,
    extra=None,
    model_config: ModelConfig | None = None,
) -> Path:
    """Without ``model_config``: an old-style checkpoint, as written before configs were kept."""
    return save_checkpoint(
        path,
        model=model,
        optimizer=None,
        epoch=0,
        config=CONFIG if config is None else config,
        data_fingerprint="x",
        extra=extra,
        model_config=model_config,
    )


@pytest.fixture
def no_inferred_warning():
    """Fail on InferredConfigWarning: checkpoints with a model config must not need it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", InferredConfigWarning)
        yield


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
    with_mask = _save(root / "best.pt", net, model_config=MODEL_CONFIG)
    # Same network minus U_o: covers fine-tunes whose pretext stage had no mask head
    # without building a third ResNet.
    net.mask_head = None
    without_mask = _save(root / "nomask.pt", net, model_config=MODEL_CONFIG)
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
    assert info.classes == EMOTIONS7 and info.classes_source == "checkpoint"
    assert info.config_source == "checkpoint" and info.model_config == MODEL_CONFIG
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


def test_model_without_mask_head(setup, no_inferred_warning):
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
    # An old-style configuration asking for huge inputs is refused before anything is built.
    huge = _save(tmp_path / "huge.pt", _HeadsOnly(), config={**CONFIG, "image_size": 10**6})
    with pytest.raises(ValueError, match=r"huge.pt.*image_size=1000000.*\[32, 1024\]"):
        read_model_info(huge)


def _craft(path: Path, **model_config) -> Path:
    """An old-style checkpoint of a 7-class stand-in, with a hand-written model config."""
    _save(path, _HeadsOnly(num_classes=7))
    state = torch.load(path, weights_only=True)
    state["model_config"] = {**MODEL_CONFIG.to_dict(), **model_config}
    torch.save(state, path)
    return path


def test_crafted_model_configs_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"big.pt: invalid model config.*image_size=1000000"):
        read_model_info(_craft(tmp_path / "big.pt", image_size=10**6))
    with pytest.raises(ValueError, match=r"three.pt: model config names 3 classes.*7 outputs"):
        read_model_info(_craft(tmp_path / "three.pt", class_names=["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"extra.pt: invalid model config.*unknown keys"):
        read_model_info(_craft(tmp_path / "extra.pt", weights_url="http://x"))
    # The writer refuses a config that does not describe the weights.
    with pytest.raises(ValueError, match=r"w.pt: model config names 7 classes.*3 outputs"):
        _save(tmp_path / "w.pt", _HeadsOnly(num_classes=3), model_config=MODEL_CONFIG)
    assert not (tmp_path / "w.pt").exists()


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
    """Old-style checkpoints: names guessed from the training set's name, with a warning."""
    path = _save(tmp_path / "c.pt", _HeadsOnly(num_classes=n), config={**CONFIG, "data": data})
    with pytest.warns(
        InferredConfigWarning, match=f"c.pt: checkpoint has no model config.*{source}"
    ):
        info = read_model_info(path)
    assert info.classes == expected and info.classes_source == source
    assert info.num_classes == n and info.heads == ("classifier",)
    assert info.config_source == "inferred"


def test_class_names_from_checkpoint_extra(tmp_path):
    names = ["calm", "joy", "rage"]
    path = _save(tmp_path / "c.pt", _HeadsOnly(num_classes=3), extra={"classes": names})
    with pytest.warns(InferredConfigWarning, match="class names from its checkpoint"):
        info = read_model_info(path)
    assert info.classes == tuple(names) and info.classes_source == "checkpoint"
    assert info.config_source == "inferred"
    bad = _save(tmp_path / "bad.pt", _HeadsOnly(num_classes=3), extra={"classes": ["a"]})
    with pytest.raises(ValueError, match="bad.pt.*3 outputs"):
        read_model_info(bad)


def test_class_names_from_model_config_win_over_the_data_guess(tmp_path, no_inferred_warning):
    names = ("calm", "joy", "rage")
    cfg = dataclasses.replace(MODEL_CONFIG, class_names=names)
    # The recorded data set would make the guess EMOTIONS7 (see test_class_names_from_data).
    path = _save(tmp_path / "c.pt", _HeadsOnly(num_classes=3), model_config=cfg)
    info = read_model_info(path)
    assert info.classes == names and info.model_config == cfg


def test_predict_normalises_with_the_checkpoint_mean_and_std(setup, tmp_path):
    grey = tmp_path / "grey.png"
    Image.new("L", (SIZE, SIZE), 128).save(grey)
    info = dataclasses.replace(setup["info"], mean=(0.2,), std=(0.3,))
    (pred,) = predict_images(setup["model"], info, grey)
    x = torch.full((1, 1, SIZE, SIZE), (128 / 255 - 0.2) / 0.3)
    with torch.no_grad():
        expected = torch.softmax(setup["model"](x), dim=1)[0].tolist()
    assert list(pred.probabilities.values()) == pytest.approx(expected, abs=1e-5)
    (default,) = predict_images(setup["model"], setup["info"], grey)
    assert default.probabilities != pytest.approx(pred.probabilities, abs=1e-3)


# ------------------------------------------------------------- checkpoints the pipeline writes

#: Class names unlike any data set's, so that only the model config can produce them.
CUSTOM = ("calm", "joy", "rage", "fear", "awe", "shame", "pride")


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """One fine-tune epoch of one step (ResNet-18, 32 px) on faces renamed to CUSTOM."""
    root = tmp_path_factory.mktemp("pipeline")
    faces = dataclasses.replace(synthetic_faces(16, image_size=SIZE), classes=CUSTOM)
    config = MethodConfig(
        variant="none",
        image_size=SIZE,
        arch="resnet18",
        stem="stride2",
        batch_size=8,
        epochs=1,
        max_steps=1,
        device="cpu",
    )
    model = build_finetune_model(config, len(CUSTOM), None)
    run_finetune(
        config,
        model,
        faces,
        faces,
        runtime=Runtime(device=torch.device("cpu")),
        checkpoint_dir=root / "finetune",
    )
    face = root / "face.png"
    Image.fromarray(faces.images[0, 0].numpy(), "L").save(face)
    return {"dir": root / "finetune", "face": face}


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_pipeline_checkpoints_carry_the_model_config(pipeline_run, name, no_inferred_warning):
    path = pipeline_run["dir"] / name
    stored = load_checkpoint(path)["model_config"]  # weights_only=True load
    assert stored == {
        "arch": "resnet18",
        "stem": "stride2",
        "in_chans": 1,
        "image_size": SIZE,
        "class_names": list(CUSTOM),
        "mean": [0.5],
        "std": [0.5],
    }
    info = read_model_info(path)
    # The run's data is synthetic-faces: guessing would have said EMOTIONS7.
    assert info.data is not None and info.data.startswith("synthetic")
    assert info.classes == CUSTOM and info.classes_source == "checkpoint"
    assert info.config_source == "checkpoint"
    assert (info.arch, info.stem, info.image_size) == ("resnet18", "stride2", SIZE)


def test_predict_reports_the_checkpoint_class_names(pipeline_run, no_inferred_warning):
    model, info = load_model(pipeline_run["dir"] / "last.pt")
    assert model.extractor.arch == "resnet18" and model.extractor.stem == "stride2"
    (pred,) = predict_images(model, info, pipeline_run["face"])
    assert tuple(pred.probabilities) == CUSTOM and pred.label in CUSTOM
    assert pred.label in format_predictions([pred]).splitlines()[1]


def test_old_style_checkpoint_still_loads_with_a_notice(pipeline_run, tmp_path):
    """The same weights without the model config: settings inferred, names guessed, said so."""
    state = torch.load(pipeline_run["dir"] / "last.pt", weights_only=True)
    del state["model_config"]
    old = tmp_path / "old.pt"
    torch.save(state, old)
    with pytest.warns(InferredConfigWarning, match=r"old.pt: checkpoint has no model config"):
        model, info = load_model(old)
    assert info.config_source == "inferred"
    assert info.classes == EMOTIONS7 and info.classes_source.startswith("data:synthetic")
    assert (info.arch, info.stem, info.image_size) == ("resnet18", "stride2", SIZE)
    (pred,) = predict_images(model, info, pipeline_run["face"])
    assert tuple(pred.probabilities) == EMOTIONS7


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
