"""The search space of a study: a fixed value, a grid, or a range per method parameter.

:data:`Param` is one of :class:`Fixed`, :class:`Grid` (enumerated by the runner),
:class:`Uniform` and :class:`LogUniform` (sampled by an Optuna search); a :class:`SearchSpace`
maps parameter names (:data:`PARAMS`, from :data:`occstudy.method.PARAMETERS`) to them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from occstudy.method import PARAMETERS
from occstudy.recipes import Recipe, get_recipe
from occstudy.study.checks import StudyError, _err, _number, _set, _tuple, _unique, _value

#: Searchable hyper-parameters of the method (``arch`` is categorical: Fixed or Grid of names).
PARAMS: tuple[str, ...] = tuple(PARAMETERS)
#: Parameters whose values are names, not numbers.
CATEGORICAL_PARAMS: dict[str, tuple[str, ...]] = {
    p.name: p.choices for p in PARAMETERS.values() if p.categorical
}


@dataclass(frozen=True)
class Fixed:
    """One value, the same in every trial (a number, or a name for ``arch``)."""

    value: float | str

    def __post_init__(self) -> None:
        _set(self, "value", _value("Fixed.value", self.value))

    def bounds(self) -> tuple[Any, Any]:
        return self.value, self.value


@dataclass(frozen=True)
class Grid:
    """Values enumerated as a grid dimension (every value in every combination): numbers, or
    names for ``arch``."""

    values: tuple[float | str, ...]

    def __post_init__(self) -> None:
        values = _tuple("Grid.values", self.values)
        if not values:
            raise StudyError("Grid.values: empty")
        values = tuple(_value(f"Grid.values[{i}]", v) for i, v in enumerate(values))
        if len({type(v) for v in values}) > 1:
            raise _err("Grid.values", values, "mixes names and numbers")
        _unique("Grid.values", values)
        _set(self, "values", values)

    def bounds(self) -> tuple[Any, Any]:
        return min(self.values), max(self.values)  # type: ignore[type-var]


def _check_range(obj: Any) -> None:
    name = type(obj).__name__
    low = _number(f"{name}.low", obj.low)
    high = _number(f"{name}.high", obj.high)
    if not low < high:
        raise _err(f"{name}.high", high, f"must be > low={low!r}")
    _set(obj, "low", low)
    _set(obj, "high", high)


@dataclass(frozen=True)
class Uniform:
    """Sampled uniformly in ``[low, high]`` by the search algorithm."""

    low: float
    high: float

    def __post_init__(self) -> None:
        _check_range(self)

    def bounds(self) -> tuple[float, float]:
        return self.low, self.high


@dataclass(frozen=True)
class LogUniform:
    """Sampled log-uniformly in ``[low, high]``, ``low > 0``.

    Deliberately not a subclass of :class:`Uniform`, so ``isinstance`` tells them apart.
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        _check_range(self)
        if not self.low > 0:
            raise _err("LogUniform.low", self.low, "must be > 0")

    def bounds(self) -> tuple[float, float]:
        return self.low, self.high


Param: TypeAlias = Fixed | Grid | Uniform | LogUniform
_PARAM_KINDS: dict[str, type[Fixed] | type[Grid] | type[Uniform] | type[LogUniform]] = {
    "fixed": Fixed,
    "grid": Grid,
    "uniform": Uniform,
    "loguniform": LogUniform,
}
#: The paper's λ = 0.2 and τ = 2; the learning rates and ``arch`` default to the study's
#: recipe (see :func:`default_search_space`).
DEFAULT_SEARCH_SPACE: dict[str, Param] = {
    name: Fixed(PARAMETERS[name].default)  # type: ignore[arg-type]
    for name in ("lam", "tau")
}


def default_search_space(recipe: str | Recipe) -> dict[str, Param]:
    """The search space a study starts from: λ and τ as in the paper, ``lr``, ``pretext_lr``
    and ``arch`` from ``recipe``."""
    r = get_recipe(recipe)
    return {
        **DEFAULT_SEARCH_SPACE,
        "lr": Fixed(r.lr),
        "pretext_lr": Fixed(r.pretext_lr),
        "arch": Fixed(r.arch),
    }


# (lowest allowed value, whether the bound itself is allowed) per parameter.
_PARAM_MIN: dict[str, tuple[float, bool]] = {
    "lam": (0.0, True),
    "tau": (0.0, False),
    "lr": (0.0, False),
    "pretext_lr": (0.0, False),
}


def _param_kind(p: Param) -> str:
    return next(k for k, cls in _PARAM_KINDS.items() if type(p) is cls)


def _param_to_dict(p: Param) -> dict[str, Any]:
    kind = _param_kind(p)
    if isinstance(p, Fixed):
        return {"kind": kind, "value": p.value}
    if isinstance(p, Grid):
        return {"kind": kind, "values": list(p.values)}
    return {"kind": kind, "low": p.low, "high": p.high}


def _param_from_dict(path: str, d: Any) -> Param:
    if not isinstance(d, Mapping) or d.get("kind") not in _PARAM_KINDS:
        raise _err(path, d, f"expected {{'kind': one of {', '.join(_PARAM_KINDS)}, ...}}")
    args = {k: v for k, v in d.items() if k != "kind"}
    if "values" in args and isinstance(args["values"], list):
        args["values"] = tuple(args["values"])
    try:
        return _PARAM_KINDS[d["kind"]](**args)  # type: ignore[no-any-return]
    except TypeError as exc:
        raise _err(path, d, str(exc)) from None


class SearchSpace(Mapping[str, Param]):
    """An immutable, hashable, picklable mapping of parameter name to :data:`Param`.

    (``types.MappingProxyType`` would do for immutability but cannot be pickled, and the
    study is shipped to Ray workers.) Keys are kept in :data:`PARAMS` order. ``given`` names
    the entries the study stated itself; the others are defaults (of the study's recipe), so
    that a study given another recipe takes that recipe's defaults.
    """

    __slots__ = ("_items", "given")

    def __init__(self, items: Mapping[str, Param], given: Iterable[str] | None = None) -> None:
        self._items: dict[str, Param] = {k: items[k] for k in PARAMS if k in items}
        keys = set(self._items if given is None else given)
        self.given: tuple[str, ...] = tuple(k for k in self._items if k in keys)

    def __getitem__(self, key: str) -> Param:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __repr__(self) -> str:
        return f"SearchSpace({self._items!r})"

    def __getstate__(self) -> tuple[dict[str, Param], tuple[str, ...]]:
        return self._items, self.given

    def __setstate__(
        self, state: tuple[dict[str, Param], tuple[str, ...]] | dict[str, Param]
    ) -> None:
        if isinstance(state, dict):
            # Pickled before ``given`` existed (a launch resumed across versions): every entry
            # was stored, so every entry counts as the study's own.
            self._items, self.given = state, tuple(state)
        else:
            self._items, self.given = state
