"""Training recipes: the settings of both stages that are not the method itself.

The method (pretext losses, heads, occluded fine-tuning, protocols) is the same under every
recipe; a recipe says how the networks are trained: architecture and stem of F, optimiser,
learning rates, schedule, weight decay, label smoothing, augmentation, test-time flip and batch
size. Two ship with occstudy:

* ``paper``: exactly the paper's settings (ResNet-34 with the ImageNet stem, Adam 1e-4 with
  no schedule, batch 64, no regularisation beyond crop + flip). Faithful, but on 48 px faces
  and a CPU budget it stays near the majority class for the first epochs.
* ``fast``: learns FER from scratch on a CPU budget. Every part was chosen on validation data
  only (FER2013 PublicTest); the measurements are in the README ("Recipes").

A recipe is a frozen dataclass, so a variant of one is
``dataclasses.replace(FAST, name="fast-lr1e-3", lr=1e-3)`` (give it its own name: the name is
what MLflow's ``recipe`` param shows, next to every field);
:class:`~occstudy.pipeline.MethodConfig` and :class:`~occstudy.study.Study` take a recipe by
name or as an object, and any of their own recipe fields overrides the recipe's value.

This module imports nothing heavy (no torch), so study files and the CLI can use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

#: Architectures of F (torchvision ResNets).
ARCHS: tuple[str, ...] = ("resnet18", "resnet34")
#: Stems of F (see :mod:`occstudy.models`).
STEMS: tuple[str, ...] = ("imagenet", "small", "stride2")
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw")
#: ``constant``: the base rate throughout; ``cosine``: linear warm-up, then cosine decay to 0.
SCHEDULES: tuple[str, ...] = ("constant", "cosine")
#: ``crop-flip``: reflect-pad random crop + horizontal flip; ``affine-flip``: random rotation
#: (±15°), zoom (0.9-1.1), shift (±10 %) and horizontal flip; ``none``: no augmentation.
AUGMENTS: tuple[str, ...] = ("crop-flip", "affine-flip", "none")


@dataclass(frozen=True)
class Recipe:
    """How both stages train (everything but the method and the budget).

    Attributes:
        name: Name logged with every run (``paper``, ``fast`` or a user's own).
        arch: Architecture of F (:data:`ARCHS`).
        stem: Stem of F (:data:`STEMS`).
        batch_size: Batch size of both stages.
        lr: Peak learning rate of the fine-tune stage.
        pretext_lr: Peak learning rate of the pretext stage.
        optimizer: ``adam`` (L2 weight decay, as torch's Adam) or ``adamw`` (decoupled weight
            decay, not applied to biases and BatchNorm parameters).
        weight_decay: Weight decay of both stages.
        schedule: Learning-rate schedule per step (:data:`SCHEDULES`).
        warmup_epochs: Linear warm-up length for ``cosine`` (fraction of the stage's epochs
            allowed: 0.5 = half an epoch).
        label_smoothing: Cross-entropy label smoothing of the fine-tune stage.
        augment: Training augmentation (:data:`AUGMENTS`); occlusion comes on top of it.
        tta_flip: Test (and validate) on the mean of the softmax of a face and its mirror image.
    """

    name: str
    arch: str = "resnet34"
    stem: str = "imagenet"
    batch_size: int = 64
    lr: float = 1e-4
    pretext_lr: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: str = "crop-flip"
    tta_flip: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Recipe name={self.name!r}: must be a non-empty string")
        problems = recipe_field_problems(self)
        if problems:
            raise ValueError(f"Recipe {self.name!r}: {problems[0]}")


def get_recipe(recipe: str | Recipe) -> Recipe:
    """A recipe by name (:data:`RECIPES`) or the object itself.

    Raises:
        ValueError: naming the unknown recipe and the valid names.
    """
    if isinstance(recipe, Recipe):
        return recipe
    if not isinstance(recipe, str):
        raise ValueError(
            f"recipe must be a name ({', '.join(RECIPES)}) or a Recipe, not a "
            f"{type(recipe).__name__}"
        )
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; valid: {', '.join(RECIPES)}")
    return RECIPES[recipe]


def _get(values: object, name: str) -> Any:
    return getattr(values, name, None)


def recipe_field_problems(values: object) -> list[str]:
    """What is wrong with the recipe fields of ``values`` (a Recipe or a MethodConfig), one
    ``field=value: why`` line each; empty when everything is valid."""
    out: list[str] = []

    def check(name: str, ok: bool, why: str) -> None:
        if not ok:
            out.append(f"{name}={getattr(values, name)!r}: {why}")

    def finite(name: str) -> bool:
        v = getattr(values, name)
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    check("arch", getattr(values, "arch", None) in ARCHS, f"must be one of {ARCHS}")
    check("stem", getattr(values, "stem", None) in STEMS, f"must be one of {STEMS}")
    bs = getattr(values, "batch_size", None)
    check(
        "batch_size", isinstance(bs, int) and not isinstance(bs, bool) and bs >= 2, "must be >= 2"
    )
    for name in ("lr", "pretext_lr"):
        check(name, finite(name) and getattr(values, name) > 0, "must be a finite number > 0")
    check("optimizer", getattr(values, "optimizer", None) in OPTIMIZERS, f"one of {OPTIMIZERS}")
    check(
        "weight_decay",
        finite("weight_decay") and _get(values, "weight_decay") >= 0,
        "must be a finite number >= 0",
    )
    check("schedule", getattr(values, "schedule", None) in SCHEDULES, f"one of {SCHEDULES}")
    check(
        "warmup_epochs",
        finite("warmup_epochs") and _get(values, "warmup_epochs") >= 0,
        "must be a finite number >= 0",
    )
    check(
        "label_smoothing",
        finite("label_smoothing") and 0 <= _get(values, "label_smoothing") < 1,
        "must be in [0, 1)",
    )
    check("augment", getattr(values, "augment", None) in AUGMENTS, f"one of {AUGMENTS}")
    check("tta_flip", isinstance(getattr(values, "tta_flip", None), bool), "must be True or False")
    return out


def lr_at(
    step: int, *, base_lr: float, total_steps: int, warmup_steps: int, schedule: str
) -> float:
    """Learning rate of one optimiser step.

    ``constant``: ``base_lr``. ``cosine``: ``base_lr * (s + 1) / W`` for ``s < W`` (linear
    warm-up over ``W = warmup_steps``), then ``base_lr * (1 + cos(pi * (s - W) / (T - W))) / 2``
    down to 0 at ``T = total_steps``. A pure function of the step, so a resumed run continues
    the schedule exactly.

    Args:
        step: Global step index (0-based, counted over the whole stage).
        base_lr: Peak learning rate.
        total_steps: Steps of the whole stage.
        warmup_steps: Warm-up steps (``cosine`` only).
        schedule: One of :data:`SCHEDULES`.
    """
    if schedule == "constant":
        return base_lr
    if schedule != "cosine":
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


#: The paper's settings (Wang, Ding & Wang, ACCV 2022): nothing added.
PAPER = Recipe(name="paper")

#: A recipe that learns on a CPU budget (chosen on FER2013 PublicTest, never on test).
FAST = Recipe(
    name="fast",
    arch="resnet18",
    stem="imagenet",
    batch_size=64,
    lr=2e-3,
    pretext_lr=3e-4,
    optimizer="adamw",
    weight_decay=5e-4,
    schedule="cosine",
    warmup_epochs=0.3,
    label_smoothing=0.1,
    augment="crop-flip",
    tta_flip=True,
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (PAPER, FAST)}
#: The fields a recipe sets (a MethodConfig or Study field of the same name overrides them).
RECIPE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Recipe) if f.name != "name")
