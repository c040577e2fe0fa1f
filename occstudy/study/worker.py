"""Per-worker work of a study: one pretext job, one fine-tune trial.

These functions run wherever Ray puts them: inside a Tune trial process (one CPU worker) or on
each worker of a Ray Train ``TorchTrainer`` (DDP). They load data, call the method's loops from
:mod:`occstudy.pipeline`, write checkpoints to the study's shared storage and report through a
``report`` callable; rank 0 also logs to MLflow. They never start Ray or Tune themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from occstudy import tracking
from occstudy.data import FaceSet, normalize, to_float
from occstudy.evaluate import summarize
from occstudy.models import OccNet
from occstudy.occlusion import apply_protocol
from occstudy.pipeline import (
    Hooks,
    MethodConfig,
    build_finetune_model,
    evaluate_on_protocols,
    load_method_data,
    load_pretext_data,
    load_pretext_sources,
    run_finetune,
    run_pretext,
)
from occstudy.study.cache import PretextCache, pretext_cache_key
from occstudy.train import Runtime

#: ``report(metrics, epoch)``: where a worker's per-epoch metrics go (Tune, Train, or nowhere).
Report = Callable[[Mapping[str, float], int], None]


@dataclass(frozen=True)
class PretextTask:
    """One distinct pretext stage.

    Attributes:
        config: Method settings (the pretext part matters).
        key: Cache key (see :func:`pretext_cache_key`).
        cache_root: Folder of the pretext cache (shared storage on a cluster).
        run: MLflow child run to log to (None: no tracking).
    """

    config: MethodConfig
    key: str
    cache_root: str
    run: tracking.RunRef | None = None


@dataclass(frozen=True)
class FinetuneTask:
    """One fine-tune trial.

    Attributes:
        config: Method settings of the trial.
        name: Trial name (stable: no timestamps).
        trial_dir: Folder for the trial's resumable checkpoints (shared storage).
        pretext_key: Cache key of the pretext result to start from (None for ``none``).
        cache_root: Folder of the pretext cache.
        run: MLflow child run to log to.
    """

    config: MethodConfig
    name: str
    trial_dir: str
    pretext_key: str | None
    cache_root: str
    run: tracking.RunRef | None = None


def pretext_key_for(config: MethodConfig) -> tuple[str | None, FaceSet | None]:
    """Cache key of a configuration's pretext stage, and the unlabelled data it uses."""
    data = load_pretext_data(config)
    if data is None:
        return None, None
    return pretext_cache_key(config, data.fingerprint()), data


def _epoch_metrics(metrics: Mapping[str, float], prefix: str = "") -> dict[str, float]:
    """One epoch's metrics as floats, named with ``prefix``; the image and step counters are
    bookkeeping, not metrics."""
    return {f"{prefix}{k}": float(v) for k, v in metrics.items() if k not in ("images", "steps")}


def _metric_hook(
    report: Report | None, run: tracking.RunRef | None, runtime: Runtime, prefix: str
) -> Hooks:
    def on_epoch(stage: str, epoch: int, metrics: Mapping[str, float]) -> None:
        named = _epoch_metrics(metrics, prefix)
        if runtime.is_main and run is not None:
            tracking.log_metrics(run, named, step=epoch)
        if report is not None:
            report(named, epoch)

    return Hooks(on_epoch=on_epoch)


def pretext_worker(
    task: PretextTask, runtime: Runtime, report: Report | None = None
) -> list[dict[str, float]]:
    """Compute one pretext stage on this worker (rank 0 writes the resumable work checkpoint).

    The caller holds the cache lock and publishes the result afterwards.
    """
    loaded = load_pretext_sources(task.config)
    if loaded is None:
        raise ValueError(f"variant {task.config.variant!r} has no pretext stage")
    data = loaded.faces
    if runtime.is_main and task.run is not None:
        # Pixel duplicates of validation/test images left out of the unlabelled faces.
        tracking.log_metrics(task.run, {"pretext_dropped_duplicates": float(loaded.dropped_total)})
    cache = PretextCache(task.cache_root)
    hooks = _metric_hook(report, task.run, runtime, "pretext.")
    state, history = run_pretext(
        task.config, data, runtime=runtime, checkpoint=cache.work_path(task.key), hooks=hooks
    )
    if runtime.is_main and task.run is not None and task.config.variant != "ss":
        net = OccNet(
            in_chans=task.config.in_chans,
            stem=task.config.stem,
            arch=task.config.arch,
            heads=("mask",),
        )
        net.load_state_dict({k: v for k, v in state.items() if not k.startswith("projector.")})
        log_mask_examples(task.run, net, data, task.config.image_size, tracking.PRETEXT_MASKS)
    return history


def finetune_worker(
    task: FinetuneTask, runtime: Runtime, report: Report | None = None
) -> dict[str, Any]:
    """Fine-tune and test one trial on this worker; returns the summary metrics (rank 0 logs
    the per-protocol results, confusion matrices, mask pictures on synthetic objects and on
    each real-occlusion test set, and the best checkpoint)."""
    start = time.perf_counter()
    config = task.config
    # The pretext result comes from the cache; the unlabelled faces are not needed here.
    data = load_method_data(config, with_pretext=False)
    pretext_state = None
    if task.pretext_key is not None:
        pretext_state = PretextCache(task.cache_root).load(task.pretext_key)
    model = build_finetune_model(config, len(data.train.classes), pretext_state)
    hooks = _metric_hook(report, task.run, runtime, "")
    trial_dir = Path(task.trial_dir)
    loaded = time.perf_counter()
    model, history = run_finetune(
        config, model, data.train, data.val, runtime=runtime, checkpoint_dir=trial_dir, hooks=hooks
    )
    trained = time.perf_counter()
    # The last epoch's metrics ride along with the summary: a trial resumed after its last
    # epoch runs no epoch, yet its final report must carry the search metric (val_acc).
    summary: dict[str, Any] = _epoch_metrics(history[-1]) if history else {}
    if history:
        summary["epoch"] = len(history) - 1
    summary[tracking.BEST_VAL_ACC] = max(
        (h[tracking.VAL_ACC] for h in history), default=float("nan")
    )
    if not runtime.is_main:
        # Testing is forward-only and logged by rank 0: the other DDP ranks would only repeat
        # it (the full test sets under every protocol) and discard the result.
        summary["trial_seconds"] = time.perf_counter() - start
        return summary
    results = evaluate_on_protocols(config, model, data, replace(runtime, rank=0, world_size=1))
    summary.update(summarize(results))
    tested = time.perf_counter()
    # Where a trial's time goes (its final Tune result and trials.json; bench_study prints it).
    summary["seconds_load"] = loaded - start
    summary["seconds_train"] = trained - loaded
    summary["seconds_test"] = tested - trained
    if task.run is not None:
        tracking.log_results(task.run, {k: v.to_dict() for k, v in results.items()})
        tracking.log_metrics(task.run, {tracking.BEST_VAL_ACC: summary[tracking.BEST_VAL_ACC]})
        if model.mask_head is not None:
            log_mask_examples(
                task.run, model, data.test, config.image_size, tracking.FINETUNE_MASKS
            )
            # Real occlusions have no true mask: the pictures show what U_o makes of them, and
            # are drawn here, where model and data are loaded, so a report only reads them.
            for name, faces in data.real.items():
                log_real_mask_examples(task.run, model, faces, config.image_size, name)
        best = trial_dir / "best.pt"
        if best.exists():
            tracking.log_checkpoint(task.run, best)
    summary["seconds_log"] = time.perf_counter() - tested
    summary["trial_seconds"] = time.perf_counter() - start
    return summary


@torch.no_grad()
def log_mask_examples(
    run: tracking.RunRef, model: OccNet, data: FaceSet, image_size: int, name: str, n: int = 8
) -> None:
    """Log inputs with synthetic occluders next to the true and predicted masks."""
    images = data.images[:n]
    occluded, masks = apply_protocol(images, "objects", seed=0)
    x = to_float(occluded)
    if x.shape[-1] != image_size:
        x = torch.nn.functional.interpolate(
            x, size=(image_size, image_size), mode="bilinear", antialias=True
        )
        masks = (
            torch.nn.functional.interpolate(masks, size=(image_size, image_size)) > 0.5
        ).float()
    model = model.cpu().eval()
    logits = model.predict_mask(normalize(x))
    tracking.log_mask_picture(run, x, masks, logits, name=name)


@torch.no_grad()
def log_real_mask_examples(
    run: tracking.RunRef, model: OccNet, data: FaceSet, image_size: int, name: str, n: int = 8
) -> None:
    """Log the first ``n`` images of a real-occlusion test set next to U_o's predicted
    P(occluded), as ``masks/real-<name>.png`` (named by
    :func:`occstudy.tracking.real_mask_picture_name`).

    The first images are a fixed choice, the same for every trial. Real occlusions have no true
    mask, so the picture has two rows: input and prediction. A set without images logs nothing.

    Args:
        run: The trial's run.
        model: The fine-tuned model; it must have a mask head.
        data: The real-occlusion test set.
        image_size: Network input side.
        name: The set's protocol name (its key in ``MethodData.real``).
        n: Number of images drawn.

    Raises:
        ValueError: When the model has no mask head.
    """
    if model.mask_head is None:
        raise ValueError("log_real_mask_examples: the model has no mask head")
    if len(data) == 0:
        return
    x = to_float(data.images[:n])
    if x.shape[-1] != image_size:
        x = torch.nn.functional.interpolate(
            x, size=(image_size, image_size), mode="bilinear", antialias=True
        )
    logits = model.cpu().eval().predict_mask(normalize(x))
    tracking.log_mask_picture(run, x, None, logits, name=tracking.real_mask_picture_name(name))
