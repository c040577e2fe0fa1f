"""Predict expressions (and, with U_o, occlusion masks) for image files with a trained model.

Typical use, from a fine-tune checkpoint written by :func:`occstudy.pipeline.run_finetune`::

    model, info = load_model("runs/x/finetune/best.pt")
    preds = predict_images(model, info, ["a.png", "b.jpg"])
    print(format_predictions(preds))
    save_overlay(preds[0], "a.png", "a_overlay.png")

Images are decoded exactly as the data loaders decode training images (PIL, grey or RGB by the
model's input channels, bilinear resize to the model's input size at decode time), then go
through the same tensor steps as evaluation: uint8 -> float [0, 1] -> resize -> normalise.
Every bad input (missing or corrupt image, foreign checkpoint) raises ``FileNotFoundError`` or
``ValueError`` naming the file, never a deep torch or PIL trace.

Architecture, input size, channels, normalisation and class names come from the checkpoint's
:class:`~occstudy.models.ModelConfig`. Checkpoints written before it was recorded still load:
their settings are inferred from the run configuration and the class names from the training
set's name, and an :class:`InferredConfigWarning` says so.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from occstudy.data import EMOTIONS, EMOTIONS7, normalize, resize, to_float
from occstudy.data.imageio import decode_image
from occstudy.models import NORM_MEAN, NORM_STD, ModelConfig, OccNet
from occstudy.train import (
    NonFiniteError,
    check_finite_weights,
    checkpoint_model_config,
    load_checkpoint,
)

__all__ = [
    "InferredConfigWarning",
    "ModelInfo",
    "Prediction",
    "format_predictions",
    "load_model",
    "predict_images",
    "read_model_info",
    "save_overlay",
]

# Label vocabularies each training set's loader can produce (see occstudy.data.labels): every
# loader maps onto EMOTIONS, 7-class views drop contempt (EMOTIONS7). Checkpoints without a
# model config record only the dataset spec, so their class names are recovered from the
# dataset name plus the classifier's output count. Keys match by prefix ("fer2013*",
# "synthetic*").
_DATASET_VOCABULARIES: dict[str, tuple[tuple[str, ...], ...]] = {
    "fer2013": (EMOTIONS7,),
    "synthetic": (EMOTIONS7,),
    "rafdb": (EMOTIONS7,),
    "ferplus": (EMOTIONS7, EMOTIONS),  # option classes=7|8
    "affectnet": (EMOTIONS7, EMOTIONS),  # option classes=7|8
    "fedro": (EMOTIONS7, EMOTIONS),  # 8 when a contempt folder exists
    "ckplus": (EMOTIONS,),
}

MASK_THRESHOLD = 0.5
"""Occlusion probability above which a pixel counts as occluded (as in the mask IoU metric)."""


class InferredConfigWarning(UserWarning):
    """A checkpoint has no model config: its settings and class names were inferred."""


@dataclass(frozen=True)
class ModelInfo:
    """What a checkpoint says about its model, beyond the weights.

    Attributes:
        checkpoint: The checkpoint file.
        image_size: Side of the square model input, in pixels.
        in_chans: Input channels (1 grey, 3 RGB).
        stem: ResNet stem of F (``imagenet``, ``small`` or ``stride2``).
        heads: Heads present in the weights, e.g. ``("classifier", "mask")``.
        classes: Class name per classifier output, in output order.
        classes_source: Where ``classes`` came from: ``"checkpoint"`` (the model config or, in
            older checkpoints, the extra dict's ``classes``), ``"data:<dataset>"`` (derived
            from the training set's name) or ``"generic"`` (``class0``, ``class1``, ...: the
            dataset is unknown or its vocabulary does not have the classifier's number of
            outputs).
        epoch: Last finished epoch recorded in the checkpoint.
        data: The training-set spec recorded in the checkpoint's configuration, if any.
        arch: Architecture of F (``resnet34`` for checkpoints written before it was recorded).
        tta_flip: Whether the model was validated and tested on faces and their mirror images.
        mean: Normalisation mean, one value or one per channel (see
            :class:`~occstudy.models.ModelConfig`).
        std: Normalisation standard deviation, like ``mean``.
        config_source: ``"checkpoint"`` when the checkpoint carries a model config,
            ``"inferred"`` when it predates them and the settings were inferred.
    """

    checkpoint: Path
    image_size: int
    in_chans: int
    stem: str
    heads: tuple[str, ...]
    classes: tuple[str, ...]
    classes_source: str
    epoch: int
    data: str | None = None
    arch: str = "resnet34"
    tta_flip: bool = False
    mean: tuple[float, ...] = (NORM_MEAN,)
    std: tuple[float, ...] = (NORM_STD,)
    config_source: str = "checkpoint"

    @property
    def model_config(self) -> ModelConfig:
        """The model config these settings amount to."""
        return ModelConfig(
            arch=self.arch,
            stem=self.stem,
            in_chans=self.in_chans,
            image_size=self.image_size,
            class_names=self.classes,
            mean=self.mean,
            std=self.std,
        )

    @property
    def num_classes(self) -> int:
        """Number of classifier outputs."""
        return len(self.classes)

    @property
    def has_mask(self) -> bool:
        """Whether the model has the occlusion-mask network U_o."""
        return "mask" in self.heads


@dataclass
class Prediction:
    """The model's output for one image.

    Attributes:
        path: The image file, as given.
        probabilities: Class name -> softmax probability, in the classifier's output order.
        label: The most probable class.
        mask: (H, W) float occlusion probability (sigmoid of U_o's logits) at the model input
            size, on CPU; ``None`` when the model has no mask head.
        occluded_fraction: Share of mask pixels with probability > 0.5; ``None`` without mask.
        image_size: Side of the model input the prediction was made at (used by
            :func:`save_overlay` when there is no mask to take the size from).
    """

    path: str
    probabilities: dict[str, float]
    label: str
    mask: Tensor | None
    occluded_fraction: float | None
    image_size: int | None = None

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable classes as ``(name, probability)``, most probable first."""
        return sorted(self.probabilities.items(), key=lambda kv: kv[1], reverse=True)[:k]


# --------------------------------------------------------------------------------- checkpoint


def _dataset_name(data: Any) -> str | None:
    """Registry name out of a recorded ``NAME[:ROOT][@SPLIT][?OPTS]`` spec (see DataRef)."""
    if not isinstance(data, str) or not data:
        return None
    return data.partition("?")[0].partition(":")[0].partition("@")[0] or None


def _derive_classes(data: Any, num_classes: int) -> tuple[tuple[str, ...], str]:
    name = _dataset_name(data)
    if name is not None:
        for prefix, vocabularies in _DATASET_VOCABULARIES.items():
            if name.startswith(prefix):
                for vocab in vocabularies:
                    if len(vocab) == num_classes:
                        return vocab, f"data:{name}"
                break
    # Unknown data set or a class count its vocabulary cannot have: guessing names would
    # mislabel every prediction, so say only which output it is.
    return tuple(f"class{i}" for i in range(num_classes)), "generic"


def _heads_and_classes(path: Path, state: Mapping[str, Any]) -> tuple[tuple[str, ...], int]:
    """Heads present in a state dict, and the classifier's number of outputs."""
    prefixes = {"projector": "projector.", "mask": "mask_head.", "classifier": "classifier."}
    heads = tuple(h for h, p in prefixes.items() if any(k.startswith(p) for k in state))
    if "classifier" not in heads:
        raise ValueError(
            f"{path}: the model has no classifier (heads: {list(heads) or 'none'}); "
            "a pretext checkpoint cannot predict expressions, use finetune/best.pt or last.pt"
        )
    # The state dict keeps registration order, so the last 2-D classifier weight belongs to
    # the output Linear whatever the hidden layout; its rows are the classes.
    out_weights = [
        v
        for k, v in state.items()
        if k.startswith("classifier.") and k.endswith(".weight") and getattr(v, "ndim", 0) == 2
    ]
    if not out_weights:
        raise ValueError(f"{path}: the classifier has no linear layer weights")
    return heads, int(out_weights[-1].shape[0])


def _infer_config(
    path: Path, state: Mapping[str, Any], config: Mapping[str, Any], num_classes: int
) -> tuple[ModelConfig, str]:
    """Model config of a checkpoint written before configs were recorded, and where its class
    names came from: the settings are the run configuration's, the normalisation the one
    every run used then."""
    missing = [k for k in ("image_size", "in_chans", "stem") if k not in config]
    if missing:
        raise ValueError(
            f"{path}: configuration lacks {missing}; is this a fine-tune checkpoint "
            "(finetune/best.pt or last.pt)?"
        )
    extra = state.get("extra")
    named = extra.get("classes") if isinstance(extra, Mapping) else None
    if named is not None:
        if not isinstance(named, (list, tuple)) or not all(isinstance(c, str) for c in named):
            raise ValueError(f"{path}: extra 'classes' must be a list of names, got {named!r}")
        if len(named) != num_classes:
            raise ValueError(
                f"{path}: extra 'classes' names {len(named)} classes but the classifier "
                f"has {num_classes} outputs"
            )
        classes, source = tuple(named), "checkpoint"
    else:
        classes, source = _derive_classes(config.get("data"), num_classes)
    try:
        inferred = ModelConfig(
            arch=config.get("arch", "resnet34"),
            stem=config["stem"],
            in_chans=config["in_chans"],
            image_size=config["image_size"],
            class_names=classes,
        )
    except ValueError as exc:
        raise ValueError(f"{path}: configuration does not describe a usable model: {exc}") from None
    return inferred, source


def _read(path: Path, map_location: str | torch.device = "cpu") -> tuple[ModelInfo, dict]:
    state = load_checkpoint(path, map_location=map_location)  # names the file on any error
    weights = state["model"]
    if not isinstance(weights, Mapping):
        raise ValueError(f"{path}: checkpoint lacks the model weights")
    model_config = checkpoint_model_config(state, path)  # validated; names the file
    raw = state.get("config")
    config: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    if model_config is None and not isinstance(raw, Mapping):
        raise ValueError(f"{path}: checkpoint has neither a model config nor a configuration")
    heads, num_classes = _heads_and_classes(path, weights)
    if model_config is not None:
        if model_config.num_classes != num_classes:
            raise ValueError(
                f"{path}: model config names {model_config.num_classes} classes but the "
                f"classifier has {num_classes} outputs"
            )
        source, config_source = "checkpoint", "checkpoint"
    else:
        model_config, source = _infer_config(path, state, config, num_classes)
        config_source = "inferred"
        how = {
            "checkpoint": "its checkpoint's extra 'classes'",
            "generic": "nowhere (generic class0, class1, ...: unknown data set)",
        }.get(source, f"the training set's name, {source} (guessed)")
        warnings.warn(
            f"{path}: checkpoint has no model config (written before configs were recorded); "
            f"arch, stem, channels and input size inferred from its run configuration, class "
            f"names from {how}, normalisation assumed mean={model_config.mean}, "
            f"std={model_config.std}",
            InferredConfigWarning,
            stacklevel=3,
        )
    data = config.get("data")
    info = ModelInfo(
        checkpoint=path,
        image_size=model_config.image_size,
        in_chans=model_config.in_chans,
        stem=model_config.stem,
        heads=heads,
        classes=model_config.class_names,
        classes_source=source,
        epoch=int(state.get("epoch", -1)),
        data=data if isinstance(data, str) else None,
        arch=model_config.arch,
        tta_flip=config.get("tta_flip") is True,
        mean=model_config.mean,
        std=model_config.std,
        config_source=config_source,
    )
    return info, dict(weights)


def read_model_info(checkpoint: str | Path) -> ModelInfo:
    """Describe a fine-tune checkpoint without building the network.

    Settings and class names come from the checkpoint's model config. Checkpoints without
    one (written before configs were recorded) get ``config_source == "inferred"`` and an
    :class:`InferredConfigWarning`: arch, stem, channels and input size come from the run
    configuration, the normalisation is the one all runs used, and class names are the
    checkpoint's ``extra["classes"]`` when present, otherwise derived from the recorded
    training set (``fer2013*``, ``synthetic*``, ``rafdb`` -> ``EMOTIONS7``; ``ckplus`` and
    8-class ``ferplus``/``affectnet``/``fedro`` -> ``EMOTIONS``; their 7-class views ->
    ``EMOTIONS7``); when the data set is unknown or the classifier's output count matches
    none of its vocabularies, generic names ``class0``, ``class1``, ... (and
    ``classes_source == "generic"``).

    Args:
        checkpoint: A checkpoint written by :func:`occstudy.train.save_checkpoint`.

    Returns:
        The model's :class:`ModelInfo`.

    Raises:
        FileNotFoundError: The file does not exist (named).
        ValueError: The file is not an occstudy fine-tune checkpoint (named, with why).
    """
    return _read(Path(checkpoint))[0]


def _as_device(device: str | torch.device, what: str) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"{what}: invalid device {device!r} ({exc})") from None


def _move(model: OccNet, device: torch.device, what: str) -> OccNet:
    try:
        return model.to(device)
    except (RuntimeError, AssertionError) as exc:  # no CUDA build / no such GPU
        raise ValueError(f"{what}: cannot use device {str(device)!r} ({exc})") from None


def load_model(
    checkpoint: str | Path, device: str | torch.device = "cpu"
) -> tuple[OccNet, ModelInfo]:
    """Rebuild the fine-tuned network from a checkpoint (``best.pt`` / ``last.pt``).

    The architecture comes from the checkpoint: arch, stem and ``in_chans`` from its model
    config (inferred for older checkpoints, see :func:`read_model_info`), the heads from the
    weight names (``classifier.``, ``mask_head.``, ``projector.``); the class count is checked
    against the classifier's output layer.

    Args:
        checkpoint: Checkpoint file.
        device: Device to put the model on.

    Returns:
        ``(model, info)``, the model in eval mode on ``device``.

    Raises:
        FileNotFoundError: The file does not exist (named).
        ValueError: Not an occstudy fine-tune checkpoint, weights that do not fit the
            recorded architecture, or an unusable device (the file is named).
    """
    path = Path(checkpoint)
    dev = _as_device(device, str(path))
    # Load on CPU whatever the device: the weights are copied into the model anyway, and a
    # checkpoint written on a GPU must still open on a CPU-only machine.
    info, weights = _read(path, "cpu")
    model = OccNet.from_config(info.model_config, heads=info.heads)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ValueError(
            f"{path}: weights do not fit OccNet(arch={info.arch!r}, in_chans={info.in_chans}, "
            f"stem={info.stem!r}, "
            f"heads={info.heads}, num_classes={info.num_classes}): "
            f"{' '.join(ln.strip() for ln in first[1:3]) if len(first) > 1 else exc}"
        ) from None
    try:
        check_finite_weights(model, str(path))
    except NonFiniteError:
        raise ValueError(
            f"{path}: the checkpoint holds NaN or infinite weights (a diverged run); refusing "
            "to predict with it"
        ) from None
    return _move(model, dev, str(path)).eval(), info


# --------------------------------------------------------------------------------- images


def _require_image(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path}: not an image file (is it a folder?)")


def _decode(path: Path, image_size: int | None, channels: int) -> np.ndarray:
    """Decode like the data loaders; (S, S) grey or (S, S, 3) RGB uint8."""
    _require_image(path)
    try:
        # decode_image raises DataError (a ValueError naming the file) for corrupt files.
        return decode_image(path, image_size, channels)
    except Image.DecompressionBombError as exc:  # not an OSError, so decode_image lets it by
        raise ValueError(f"{path}: cannot decode image ({exc})") from None


def _normalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Normalise float (B, C, H, W) images with a model config's mean and std."""
    if len(mean) == 1 and len(std) == 1:
        # The training path, bit for bit.
        return normalize(x, mean[0], std[0])
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def _load_batch(paths: Sequence[Path], image_size: int, in_chans: int) -> Tensor:
    """uint8 (B, C, S, S) model input for a batch of files."""
    arrays = [_decode(p, image_size, in_chans) for p in paths]
    x = torch.from_numpy(np.stack(arrays))
    return x.unsqueeze(1) if in_chans == 1 else x.permute(0, 3, 1, 2).contiguous()


def predict_images(
    model: OccNet,
    info: ModelInfo,
    paths: Sequence[str | Path] | str | Path,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 64,
) -> list[Prediction]:
    """Classify image files (and predict their occlusion masks when the model has U_o).

    All paths are checked for existence before any image is decoded, so a typo fails at once
    rather than after the first batches.

    Args:
        model: Network from :func:`load_model` (needs the classifier head).
        info: Its :class:`ModelInfo` (input size, channels, class names).
        paths: Image files (any size; PIL formats); a single path is accepted too.
        device: Device to run on; ``None`` runs where the model is. A different device
            moves the model there.
        batch_size: Images per forward pass.

    Returns:
        One :class:`Prediction` per path, in order.

    Raises:
        FileNotFoundError: An image does not exist (named).
        ValueError: An image cannot be decoded (named), or model and info disagree.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files = [Path(p) for p in paths]
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"predict_images: batch_size must be an int >= 1, got {batch_size!r}")
    if model.classifier is None:
        raise ValueError("predict_images: the model has no classifier head")
    linears = [m for m in model.classifier.modules() if isinstance(m, torch.nn.Linear)]
    out_features = linears[-1].out_features if linears else -1
    if out_features != info.num_classes or model.extractor.in_chans != info.in_chans:
        raise ValueError(
            f"predict_images: model ({out_features} classes, {model.extractor.in_chans} "
            f"channels) does not match info from {info.checkpoint} ({info.num_classes} classes, "
            f"{info.in_chans} channels)"
        )
    for f in files:
        _require_image(f)
    if device is None:
        dev = next(model.parameters()).device
    else:
        dev = _as_device(device, "predict_images")
        model = _move(model, dev, "predict_images")
    with_mask = model.mask_head is not None
    was_training = model.training
    model.eval()  # dropout off, BatchNorm on running statistics
    preds: list[Prediction] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(files), batch_size):
                chunk = files[start : start + batch_size]
                x = to_float(_load_batch(chunk, info.image_size, info.in_chans))
                x = _normalize(resize(x, info.image_size), info.mean, info.std).to(dev)
                if with_mask:
                    # One pass for both: U_o reads conv1's output, which C's trunk also needs.
                    logits, mask_logits = model.forward_with_mask(x)
                    masks: Tensor | None = torch.sigmoid(mask_logits.float())[:, 0].cpu()
                else:
                    logits, masks = model(x), None
                probs = torch.softmax(logits.float(), dim=1)
                if info.tta_flip:
                    # As the model was validated and tested: mean over the face and its mirror.
                    probs = (probs + torch.softmax(model(x.flip(-1)).float(), dim=1)) / 2
                probs = probs.cpu()
                for i, f in enumerate(chunk):
                    p = probs[i].tolist()
                    mask = masks[i] if masks is not None else None
                    preds.append(
                        Prediction(
                            path=str(f),
                            probabilities=dict(zip(info.classes, p, strict=True)),
                            label=info.classes[int(probs[i].argmax())],
                            mask=mask,
                            occluded_fraction=(
                                float((mask > MASK_THRESHOLD).float().mean())
                                if mask is not None
                                else None
                            ),
                            image_size=info.image_size,
                        )
                    )
    finally:
        model.train(was_training)
    return preds


# --------------------------------------------------------------------------------- output


def save_overlay(
    pred: Prediction,
    image_path: str | Path,
    out_path: str | Path,
    *,
    scale: int = 4,
    image_size: int | None = None,
    alpha: float = 0.55,
) -> Path:
    """Write a PNG of the image with the predicted occlusion mask and label drawn on it.

    The image is resized to the model input size (as the model saw it, but in colour when the
    file has colour), upscaled ``scale`` times with nearest neighbour so that pixels stay
    visible, tinted red with opacity ``alpha * occlusion probability`` (soft, so uncertain
    regions read as faint), and labelled with the top class and its probability.

    Args:
        pred: Prediction for ``image_path``.
        image_path: The image the prediction was made for.
        out_path: PNG file to write (parent folders are created).
        scale: Integer upscaling factor.
        image_size: Model input size; default ``pred.image_size``, else the mask's size, else
            the image's own size.
        alpha: Opacity of the overlay where the occlusion probability is 1.

    Returns:
        ``out_path`` as a Path; the PNG is ``(size * scale) x (size * scale)`` pixels.

    Raises:
        FileNotFoundError: The image does not exist (named).
        ValueError: The image cannot be decoded or the PNG cannot be written (named).
    """
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"save_overlay: scale must be an int >= 1, got {scale!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"save_overlay: alpha must be in [0, 1], got {alpha!r}")
    size = image_size or pred.image_size
    if size is None and pred.mask is not None:
        size = int(pred.mask.shape[-1])
    rgb = _decode(Path(image_path), size, 3)  # (h, w, 3)
    h, w = rgb.shape[:2]
    canvas = Image.fromarray(rgb, "RGB").resize((w * scale, h * scale), Image.Resampling.NEAREST)
    if pred.mask is not None:
        m = pred.mask.detach().float().cpu().clamp(0.0, 1.0)
        if tuple(m.shape) != (h, w):
            m = F.interpolate(m[None, None], size=(h, w), mode="bilinear", align_corners=False)[
                0, 0
            ]
        opacity = (m * (alpha * 255.0)).round().to(torch.uint8).numpy()
        opacity_img = Image.fromarray(opacity, "L").resize(canvas.size, Image.Resampling.NEAREST)
        red = Image.new("RGB", canvas.size, (255, 0, 0))
        # An "L" mask blends per pixel: out = red * a/255 + image * (1 - a/255).
        canvas = Image.composite(red, canvas, opacity_img)
    top = pred.top(1)
    text = f"{top[0][0]} {top[0][1]:.2f}" if top else pred.label
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    x0, y0, x1, y1 = draw.textbbox((2, 1), text, font=font)
    # A dark box keeps the text legible over bright faces and the red overlay.
    draw.rectangle((x0 - 2, y0 - 1, x1 + 2, y1 + 1), fill=(0, 0, 0))
    draw.text((2, 1), text, fill=(255, 255, 255), font=font)
    out = Path(out_path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(out, format="PNG")
    except OSError as exc:
        raise ValueError(f"{out}: cannot write overlay ({exc.strerror or exc})") from None
    return out


def _percent(fraction: float | None) -> str:
    if fraction is None or math.isnan(fraction):
        return "-"
    return f"{100.0 * fraction:.1f}%"


def format_predictions(preds: Sequence[Prediction], *, k: int = 3) -> str:
    """A plain-text table: file, label, top-``k`` probabilities, occluded share.

    Args:
        preds: Predictions from :func:`predict_images`.
        k: How many of the most probable classes to list.

    Returns:
        The table, one line per prediction after a header, no trailing newline. ``occluded``
        is ``-`` for models without a mask head.
    """
    header = ("file", "label", f"top-{k}", "occluded")
    rows = [
        (
            p.path,
            p.label,
            "  ".join(f"{name} {prob:.2f}" for name, prob in p.top(k)),
            _percent(p.occluded_fraction),
        )
        for p in preds
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        # Right-align the numeric last column so percentages line up.
        parts = [c.ljust(wd) for c, wd in zip(cells[:-1], widths[:-1], strict=True)]
        return "  ".join([*parts, cells[-1].rjust(widths[-1])])

    return "\n".join([line(header), *(line(r) for r in rows)])
