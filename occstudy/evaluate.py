"""Metrics and test protocols.

A *test protocol* is a named way of presenting a test set to the network:

* ``clean`` — the test images as they are;
* a synthetic occlusion type (``r8``, ``r16``, ``r24``, ``eye``, ``mouth``, ``objects``) — the
  test images with that occluder pasted by :func:`occstudy.occlusion.apply_protocol` under a
  fixed seed, so every model is tested on the same occluded pixels;
* a real-occlusion list (``occlusion-ferplus``, ``pose-ferplus``, ...) — a separate test set.

For each protocol :func:`evaluate` returns accuracy, per-class accuracy, macro-F1 and the
confusion matrix, plus the mask network's IoU on synthetic occlusions when the model has U_o
and, for a synthetic occlusion, the mean share of the image its occluder covered
(``test.<protocol>.occluded_area``: the numbers a report labels its robustness curve with).
A real-occlusion set whose groups have names (Occlusion-FERPlus: the occluded region) also gets
its accuracy per region, from the same predictions (``test.<set>.region.<name>.acc``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from occstudy.data import FaceSet, normalize
from occstudy.method import SYNTHETIC_PROTOCOLS
from occstudy.models import OccNet
from occstudy.occlusion import apply_protocol
from occstudy.tracking import schema
from occstudy.train import Runtime, prepare_images

#: Key in :attr:`ProtocolResult.extra` (hence metric ``test.<protocol>.occluded_area``) of the
#: mean share of the image a synthetic protocol's occluder covered (the tracking schema's name).
OCCLUDED_AREA = schema.OCCLUDED_AREA


@dataclass
class ProtocolResult:
    """Metrics of one model on one test protocol.

    Attributes:
        protocol: ``clean``, a synthetic occlusion type, or a real-occlusion set's name.
        dataset: Name of the test set (e.g. ``fer2013:PrivateTest``).
        label_space: Label space of the test labels (e.g. ``fer2013-7``).
        n: Number of test images.
        acc: Accuracy in [0, 1].
        macro_f1: Unweighted mean of per-class F1 over classes present in the labels or predictions.
        per_class_acc: Recall of each class present in the test labels.
        confusion: ``confusion[t][p]`` = images of true class t predicted as p.
        classes: Class names, index = label id.
        mask_iou: IoU of U_o's thresholded mask with the true mask (synthetic protocols only).
        extra: Further metrics, logged as ``test.<protocol>.<key>``; a synthetic protocol's
            holds :data:`OCCLUDED_AREA` (see :attr:`occluded_area`).
        regions: For a real-occlusion set whose groups have names (the occluded region of
            Occlusion-FERPlus), ``{region: {"n": images, "acc": accuracy}}`` in group-id order,
            from the same predictions as ``acc``; regions without images are left out. Empty
            otherwise.
    """

    protocol: str
    dataset: str
    label_space: str
    n: int
    acc: float
    macro_f1: float
    per_class_acc: dict[str, float]
    confusion: list[list[int]]
    classes: tuple[str, ...]
    mask_iou: float | None = None
    extra: dict[str, float] = field(default_factory=dict)
    regions: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def occluded_area(self) -> float | None:
        """Mean share of the image the protocol's occluder covered, in [0, 1]: the mean of the
        masks it applied to the test images (None for ``clean`` and real-occlusion sets)."""
        return self.extra.get(OCCLUDED_AREA)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d


def confusion_matrix(preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Confusion matrix (num_classes, num_classes), rows = true class, columns = prediction."""
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def classification_metrics(
    preds: Tensor, labels: Tensor, classes: Sequence[str]
) -> tuple[float, float, dict[str, float], list[list[int]]]:
    """Accuracy, macro-F1, per-class accuracy and confusion matrix.

    Args:
        preds: Predicted class ids (N,).
        labels: True class ids (N,).
        classes: Class names.

    Returns:
        ``(acc, macro_f1, per_class_acc, confusion)``. Macro-F1 averages over the classes that
        occur in the labels or the predictions (a class absent from both has no defined F1).
    """
    k = len(classes)
    cm = confusion_matrix(preds, labels, k).double()
    n = cm.sum().item()
    acc = cm.diag().sum().item() / n if n else 0.0
    support = cm.sum(1)
    predicted = cm.sum(0)
    tp = cm.diag()
    present = (support + predicted) > 0
    f1 = torch.where(present, 2 * tp / (support + predicted).clamp_min(1), torch.zeros_like(tp))
    macro_f1 = f1[present].mean().item() if present.any() else 0.0
    per_class = {classes[i]: (tp[i] / support[i]).item() for i in range(k) if support[i].item() > 0}
    return acc, macro_f1, per_class, cm.long().tolist()


def region_accuracy(
    preds: Tensor, labels: Tensor, groups: Tensor, names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Accuracy of each named group (occluded region) of a test set.

    Args:
        preds: Predicted class ids (N,).
        labels: True class ids (N,).
        groups: Group id of each image (N,), indexing ``names``.
        names: Name of each group id.

    Returns:
        ``{name: {"n": images, "acc": accuracy}}`` in group-id order; groups without images
        are left out (an accuracy of nothing is undefined). The overall accuracy is the
        n-weighted mean of these when every image has a named group.
    """
    correct = preds.long().cpu() == labels.long().cpu()
    groups = groups.long().cpu()
    out: dict[str, dict[str, float]] = {}
    for gid, name in enumerate(names):
        members = groups == gid
        n = int(members.sum())
        if n:
            out[name] = {"n": float(n), "acc": correct[members].double().mean().item()}
    return out


def mask_iou_counts(
    mask_logits: Tensor, mask: Tensor, threshold: float = 0.5
) -> tuple[float, float]:
    """Intersection and union (pixel counts) of sigmoid(logits) > threshold with the true mask.

    Args:
        mask_logits: (B, 1, H, W) logits of U_o.
        mask: (B, 1, H, W) binary true mask.
        threshold: Probability threshold.
    """
    pred = torch.sigmoid(mask_logits.float()) > threshold
    true = mask > 0.5
    return (pred & true).sum().item(), (pred | true).sum().item()


@torch.no_grad()
def predict(
    model: OccNet,
    images: Tensor,
    *,
    image_size: int,
    runtime: Runtime,
    batch_size: int = 256,
    masks: Tensor | None = None,
    tta_flip: bool = False,
) -> tuple[Tensor, tuple[float, float] | None]:
    """Class predictions of ``model`` for uint8 or float [0, 1] images (N, C, H, W).

    When ``masks`` (N, 1, H, W) is given and the model has U_o, also returns the summed mask
    intersection and union (see :func:`mask_iou_counts`). With ``tta_flip`` the prediction is
    the argmax of the mean softmax over each face and its mirror image (the mask IoU is of the
    unflipped pass).

    Returns:
        (predicted ids (N,), (intersection, union) or None).
    """
    model.eval()
    preds = []
    inter = union = 0.0
    with_mask = masks is not None and model.mask_head is not None
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        x = prepare_images(batch, image_size=image_size, runtime=runtime, generator=None)
        x = runtime.to_input(normalize(x))
        with runtime.autocast():
            if with_mask:
                logits, mask_logits = model.forward_with_mask(x)
            else:
                logits = model(x)
            scores = logits.float().softmax(1)
            if tta_flip:
                scores = scores + model(x.flip(-1)).float().softmax(1)
        preds.append(scores.argmax(1).cpu())
        if with_mask:
            assert masks is not None
            m = masks[start : start + batch_size].to(runtime.device)
            if m.shape[-1] != image_size:
                m = (
                    torch.nn.functional.interpolate(m.float(), size=(image_size, image_size)) > 0.5
                ).float()
            i, u = mask_iou_counts(mask_logits, m)
            inter += i
            union += u
    out = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    return out, ((inter, union) if with_mask else None)


def evaluate(
    model: OccNet,
    test: FaceSet,
    *,
    image_size: int,
    runtime: Runtime,
    protocols: Sequence[str] = ("clean", *SYNTHETIC_PROTOCOLS),
    real: Mapping[str, FaceSet] | None = None,
    seed: int = 0,
    batch_size: int = 256,
    tta_flip: bool = False,
) -> dict[str, ProtocolResult]:
    """Test one model on every protocol.

    Args:
        model: OccNet with a classifier (and optionally U_o).
        test: The clean test set; synthetic protocols are applied to it.
        image_size: Network input side.
        runtime: Device and precision.
        protocols: ``clean`` and/or synthetic occlusion types.
        real: Real-occlusion test sets by protocol name (e.g. ``{"occlusion-ferplus": ...}``);
            their classes must equal the test set's.
        seed: Seed of the synthetic occlusions (same seed → same occluded pixels).
        batch_size: Inference batch size.
        tta_flip: Predict from each face and its mirror image (see :func:`predict`).

    Returns:
        Results keyed by protocol name, in the order given (real sets last); each synthetic
        protocol's carries its mean occluded area (:attr:`ProtocolResult.occluded_area`).

    Raises:
        ValueError: on an unknown protocol or a real set whose label space does not match.
    """
    results: dict[str, ProtocolResult] = {}
    for name in protocols:
        if name != "clean" and name not in SYNTHETIC_PROTOCOLS:
            raise ValueError(
                f"unknown test protocol {name!r}; valid: clean, {', '.join(SYNTHETIC_PROTOCOLS)}"
            )
    for name in protocols:
        if name == "clean":
            images, masks = test.images, None
        else:
            images, masks = apply_protocol(test.images, name, seed=seed)
        preds, counts = predict(
            model,
            images,
            image_size=image_size,
            runtime=runtime,
            batch_size=batch_size,
            masks=masks,
            tta_flip=tta_flip,
        )
        results[name] = _result(name, test, preds, counts)
        if masks is not None and masks.numel():
            # The share of pixels the occluder covered, as its own masks say (float64: a
            # float32 sum over a large test set would round).
            results[name].extra[OCCLUDED_AREA] = masks.double().mean().item()
    for name, ds in (real or {}).items():
        if tuple(ds.classes) != tuple(test.classes):
            raise ValueError(
                f"real-occlusion set {name!r} has classes {ds.classes} ({ds.label_space}) but the "
                f"model predicts {test.classes} ({test.label_space}); load it in the same label space"
            )
        preds, _ = predict(
            model,
            ds.images,
            image_size=image_size,
            runtime=runtime,
            batch_size=batch_size,
            tta_flip=tta_flip,
        )
        results[name] = _result(name, ds, preds, None, by_region=True)
    return results


def _result(
    protocol: str,
    ds: FaceSet,
    preds: Tensor,
    counts: tuple[float, float] | None,
    *,
    by_region: bool = False,
) -> ProtocolResult:
    """Metrics of ``preds`` (N,) on ``ds``; with ``by_region``, also per named group.

    Only real-occlusion sets are broken down: the groups of the clean test set are CK+
    subjects (no names), and a synthetic occluder pasted on a real-occlusion set would make
    "region" mean two things.
    """
    acc, f1, per_class, cm = classification_metrics(preds, ds.labels, ds.classes)
    iou = None
    if counts is not None:
        inter, union = counts
        iou = inter / union if union > 0 else 0.0
    regions: dict[str, dict[str, float]] = {}
    if by_region and ds.group_names and ds.groups is not None:
        regions = region_accuracy(preds, ds.labels, ds.groups, ds.group_names)
    return ProtocolResult(
        protocol=protocol,
        dataset=ds.name,
        label_space=ds.label_space,
        n=len(ds),
        acc=acc,
        macro_f1=f1,
        per_class_acc=per_class,
        confusion=cm,
        classes=tuple(ds.classes),
        mask_iou=iou,
        regions=regions,
    )


def summarize(results: Mapping[str, ProtocolResult]) -> dict[str, float]:
    """Flat metrics ``test.<protocol>.acc`` / ``.macro_f1`` / ``.mask_iou`` (the names used in
    MLflow and Tune), and for a set broken down by occluded region
    ``test.<protocol>.region.<region>.acc`` / ``.n`` (images), right after its overall ones."""
    out: dict[str, float] = {}
    for name, r in results.items():
        out[schema.test_metric(name, "acc")] = r.acc
        out[schema.test_metric(name, "macro_f1")] = r.macro_f1
        if r.mask_iou is not None:
            out[schema.test_metric(name, "mask_iou")] = r.mask_iou
        for region, m in r.regions.items():
            out[schema.test_metric(schema.region_protocol(name, region), "acc")] = m["acc"]
            out[schema.test_metric(schema.region_protocol(name, region), "n")] = m["n"]
    return out


def format_table(results: Mapping[str, ProtocolResult]) -> str:
    """A plain-text table of the results, one row per protocol, and under a set broken down by
    occluded region one indented row per region (its images and accuracy)."""
    header = f"{'protocol':<20} {'dataset':<28} {'labels':<10} {'n':>6} {'acc':>7} {'macroF1':>8} {'maskIoU':>8}"
    lines = [header, "-" * len(header)]
    for r in results.values():
        iou = f"{r.mask_iou:8.3f}" if r.mask_iou is not None else f"{'-':>8}"
        lines.append(
            f"{r.protocol:<20} {r.dataset:<28} {r.label_space:<10} {r.n:>6} "
            f"{100 * r.acc:6.2f}% {100 * r.macro_f1:7.2f}% {iou}"
        )
        for region, m in r.regions.items():
            label = f"  region {region}"
            lines.append(
                f"{label:<20} {'':<28} {'':<10} {int(m['n']):>6} "
                f"{100 * m['acc']:6.2f}% {'-':>8} {'-':>8}"
            )
    return "\n".join(lines)
