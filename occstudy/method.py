"""The method's vocabulary: variants, parameters, names, data references and the run config.

This is the one home of what the method *means*, kept free of torch, torchvision and Ray so
that study files, the study spec, the CLI, ``status`` and the report can use it cheaply. The
modules that train and evaluate (``losses``, ``models``, ``train``, ``evaluate``,
``pipeline``) import it; it never imports them.

* :data:`VARIANTS` — the four-way ablation; a :class:`Variant` says which pretext losses and
  heads it trains and which method parameters its pretext result depends on.
* :data:`PARAMETERS` — the method's tunable parameters (name, default, bounds, symbol, MLflow
  name, stage), the single source of λ and τ defaults.
* Names of test protocols, occlusion policies, datasets, stems, architectures and recipes.
* :class:`DataRef` and :class:`MethodConfig`, with :func:`pretext_cache_key`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from occstudy.recipes import (
    ARCHS,
    AUGMENTS,
    OPTIMIZERS,
    RECIPE_FIELDS,
    RECIPES,
    SCHEDULES,
    STEMS,
    Recipe,
    get_recipe,
    recipe_field_problems,
)

__all__ = [
    "ARCHS",
    "AUGMENTS",
    "DATASETS",
    "DEFAULT_SPLITS",
    "OPTIMIZERS",
    "PARAMETERS",
    "POLICIES",
    "PRETEXT_VARIANTS",
    "PROTOCOLS",
    "REAL_OCCLUSION_SETS",
    "RECIPES",
    "SCHEDULES",
    "STEMS",
    "SYNTHETIC",
    "SYNTHETIC_PROTOCOLS",
    "VARIANTS",
    "DataRef",
    "MethodConfig",
    "Parameter",
    "Variant",
    "eval_split_folders",
    "get_variant",
    "mlflow_param_name",
    "pretext_cache_key",
    "pretext_source_label",
    "pretext_source_problem",
    "pretext_source_ref",
]

# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------

#: Synthetic test protocols (:func:`occstudy.occlusion.apply_protocol`): squares of 8, 16 and
#: 24 px at 48 px, eye and mouth regions, and object silhouettes (hands, food, drinks).
SYNTHETIC_PROTOCOLS: tuple[str, ...] = ("r8", "r16", "r24", "eye", "mouth", "objects")
#: Every protocol of the test split: clean faces first, then the synthetic occlusions.
PROTOCOLS: tuple[str, ...] = ("clean", *SYNTHETIC_PROTOCOLS)
#: Named training occlusion policies (:func:`occstudy.occlusion.make_policy`).
POLICIES: tuple[str, ...] = ("squares", "regions", "objects", "ckplus", "all")
#: The built-in generated data set (no files needed).
SYNTHETIC = "synthetic-faces"
#: Every dataset name the data registry loads (:func:`occstudy.data.load`).
DATASETS: tuple[str, ...] = (
    "fer2013",
    "ferplus",
    "occlusion-ferplus",
    "pose-ferplus",
    "rafdb",
    "affectnet",
    "ckplus",
    "fedro",
    SYNTHETIC,
)
#: (train, validation, test) split of each labelled dataset; None = hold out part of train.
DEFAULT_SPLITS: dict[str, tuple[str, str | None, str]] = {
    "fer2013": ("Training", "PublicTest", "PrivateTest"),
    "ferplus": ("Train", "Valid", "Test"),
    SYNTHETIC: ("train", "val", "test"),
    "rafdb": ("train", None, "test"),
    "affectnet": ("train", None, "validation"),
    "ckplus": ("train", None, "test"),
}
#: Test sets of real occlusions (images of FER+ Test).
REAL_OCCLUSION_SETS: tuple[str, ...] = ("occlusion-ferplus", "pose-ferplus")

# ---------------------------------------------------------------------------------------------
# Variants and parameters
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    """One tunable parameter of the method.

    Attributes:
        name: Field of :class:`MethodConfig` and key of a study's search space.
        symbol: How the paper and the report write it (``λ``).
        mlflow: MLflow param name of every run.
        stage: ``pretext`` (its value changes the pretext result), ``finetune`` or ``both``.
        default: The method's default; None when a recipe supplies it.
        low: Smallest valid value (numeric parameters).
        low_inclusive: Whether ``low`` itself is valid.
        choices: Valid names (categorical parameters).
        doc: One line for help texts.
    """

    name: str
    symbol: str
    mlflow: str
    stage: str
    default: float | str | None = None
    low: float | None = None
    low_inclusive: bool = True
    choices: tuple[str, ...] = ()
    doc: str = ""

    @property
    def categorical(self) -> bool:
        return bool(self.choices)

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is invalid for this parameter, or None."""
        if self.categorical:
            if value not in self.choices:
                return f"must be one of {self.choices}"
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number"
        if not math.isfinite(value):
            return "must be finite"
        if self.low is not None:
            if self.low_inclusive and value < self.low:
                return f"must be >= {self.low:g}"
            if not self.low_inclusive and value <= self.low:
                return f"must be > {self.low:g}"
        return None


#: The method's tunable parameters, in the order studies and reports list them.
PARAMETERS: dict[str, Parameter] = {
    p.name: p
    for p in (
        Parameter(
            "lam",
            "λ",
            "lambda",
            "pretext",
            0.2,
            low=0.0,
            doc="weight of L_mask in the pretext loss",
        ),
        Parameter(
            "tau",
            "τ",
            "tau",
            "pretext",
            2.0,
            low=0.0,
            low_inclusive=False,
            doc="temperature of L_SS",
        ),
        Parameter(
            "lr", "lr", "lr", "finetune", low=0.0, low_inclusive=False, doc="fine-tune peak lr"
        ),
        Parameter(
            "pretext_lr",
            "lr_pre",
            "pretext_lr",
            "pretext",
            low=0.0,
            low_inclusive=False,
            doc="pretext peak lr",
        ),
        Parameter("arch", "arch", "arch", "both", choices=ARCHS, doc="architecture of F"),
    )
}


def mlflow_param_name(name: str) -> str:
    """MLflow param name of a method parameter (``lam`` → ``lambda``); other names unchanged."""
    p = PARAMETERS.get(name)
    return name if p is None else p.mlflow


@dataclass(frozen=True)
class Variant:
    """One arm of the loss ablation.

    Attributes:
        name: ``none``, ``ss``, ``mask`` or ``ss+mask``.
        losses: Pretext losses it trains: ``ss`` (L_SS) and/or ``mask`` (L_mask); empty for
            ``none``, which has no pretext stage.
        heads: Pretext heads of the network: ``projector`` (for L_SS) and/or ``mask`` (U_o).
    """

    name: str
    losses: tuple[str, ...]
    heads: tuple[str, ...]

    @property
    def has_pretext(self) -> bool:
        return bool(self.losses)

    @property
    def uses_ss(self) -> bool:
        return "ss" in self.losses

    @property
    def uses_mask(self) -> bool:
        return "mask" in self.losses

    @property
    def pretext_params(self) -> tuple[str, ...]:
        """Parameters of :data:`PARAMETERS` its pretext result depends on: τ only with L_SS,
        λ only when it weighs L_mask against L_SS, every other pretext/both-stage parameter
        whenever there is a pretext stage."""
        if not self.has_pretext:
            return ()
        out = []
        for p in PARAMETERS.values():
            if p.stage == "finetune":
                continue
            if p.name == "tau" and not self.uses_ss:
                continue
            if p.name == "lam" and not (self.uses_ss and self.uses_mask):
                continue
            out.append(p.name)
        return tuple(out)

    @property
    def irrelevant_params(self) -> tuple[str, ...]:
        """Pretext parameters its pretext result does not depend on (dropped from its key)."""
        return tuple(
            p.name
            for p in PARAMETERS.values()
            if p.stage == "pretext" and p.name not in self.pretext_params
        )


_VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("none", (), ()),
        Variant("ss", ("ss",), ("projector",)),
        Variant("mask", ("mask",), ("mask",)),
        Variant("ss+mask", ("ss", "mask"), ("projector", "mask")),
    )
}
#: The four-way ablation.
VARIANTS: tuple[str, ...] = tuple(_VARIANTS)
#: Variants with a pretext stage.
PRETEXT_VARIANTS: tuple[str, ...] = tuple(n for n, v in _VARIANTS.items() if v.has_pretext)


def get_variant(name: str) -> Variant:
    """The :class:`Variant` called ``name``.

    Raises:
        ValueError: for an unknown name.
    """
    if name not in _VARIANTS:
        raise ValueError(f"unknown variant {name!r}; valid: {', '.join(VARIANTS)}")
    return _VARIANTS[name]


# ---------------------------------------------------------------------------------------------
# Data references
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataRef:
    """A dataset by registry name, root folder and loader options, e.g. ``fer2013:/data/fer2013``.

    Load one with :func:`occstudy.pipeline.load_ref`.
    """

    name: str
    root: str | None = None
    split: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise ValueError(f"unknown dataset {self.name!r}; valid: {', '.join(DATASETS)}")
        if self.root is None and self.name != SYNTHETIC:
            raise ValueError(f"dataset {self.name!r} needs a root folder ({self.name}:PATH)")

    @staticmethod
    def parse(text: str) -> DataRef:
        """Parse ``NAME[:ROOT][@SPLIT][?KEY=VALUE&...]`` (the inverse of :meth:`__str__`)."""
        text, _, query = text.partition("?")
        name, colon, rest = text.partition(":")
        if "@" in name:  # NAME@SPLIT without a root
            name, _, rest = name.partition("@")
            rest = "@" + rest
        root, at, split = rest.rpartition("@") if "@" in rest else (rest, "", "")
        if colon and not root:
            raise ValueError(f"{text!r}: empty ROOT after ':' (NAME:ROOT[@SPLIT])")
        if at and not split:
            raise ValueError(f"{text!r}: empty SPLIT after '@' (NAME:ROOT[@SPLIT])")
        options: list[tuple[str, Any]] = []
        for item in filter(None, query.split("&")):
            k, _, v = item.partition("=")
            options.append((k, int(v) if v.lstrip("-").isdecimal() and v.isascii() else v))
        return DataRef(name=name, root=root or None, split=split or None, options=tuple(options))

    def __str__(self) -> str:
        s = self.name if self.root is None else f"{self.name}:{self.root}"
        s += f"@{self.split}" if self.split else ""
        if self.options:
            s += "?" + "&".join(f"{k}={v}" for k, v in self.options)
        return s


#: Split names that hold validation or test images, whatever a dataset calls them.
_EVAL_SPLIT = re.compile(r"test|val", re.IGNORECASE)


def pretext_source_ref(source: str) -> DataRef | None:
    """The labelled dataset a pretext source names, or None for ``synthetic-faces`` and folders.

    A source is a dataset reference when it reads ``NAME:ROOT[@SPLIT]`` with a NAME free of path
    separators (``fer2013:/data/fer2013@Training``); anything else is a folder.

    Raises:
        ValueError: for an unknown dataset NAME or a missing ROOT (from :meth:`DataRef.parse`).
    """
    if source == SYNTHETIC:
        return None
    name, sep, _ = source.partition(":")
    if not sep or not name or "/" in name or "\\" in name:
        return None
    return DataRef.parse(source)


def _pretext_ref_problem(ref: DataRef) -> str | None:
    """Why a labelled dataset cannot be a pretext source, or None when it can."""
    if ref.name not in DEFAULT_SPLITS or ref.name == SYNTHETIC:
        valid = ", ".join(n for n in DEFAULT_SPLITS if n != SYNTHETIC)
        return (
            f"{ref.name} is not a labelled training set; valid NAME: {valid} "
            f"(or plain {SYNTHETIC!r})"
        )
    if ref.split is None:
        return None
    train, val, test = DEFAULT_SPLITS[ref.name]
    # Training splits only: every other split is, or shares images with, a validation/test
    # split (CK+ ``all``, the RAF-DB/AffectNet challenge lists).
    allowed = (train, "train") if ref.name == "fer2013" else (train,)
    if ref.split in allowed:
        return None
    if ref.split in (val, test) or _EVAL_SPLIT.search(ref.split):
        return (
            f"split {ref.split!r} is a validation/test split of {ref.name}: validation and test "
            "images never enter the pretext set"
        )
    valid = ", ".join(allowed)
    return f"split {ref.split!r} is not a training split of {ref.name} (valid: {valid})"


def pretext_source_problem(source: Any) -> str | None:
    """Why ``source`` is no valid pretext source by its text alone, or None when it is valid
    (:class:`MethodConfig` also checks the file system)."""
    if not isinstance(source, str) or not source:
        return f"must be a non-empty string: {SYNTHETIC!r}, a folder or NAME:ROOT[@SPLIT]"
    try:
        ref = pretext_source_ref(source)
    except ValueError as exc:
        return str(exc)
    return None if ref is None else _pretext_ref_problem(ref)


def eval_split_folders(ref: DataRef) -> list[tuple[str, Path]]:
    """``(split, folder)`` of each existing folder that holds validation/test images of ``ref``.

    FER2013 and FER+ keep one folder per split; RAF-DB, AffectNet and CK+ keep test images
    beside training ones, so their whole image folder counts; the real-occlusion sets are
    images of FER+ Test.
    """
    if ref.root is None:
        return []
    root = Path(ref.root).expanduser()
    ferplus_test = [("test", root / "ferplus" / "FER2013Test")]
    folders = {
        "fer2013": [(s, root / s) for s in ("PublicTest", "PrivateTest", "test")],
        "ferplus": [(s, root / f"FER2013{s}") for s in ("Valid", "Test")],
        "rafdb": [("test", root / "Image")],
        "affectnet": [("validation", root / "Manually_Annotated_Images")],
        "ckplus": [("test", root)],
        "occlusion-ferplus": ferplus_test,
        "pose-ferplus": ferplus_test,
    }.get(ref.name, [])
    return [(split, folder) for split, folder in folders if folder.is_dir()]


def _path_relation(path: Path, folder: Path) -> str | None:
    """How resolved ``path`` relates to resolved ``folder`` (None: disjoint)."""
    if path == folder:
        return "is"
    if folder.is_relative_to(path):
        return "contains"
    if path.is_relative_to(folder):
        return "lies inside"
    return None


def pretext_source_label(source: str) -> str:
    """A source without its location (``synthetic-faces``, ``folder:lfw``, ``fer2013@Training``),
    for keys that must survive moving the data: the data fingerprint identifies the content."""
    if source == SYNTHETIC:
        return SYNTHETIC
    ref = pretext_source_ref(source)
    if ref is None:
        return f"folder:{Path(source).expanduser().resolve().name}"
    label = f"{ref.name}@{ref.split or DEFAULT_SPLITS[ref.name][0]}"
    return label + "".join(f"?{k}={v}" for k, v in ref.options)


# ---------------------------------------------------------------------------------------------
# The run config
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodConfig:
    """Everything one run of the method depends on.

    Attributes:
        data: Labelled dataset for fine-tuning and testing.
        variant: ``none``, ``ss``, ``mask`` or ``ss+mask`` (see :class:`Variant`).
        pretext_data: Sources of unlabelled faces, concatenated in order; each one is
            ``synthetic-faces``, a folder (searched recursively) or a labelled dataset
            ``NAME:ROOT[@SPLIT]`` whose labels are ignored (its training split by default;
            validation/test splits are refused). A plain ``str`` is one source. Folders that
            hold validation/test images of ``data`` or ``real_occlusion`` are refused, and
            pixel duplicates of those images are dropped at load time.
        real_occlusion: Real-occlusion test sets (e.g. ``occlusion-ferplus:/data``).
        image_size: Network input side (48 for FER-style faces; the paper used 224 elsewhere).
        in_chans: 1 (grey) or 3.
        recipe: How both stages train: ``paper`` (the paper's settings, default), ``fast``
            (learns on a CPU budget) or a :class:`~occstudy.recipes.Recipe`. The recipe fills
            every recipe field below left at None; a field given here overrides it. After
            construction ``recipe`` is the recipe's name and every field holds its value
            (so ``dataclasses.replace(config, recipe=...)`` keeps the old recipe's values:
            build a new config to change recipe).
        arch: Architecture of F, ``resnet34`` or ``resnet18`` (recipe field).
        stem: ResNet stem, ``imagenet``, ``small`` or ``stride2`` (see :mod:`occstudy.models`;
            recipe field).
        pretext_epochs: Pretext epochs (ignored for ``none``).
        epochs: Fine-tune epochs.
        batch_size: Batch size of both stages (the paper: 64; recipe field).
        lr: Peak learning rate of the fine-tune stage (the paper: Adam 1e-4; recipe field).
        pretext_lr: Peak learning rate of the pretext stage (recipe field).
        optimizer: ``adam`` or ``adamw`` (recipe field).
        weight_decay: Weight decay of both stages (recipe field).
        schedule: ``constant`` or ``cosine`` with linear warm-up, per step (recipe field).
        warmup_epochs: Warm-up of ``cosine`` in epochs (recipe field).
        label_smoothing: Label smoothing of the fine-tune cross-entropy (recipe field).
        augment: ``crop-flip``, ``affine-flip`` or ``none`` (recipe field).
        tta_flip: Validate and test on each face and its mirror image (recipe field).
        tau: Temperature τ of L_SS (the paper: 2).
        lam: Weight λ of L_mask (the paper: 0.2).
        gather_negatives: Under DDP, contrast each worker's anchors with every worker's
            embeddings (the global batch) instead of its own batch only. Off by default, as
            in the paper's single-process setting; without DDP it changes nothing.
        pretext_policy: Occlusion policy of the pretext stage (one of :data:`POLICIES`).
        finetune_policy: Occlusion policy for the occluded copies of the fine-tune set.
        occlusion_prob: Share of fine-tune images seen occluded.
        protocols: Test protocols on the test split.
        balanced: Class-balanced sampling in the fine-tune stage.
        label_fraction: Stratified, seeded fraction of the fine-tune labels used.
        pretext_limit: Use at most this many unlabelled faces (None = all): the first ones of
            a single source, a seeded draw from several.
        train_limit: Use at most this many labelled training faces, stratified (None = all).
        max_steps: Cap on steps per epoch (smoke runs).
        synthetic_size: Images per split of the built-in data set.
        seed: Seed of everything random.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
    """

    data: DataRef = field(default_factory=lambda: DataRef(SYNTHETIC))
    variant: str = "ss+mask"
    pretext_data: tuple[str, ...] = (SYNTHETIC,)
    real_occlusion: tuple[DataRef, ...] = ()
    image_size: int = 48
    in_chans: int = 1
    recipe: str | Recipe = "paper"
    # Recipe fields: None means "the recipe's value" and is replaced in __post_init__, so
    # after construction they always hold a value of the annotated type.
    arch: str = None  # type: ignore[assignment]
    stem: str = None  # type: ignore[assignment]
    pretext_epochs: int = 1
    epochs: int = 1
    batch_size: int = None  # type: ignore[assignment]
    lr: float = None  # type: ignore[assignment]
    pretext_lr: float = None  # type: ignore[assignment]
    optimizer: str = None  # type: ignore[assignment]
    weight_decay: float = None  # type: ignore[assignment]
    schedule: str = None  # type: ignore[assignment]
    warmup_epochs: float = None  # type: ignore[assignment]
    label_smoothing: float = None  # type: ignore[assignment]
    augment: str = None  # type: ignore[assignment]
    tta_flip: bool = None  # type: ignore[assignment]
    tau: float = PARAMETERS["tau"].default  # type: ignore[assignment]
    lam: float = PARAMETERS["lam"].default  # type: ignore[assignment]
    gather_negatives: bool = False
    pretext_policy: str = "all"
    finetune_policy: str = "all"
    occlusion_prob: float = 0.5
    protocols: tuple[str, ...] = PROTOCOLS
    balanced: bool = False
    label_fraction: float = 1.0
    pretext_limit: int | None = None
    train_limit: int | None = None
    max_steps: int | None = None
    synthetic_size: int = 6000
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        def bad(fieldname: str, value: Any, why: str) -> ValueError:
            return ValueError(f"MethodConfig.{fieldname}={value!r}: {why}")

        complete = all(getattr(self, name) is not None for name in RECIPE_FIELDS)
        if not (complete and isinstance(self.recipe, str)):
            # A complete config (e.g. after dataclasses.replace) keeps its own recipe's name,
            # even one of a user's own Recipe objects that RECIPES does not know.
            try:
                recipe = get_recipe(self.recipe)
            except ValueError as exc:
                raise bad("recipe", self.recipe, str(exc)) from None
            object.__setattr__(self, "recipe", recipe.name)
            for name in RECIPE_FIELDS:
                if getattr(self, name) is None:
                    object.__setattr__(self, name, getattr(recipe, name))
        elif not self.recipe:
            raise bad("recipe", self.recipe, "must be a non-empty name")
        problems = recipe_field_problems(self)
        if problems:
            raise ValueError(f"MethodConfig.{problems[0]}")
        if self.variant not in VARIANTS:
            raise bad("variant", self.variant, f"must be one of {VARIANTS}")
        for name in ("tau", "lam"):
            why = PARAMETERS[name].problem(getattr(self, name))
            if why is not None:
                raise bad(name, getattr(self, name), why)
        if not 32 <= self.image_size <= 1024:
            raise bad("image_size", self.image_size, "must be in [32, 1024]")
        if self.pretext_epochs < 0:
            raise bad("pretext_epochs", self.pretext_epochs, "must be >= 0 (0: no pretext)")
        if self.epochs < 1:
            # Zero fine-tune epochs would test an untrained classifier and report it as a result.
            raise bad("epochs", self.epochs, "must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise bad("max_steps", self.max_steps, "must be >= 1 (or None: whole epochs)")
        if self.in_chans not in (1, 3):
            raise bad("in_chans", self.in_chans, "must be 1 or 3")
        if not 0 < self.label_fraction <= 1:
            raise bad("label_fraction", self.label_fraction, "must be in (0, 1]")
        if not 0 <= self.occlusion_prob <= 1:
            raise bad("occlusion_prob", self.occlusion_prob, "must be in [0, 1]")
        for p in self.protocols:
            if p not in PROTOCOLS:
                raise bad("protocols", p, f"valid: {', '.join(PROTOCOLS)}")
        for name in ("pretext_policy", "finetune_policy"):
            if getattr(self, name) not in POLICIES:
                raise bad(
                    name, getattr(self, name), f"unknown policy name; valid: {', '.join(POLICIES)}"
                )
        if self.data.name not in DEFAULT_SPLITS:
            raise bad(
                "data",
                self.data.name,
                f"not a labelled training set; valid: {', '.join(DEFAULT_SPLITS)}",
            )
        for ref in self.real_occlusion:
            if ref.name not in REAL_OCCLUSION_SETS:
                raise bad("real_occlusion", ref.name, f"valid: {', '.join(REAL_OCCLUSION_SETS)}")
        self._check_pretext_data()

    @property
    def method_variant(self) -> Variant:
        """The :class:`Variant` this run trains."""
        return get_variant(self.variant)

    @property
    def runs_pretext(self) -> bool:
        """Whether this run has a pretext stage: a variant with pretext losses and at least
        one pretext epoch."""
        return self.method_variant.has_pretext and self.pretext_epochs > 0

    def _check_pretext_data(self) -> None:
        """Normalise ``pretext_data`` to a tuple and check each source (see the class doc).

        Syntax, duplicates and validation/test splits are always checked; the file system
        (missing folders, folders holding validation/test images) only when the variant has a
        pretext stage, as a ``none`` run never reads the sources.
        """
        raw = self.pretext_data
        sources = (raw,) if isinstance(raw, str) else tuple(raw) if isinstance(raw, list) else raw
        if not isinstance(sources, tuple) or not sources:
            raise ValueError(
                f"MethodConfig.pretext_data={raw!r}: must name at least one source "
                f"({SYNTHETIC!r}, a folder or NAME:ROOT[@SPLIT])"
            )
        object.__setattr__(self, "pretext_data", sources)
        reads_files = self.method_variant.has_pretext
        protected = [
            (str(ref), split, folder.resolve())
            for ref in ((self.data, *self.real_occlusion) if reads_files else ())
            for split, folder in eval_split_folders(ref)
        ]
        seen: dict[Any, int] = {}
        folders: list[tuple[int, Path]] = []
        for i, source in enumerate(sources):

            def bad(why: str, i: int = i, source: Any = source) -> ValueError:
                return ValueError(f"MethodConfig.pretext_data[{i}]={source!r}: {why}")

            problem = pretext_source_problem(source)
            if problem is not None:
                raise bad(problem)
            ref = pretext_source_ref(source)
            identity: Any
            if ref is not None:
                root = Path(str(ref.root)).expanduser()
                identity = (ref.name, root.resolve(), ref.split or DEFAULT_SPLITS[ref.name][0])
                identity += (ref.options,)
                if reads_files and not root.exists():
                    raise bad(f"dataset root {root} not found")
            else:
                identity = SYNTHETIC if source == SYNTHETIC else Path(source).expanduser().resolve()
            if identity in seen:
                raise bad(f"duplicate of pretext_data[{seen[identity]}]")
            seen[identity] = i
            if not isinstance(identity, Path):
                continue
            path = identity
            for j, other in folders:
                if path.is_relative_to(other) or other.is_relative_to(path):
                    raise bad(f"overlaps pretext_data[{j}]={sources[j]!r}: images counted twice")
            folders.append((i, path))
            if not reads_files:
                continue
            if not path.is_dir():
                hint = (
                    f"; for the dataset write {source}:ROOT[@SPLIT]" if source in DATASETS else ""
                )
                raise bad(
                    f"is neither {SYNTHETIC!r}, an existing folder nor NAME:ROOT[@SPLIT]{hint}"
                )
            for data, split, folder in protected:
                where = _path_relation(path, folder)
                if where is not None:
                    raise bad(
                        f"{where} {folder}, which holds the {split} split of {data}: validation "
                        "and test images never enter the pretext set"
                    )

    def pretext_key(self) -> dict[str, Any]:
        """The settings the pretext stage's result depends on (used to match checkpoints)."""
        key = {
            "variant": self.variant,
            "pretext_data": list(self.pretext_data),
            "image_size": self.image_size,
            "in_chans": self.in_chans,
            "arch": self.arch,
            "stem": self.stem,
            "pretext_epochs": self.pretext_epochs,
            "batch_size": self.batch_size,
            "pretext_lr": self.pretext_lr,
            "optimizer": self.optimizer,
            "weight_decay": self.weight_decay,
            "schedule": self.schedule,
            "warmup_epochs": self.warmup_epochs,
            "augment": self.augment,
            "tau": self.tau,
            "lam": self.lam,
            "pretext_policy": self.pretext_policy,
            "pretext_limit": self.pretext_limit,
            "max_steps": self.max_steps,
            "seed": self.seed,
        }
        # Only where it is on, so that every key computed before the option existed holds.
        if self.gather_negatives:
            key["gather_negatives"] = True
        return key

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data"] = str(self.data)
        d["real_occlusion"] = [str(r) for r in self.real_occlusion]
        d["protocols"] = list(self.protocols)
        d["pretext_data"] = list(self.pretext_data)
        return d


def pretext_cache_key(config: MethodConfig, data_fingerprint: str) -> str:
    """Key of a pretext result: the settings it depends on, every pretext source in order,
    the data fingerprint and the seed.

    Parameters the variant's pretext does not use (:attr:`Variant.irrelevant_params`) are
    left out, so runs differing only in those share one pretext. Sources enter by kind and
    name, not path: the same faces moved elsewhere keep their entry (the fingerprint
    identifies the content).
    """
    key = dict(config.pretext_key())
    for name in config.method_variant.irrelevant_params:
        key.pop(name, None)
    key["pretext_data"] = [pretext_source_label(s) for s in config.pretext_data]
    key["data"] = data_fingerprint
    blob = json.dumps(key, sort_keys=True, default=str).encode()
    return f"{config.variant.replace('+', '-')}-{hashlib.sha256(blob).hexdigest()[:16]}"
