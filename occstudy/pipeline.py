"""The whole method in one process: pretext → fine-tune → evaluate.

This is the single-process path behind ``occstudy train`` and the building block that the
study platform runs inside Ray workers. Every stage is resumable from its checkpoint: a run
interrupted in epoch e restarts at epoch e with the same data order, augmentation and
occlusions, because each epoch's randomness is seeded from (seed, epoch) alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from occstudy import data as D
from occstudy.evaluate import ProtocolResult, evaluate, summarize
from occstudy.method import (
    DEFAULT_SPLITS,
    REAL_OCCLUSION_SETS,
    SYNTHETIC,
    DataRef,
    MethodConfig,
    eval_split_folders,
    pretext_source_label,
    pretext_source_problem,
    pretext_source_ref,
)
from occstudy.models import ModelConfig, OccNet, PretextNet, heads_for_pretext
from occstudy.occlusion import make_policy
from occstudy.recipes import lr_at
from occstudy.tracking import schema
from occstudy.train import (
    Runtime,
    check_finite_weights,
    extractor_state,
    finetune_one_epoch,
    load_checkpoint,
    make_optimizer,
    pretext_one_epoch,
    save_checkpoint,
    seeded_generator,
)

# The vocabulary (DataRef, MethodConfig, split names, pretext-source checks) lives in the
# torch-free occstudy.method; it is re-exported here for the callers of the one-process API.
__all__ = [
    "DEFAULT_SPLITS",
    "REAL_OCCLUSION_SETS",
    "SYNTHETIC",
    "DataRef",
    "MethodConfig",
    "eval_split_folders",
    "pretext_source_label",
    "pretext_source_problem",
    "pretext_source_ref",
]


def load_ref(
    ref: DataRef, split: str, *, image_size: int | None, channels: int, **extra: Any
) -> D.FaceSet:
    """Load one split of ``ref`` with its loader options (``extra`` overrides them)."""
    opts = dict(ref.options)
    opts.update(extra)
    return D.load(ref.name, ref.root, split, image_size=image_size, channels=channels, **opts)


@dataclass
class MethodData:
    """The data sets of one run, loaded once."""

    pretext: D.FaceSet | None
    train: D.FaceSet
    val: D.FaceSet
    test: D.FaceSet
    real: dict[str, D.FaceSet]


def holdout_split(ds: D.FaceSet, fraction: float, seed: int) -> tuple[D.FaceSet, D.FaceSet]:
    """Stratified, seeded split of ``ds`` into (rest, held-out fraction)."""
    g = torch.Generator().manual_seed(seed)
    held: list[torch.Tensor] = []
    for c in ds.labels.unique():
        idx = torch.nonzero(ds.labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        held.append(idx[: max(1, round(fraction * idx.numel()))] if idx.numel() > 1 else idx[:0])
    held_idx = torch.cat(held).sort().values
    keep = torch.ones(len(ds), dtype=torch.bool)
    keep[held_idx] = False
    return ds.subset(torch.nonzero(keep).flatten()), ds.subset(held_idx)


def labelled_splits(ref: DataRef) -> tuple[str, str | None, str]:
    """(train, validation, test) split names of a labelled dataset as found under its root;
    validation is None when it is held out of train (see :func:`holdout_split`)."""
    train, val, test = DEFAULT_SPLITS[ref.name]
    if ref.name == "fer2013":
        available = D.splits(ref.name, ref.root)
        if train not in available and "train" in available:
            # The common Kaggle download: train/ and test/ only (test = PublicTest + PrivateTest).
            return "train", None, "test"
    return train, val, test


def load_method_data(config: MethodConfig, *, with_pretext: bool = True) -> MethodData:
    """Load (and, for the built-in set, generate) every data set the run needs (the
    unlabelled faces only with ``with_pretext``)."""
    size = config.image_size
    ch = config.in_chans
    name = config.data.name
    train_split, val_split, test_split = DEFAULT_SPLITS[name]
    if name == SYNTHETIC:
        n = config.synthetic_size
        extra: dict[str, Any] = {"n": n}
        train = load_ref(config.data, train_split, image_size=size, channels=ch, **extra)
        val = load_ref(config.data, "val", image_size=size, channels=ch, n=max(n // 6, 50))
        test = load_ref(config.data, "test", image_size=size, channels=ch, n=max(n // 6, 50))
    else:
        train_split, val_split, test_split = labelled_splits(config.data)
        train = load_ref(
            config.data, config.data.split or train_split, image_size=size, channels=ch
        )
        test = load_ref(config.data, test_split, image_size=size, channels=ch)
        if val_split is not None:
            val = load_ref(config.data, val_split, image_size=size, channels=ch)
        else:
            train, val = holdout_split(train, 0.1, config.seed)
    _require_every_class(train, config.data)
    if config.train_limit is not None and config.train_limit < len(train):
        train = train.stratified_fraction(config.train_limit / len(train), config.seed)
    if config.label_fraction < 1:
        train = train.stratified_fraction(config.label_fraction, config.seed)
    real: dict[str, D.FaceSet] = {}
    for ref in config.real_occlusion:
        opts: dict[str, Any] = {}
        if ref.name == "occlusion-ferplus" and "labels" not in dict(ref.options):
            # Test in the label space the model was trained in (FER2013 → its 7 labels).
            opts["labels"] = "fer2013" if train.label_space.startswith("fer2013") else "ferplus"
        split = ref.split or D.splits(ref.name, ref.root)[0]
        real[ref.name if ref.split is None else f"{ref.name}-{ref.split}"] = load_ref(
            ref, split, image_size=size, channels=ch, **opts
        )
    pretext = load_pretext_data(config) if with_pretext else None
    return MethodData(pretext=pretext, train=train, val=val, test=test, real=real)


# ---------------------------------------------------------------------------------------------
# Pretext sources
# ---------------------------------------------------------------------------------------------


def _holds_out_validation(config: MethodConfig) -> bool:
    return config.data.name != SYNTHETIC and labelled_splits(config.data)[1] is None


def _excluded_refs(config: MethodConfig) -> list[DataRef]:
    """The data sets whose validation/test images the pretext set must not contain."""
    labelled = [config.data] if config.data.name != SYNTHETIC else []
    return [*labelled, *config.real_occlusion]


def pretext_data_settings(config: MethodConfig) -> dict[str, Any]:
    """Everything :func:`load_pretext_sources` depends on: equal settings, equal faces.

    The seed counts only where it changes the faces (generated faces, a draw from several
    sources, a validation split held out of the training split), so seeds share their data.
    """
    sources = list(config.pretext_data)
    dedup = any(s != SYNTHETIC for s in sources) and bool(_excluded_refs(config))
    seeded = (
        SYNTHETIC in sources
        or (len(sources) > 1 and config.pretext_limit is not None)
        or (dedup and _holds_out_validation(config))
    )
    return {
        "sources": sources,
        "image_size": config.image_size,
        "in_chans": config.in_chans,
        "limit": config.pretext_limit,
        "synthetic_size": config.synthetic_size if SYNTHETIC in sources else None,
        "seed": config.seed if seeded else None,
        "excluded": [str(r) for r in _excluded_refs(config)] if dedup else [],
    }


def image_hashes(images: torch.Tensor) -> list[bytes]:
    """A 16-byte blake2b digest of each image's pixels.

    Args:
        images: uint8 ``(N, C, H, W)``.

    Returns:
        ``N`` digests; equal digests mean pixel-identical images of the same shape.
    """
    rows = images.detach().cpu().flatten(1).contiguous().numpy()
    return [hashlib.blake2b(row, digest_size=16).digest() for row in rows]


def _excluded_hashes(config: MethodConfig) -> set[bytes]:
    """Digests of every validation/test image of the run, decoded as the pretext faces are."""
    size, ch = config.image_size, config.in_chans
    sets: list[D.FaceSet] = []
    if config.data.name != SYNTHETIC:
        train_split, val_split, test_split = labelled_splits(config.data)
        sets.append(load_ref(config.data, test_split, image_size=size, channels=ch))
        if val_split is not None:
            sets.append(load_ref(config.data, val_split, image_size=size, channels=ch))
        else:
            # The same held-out validation set load_method_data builds.
            train = load_ref(
                config.data, config.data.split or train_split, image_size=size, channels=ch
            )
            sets.append(holdout_split(train, 0.1, config.seed)[1])
    for ref in config.real_occlusion:
        split = ref.split or D.splits(ref.name, ref.root)[0]
        sets.append(load_ref(ref, split, image_size=size, channels=ch))
    return {h for fs in sets for h in image_hashes(fs.images)}


def _unlabelled(fs: D.FaceSet, images: torch.Tensor | None = None) -> D.FaceSet:
    """``fs`` without labels, so that sources of any label space concatenate."""
    images = fs.images if images is None else images
    n = int(images.shape[0])
    labels = torch.full((n,), -1, dtype=torch.int64)
    return D.FaceSet(images, labels, (), fs.name, "none", paths=fs.paths)


def _load_source(config: MethodConfig, source: str, limit: int | None) -> D.FaceSet:
    """One source's faces at the run's size and channels (its first ``limit`` ones)."""
    size, ch = config.image_size, config.in_chans
    if source == SYNTHETIC:
        fs = D.synthetic_faces(
            limit or config.synthetic_size, seed=config.seed + 10_000, image_size=size
        )
        return _unlabelled(fs, fs.images.expand(-1, ch, -1, -1).contiguous())
    ref = pretext_source_ref(source)
    if ref is None:
        return D.load_unlabelled(source, image_size=size, channels=ch, limit=limit)
    split = ref.split or labelled_splits(ref)[0]
    fs = load_ref(ref, split, image_size=size, channels=ch)
    if limit is not None and limit < len(fs):
        fs = fs.subset(torch.arange(limit))
    return _unlabelled(fs)


@dataclass(frozen=True)
class PretextData:
    """The pretext stage's unlabelled faces and where they came from.

    Attributes:
        faces: Every source's faces, concatenated in order and capped at ``pretext_limit``.
        counts: Faces each source contributed (before the cap of several sources).
        dropped: Faces of each source dropped as pixel duplicates of a validation/test image.
    """

    faces: D.FaceSet
    counts: dict[str, int]
    dropped: dict[str, int]

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


def load_pretext_sources(config: MethodConfig) -> PretextData | None:
    """Load the pretext sources, drop validation/test duplicates, concatenate and cap them.

    A single source keeps its own cap (its first ``pretext_limit`` images, or that many
    generated faces); several are capped together by a draw seeded with ``config.seed``.
    Images pixel-identical (at ``image_size``, ``in_chans``) to a validation/test image of
    ``config.data`` or of a real-occlusion set are dropped: FER2013 repeats images across splits.

    Returns:
        None for ``none`` or zero pretext epochs.

    Raises:
        ValueError: when every image of a source is such a duplicate.
    """
    if not config.runs_pretext:
        return None
    sources = config.pretext_data
    single = len(sources) == 1
    real = [s for s in sources if s != SYNTHETIC]
    excluded = _excluded_hashes(config) if real and _excluded_refs(config) else set()
    parts: list[D.FaceSet] = []
    counts: dict[str, int] = {}
    dropped: dict[str, int] = {}
    for source in sources:
        fs = _load_source(config, source, config.pretext_limit if single else None)
        n = 0
        if excluded and source != SYNTHETIC:
            keep = torch.tensor([h not in excluded for h in image_hashes(fs.images)])
            n = len(fs) - int(keep.sum())
            if n == len(fs):
                raise ValueError(
                    f"pretext source {source!r}: all {n} images are pixel duplicates of "
                    "validation/test images"
                )
            fs = fs.subset(keep) if n else fs
        parts.append(fs)
        counts[source], dropped[source] = len(fs), n
    faces = parts[0]
    for part in parts[1:]:
        faces = faces.concat(part)
    limit = config.pretext_limit
    if not single and limit is not None and limit < len(faces):
        g = torch.Generator().manual_seed(config.seed)
        faces = faces.subset(torch.randperm(len(faces), generator=g)[:limit].sort().values)
    if not single:
        faces = replace(faces, name="pretext:" + "+".join(p.name for p in parts))
    return PretextData(faces=faces, counts=counts, dropped=dropped)


def load_pretext_data(config: MethodConfig) -> D.FaceSet | None:
    """The unlabelled faces of the pretext stage (None for ``none`` or zero pretext epochs);
    see :func:`load_pretext_sources`."""
    loaded = load_pretext_sources(config)
    return None if loaded is None else loaded.faces


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------

#: ``hook(stage, epoch, metrics)`` after every epoch; ``stage`` is ``pretext`` or ``finetune``.
EpochHook = Callable[[str, int, Mapping[str, float]], None]
#: ``hook(stage, step, total_steps, metrics)`` every few steps.
StepHook = Callable[[str, int, int, Mapping[str, float]], None]


@dataclass
class Hooks:
    """Where a run reports progress; every hook is optional."""

    on_step: StepHook | None = None
    on_epoch: EpochHook | None = None
    log_every: int = 10


def _require_every_class(train: D.FaceSet, ref: DataRef) -> None:
    """A class with no training image could never be predicted, and its test accuracy would be
    0 without a word: refuse it, naming the classes (a missing or empty class folder)."""
    counts = torch.bincount(train.labels, minlength=len(train.classes))
    missing = [c for c, n in zip(train.classes, counts.tolist(), strict=True) if n == 0]
    if missing:
        raise ValueError(
            f"{ref}: the training split has no image of class(es) {missing} (missing or empty "
            f"class folder?); every class of {train.label_space} needs training images"
        )


def _require_a_batch(n: int, config: MethodConfig, runtime: Runtime) -> None:
    """The pretext stage drops incomplete batches (BatchNorm and L_SS want full ones): with
    fewer faces than one batch per worker it would take no step and label the result anyway."""
    need = config.batch_size * runtime.world_size
    if n < need:
        raise ValueError(
            f"pretext data {', '.join(config.pretext_data)}: {n} face(s), fewer than one batch "
            f"(batch_size={config.batch_size} x {runtime.world_size} worker(s) = {need}): the "
            "pretext stage would take no step; add faces (--pretext-data) or lower --batch-size"
        )


def _rank_steps(n: int, config: MethodConfig, runtime: Runtime, *, drop_last: bool) -> int:
    """Optimiser steps one rank takes per epoch over ``n`` images."""
    steps = D.num_batches(n, config.batch_size, drop_last, runtime.world_size)
    return max(1, min(steps, config.max_steps) if config.max_steps else steps)


def _lr_schedule(
    config: MethodConfig, base_lr: float, steps_per_epoch: int, epochs: int
) -> Callable[[int], float] | None:
    """The recipe's learning rate per global step of a stage (None for ``constant``, which
    leaves the optimiser's rate alone)."""
    if config.schedule == "constant":
        return None
    total = steps_per_epoch * max(epochs, 1)
    warmup = min(round(config.warmup_epochs * steps_per_epoch), total)
    schedule = config.schedule

    def at(step: int) -> float:
        return lr_at(
            step, base_lr=base_lr, total_steps=total, warmup_steps=warmup, schedule=schedule
        )

    return at


def _step_cb(
    hooks: Hooks, stage: str, total: int
) -> Callable[[int, Mapping[str, float]], None] | None:
    if hooks.on_step is None:
        return None
    on_step = hooks.on_step
    return lambda step, metrics: on_step(stage, step, total, metrics)


def run_pretext(
    config: MethodConfig,
    pretext: D.FaceSet,
    *,
    runtime: Runtime,
    checkpoint: Path | None,
    hooks: Hooks | None = None,
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """Train F (+ R and/or U_o) on unlabelled faces; resume from ``checkpoint`` if it matches.

    Returns:
        The final OccNet state dict (F and the pretext heads) and per-epoch metrics.
    """
    hooks = hooks or Hooks()
    torch.manual_seed(config.seed)
    net = OccNet(
        in_chans=config.in_chans,
        stem=config.stem,
        arch=config.arch,
        heads=heads_for_pretext(config.variant),
    )
    runtime.prepare_model(net)
    model = runtime.wrap(PretextNet(net))
    optimizer = make_optimizer(net, config.pretext_lr, config.weight_decay, config.optimizer)
    key = config.pretext_key()
    fingerprint = pretext.fingerprint()
    history: list[dict[str, float]] = []
    start_epoch = 0
    if checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint, runtime.device)
        _check_resume(checkpoint, state, key, fingerprint, "pretext_epochs")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1
        history = list(state["extra"].get("history", []))
    policy = make_policy(config.pretext_policy)
    # drop_last: BN and NT-Xent want full batches.
    _require_a_batch(len(pretext), config, runtime)
    per_rank = _rank_steps(len(pretext), config, runtime, drop_last=True)
    schedule = _lr_schedule(config, config.pretext_lr, per_rank, config.pretext_epochs)
    for epoch in range(start_epoch, config.pretext_epochs):
        torch.manual_seed(config.seed * 1000 + epoch)
        batches = D.iterate_batches(
            pretext,
            config.batch_size,
            shuffle=True,
            seed=config.seed,
            epoch=epoch,
            drop_last=True,
            rank=runtime.rank,
            world_size=runtime.world_size,
        )
        metrics = pretext_one_epoch(
            model,
            batches,
            optimizer,
            variant=config.variant,
            policy=policy,
            tau=config.tau,
            lam=config.lam,
            gather_distributed=config.gather_negatives,
            image_size=config.image_size,
            runtime=runtime,
            generator=seeded_generator(config.seed, epoch, 1),
            callback=_step_cb(hooks, "pretext", per_rank),
            log_every=hooks.log_every,
            max_steps=config.max_steps,
            lr_schedule=schedule,
            first_step=epoch * per_rank,
            augment=config.augment,
        )
        check_finite_weights(net, "pretext")  # a diverged model is never saved or used
        history.append(metrics)
        if checkpoint is not None and runtime.is_main:
            save_checkpoint(
                checkpoint,
                model=net,
                optimizer=optimizer,
                epoch=epoch,
                config=key,
                data_fingerprint=fingerprint,
                extra={"history": history},
            )
        if hooks.on_epoch is not None:
            hooks.on_epoch("pretext", epoch, metrics)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}, history


def _check_resume(
    path: Path, state: Mapping[str, Any], key: Mapping[str, Any], fingerprint: str, epochs_key: str
) -> None:
    """Refuse to resume from a checkpoint of other data or another configuration (the number
    of epochs, ``epochs_key``, may grow under a ``constant`` schedule: that continues the run;
    under ``cosine`` the schedule's length is the number of epochs, so it must not change)."""
    if state["data_fingerprint"] != fingerprint:
        raise ValueError(
            f"{path} was trained on other data (fingerprint {state['data_fingerprint']}, now "
            f"{fingerprint}); use another output folder (--out)"
        )
    saved = state["config"]
    growable = key.get("schedule", "constant") == "constant"
    diff = {
        k: (saved.get(k), v)
        for k, v in key.items()
        if saved.get(k) != v and not (k == epochs_key and growable)
    }
    if diff:
        fields = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"{path} was written by a different configuration ({fields}); use another output folder (--out)"
        )


def finetune_key(config: MethodConfig) -> dict[str, Any]:
    """The settings the fine-tune stage depends on (besides the pretext result)."""
    d = config.to_dict()
    drop = ["protocols", "real_occlusion", "device"]
    if not config.gather_negatives:
        # Absent when off, so that checkpoints written before the option existed still match.
        drop.append("gather_negatives")
    if not config.method_variant.has_pretext:
        # No pretext stage: its settings cannot change the fine-tune result.
        drop += [
            "pretext_data",
            "pretext_epochs",
            "pretext_lr",
            "pretext_limit",
            "pretext_policy",
            "tau",
            "lam",
        ]
    for k in drop:
        d.pop(k)
    return d


def build_finetune_model(
    config: MethodConfig, num_classes: int, pretext_state: Mapping[str, torch.Tensor] | None
) -> OccNet:
    """F (from the pretext stage, or from scratch for ``none``) + a new classifier C.

    U_o is carried along, frozen, when the pretext stage trained one, so that the fine-tuned
    network's mask predictions can still be tested; R is dropped.
    """
    torch.manual_seed(config.seed + 1)
    has_mask = pretext_state is not None and any(k.startswith("mask_head.") for k in pretext_state)
    heads = ("classifier", "mask") if has_mask else ("classifier",)
    model = OccNet(
        in_chans=config.in_chans,
        stem=config.stem,
        arch=config.arch,
        heads=heads,
        num_classes=num_classes,
    )
    if pretext_state is not None:
        model.extractor.load_state_dict(extractor_state(pretext_state))
        if has_mask and model.mask_head is not None:
            prefix = "mask_head."
            model.mask_head.load_state_dict(
                {k[len(prefix) :]: v for k, v in pretext_state.items() if k.startswith(prefix)}
            )
            model.mask_head.requires_grad_(False)
    return model


def run_finetune(
    config: MethodConfig,
    model: OccNet,
    train: D.FaceSet,
    val: D.FaceSet,
    *,
    runtime: Runtime,
    checkpoint_dir: Path | None,
    hooks: Hooks | None = None,
) -> tuple[OccNet, list[dict[str, float]]]:
    """Fine-tune F + C on clean ∪ occluded faces; validate each epoch on the clean val set.

    Keeps ``last.pt`` (resumable) and ``best.pt`` (best validation accuracy) in
    ``checkpoint_dir`` and returns the model with the best weights loaded. Both checkpoints
    carry a :class:`~occstudy.models.ModelConfig`: the run's network and input size, the
    training set's class names in label order, and the default normalisation of
    :func:`occstudy.data.normalize` that every stage applies.

    Raises:
        ValueError: The run's settings or class names make no valid model config (before
            any training).
    """
    hooks = hooks or Hooks()
    # Built before training: a config that predict could not use fails now, not after an epoch.
    model_config = ModelConfig(
        arch=config.arch,
        stem=config.stem,
        in_chans=config.in_chans,
        image_size=config.image_size,
        class_names=train.classes,
    )
    net = model
    runtime.prepare_model(net)
    wrapped = runtime.wrap(net)
    optimizer = make_optimizer(net, config.lr, config.weight_decay, config.optimizer)
    key = finetune_key(config)
    fingerprint = train.fingerprint()
    history: list[dict[str, float]] = []
    start_epoch = 0
    best_acc = -math.inf
    last = checkpoint_dir / "last.pt" if checkpoint_dir else None
    best = checkpoint_dir / "best.pt" if checkpoint_dir else None
    if last is not None and last.exists():
        state = load_checkpoint(last, runtime.device)
        _check_resume(last, state, key, fingerprint, "epochs")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1
        history = list(state["extra"].get("history", []))
        best_acc = max((h[schema.VAL_ACC] for h in history), default=-math.inf)
    policy = make_policy(config.finetune_policy)
    drop_last = len(train) >= config.batch_size * runtime.world_size
    per_rank = _rank_steps(len(train), config, runtime, drop_last=drop_last)
    schedule = _lr_schedule(config, config.lr, per_rank, config.epochs)
    best_state = None
    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(config.seed * 1000 + 500 + epoch)
        batches = D.iterate_batches(
            train,
            config.batch_size,
            shuffle=True,
            seed=config.seed,
            epoch=epoch,
            balanced=config.balanced,
            drop_last=drop_last,
            rank=runtime.rank,
            world_size=runtime.world_size,
        )
        metrics = finetune_one_epoch(
            wrapped,
            batches,
            optimizer,
            policy=policy,
            occlusion_prob=config.occlusion_prob,
            image_size=config.image_size,
            runtime=runtime,
            generator=seeded_generator(config.seed, epoch, 2),
            callback=_step_cb(hooks, "finetune", per_rank),
            log_every=hooks.log_every,
            max_steps=config.max_steps,
            lr_schedule=schedule,
            first_step=epoch * per_rank,
            augment=config.augment,
            label_smoothing=config.label_smoothing,
        )
        check_finite_weights(net, "fine-tune")  # a diverged model is never saved or used
        val_res = evaluate(
            net,
            val,
            image_size=config.image_size,
            runtime=runtime,
            protocols=("clean",),
            tta_flip=config.tta_flip,
        )
        metrics[schema.VAL_ACC] = val_res["clean"].acc
        metrics[schema.VAL_MACRO_F1] = val_res["clean"].macro_f1
        history.append(metrics)
        if metrics[schema.VAL_ACC] > best_acc:
            best_acc = metrics[schema.VAL_ACC]
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            if best is not None and runtime.is_main:
                save_checkpoint(
                    best,
                    model=net,
                    optimizer=None,
                    epoch=epoch,
                    config=key,
                    data_fingerprint=fingerprint,
                    extra={"val_acc": best_acc, "classes": list(train.classes)},
                    model_config=model_config,
                )
        if last is not None and runtime.is_main:
            save_checkpoint(
                last,
                model=net,
                optimizer=optimizer,
                epoch=epoch,
                config=key,
                data_fingerprint=fingerprint,
                extra={"history": history},
                model_config=model_config,
            )
        if hooks.on_epoch is not None:
            hooks.on_epoch("finetune", epoch, metrics)
    if best_state is not None:
        net.load_state_dict(best_state)
    elif best is not None and best.exists():
        net.load_state_dict(load_checkpoint(best, runtime.device)["model"])
    return net, history


def evaluate_on_protocols(
    config: MethodConfig, model: OccNet, data: MethodData, runtime: Runtime
) -> dict[str, ProtocolResult]:
    """Test a fine-tuned model on the run's protocols and real-occlusion sets (fixed seed 0,
    so every model of every study sees the same occluded pixels)."""
    return evaluate(
        model,
        data.test,
        image_size=config.image_size,
        runtime=runtime,
        protocols=config.protocols,
        real=data.real,
        seed=0,
        tta_flip=config.tta_flip,
    )


@dataclass
class MethodResult:
    """What one run of the method produced."""

    config: MethodConfig
    results: dict[str, ProtocolResult]
    pretext_history: list[dict[str, float]]
    finetune_history: list[dict[str, float]]
    seconds: dict[str, float]
    data_fingerprints: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "results": {k: v.to_dict() for k, v in self.results.items()},
            "pretext_history": self.pretext_history,
            "finetune_history": self.finetune_history,
            "seconds": self.seconds,
            "data_fingerprints": self.data_fingerprints,
        }

    def summary(self) -> dict[str, float]:
        """Flat metrics, ``test.<protocol>.acc`` / ``.macro_f1`` / ``.mask_iou``."""
        return summarize(self.results)


def run_method(
    config: MethodConfig,
    *,
    out_dir: str | Path | None = None,
    hooks: Hooks | None = None,
    data: MethodData | None = None,
) -> MethodResult:
    """Pretext → fine-tune → evaluate, in this process.

    Args:
        config: The run's settings.
        out_dir: Folder for checkpoints and ``results.json``; the run resumes from what it
            finds there (None: keep nothing on disk).
        hooks: Progress callbacks.
        data: Pre-loaded data (for several runs over the same data); loaded when None.
    """
    hooks = hooks or Hooks()
    runtime = Runtime.auto(config.device)
    out = Path(out_dir) if out_dir is not None else None
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    data = data or load_method_data(config)
    seconds["load"] = time.perf_counter() - t0
    if out is not None:
        # Only once the data loaded: bad data leaves nothing behind.
        out.mkdir(parents=True, exist_ok=True)
    pretext_state = None
    pretext_history: list[dict[str, float]] = []
    if data.pretext is not None:
        t0 = time.perf_counter()
        pretext_state, pretext_history = run_pretext(
            config,
            data.pretext,
            runtime=runtime,
            checkpoint=out / "pretext.pt" if out else None,
            hooks=hooks,
        )
        seconds["pretext"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = build_finetune_model(config, len(data.train.classes), pretext_state)
    model, finetune_history = run_finetune(
        config,
        model,
        data.train,
        data.val,
        runtime=runtime,
        checkpoint_dir=out / "finetune" if out else None,
        hooks=hooks,
    )
    seconds["finetune"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = evaluate_on_protocols(config, model, data, runtime)
    seconds["evaluate"] = time.perf_counter() - t0
    fingerprints = {"train": data.train.fingerprint(), "test": data.test.fingerprint()}
    if data.pretext is not None:
        fingerprints["pretext"] = data.pretext.fingerprint()
    result = MethodResult(config, results, pretext_history, finetune_history, seconds, fingerprints)
    if out is not None:
        (out / "results.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result


def with_variant(config: MethodConfig, variant: str) -> MethodConfig:
    """The same run for another ablation variant."""
    return replace(config, variant=variant)
