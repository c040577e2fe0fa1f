"""One epoch of the pretext and fine-tune stages, and checkpoints.

The loops know about models, losses, occlusion and tensors only — not Ray, not MLflow. A loop
takes a model, an iterable of uint8 batches, an optimiser, a device and an optional callback,
and returns plain numbers; the callers (the single-process pipeline, the Ray workers) decide
where those numbers go.

Batch preparation (all on tensors, on the training device): uint8 → float [0, 1] → resize →
random crop + flip → occlude → normalise. Occlusion runs before normalisation so that its fills
are real grey levels, and after augmentation so that the mask matches the pixels the network
sees.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occstudy.data import normalize, random_affine_flip, random_crop_flip, resize, to_float
from occstudy.losses import pretext_loss
from occstudy.method import PRETEXT_VARIANTS, get_variant
from occstudy.models import ModelConfig, ResNetExtractor
from occstudy.occlusion import Occluder
from occstudy.recipes import AUGMENTS

#: ``callback(step, metrics)`` is called every ``log_every`` steps with running means.
StepCallback = Callable[[int, Mapping[str, float]], None]

Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors are computed.

    Attributes:
        device: Training device.
        amp: bf16 autocast (on CUDA only: on CPU it slows ResNets down on most machines).
        channels_last: NHWC memory format (helps convolutions on recent GPUs).
        rank: This worker's rank in data-parallel training (0 when alone).
        world_size: Number of data-parallel workers; > 1 wraps models in DDP (the process
            group is set up by the launcher, e.g. Ray Train).
    """

    device: torch.device
    amp: bool = False
    channels_last: bool = False
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this worker writes checkpoints and reports (rank 0)."""
        return self.rank == 0

    @staticmethod
    def auto(device: str = "auto") -> Runtime:
        """bf16 autocast and channels_last on CUDA, plain float32 elsewhere.

        Raises:
            ValueError: naming ``device`` when it is not a device of this machine.
        """
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dev = check_device(device)
        on_gpu = dev.type == "cuda"
        return Runtime(device=dev, amp=on_gpu, channels_last=on_gpu)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_input(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device (in place) in the runtime's memory format."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around ``model`` when training data-parallel, else ``model`` itself."""
        if self.world_size <= 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def seeded_generator(*seeds: int) -> torch.Generator:
    """A CPU generator seeded from several integers (e.g. run seed and epoch), so that every
    epoch's augmentation and occlusion are reproducible on their own — which makes a resumed
    run identical to an uninterrupted one."""
    g = torch.Generator()
    value = 0
    for s in seeds:
        value = (value * 1_000_003 + int(s)) % (2**63 - 1)
    g.manual_seed(value)
    return g


def prepare_images(
    images: Tensor,
    *,
    image_size: int,
    runtime: Runtime,
    generator: torch.Generator | None,
    augment: str = "crop-flip",
) -> Tensor:
    """uint8 (B, C, h, w) → float [0, 1] (B, C, image_size, image_size) on the device,
    augmented when a generator is given (training): ``augment`` is ``crop-flip``,
    ``affine-flip`` or ``none`` (:data:`occstudy.recipes.AUGMENTS`)."""
    if augment not in AUGMENTS:
        raise ValueError(f"augment={augment!r}: must be one of {AUGMENTS}")
    x = to_float(images.to(runtime.device, non_blocking=True))
    x = resize(x, image_size)
    if generator is not None and augment == "crop-flip":
        x = random_crop_flip(x, generator)
    elif generator is not None and augment == "affine-flip":
        x = random_affine_flip(x, generator)
    return x


def check_device(device: str) -> torch.device:
    """``device`` as a torch device, checked against this machine.

    Raises:
        ValueError: naming the value when it is not a device name, or names a device this
            machine does not have (no CUDA, a GPU index past the last one, no MPS).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r}: not a device name ({exc})") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device={device!r}: this machine has no CUDA GPU (use cpu or auto)")
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"device={device!r}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={device!r}: supported devices are cpu, cuda[:N], mps, auto")
    return dev


class NonFiniteError(ValueError):
    """Training diverged: a loss or a weight is NaN or infinite. The message names the stage,
    the step and the likely cause; nothing non-finite is saved."""


def _diverged(stage: str, what: str, value: float, step: int) -> NonFiniteError:
    return NonFiniteError(
        f"{stage} {what} is {value} at step {step}: training diverged (usually a learning "
        "rate too high for this recipe and batch size: lower --lr / --pretext-lr"
        + (", or λ (--lam)" if stage == "pretext" else "")
        + "); nothing was saved from this step on"
    )


def check_finite_weights(model: nn.Module, stage: str) -> None:
    """Raise :class:`NonFiniteError` when any parameter or buffer of ``model`` is not finite
    (called before a checkpoint is written, so a diverged model is never saved or used)."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteError(
                f"{stage}: weight {name} is not finite: training diverged (usually a learning "
                "rate too high: lower --lr / --pretext-lr); the model was not saved"
            )


#: ``schedule(global_step) -> learning rate`` (see :func:`occstudy.recipes.lr_at`).
LRSchedule = Callable[[int], float]


def _set_lr(optimizer: torch.optim.Optimizer, schedule: LRSchedule | None, step: int) -> None:
    if schedule is not None:
        lr = schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = lr


class _Means:
    """Running means of named scalars, weighted by batch size."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, n: int, **values: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v * n
        self.count += n

    def means(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}


def pretext_one_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    *,
    variant: str,
    policy: Occluder,
    tau: float,
    lam: float,
    image_size: int,
    runtime: Runtime,
    generator: torch.Generator,
    callback: StepCallback | None = None,
    log_every: int = 10,
    max_steps: int | None = None,
    lr_schedule: LRSchedule | None = None,
    first_step: int = 0,
    augment: str = "crop-flip",
    gather_distributed: bool = False,
) -> dict[str, float]:
    """Train F, R and U_o for one epoch on unlabelled faces with L_pre.

    Each clean face x_pc gets an occluded copy x_po with mask M from ``policy``; the variant
    decides the loss (``ss``: L_SS, ``mask``: L_mask, ``ss+mask``: L_SS + λ·L_mask).

    Args:
        model: A :class:`~occstudy.models.PretextNet` (or a DDP wrapper of one) around an
            OccNet with the heads the variant needs.
        batches: uint8 image batches (labels ignored).
        optimizer: Optimiser over the model's parameters.
        variant: ``ss``, ``mask`` or ``ss+mask``.
        policy: Occlusion generator.
        tau: Temperature of L_SS.
        lam: Weight λ of L_mask.
        image_size: Side of the network input.
        runtime: Device and precision.
        generator: CPU generator for augmentation and occlusion.
        callback: Called with running means every ``log_every`` steps.
        log_every: Steps between callbacks.
        max_steps: Stop after this many steps (smoke runs and benchmarks).
        lr_schedule: Learning rate per global step (None: leave the optimiser's rate).
        first_step: Global step of this epoch's first step (for ``lr_schedule``).
        augment: Augmentation before occlusion (see :func:`prepare_images`).
        gather_distributed: Under DDP (world size > 1), L_SS takes the other workers'
            embeddings as extra negatives, so each worker's loss is the global batch's
            restricted to its own anchors (see :func:`occstudy.losses.similarity_loss`).
            False (the paper's single-GPU setting): each worker contrasts within its own
            batch. No effect without an initialised process group, or for ``mask``.

    Returns:
        Epoch means ``loss``, ``loss_ss``, ``loss_mask``, plus ``images`` (clean faces seen),
        ``steps``, ``seconds`` and ``images_per_s``.
    """
    if variant not in PRETEXT_VARIANTS:
        raise ValueError(
            f"pretext_one_epoch: variant must be one of {PRETEXT_VARIANTS}, got {variant!r}"
        )
    need_z, need_mask = get_variant(variant).uses_ss, get_variant(variant).uses_mask
    model.train()
    means = _Means()
    start = time.perf_counter()
    steps = 0
    for images, _ in batches:
        x_clean = prepare_images(
            images, image_size=image_size, runtime=runtime, generator=generator, augment=augment
        )
        x_occ, mask = policy(x_clean, generator)
        x_clean = runtime.to_input(normalize(x_clean))
        x_occ = runtime.to_input(normalize(x_occ))
        with runtime.autocast():
            z_occ, z_clean, mask_logits = model(x_clean, x_occ, need_z=need_z, need_mask=need_mask)
        terms = pretext_loss(
            variant,
            z_occluded=z_occ,
            z_clean=z_clean,
            mask_logits=mask_logits,
            mask=mask,
            tau=tau,
            lam=lam,
            gather_distributed=gather_distributed,
        )
        if not torch.isfinite(terms.total):
            raise _diverged("pretext", "loss", terms.total.item(), first_step + steps)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        _set_lr(optimizer, lr_schedule, first_step + steps)
        optimizer.step()
        steps += 1
        means.add(
            images.shape[0],
            loss=terms.total.item(),
            loss_ss=terms.ss.item(),
            loss_mask=terms.mask.item(),
        )
        if callback is not None and steps % log_every == 0:
            callback(steps, means.means())
        if max_steps is not None and steps >= max_steps:
            break
    return _finish(means, steps, start)


def finetune_one_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    *,
    policy: Occluder,
    occlusion_prob: float,
    image_size: int,
    runtime: Runtime,
    generator: torch.Generator,
    callback: StepCallback | None = None,
    log_every: int = 10,
    max_steps: int | None = None,
    lr_schedule: LRSchedule | None = None,
    first_step: int = 0,
    augment: str = "crop-flip",
    label_smoothing: float = 0.0,
) -> dict[str, float]:
    """Fine-tune F and C for one epoch with cross-entropy on clean ∪ occluded faces.

    The method trains on the clean images plus occluded copies of them. Rather than doubling
    every batch, each image is replaced by its occluded copy with probability
    ``occlusion_prob`` (0.5 by default): in expectation an epoch then draws from the union of
    the clean and the occluded set with equal weight, at the cost of one pass instead of two.

    Args:
        model: :class:`~occstudy.models.OccNet` with a classifier (or a DDP wrapper of one).
        batches: (uint8 images, int64 labels) batches.
        optimizer: Optimiser.
        policy: Occlusion generator for the occluded copies.
        occlusion_prob: Probability that an image is seen occluded.
        image_size: Side of the network input.
        runtime: Device and precision.
        generator: CPU generator for augmentation, occlusion and the clean/occluded draw.
        callback: Called with running means every ``log_every`` steps.
        log_every: Steps between callbacks.
        max_steps: Stop after this many steps.
        lr_schedule: Learning rate per global step (None: leave the optimiser's rate).
        first_step: Global step of this epoch's first step (for ``lr_schedule``).
        augment: Augmentation before occlusion (see :func:`prepare_images`).
        label_smoothing: Label smoothing of the cross-entropy.

    Returns:
        Epoch means ``loss`` and ``acc`` (training accuracy), plus ``images``, ``steps``,
        ``seconds`` and ``images_per_s``.
    """
    if not 0.0 <= occlusion_prob <= 1.0:
        raise ValueError(
            f"finetune_one_epoch: occlusion_prob must be in [0, 1], got {occlusion_prob!r}"
        )
    model.train()
    means = _Means()
    start = time.perf_counter()
    steps = 0
    for images, labels in batches:
        x = prepare_images(
            images, image_size=image_size, runtime=runtime, generator=generator, augment=augment
        )
        if occlusion_prob > 0:
            x_occ, _ = policy(x, generator)
            pick = (torch.rand(x.shape[0], generator=generator) < occlusion_prob).to(x.device)
            x = torch.where(pick[:, None, None, None], x_occ, x)
        x = runtime.to_input(normalize(x))
        y = labels.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        if not torch.isfinite(loss):
            raise _diverged("fine-tune", "loss", loss.item(), first_step + steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _set_lr(optimizer, lr_schedule, first_step + steps)
        optimizer.step()
        steps += 1
        acc = (logits.argmax(1) == y).float().mean().item()
        means.add(images.shape[0], loss=loss.item(), acc=acc)
        if callback is not None and steps % log_every == 0:
            callback(steps, means.means())
        if max_steps is not None and steps >= max_steps:
            break
    return _finish(means, steps, start)


def _finish(means: _Means, steps: int, start: float) -> dict[str, float]:
    seconds = time.perf_counter() - start
    out = means.means()
    out.update(
        images=float(means.count),
        steps=float(steps),
        seconds=seconds,
        images_per_s=means.count / seconds if seconds > 0 else 0.0,
    )
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP (or similar) wrapper."""
    inner = getattr(model, "module", model)
    return inner if isinstance(inner, nn.Module) else model


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 0.0, kind: str = "adam"
) -> torch.optim.Optimizer:
    """Adam, as in the paper (lr 1e-4 in the ``paper`` recipe), or AdamW.

    Args:
        model: Its trainable parameters are optimised.
        lr: Learning rate (the peak, when a schedule sets it per step).
        weight_decay: ``adam``: L2 penalty on every parameter (torch's Adam); ``adamw``:
            decoupled decay on weights only: biases and BatchNorm parameters (1-d tensors)
            are not decayed, as is usual for ResNets.
        kind: ``adam`` or ``adamw``.
    """
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    # foreach: the multi-tensor update, which torch picks by itself only on CUDA; on CPU it
    # makes ResNet-34's Adam step 1.6x faster (121 -> 75 ms, 2 threads), a tenth of a batch-16
    # step at 48x48.
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)
    if kind != "adamw":
        raise ValueError(f"optimizer must be 'adam' or 'adamw', got {kind!r}")
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, foreach=True)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

CHECKPOINT_FORMAT = 1


#: Key of the :class:`~occstudy.models.ModelConfig` (as ``to_dict()``) in a checkpoint. It is
#: absent from checkpoints written before configs were recorded, and None in those written
#: without one (e.g. pretext checkpoints); the format number did not change, so older readers
#: still open newer checkpoints.
MODEL_CONFIG_KEY = "model_config"


def _check_model_config(net: nn.Module, model_config: ModelConfig, path: Path) -> None:
    """Refuse to record a config that does not describe the weights saved with it."""
    extractor = getattr(net, "extractor", None)
    if isinstance(extractor, ResNetExtractor):
        got = (extractor.arch, extractor.stem, extractor.in_chans)
        want = (model_config.arch, model_config.stem, model_config.in_chans)
        if got != want:
            raise ValueError(
                f"{path}: model config says (arch, stem, in_chans)={want} but the model is {got}"
            )
    classifier = getattr(net, "classifier", None)
    if isinstance(classifier, nn.Module):
        linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
        if linears and linears[-1].out_features != model_config.num_classes:
            raise ValueError(
                f"{path}: model config names {model_config.num_classes} classes but the "
                f"classifier has {linears[-1].out_features} outputs"
            )


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    config: Mapping[str, Any],
    data_fingerprint: str,
    extra: Mapping[str, Any] | None = None,
    model_config: ModelConfig | None = None,
) -> Path:
    """Write a resumable checkpoint atomically (a crash never leaves a half-written file).

    Contents: model state, optimiser state, the last finished epoch, the run's configuration
    (plain JSON-able values), the fingerprint of the data it was trained on and, when given,
    the model config (under :data:`MODEL_CONFIG_KEY`, read back by
    :func:`checkpoint_model_config`). Everything is tensors and plain Python values, so
    :func:`load_checkpoint` can use ``weights_only=True``.

    Raises:
        ValueError: ``model_config`` does not match the model's architecture, stem, input
            channels or number of classes.
    """
    path = Path(path)
    net = unwrap(model)
    if model_config is not None:
        _check_model_config(net, model_config, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": int(epoch),
        "config": dict(config),
        "data_fingerprint": data_fingerprint,
        "extra": dict(extra or {}),
        MODEL_CONFIG_KEY: model_config.to_dict() if model_config is not None else None,
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        # A half-written temporary file would only take the space a retry needs.
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc, _nbytes(state)) from None
    return path


class StorageFullError(OSError):
    """A file could not be written because its file system is full (or over quota); files
    written before, such as the previous checkpoint, are intact."""


def _nbytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint state."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_nbytes(v) for v in obj)
    return 0


def write_error(path: Path, exc: BaseException, needed: int) -> OSError:
    """One-line error for a file that could not be written: :class:`StorageFullError` when its
    file system is full or over quota (torch reports that only as "file write failed"), an
    ``OSError`` naming the file and the reason otherwise.

    Args:
        path: The file being written.
        exc: What the write raised.
        needed: About how many bytes the file needs.
    """
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < needed):
        room = f"{free / 2**20:.0f} MiB free, " if free is not None else ""
        return StorageFullError(
            errno.ENOSPC,
            f"cannot write {path}: no space left on its file system ({room}about "
            f"{needed / 2**20:.0f} MiB needed); earlier files are intact: free some space and "
            "resume",
        )
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return OSError(code or errno.EIO, f"cannot write {path}: {reason}")


def _one_line_reason(exc: BaseException) -> str:
    """The gist of a torch.load failure on one line (torch's own text runs to many lines of
    advice about ``weights_only``; an empty file gives an EOFError without a message)."""
    if isinstance(exc, EOFError):
        return "the file is empty or cut short (EOFError)"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith("Weights only load failed"):
        # What the unpickler tripped on is on a later line; torch's advice is not ours to give.
        detail = next((ln for ln in lines[1:] if "Unsupported" in ln or "Error" in ln), "")
        return "not a torch checkpoint" + (f" ({detail})" if detail else "")
    return f"{type(exc).__name__}: {lines[0]}"


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        FileNotFoundError: naming the path when it does not exist.
        ValueError: naming the path when it is not an occstudy checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt/foreign files
        raise ValueError(
            f"{path} is not a readable occstudy checkpoint: {_one_line_reason(exc)}"
        ) from None
    if (
        not isinstance(state, dict)
        or state.get("format") != CHECKPOINT_FORMAT
        or "model" not in state
    ):
        raise ValueError(f"{path} is not an occstudy checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def checkpoint_model_config(
    state: Mapping[str, Any], path: str | os.PathLike[str]
) -> ModelConfig | None:
    """The model config of a checkpoint loaded by :func:`load_checkpoint`.

    Args:
        state: The loaded checkpoint.
        path: Its file, for messages.

    Returns:
        The validated config, or None when the checkpoint was written without one.

    Raises:
        ValueError: naming the path, when the stored config is invalid.
    """
    raw = state.get(MODEL_CONFIG_KEY)
    if raw is None:
        return None
    try:
        return ModelConfig.from_dict(raw)
    except ValueError as exc:
        raise ValueError(f"{path}: invalid model config in checkpoint: {exc}") from None


def extractor_state(model_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The extractor F's weights out of a full OccNet state dict (keys without the prefix)."""
    prefix = "extractor."
    return {k[len(prefix) :]: v for k, v in model_state.items() if k.startswith(prefix)}
