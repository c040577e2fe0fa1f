"""Recipes: the typed settings objects and the learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from occstudy.recipes import FAST, PAPER, RECIPE_FIELDS, RECIPES, Recipe, get_recipe, lr_at


def _reference_lr(step: int, base: float, total: int, warmup: int) -> float:
    """Warm-up + cosine written from the textbook definition, one case at a time."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / (total - warmup)
    t = min(t, 1.0)
    return base * (math.cos(math.pi * t) + 1) / 2


@pytest.mark.parametrize("total,warmup", [(10, 0), (10, 3), (100, 30), (7, 7)])
def test_cosine_matches_reference(total: int, warmup: int) -> None:
    for step in range(total + 2):
        got = lr_at(step, base_lr=0.1, total_steps=total, warmup_steps=warmup, schedule="cosine")
        if warmup == total and step >= warmup:
            continue  # no decay span: covered by the guard below
        assert got == pytest.approx(_reference_lr(step, 0.1, total, warmup), abs=1e-12)


def test_cosine_hand_computed() -> None:
    kw = {"base_lr": 2.0, "total_steps": 6, "warmup_steps": 2, "schedule": "cosine"}
    # Warm-up 1/2, 2/2 of the peak; then (1 + cos(pi * k / 4)) / 2 for k = 0..4.
    want = [1.0, 2.0, 2.0, 1.0 + math.sqrt(0.5), 1.0, 1.0 - math.sqrt(0.5)]
    assert [lr_at(s, **kw) for s in range(6)] == pytest.approx(want)
    assert lr_at(6, **kw) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(1000, **kw) == pytest.approx(0.0, abs=1e-12)


def test_constant_and_unknown_schedule() -> None:
    assert lr_at(5, base_lr=0.3, total_steps=4, warmup_steps=2, schedule="constant") == 0.3
    with pytest.raises(ValueError, match="onecycle"):
        lr_at(0, base_lr=0.3, total_steps=4, warmup_steps=2, schedule="onecycle")


def test_paper_recipe_is_the_papers_settings() -> None:
    assert (PAPER.arch, PAPER.stem, PAPER.optimizer, PAPER.lr, PAPER.batch_size) == (
        "resnet34",
        "imagenet",
        "adam",
        1e-4,
        64,
    )
    assert PAPER.schedule == "constant" and PAPER.weight_decay == 0 and not PAPER.tta_flip
    assert set(RECIPES) == {"paper", "fast"} and FAST.name == "fast"


def test_get_recipe_by_name_or_object() -> None:
    mine = replace(FAST, name="mine", lr=1e-3)
    assert get_recipe("fast") is FAST and get_recipe(mine) is mine
    with pytest.raises(ValueError, match="'slow'.*paper, fast"):
        get_recipe("slow")
    assert "name" not in RECIPE_FIELDS and "tta_flip" in RECIPE_FIELDS


@pytest.mark.parametrize(
    "change,field",
    [
        ({"arch": "vgg"}, "arch"),
        ({"stem": "huge"}, "stem"),
        ({"lr": float("inf")}, "lr"),
        ({"pretext_lr": 0.0}, "pretext_lr"),
        ({"batch_size": 1}, "batch_size"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"schedule": "step"}, "schedule"),
        ({"warmup_epochs": float("nan")}, "warmup_epochs"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"augment": "mixup"}, "augment"),
        ({"tta_flip": "yes"}, "tta_flip"),
    ],
)
def test_bad_recipe_names_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"Recipe 'x': {field}="):
        Recipe(name="x", **change)


def test_method_config_takes_recipe_values_and_overrides() -> None:
    from occstudy.pipeline import MethodConfig

    fast = MethodConfig(recipe="fast", device="cpu")
    assert fast.recipe == "fast"
    assert all(getattr(fast, f) == getattr(FAST, f) for f in RECIPE_FIELDS)
    over = MethodConfig(recipe="fast", lr=5e-4, arch="resnet34", device="cpu")
    assert (over.lr, over.arch, over.stem) == (5e-4, "resnet34", FAST.stem)
    paper = MethodConfig(device="cpu")
    assert all(getattr(paper, f) == getattr(PAPER, f) for f in RECIPE_FIELDS)
    with pytest.raises(ValueError, match="MethodConfig.lr=inf"):
        MethodConfig(lr=float("inf"), device="cpu")
    with pytest.raises(ValueError, match="MethodConfig.recipe='nope'"):
        MethodConfig(recipe="nope", device="cpu")
