"""Typed study definitions: what to run, validated before anything starts.

A :class:`Study` names the data of both stages, the test protocols, the ablation variants,
seeds, label fractions and a search space over the method's hyper-parameters, plus how to
search it (grid, or an Optuna sampler with an optional ASHA scheduler) and the resources of
each trial. Every field is checked in ``__post_init__`` and a bad value raises
:class:`StudyError` naming the field path, e.g.
``Study.search_space['gamma']: unknown parameter; valid: lam, tau, lr, pretext_lr``.

The runner turns a study into trials: :meth:`Study.grid_points` are the grid dimensions, the
search algorithm fills in :meth:`Study.sampled_params`, and :meth:`Study.method_config` maps a
complete point onto the single-process :class:`~occstudy.pipeline.MethodConfig`.

Study files (``studies/*.py``) define a module-level ``study`` (or ``make_study()``) and are
imported with :func:`load_study`; they locate real data only through :func:`data_root`.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from occstudy.method import (
    DEFAULT_SPLITS,
    PARAMETERS,
    POLICIES,
    PRETEXT_VARIANTS,
    PROTOCOLS,
    REAL_OCCLUSION_SETS,
    STEMS,
    SYNTHETIC,
    VARIANTS,
    DataRef,
    MethodConfig,
    pretext_source_problem,
    pretext_source_ref,
)
from occstudy.recipes import Recipe, get_recipe
from occstudy.study.checks import (
    StudyError,
    _choice,
    _err,
    _integer,
    _number,
    _optional_integer,
    _set,
    _tuple,
    _unique,
)
from occstudy.study.space import (
    _PARAM_KINDS,
    _PARAM_MIN,
    CATEGORICAL_PARAMS,
    PARAMS,
    Fixed,
    Grid,
    LogUniform,
    Param,
    SearchSpace,
    Uniform,
    _param_from_dict,
    _param_to_dict,
    default_search_space,
)
from occstudy.tracking import schema

__all__ = [
    "ALGORITHMS",
    "PARAMS",
    "PRETEXT_PARAMS",
    "SCHEDULERS",
    "Fixed",
    "FinetuneSpec",
    "Grid",
    "LogUniform",
    "Param",
    "PretextSpec",
    "Resources",
    "SearchSpace",
    "SearchSpec",
    "Study",
    "StudyError",
    "TestSpec",
    "Uniform",
    "data_root",
    "load_study",
]

#: The parameters the pretext stage's result depends on (the runner's pretext cache key).
PRETEXT_PARAMS: tuple[str, ...] = tuple(
    p.name for p in PARAMETERS.values() if p.stage != "finetune"
)
#: ``grid`` enumerates; the others are Optuna samplers run through Ray Tune's OptunaSearch.
ALGORITHMS: tuple[str, ...] = ("grid", "tpe", "random", "cmaes")
SCHEDULERS: tuple[str, ...] = ("none", "asha")
#: Labelled datasets whose loader deals subject-independent folds (options fold, n_folds).
FOLD_DATASETS: tuple[str, ...] = ("ckplus",)
#: Variants without a pretext stage (their F starts from scratch).
NO_PRETEXT_VARIANTS: tuple[str, ...] = tuple(v for v in VARIANTS if v not in PRETEXT_VARIANTS)
DATA_ENV = "OCCSTUDY_DATA"
#: Most CPUs a worker takes when ``Resources.cpus_per_worker`` is left to the driver: past
#: about 8 threads a ResNet step on 48 px faces stops getting faster, so larger nodes run
#: several trials side by side instead.
AUTO_MAX_CPUS = 8
# A folder name under the storage root: no separators, and not "." or ".." (which would escape
# it), so the first character is a letter or digit.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# ---------------------------------------------------------------------------------------------
# Stage, test, search and resource specs
# ---------------------------------------------------------------------------------------------


def _parse_ref(path: str, text: Any) -> DataRef:
    if not isinstance(text, str) or not text:
        raise _err(path, text, "must be a non-empty string NAME or NAME:ROOT")
    try:
        return DataRef.parse(text)
    except ValueError as exc:
        raise _err(path, text, str(exc)) from None


@dataclass(frozen=True)
class PretextSpec:
    """The pretext stage.

    Attributes:
        data: Sources of unlabelled faces, concatenated in order (a ``str`` is one source):
            ``synthetic-faces``, a folder (searched recursively; it must exist when the study
            has a pretext variant) or a labelled dataset ``NAME:ROOT[@SPLIT]`` whose labels are
            ignored (its training split by default; validation/test splits are refused).
        epochs: Pretext epochs.
        limit: Use at most this many unlabelled faces (None = all; several sources are capped
            together by a seeded draw).
        policy: Occlusion policy (see :data:`occstudy.method.POLICIES`).
        gather_negatives: With several Ray Train workers (DDP), contrast each worker's faces
            with the whole global batch in L_SS, not with its own batch only (off: as the
            paper's single-process setting; see :class:`occstudy.method.MethodConfig`).
    """

    data: tuple[str, ...] = (SYNTHETIC,)
    epochs: int = 1
    limit: int | None = None
    policy: str = "all"
    gather_negatives: bool = False

    def __post_init__(self) -> None:
        data = (self.data,) if isinstance(self.data, str) else _tuple("PretextSpec.data", self.data)
        if not data:
            raise _err("PretextSpec.data", self.data, "must name at least one source")
        for i, source in enumerate(data):
            problem = pretext_source_problem(source)
            if problem is not None:
                raise _err(f"PretextSpec.data[{i}]", source, problem)
            if source in data[:i]:
                raise _err(
                    f"PretextSpec.data[{i}]", source, f"duplicate of data[{data.index(source)}]"
                )
        _set(self, "data", data)
        _integer("PretextSpec.epochs", self.epochs, 1)
        _optional_integer("PretextSpec.limit", self.limit, 1)
        _choice("PretextSpec.policy", self.policy, POLICIES)
        if not isinstance(self.gather_negatives, bool):
            raise _err("PretextSpec.gather_negatives", self.gather_negatives, "must be a bool")


@dataclass(frozen=True)
class FinetuneSpec:
    """The fine-tune stage (and the labelled dataset whose test split is tested).

    Attributes:
        data: ``NAME`` or ``NAME:ROOT`` of a labelled dataset (a key of ``DEFAULT_SPLITS``).
        epochs: Fine-tune epochs.
        balanced: Class-balanced sampling.
        policy: Occlusion policy of the occluded copies.
        occlusion_prob: Share of training images seen occluded.
        train_limit: Use at most this many labelled training faces, stratified.
        synthetic_size: Images per split of the built-in data set.
        folds: Subject-independent k-fold cross-validation (datasets in ``FOLD_DATASETS``):
            each fold becomes a grid dimension ``fold`` (None = the dataset's own split).
    """

    data: str = SYNTHETIC
    epochs: int = 2
    balanced: bool = False
    policy: str = "all"
    occlusion_prob: float = 0.5
    train_limit: int | None = None
    synthetic_size: int = 6000
    folds: int | None = None

    def __post_init__(self) -> None:
        ref = _parse_ref("FinetuneSpec.data", self.data)
        if ref.name not in DEFAULT_SPLITS:
            raise _err(
                "FinetuneSpec.data",
                self.data,
                f"unknown dataset {ref.name!r} for fine-tuning (not a labelled training set); "
                f"valid: {', '.join(DEFAULT_SPLITS)}",
            )
        _integer("FinetuneSpec.epochs", self.epochs, 1)
        if not isinstance(self.balanced, bool):
            raise _err("FinetuneSpec.balanced", self.balanced, "must be a bool")
        _choice("FinetuneSpec.policy", self.policy, POLICIES)
        prob = _number("FinetuneSpec.occlusion_prob", self.occlusion_prob)
        if not 0 <= prob <= 1:
            raise _err("FinetuneSpec.occlusion_prob", prob, "must be in [0, 1]")
        _optional_integer("FinetuneSpec.train_limit", self.train_limit, 1)
        _integer("FinetuneSpec.synthetic_size", self.synthetic_size, 1)
        if self.folds is not None:
            _integer("FinetuneSpec.folds", self.folds, 2)
            if ref.name not in FOLD_DATASETS:
                raise _err(
                    "FinetuneSpec.folds",
                    self.folds,
                    f"dataset {ref.name!r} has no fold splits; valid for: "
                    f"{', '.join(FOLD_DATASETS)}",
                )

    def data_ref(self, fold: int | None = None) -> DataRef:
        """The labelled dataset, with the loader's fold options when ``fold`` is given."""
        ref = DataRef.parse(self.data)
        if fold is None:
            return ref
        return replace(ref, options=(*ref.options, ("fold", fold), ("n_folds", self.folds)))


@dataclass(frozen=True)
class TestSpec:
    """What each fine-tuned model is tested on.

    Attributes:
        protocols: Protocols on the labelled set's test split: ``clean`` and synthetic ones.
        real: Real-occlusion test sets, ``occlusion-ferplus:ROOT`` or ``pose-ferplus:ROOT``.
    """

    __test__ = False  # not a pytest test class, despite the name

    protocols: tuple[str, ...] = PROTOCOLS
    real: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        protocols = _tuple("TestSpec.protocols", self.protocols)
        real = _tuple("TestSpec.real", self.real)
        for i, p in enumerate(protocols):
            _choice(f"TestSpec.protocols[{i}]", p, PROTOCOLS)
        _unique("TestSpec.protocols", protocols)
        for i, text in enumerate(real):
            ref = _parse_ref(f"TestSpec.real[{i}]", text)
            if ref.name not in REAL_OCCLUSION_SETS:
                raise _err(
                    f"TestSpec.real[{i}]",
                    text,
                    f"unknown real-occlusion set {ref.name!r}; "
                    f"valid: {', '.join(REAL_OCCLUSION_SETS)}",
                )
        _unique("TestSpec.real", real)
        if not protocols and not real:
            raise StudyError("TestSpec: empty (no protocols and no real-occlusion sets)")
        _set(self, "protocols", protocols)
        _set(self, "real", real)


@dataclass(frozen=True)
class SearchSpec:
    """How the search space is explored.

    Attributes:
        algorithm: ``grid`` (enumerate Fixed/Grid params only) or an Optuna sampler
            (``tpe``, ``random``, ``cmaes``) for Uniform/LogUniform params.
        num_samples: Optuna trials per grid point (1 for ``grid``).
        scheduler: ``none`` or ``asha`` (early stopping on fine-tune epochs).
        grace_period: ASHA: epochs before a trial can be stopped.
        reduction_factor: ASHA: keep 1/reduction_factor at each rung.
        metric: Metric reported per fine-tune epoch to optimise (a validation metric).
        mode: ``max`` or ``min``.
    """

    algorithm: str = "grid"
    num_samples: int = 1
    scheduler: str = "none"
    grace_period: int = 1
    reduction_factor: int = 2
    metric: str = schema.VAL_ACC
    mode: str = "max"

    def __post_init__(self) -> None:
        _choice("SearchSpec.algorithm", self.algorithm, ALGORITHMS)
        _integer("SearchSpec.num_samples", self.num_samples, 1)
        if self.algorithm == "grid" and self.num_samples != 1:
            raise _err(
                "SearchSpec.num_samples",
                self.num_samples,
                "must be 1 for algorithm 'grid' (repeat runs with Study.seeds)",
            )
        _choice("SearchSpec.scheduler", self.scheduler, SCHEDULERS)
        _integer("SearchSpec.grace_period", self.grace_period, 1)
        _integer("SearchSpec.reduction_factor", self.reduction_factor, 2)
        if not isinstance(self.metric, str) or not self.metric:
            raise _err("SearchSpec.metric", self.metric, "must be a non-empty metric name")
        # Selecting on a test metric would leak the test set into the reported numbers.
        if self.metric.startswith("test"):
            raise _err("SearchSpec.metric", self.metric, "tune on validation metrics only")
        _choice("SearchSpec.mode", self.mode, ("max", "min"))


@dataclass(frozen=True)
class Resources:
    """Resources of one trial.

    Attributes:
        workers: Ray Train workers per trial (data parallel).
        cpus_per_worker: CPUs per worker; each worker runs torch with that many threads.
            None (default) is decided at launch from the cluster: with ``max_concurrent``
            set, a node's CPUs divided among that many trials; otherwise all of a node's CPUs
            up to :data:`AUTO_MAX_CPUS`, so that on a machine with few cores one trial runs
            at a time with every core (two trials on two cores each get one thread and
            together train slower than one trial with both).
        gpus_per_worker: GPUs per worker (fractions share a GPU).
        max_concurrent: At most this many trials at once (None = as resources allow).
        ray_train: Run every trial as a Ray Train job, also a one-worker CPU trial (which
            otherwise runs in its Tune trial's process, because a ``TorchTrainer`` costs
            15-25 s per trial). Both paths give the same results for the same seed.
    """

    workers: int = 1
    cpus_per_worker: int | None = None
    gpus_per_worker: float = 0
    max_concurrent: int | None = None
    ray_train: bool = False

    def __post_init__(self) -> None:
        _integer("Resources.workers", self.workers, 1)
        _optional_integer("Resources.cpus_per_worker", self.cpus_per_worker, 1)
        gpus = _number("Resources.gpus_per_worker", self.gpus_per_worker)
        if gpus < 0:
            raise _err("Resources.gpus_per_worker", gpus, "must be >= 0")
        _optional_integer("Resources.max_concurrent", self.max_concurrent, 1)
        if not isinstance(self.ray_train, bool):
            raise _err("Resources.ray_train", self.ray_train, "must be True or False")

    def resolved(self, node_cpus: int, node_gpus: float = 0) -> Resources:
        """These resources with ``cpus_per_worker`` decided for nodes of ``node_cpus`` CPUs and
        ``node_gpus`` GPUs (see the attribute); unchanged when it is set.

        A node's CPUs are shared by the trials that run on it at once: ``max_concurrent``, or
        as many as its GPUs hold for GPU trials, or (CPU trials) one trial with every CPU up to
        :data:`AUTO_MAX_CPUS`; each trial's share is split among its ``workers``.
        """
        if self.cpus_per_worker is not None:
            return self
        cpus = max(1, node_cpus)
        gpus_per_trial = self.gpus_per_worker * self.workers
        if self.max_concurrent is not None:
            per_trial = cpus // self.max_concurrent
        elif gpus_per_trial > 0 and node_gpus > 0:
            per_trial = cpus // max(1, int(node_gpus // gpus_per_trial))
        else:
            per_trial = min(cpus, AUTO_MAX_CPUS)
        return replace(self, cpus_per_worker=max(1, per_trial // self.workers))

    @property
    def cpus(self) -> int:
        """CPUs per worker (1 while undecided, before the driver resolves it)."""
        return self.cpus_per_worker or 1

    @property
    def use_ray_train(self) -> bool:
        """Whether a trial needs a Ray Train job (else it runs in the Tune trial's process)."""
        return self.ray_train or self.workers > 1 or self.gpus_per_worker > 0


# ---------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    """Short, stable, filesystem-safe number (``1e+06`` -> ``1e06``)."""
    if isinstance(value, float):
        return f"{value:.6g}".replace("+", "")
    return str(value)


@dataclass(frozen=True)
class Study:
    """One study: every run it consists of, and how to search and resource them.

    Attributes:
        name: ``[A-Za-z0-9_.-]+``; used in paths and MLflow experiment names.
        pretext: The pretext stage.
        finetune: The fine-tune stage and labelled dataset.
        test: Test protocols and real-occlusion sets.
        variants: Ablation variants (``none``, ``ss``, ``mask``, ``ss+mask``).
        seeds: One run per seed.
        label_fractions: Stratified, seeded subsets of the fine-tune labels, in (0, 1].
        search_space: Param per name in :data:`PARAMS`; missing names take their defaults
            (:func:`default_search_space`: λ, τ from the paper, learning rates and ``arch``
            from the recipe). ``arch`` takes ``Fixed``/``Grid`` of names.
        search: How the search space is explored.
        resources: Resources of one trial.
        image_size: Network input side (>= 32).
        recipe: How both stages train (:mod:`occstudy.recipes`): ``paper`` (default),
            ``fast`` (the CPU studies' choice) or a :class:`~occstudy.recipes.Recipe`, e.g.
            ``dataclasses.replace(FAST, label_smoothing=0.0)`` to override any field.
        batch_size: Batch size of both stages (None: the recipe's).
        stem: ResNet stem (see :data:`occstudy.recipes.STEMS`; None: the recipe's).
        in_chans: 1 (grey) or 3.
        description: Free text, logged with the study.
    """

    name: str
    pretext: PretextSpec = PretextSpec()
    finetune: FinetuneSpec = FinetuneSpec()
    test: TestSpec = TestSpec()
    variants: tuple[str, ...] = VARIANTS
    seeds: tuple[int, ...] = (0,)
    label_fractions: tuple[float, ...] = (1.0,)
    search_space: Mapping[str, Param] = field(default_factory=dict)
    search: SearchSpec = SearchSpec()
    resources: Resources = Resources()
    image_size: int = 48
    recipe: str | Recipe = "paper"
    batch_size: int | None = None
    stem: str | None = None
    in_chans: int = 1
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise _err(
                "Study.name", self.name, "must match [A-Za-z0-9][A-Za-z0-9_.-]* (a folder name)"
            )
        for attr, cls in (
            ("pretext", PretextSpec),
            ("finetune", FinetuneSpec),
            ("test", TestSpec),
            ("search", SearchSpec),
            ("resources", Resources),
        ):
            if not isinstance(getattr(self, attr), cls):
                raise _err(f"Study.{attr}", getattr(self, attr), f"must be a {cls.__name__}")
        if not isinstance(self.recipe, Recipe):
            try:
                get_recipe(self.recipe)
            except ValueError as exc:
                raise _err("Study.recipe", self.recipe, str(exc)) from None
        self._check_dimensions()
        self._check_search_space()
        _integer("Study.image_size", self.image_size, 32)
        _optional_integer("Study.batch_size", self.batch_size, 2)
        if self.stem is not None:
            _choice("Study.stem", self.stem, STEMS)
        if self.in_chans not in (1, 3):
            raise _err("Study.in_chans", self.in_chans, "must be 1 or 3")
        if not isinstance(self.description, str):
            raise _err("Study.description", self.description, "must be a str")
        if self.search.scheduler == "asha" and self.search.grace_period > self.finetune.epochs:
            raise _err(
                "Study.search.grace_period",
                self.search.grace_period,
                f"must be <= finetune.epochs={self.finetune.epochs}",
            )
        needing = [v for v in self.variants if v not in NO_PRETEXT_VARIANTS]
        for i, source in enumerate(self.pretext.data if needing else ()):
            if (
                source != SYNTHETIC
                and pretext_source_ref(source) is None
                and not Path(source).expanduser().is_dir()
            ):
                raise _err(
                    f"Study.pretext.data[{i}]",
                    source,
                    f"is neither {SYNTHETIC!r}, an existing folder nor NAME:ROOT[@SPLIT] "
                    f"(needed by variants {', '.join(needing)})",
                )
        self._check_method_configs()

    def _check_dimensions(self) -> None:
        variants = _tuple("Study.variants", self.variants)
        if not variants:
            raise StudyError("Study.variants: empty")
        for i, v in enumerate(variants):
            _choice(f"Study.variants[{i}]", v, VARIANTS)
        _unique("Study.variants", variants)
        seeds = _tuple("Study.seeds", self.seeds)
        if not seeds:
            raise StudyError("Study.seeds: empty")
        for i, s in enumerate(seeds):
            _integer(f"Study.seeds[{i}]", s, 0)
        _unique("Study.seeds", seeds)
        fractions = _tuple("Study.label_fractions", self.label_fractions)
        if not fractions:
            raise StudyError("Study.label_fractions: empty")
        fractions = tuple(
            _number(f"Study.label_fractions[{i}]", f) for i, f in enumerate(fractions)
        )
        for i, f in enumerate(fractions):
            if not 0 < f <= 1:
                raise _err(f"Study.label_fractions[{i}]", f, "must be in (0, 1]")
        _unique("Study.label_fractions", fractions)
        _set(self, "variants", variants)
        _set(self, "seeds", seeds)
        _set(self, "label_fractions", fractions)

    def _check_search_space(self) -> None:
        if not isinstance(self.search_space, Mapping):
            raise _err("Study.search_space", self.search_space, "must be a mapping")
        space_in = self.search_space
        given = space_in.given if isinstance(space_in, SearchSpace) else tuple(space_in)
        user = {k: space_in[k] for k in given}
        for key, param in user.items():
            path = f"Study.search_space[{key!r}]"
            if key not in PARAMS:
                raise StudyError(f"{path}: unknown parameter; valid: {', '.join(PARAMS)}")
            if type(param) not in _PARAM_KINDS.values():
                raise _err(path, param, "must be a Fixed, Grid, Uniform or LogUniform")
            values = (param.value,) if isinstance(param, Fixed) else getattr(param, "values", ())
            if key in CATEGORICAL_PARAMS:
                names = CATEGORICAL_PARAMS[key]
                if not isinstance(param, Fixed | Grid) or any(v not in names for v in values):
                    raise _err(path, param, f"must be Fixed or Grid of {', '.join(names)}")
                continue
            if any(isinstance(v, str) for v in values):
                raise _err(path, param, f"{key} takes numbers, not names")
            lowest, inclusive = _PARAM_MIN[key]
            low = param.bounds()[0]
            if low < lowest or (low == lowest and not inclusive):
                op = ">=" if inclusive else ">"
                raise _err(path, param, f"{key} must be {op} {lowest:g}")
        space = SearchSpace({**default_search_space(self.recipe), **user}, given=tuple(user))
        sampled = [k for k, p in space.items() if isinstance(p, Uniform | LogUniform)]
        if self.search.algorithm == "grid" and sampled:
            raise _err(
                "Study.search.algorithm",
                "grid",
                f"cannot sample {', '.join(sampled)} (Uniform/LogUniform); use an Optuna "
                f"algorithm: {', '.join(a for a in ALGORITHMS if a != 'grid')}",
            )
        if self.search.algorithm != "grid" and not sampled:
            raise _err(
                "Study.search.algorithm",
                self.search.algorithm,
                "nothing to sample (no Uniform/LogUniform parameter); use 'grid'",
            )
        _set(self, "search_space", space)

    def _check_method_configs(self) -> None:
        # MethodConfig re-checks its fields and checks that the pretext folder exists; building
        # one per variant (the rest at their first grid value, sampled params at their lower
        # bound) makes a bad study fail here rather than inside a Ray worker.
        first = self.grid_points()[0]
        for variant in self.variants:
            point = {**first, "variant": variant}
            point.update({k: p.low for k, p in self.sampled_params().items()})
            try:
                self.method_config(point)
            except StudyError:
                raise
            except ValueError as exc:
                raise StudyError(f"Study (variant {variant!r}): {exc}") from None

    # -----------------------------------------------------------------------------------------
    # Trials
    # -----------------------------------------------------------------------------------------

    @property
    def folds(self) -> tuple[int, ...] | None:
        """The ``fold`` grid dimension, or None when the dataset's own split is used."""
        return None if self.finetune.folds is None else tuple(range(self.finetune.folds))

    def point_keys(self) -> tuple[str, ...]:
        """Keys of a grid point, in order."""
        dims = ["variant", "seed", "label_fraction"]
        if self.folds is not None:
            dims.append("fold")
        return (
            *dims,
            *(k for k, p in self.search_space.items() if not isinstance(p, Uniform | LogUniform)),
        )

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of variant x seed x label fraction (x fold) x Grid param value.

        Fixed params appear with their value; Uniform/LogUniform params do not (the search
        algorithm samples them, see :meth:`sampled_params`). The order is deterministic: the
        first dimension varies slowest.
        """
        dims: list[tuple[str, tuple[Any, ...]]] = [
            ("variant", self.variants),
            ("seed", self.seeds),
            ("label_fraction", self.label_fractions),
        ]
        if self.folds is not None:
            dims.append(("fold", self.folds))
        for key, param in self.search_space.items():
            if isinstance(param, Fixed):
                dims.append((key, (param.value,)))
            elif isinstance(param, Grid):
                dims.append((key, param.values))
        names = [n for n, _ in dims]
        return [
            dict(zip(names, combo, strict=True))
            for combo in itertools.product(*(v for _, v in dims))
        ]

    def sampled_params(self) -> dict[str, Uniform | LogUniform]:
        """The params a search algorithm must sample, in :data:`PARAMS` order."""
        return {k: p for k, p in self.search_space.items() if isinstance(p, Uniform | LogUniform)}

    def _complete(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """``point`` with Fixed params filled in; checks that every key is known and present."""
        valid = set(self.point_keys()) | set(PARAMS)
        unknown = sorted(set(point) - valid)
        if unknown:
            raise StudyError(
                f"point[{unknown[0]!r}]: unknown key; valid: {', '.join(sorted(valid))}"
            )
        full = {k: p.value for k, p in self.search_space.items() if isinstance(p, Fixed)}
        full.update(point)
        required = (*self.point_keys(), *PARAMS)
        missing = [k for k in required if k not in full]
        if missing:
            raise StudyError(f"point: missing {', '.join(missing)}")
        return full

    def method_config(self, point: Mapping[str, Any]) -> MethodConfig:
        """The single-process configuration of one trial.

        Args:
            point: A grid point plus a value for every sampled param (Fixed params may be
                left out).

        Raises:
            StudyError: for a missing or unknown key, or a value MethodConfig rejects.
        """
        p = self._complete(point)
        try:
            return MethodConfig(
                data=self.finetune.data_ref(p.get("fold")),
                variant=p["variant"],
                pretext_data=self.pretext.data,
                real_occlusion=tuple(DataRef.parse(r) for r in self.test.real),
                image_size=self.image_size,
                in_chans=self.in_chans,
                recipe=self.recipe,
                arch=str(p["arch"]),
                stem=self.stem,  # type: ignore[arg-type]  # None: the recipe's
                pretext_epochs=self.pretext.epochs,
                epochs=self.finetune.epochs,
                batch_size=self.batch_size,  # type: ignore[arg-type]
                lr=float(p["lr"]),
                pretext_lr=float(p["pretext_lr"]),
                tau=float(p["tau"]),
                lam=float(p["lam"]),
                pretext_policy=self.pretext.policy,
                gather_negatives=self.pretext.gather_negatives,
                finetune_policy=self.finetune.policy,
                occlusion_prob=self.finetune.occlusion_prob,
                protocols=self.test.protocols,
                balanced=self.finetune.balanced,
                label_fraction=float(p["label_fraction"]),
                pretext_limit=self.pretext.limit,
                train_limit=self.finetune.train_limit,
                synthetic_size=self.finetune.synthetic_size,
                seed=int(p["seed"]),
            )
        except StudyError:
            raise
        except ValueError as exc:
            raise StudyError(f"point={dict(point)!r}: {exc}") from None

    def trial_name(self, point: Mapping[str, Any]) -> str:
        """Deterministic, filesystem-safe name of one trial, unique within the study.

        E.g. ``ss-mask_s0_f1_lam0.2_tau2_lr0.0001_plr0.0001`` (``k3`` after ``f`` for fold 3;
        ``_resnet18`` at the end when ``arch`` is a grid dimension). Numbers keep 6
        significant digits, so sampled values that agree to 6 digits collide.
        """
        return self._name(self._complete(point), self._named_params())

    def grid_label(self, point: Mapping[str, Any]) -> str:
        """Name of a grid point: :meth:`trial_name` without the sampled params, e.g.
        ``ss-mask_s0_f1`` (the Optuna search run of that point)."""
        sampled = self.sampled_params()
        return self._name(point, tuple(k for k in self._named_params() if k not in sampled))

    def _named_params(self) -> tuple[str, ...]:
        # A categorical param names trials only when it varies: names stay as they were for
        # every study that keeps the recipe's architecture.
        return tuple(
            k
            for k in PARAMS
            if k not in CATEGORICAL_PARAMS or isinstance(self.search_space.get(k), Grid)
        )

    @staticmethod
    def _name(p: Mapping[str, Any], params: Sequence[str]) -> str:
        parts = [str(p["variant"]).replace("+", "-"), f"s{p['seed']}"]
        parts.append(f"f{_fmt(float(p['label_fraction']))}")
        if "fold" in p:
            parts.append(f"k{p['fold']}")
        short = {"lam": "lam", "tau": "tau", "lr": "lr", "pretext_lr": "plr", "arch": ""}
        parts += [
            f"{short[k]}{p[k] if isinstance(p[k], str) else _fmt(float(p[k]))}"
            for k in params
            if k in p
        ]
        return re.sub(r"[^A-Za-z0-9_.-]", "-", "_".join(parts))

    def smoke(self) -> Study:
        """A shrunk copy for ``--smoke``: same data, one epoch per stage, few images, one
        seed, the last label fraction, at most 2 samples per grid point.

        The name gets a ``-smoke`` suffix so smoke runs never mix with the study's results
        (paths, MLflow experiment, resumable checkpoints).
        """

        def cap(value: int | None, most: int) -> int:
            return most if value is None else min(value, most)

        return replace(
            self,
            name=f"{self.name}-smoke",
            pretext=replace(self.pretext, epochs=1, limit=cap(self.pretext.limit, 256)),
            finetune=replace(
                self.finetune,
                epochs=1,
                train_limit=cap(self.finetune.train_limit, 256),
                synthetic_size=min(self.finetune.synthetic_size, 300),
            ),
            seeds=self.seeds[:1],
            label_fractions=self.label_fractions[-1:],
            search=replace(
                self.search,
                num_samples=min(self.search.num_samples, 2),
                grace_period=1,
            ),
        )

    # -----------------------------------------------------------------------------------------
    # Serialisation
    # -----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-able (tuples as lists, params as ``{'kind': ..., ...}``)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "search_space":
                # The study's own entries: the rest are its recipe's defaults.
                out[f.name] = {k: _param_to_dict(value[k]) for k in value.given}
            elif hasattr(value, "__dataclass_fields__"):
                out[f.name] = {g.name: _jsonable(getattr(value, g.name)) for g in fields(value)}
            else:
                out[f.name] = _jsonable(value)
        return out

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Study:
        """Inverse of :meth:`to_dict`; missing keys take their defaults.

        Raises:
            StudyError: for an unknown key or an invalid value.
        """
        if not isinstance(d, Mapping):
            raise _err("Study.from_dict", d, "expected a mapping")
        names = {f.name for f in fields(Study)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise StudyError(
                f"Study.{unknown[0]}: unknown field; valid: {', '.join(sorted(names))}"
            )
        nested: dict[str, type[Any]] = {
            "pretext": PretextSpec,
            "finetune": FinetuneSpec,
            "test": TestSpec,
            "search": SearchSpec,
            "resources": Resources,
        }
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key in nested:
                kwargs[key] = _spec_from_dict(nested[key], f"Study.{key}", value)
            elif key == "recipe" and isinstance(value, Mapping):
                kwargs[key] = _spec_from_dict(Recipe, "Study.recipe", value)
            elif key == "search_space":
                if not isinstance(value, Mapping):
                    raise _err("Study.search_space", value, "expected a mapping")
                kwargs[key] = {
                    k: _param_from_dict(f"Study.search_space[{k!r}]", v) for k, v in value.items()
                }
            else:
                kwargs[key] = tuple(value) if isinstance(value, list) else value
        if "name" not in kwargs:
            raise _err("Study.name", None, "missing (every study has a name)")
        return Study(**kwargs)


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _spec_from_dict(cls: type[Any], path: str, d: Any) -> Any:
    if not isinstance(d, Mapping):
        raise _err(path, d, "expected a mapping")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise StudyError(f"{path}.{unknown[0]}: unknown field; valid: {', '.join(sorted(names))}")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
    except StudyError:
        raise
    except (TypeError, ValueError) as exc:
        # A missing required field (TypeError) or a value the spec's own checks refuse.
        raise StudyError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Study files
# ---------------------------------------------------------------------------------------------


def data_root(subdir: str = "") -> str:
    """Where real data lives, for study files: ``$OCCSTUDY_DATA/subdir``.

    The path is made absolute, because Ray Tune runs each trial in its own working folder.

    Raises:
        StudyError: when ``OCCSTUDY_DATA`` is unset or empty.
    """
    root = os.environ.get(DATA_ENV, "")
    if not root:
        raise StudyError(
            f"data_root({subdir!r}): this study needs real data; set {DATA_ENV} or pass --data-root"
        )
    # abspath also folds "..", so names logged to MLflow are canonical.
    return os.path.abspath(Path(root).expanduser() / subdir)


def load_study(path: str | Path) -> Study:
    """Import a study file and return its ``study`` (or the result of ``make_study()``).

    The file is imported under a name derived from it and removed from ``sys.modules``
    afterwards, so loading two files with the same name (or one file twice) never mixes them.

    Raises:
        StudyError: naming the file, when it is missing, fails to import, defines neither
            ``study`` nor ``make_study`` or defines an invalid study.
    """
    file = Path(path)
    if not file.is_file():
        raise StudyError(f"{file}: no such study file")
    module_name = "_occstudy_study_" + re.sub(r"\W", "_", file.stem)
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise StudyError(f"{file}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered while it runs: dataclasses and pickling inside the file look modules up there.
    previous = sys.modules.get(module_name)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
        if hasattr(module, "study"):
            study = module.study
        elif callable(getattr(module, "make_study", None)):
            study = module.make_study()
        else:
            raise StudyError(f"{file}: defines neither `study` nor `make_study()`")
    except StudyError as exc:
        msg = str(exc)
        raise StudyError(msg if msg.startswith(str(file)) else f"{file}: {msg}") from None
    except Exception as exc:
        raise StudyError(f"{file}: {type(exc).__name__}: {exc}") from exc
    finally:
        if previous is None:
            sys.modules.pop(module_name, None)
        else:
            sys.modules[module_name] = previous
    if not isinstance(study, Study):
        raise StudyError(f"{file}: `study` is a {type(study).__name__}, not a Study")
    return study
