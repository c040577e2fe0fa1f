"""From trial records to the report's tables: ablation cells, paired comparisons, curves.

Which trials enter the statistics:

* only trials that FINISHED with test results (:attr:`TrialRecord.complete`); failed trials,
  running ones and those stopped before testing (KILLED: an ASHA stop or an interrupt) are
  counted and listed instead;
* per *grid point* (setting x variant x replication unit) exactly one trial: when a point has
  several (Optuna samples, or the same point rerun in several launches with ``--launch all``),
  the one with the best **validation** search metric (the study's ``search.metric``/``mode``;
  ties: the latest). Test numbers are never used to choose, so the reported test accuracy of
  a searched configuration is not optimistically biased by the choice.

A *setting* is everything a table holds fixed: the label fraction and the values of gridded
parameters (e.g. λ in a λ grid). Each setting gets its own ablation table; the *main* setting
(most trials; then the largest label fraction) drives the robustness curve and the confusion
matrices.

A real-occlusion set tested per occluded region (``test.<set>.region.<region>.acc``) gets a
*region table* per setting beside its ablation table: the set's overall column, then one column
per region, from the same selected trials (:func:`region_tables`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from occstudy.report.stats import ALPHA, PairedTest, Summary, holm, paired_test, summarize
from occstudy.tracking import schema
from occstudy.tracking.reader import TrialRecord

__all__ = [
    "REFERENCE_VARIANTS",
    "REGION_SEP",
    "AblationTable",
    "Cell",
    "Column",
    "Comparison",
    "Counts",
    "Curve",
    "Excluded",
    "LabelEfficiency",
    "LambdaSensitivity",
    "RegionTable",
    "SearchBest",
    "Setting",
    "StudyInfo",
    "ablation_table",
    "columns_of",
    "count_trials",
    "excluded_trials",
    "label_efficiency",
    "lambda_sensitivity",
    "objective",
    "occluded_areas",
    "real_columns",
    "region_tables",
    "search_best",
    "select_trials",
    "settings_of",
    "significance",
    "varying_params",
]

#: Every variant is compared with these two: the baseline and the full method.
REFERENCE_VARIANTS: tuple[str, ...] = ("none", "ss+mask")
#: Order of test protocols in tables and curves: clean, then growing synthetic occlusion.
PROTOCOL_ORDER: tuple[str, ...] = ("clean", "r8", "r16", "r24", "eye", "mouth", "objects")
_SYMBOLS = {"lam": "λ", "tau": "τ", "lr": "lr", "pretext_lr": "pretext lr"}


def _fmt_number(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:.6g}"


@dataclass(frozen=True)
class StudyInfo:
    """What a report needs from the study definition (see :meth:`from_study`).

    Attributes:
        name: Study name.
        description: Free text.
        variants: Variants in the study's order.
        seeds: Seeds.
        label_fractions: Label fractions.
        folds: Number of folds of a k-fold study, else None.
        protocols: Test protocols on the labelled test split.
        real: Names of the real-occlusion test sets (``occlusion-ferplus``).
        grid: Gridded parameters and their values.
        sampled: Sampled parameters: name -> (low, high, log scale).
        fixed: Fixed parameters and their values.
        algorithm: ``grid`` or an Optuna sampler name.
        metric: Validation metric the search optimises.
        mode: ``max`` or ``min``.
        expected_trials: Trials a complete launch has.
        image_size: Network input side.
        dataset: Fine-tune dataset spec (``fer2013:/data/fer2013``).
    """

    name: str
    description: str = ""
    variants: tuple[str, ...] = ("none", "ss", "mask", "ss+mask")
    seeds: tuple[int, ...] = (0,)
    label_fractions: tuple[float, ...] = (1.0,)
    folds: int | None = None
    protocols: tuple[str, ...] = ("clean",)
    real: tuple[str, ...] = ()
    grid: Mapping[str, tuple[float | str, ...]] = field(default_factory=dict)
    sampled: Mapping[str, tuple[float, float, bool]] = field(default_factory=dict)
    fixed: Mapping[str, float] = field(default_factory=dict)
    algorithm: str = "grid"
    metric: str = schema.VAL_ACC
    mode: str = "max"
    expected_trials: int = 0
    image_size: int = 48
    dataset: str = ""

    @classmethod
    def from_study(cls, study: Any) -> StudyInfo:
        """Read a :class:`occstudy.study.Study`."""
        from occstudy.pipeline import DataRef
        from occstudy.study.space import Fixed, Grid, LogUniform, Uniform

        grid: dict[str, tuple[float | str, ...]] = {}
        sampled: dict[str, tuple[float, float, bool]] = {}
        fixed: dict[str, float] = {}
        for name, param in study.search_space.items():
            if isinstance(param, Grid):
                grid[name] = tuple(param.values)
            elif isinstance(param, Uniform | LogUniform):
                sampled[name] = (param.low, param.high, isinstance(param, LogUniform))
            elif isinstance(param, Fixed) and not isinstance(param.value, str):
                fixed[name] = param.value
        expected = len(study.grid_points()) * (study.search.num_samples if sampled else 1)
        return cls(
            name=study.name,
            description=study.description,
            variants=tuple(study.variants),
            seeds=tuple(study.seeds),
            label_fractions=tuple(study.label_fractions),
            folds=study.finetune.folds,
            protocols=tuple(study.test.protocols),
            real=tuple(DataRef.parse(r).name for r in study.test.real),
            grid=grid,
            sampled=sampled,
            fixed=fixed,
            algorithm=study.search.algorithm,
            metric=study.search.metric,
            mode=study.search.mode,
            expected_trials=expected,
            image_size=study.image_size,
            dataset=study.finetune.data,
        )


#: Separates a real-occlusion set from one of its regions in a protocol name: the metric
#: ``test.occlusion-ferplus.region.mouth.acc`` is protocol ``occlusion-ferplus.region.mouth``
#: (the tracking schema's :func:`~occstudy.tracking.schema.region_protocol`).
REGION_SEP = schema.REGION_SEP


@dataclass(frozen=True, order=True)
class Column:
    """A column of the ablation table: one test protocol of one fine-tune dataset.

    A *region column* (protocol ``<set>.region.<region>``) holds the accuracy on the images of
    one occluded region of a real-occlusion set; it goes into that set's region table, not into
    the ablation table.
    """

    dataset: str
    protocol: str

    @property
    def base(self) -> str:
        """The protocol without its region: the real-occlusion set of a region column."""
        return self.protocol.partition(REGION_SEP)[0]

    @property
    def region(self) -> str | None:
        """The occluded region of a region column, else None."""
        _, sep, region = self.protocol.partition(REGION_SEP)
        return region if sep and region else None

    @property
    def label(self) -> str:
        if self.region is not None:
            return f"{self.dataset} · {self.base} · {self.region}"
        return f"{self.dataset} · {self.protocol}"


@dataclass(frozen=True)
class Setting:
    """What one ablation table holds fixed: label fraction and gridded parameter values."""

    label_fraction: float | None
    grid: tuple[tuple[str, float | str | None], ...] = ()

    @property
    def label(self) -> str:
        parts = []
        if self.label_fraction is not None:
            parts.append(f"labels {100 * self.label_fraction:g} %")
        for name, value in self.grid:
            shown = "?" if value is None else _fmt_number(value)
            parts.append(f"{_SYMBOLS.get(name, name)} = {shown}")
        return ", ".join(parts) or "all trials"


def setting_of(trial: TrialRecord, info: StudyInfo) -> Setting:
    """The setting a trial belongs to."""
    return Setting(
        trial.label_fraction,
        tuple(
            (p, trial.params[p] if p in trial.params else trial.choices.get(p)) for p in info.grid
        ),
    )


def objective(trial: TrialRecord, info: StudyInfo) -> float | None:
    """The trial's value of the study's validation search metric.

    For ``val_acc`` (per-epoch) the trial's ``best_val_acc`` is used: the epoch whose
    checkpoint was kept and tested.
    """
    if info.metric == schema.VAL_ACC and schema.BEST_VAL_ACC in trial.metrics:
        value = trial.metrics[schema.BEST_VAL_ACC]
    else:
        value = trial.metrics.get(info.metric, math.nan)
    return value if math.isfinite(value) else None


def _unit_key(trial: TrialRecord) -> tuple[int, int]:
    return (-1 if trial.seed is None else trial.seed, -1 if trial.fold is None else trial.fold)


def select_trials(
    trials: Iterable[TrialRecord], info: StudyInfo
) -> dict[tuple[Setting, str, str], TrialRecord]:
    """One complete trial per (setting, variant, unit): the best by the validation metric.

    Returns:
        ``(setting, variant, unit) -> trial``, in unit order.
    """
    sign = 1.0 if info.mode == "max" else -1.0
    best: dict[tuple[Setting, str, str], tuple[tuple[float, int], TrialRecord]] = {}
    for t in trials:
        if not t.complete:
            continue
        value = objective(t, info)
        score = (-math.inf if value is None else sign * value, t.start_time)
        key = (setting_of(t, info), t.variant, t.unit)
        if key not in best or score > best[key][0]:
            best[key] = (score, t)
    ordered = sorted(best.items(), key=lambda kv: _unit_key(kv[1][1]))
    return {k: t for k, (_, t) in ordered}


def _setting_sort_key(setting: Setting, info: StudyInfo) -> tuple[Any, ...]:
    grid_pos = []
    for name, value in setting.grid:
        values = info.grid.get(name, ())
        grid_pos.append(values.index(value) if value in values else len(values))
    return (-(setting.label_fraction or 0.0), *grid_pos)


def settings_of(
    selected: Mapping[tuple[Setting, str, str], TrialRecord], info: StudyInfo
) -> tuple[tuple[Setting, ...], Setting | None]:
    """The settings with results, in table order, and the main one (the most trials; then the
    largest label fraction and the first grid values)."""
    counts: dict[Setting, int] = defaultdict(int)
    for setting, _, _ in selected:
        counts[setting] += 1
    ordered = tuple(sorted(counts, key=lambda s: _setting_sort_key(s, info)))
    if not ordered:
        return (), None
    main = max(ordered, key=lambda s: (counts[s], -ordered.index(s)))
    return ordered, main


def columns_of(trials: Iterable[TrialRecord], info: StudyInfo) -> tuple[Column, ...]:
    """Dataset x protocol columns with at least one result: the study's protocols in
    :data:`PROTOCOL_ORDER`, then its real-occlusion sets, then anything else found. Region
    columns are left out (see :func:`region_tables`)."""
    found = {Column(t.dataset, p) for t in trials if t.complete for p in t.acc}
    return _ordered((c for c in found if c.region is None), info)


def _ordered(columns: Iterable[Column], info: StudyInfo) -> tuple[Column, ...]:
    """Columns by dataset, then protocol order (a region column right after its set, regions
    by name: their metric names carry no group id to order by)."""
    order = {p: i for i, p in enumerate((*PROTOCOL_ORDER, *info.protocols, *info.real))}
    return tuple(
        sorted(columns, key=lambda c: (c.dataset, order.get(c.base, 999), c.base, c.region or ""))
    )


@dataclass(frozen=True)
class Cell:
    """One ablation cell: a variant's test accuracy on one column over replication units.

    Attributes:
        variant: The variant.
        column: The column.
        units: Replication units with a value (``s0``, ``s1/k3``, ...).
        summary: Mean and interval of the values (None when no unit has one: a missing cell).
        best: Whether the cell has the best mean of its column.
        trials: Names of the trials the values come from.
    """

    variant: str
    column: Column
    units: tuple[str, ...]
    summary: Summary | None
    best: bool = False
    trials: tuple[str, ...] = ()


@dataclass(frozen=True)
class AblationTable:
    """Rows = variants, columns = dataset x protocol, for one setting.

    Attributes:
        setting: What the table holds fixed.
        variants: Row order.
        columns: Column order.
        cells: ``(variant, column) -> cell``; every combination is present (missing cells have
            ``summary=None``).
    """

    setting: Setting
    variants: tuple[str, ...]
    columns: tuple[Column, ...]
    cells: Mapping[tuple[str, Column], Cell]

    def cell(self, variant: str, column: Column) -> Cell:
        return self.cells[(variant, column)]

    @property
    def max_n(self) -> int:
        return max((c.summary.n for c in self.cells.values() if c.summary), default=0)

    @property
    def min_n(self) -> int:
        return min((c.summary.n for c in self.cells.values() if c.summary), default=0)


def _values(
    selected: Mapping[tuple[Setting, str, str], TrialRecord],
    setting: Setting,
    variant: str,
    column: Column,
) -> list[tuple[str, float, str]]:
    """``(unit, accuracy, trial name)`` of one cell, in unit order."""
    out = []
    for (s, v, unit), t in selected.items():
        if s == setting and v == variant and t.dataset == column.dataset:
            value = t.acc.get(column.protocol)
            if value is not None:
                out.append((unit, value, t.name))
    return out


def ablation_table(
    selected: Mapping[tuple[Setting, str, str], TrialRecord],
    setting: Setting,
    variants: Sequence[str],
    columns: Sequence[Column],
) -> AblationTable:
    """Mean ± t interval per variant and column; the best mean per column is marked."""
    raw: dict[tuple[str, Column], Cell] = {}
    for v in variants:
        for c in columns:
            vals = _values(selected, setting, v, c)
            raw[(v, c)] = Cell(
                variant=v,
                column=c,
                units=tuple(u for u, _, _ in vals),
                summary=summarize([x for _, x, _ in vals]),
                trials=tuple(n for _, _, n in vals),
            )
    cells: dict[tuple[str, Column], Cell] = {}
    for c in columns:
        means = [s.mean for v in variants if (s := raw[(v, c)].summary) is not None]
        top = max(means, default=None)
        for v in variants:
            cell = raw[(v, c)]
            best = (
                top is not None
                and cell.summary is not None
                and len(means) > 1
                and math.isclose(cell.summary.mean, top, rel_tol=0, abs_tol=1e-12)
            )
            cells[(v, c)] = Cell(cell.variant, c, cell.units, cell.summary, best, cell.trials)
    return AblationTable(setting, tuple(variants), tuple(columns), cells)


def occluded_areas(
    selected: Mapping[tuple[Setting, str, str], TrialRecord], table: AblationTable
) -> dict[Column, float]:
    """Mean occluded share of the image per column of a table, as its trials logged it.

    The evaluation records, for each synthetic protocol, the mean of the mask its occluder
    applied to the test images (``test.<p>.occluded_area``). The value here is the mean over
    the selected trials of the table's setting that logged one: they were tested on the same
    occluded pixels, so they agree.

    Args:
        selected: The selected trials (see :func:`select_trials`).
        table: The table whose columns to label.

    Returns:
        Column -> area in [0, 1]; columns without one (clean, real occlusions, trials logged
        before the area was recorded) are left out.
    """
    out: dict[Column, float] = {}
    for c in table.columns:
        values = [
            area
            for (s, _, _), t in selected.items()
            if s == table.setting and t.dataset == c.dataset
            if (area := t.occluded_area.get(c.protocol)) is not None
        ]
        if values:
            out[c] = math.fsum(values) / len(values)
    return out


def real_columns(
    columns: Iterable[Column], info: StudyInfo, areas: Mapping[Column, float] | None = None
) -> tuple[Column, ...]:
    """The columns that are real-occlusion test sets: neither ``clean`` nor a synthetic
    protocol (a known name, one of the study's, or one with a logged occluded area)."""
    synthetic = {*PROTOCOL_ORDER, *info.protocols}
    return tuple(
        c
        for c in columns
        if c.region is None and c.protocol not in synthetic and c not in (areas or {})
    )


@dataclass(frozen=True)
class RegionTable:
    """Accuracy per occluded region of one real-occlusion set, for one setting.

    Kept apart from the ablation table so that the region columns neither widen it nor join
    its family of paired tests (their Holm correction would then weaken every other column's
    test); the cells are descriptive.

    Attributes:
        real: The set's overall column (``fer2013 · occlusion-ferplus``).
        table: Rows = variants; columns = ``real``, then one region column per region.
        images: Region column -> the distinct numbers of test images the trials logged for it
            (one value unless trials used different label spaces).
    """

    real: Column
    table: AblationTable
    images: Mapping[Column, tuple[int, ...]]

    @property
    def regions(self) -> tuple[Column, ...]:
        """The region columns, in table order."""
        return self.table.columns[1:]


def region_tables(
    selected: Mapping[tuple[Setting, str, str], TrialRecord],
    tables: Sequence[AblationTable],
    trials: Iterable[TrialRecord],
    info: StudyInfo,
) -> tuple[RegionTable, ...]:
    """One region table per ablation table and real-occlusion set with region results.

    The region accuracies come from the same ``test.<protocol>.acc`` metrics and the same
    selected trials as the ablation table's cells, so a region cell and the set's overall cell
    always describe the same trials.

    Args:
        selected: The selected trials (see :func:`select_trials`).
        tables: The ablation tables; their settings and variants are reused, in their order.
        trials: Every trial (to find the region columns).
        info: The study (column order).

    Returns:
        The tables, grouped by ablation table; a setting without any region value has none.
    """
    found = {Column(t.dataset, p) for t in trials if t.complete for p in t.acc}
    by_real: dict[Column, list[Column]] = defaultdict(list)
    for c in _ordered((c for c in found if c.region is not None), info):
        by_real[Column(c.dataset, c.base)].append(c)
    out = []
    for main in tables:
        for real, regions in by_real.items():
            table = ablation_table(selected, main.setting, main.variants, (real, *regions))
            if all(table.cell(v, c).summary is None for v in table.variants for c in regions):
                continue
            images: dict[Column, tuple[int, ...]] = {}
            for c in regions:
                counts = {
                    int(n)
                    for (s, _, _), t in selected.items()
                    if s == main.setting and t.dataset == c.dataset
                    if (n := t.metrics.get(schema.test_metric(c.protocol, "n"))) is not None
                    and math.isfinite(n)
                }
                images[c] = tuple(sorted(counts))
            out.append(RegionTable(real, table, images))
    return tuple(out)


@dataclass(frozen=True)
class Comparison:
    """A paired comparison ``variant - reference`` on one column.

    Attributes:
        column: The column.
        variant: The variant compared.
        reference: What it is compared with.
        test: The paired test (differences in accuracy, fractions).
        p_holm: Holm-adjusted t-test p-value over the comparisons of its table.
        significant: Whether ``p_holm <= alpha``.
        at: The x value of the comparison, e.g. the label fraction (None in ablation tables).
        note: Why no test could be made, if none was.
    """

    column: Column
    variant: str
    reference: str
    test: PairedTest
    p_holm: float | None = None
    significant: bool = False
    at: float | None = None
    note: str = ""


def _pairs(variants: Sequence[str]) -> list[tuple[str, str]]:
    """``(variant, reference)`` pairs: every variant against each reference, each unordered
    pair once (``ss+mask - none`` is listed under ``none``)."""
    pairs: list[tuple[str, str]] = []
    seen: set[frozenset[str]] = set()
    for ref in REFERENCE_VARIANTS:
        if ref not in variants:
            continue
        for v in variants:
            if v == ref or frozenset((v, ref)) in seen:
                continue
            seen.add(frozenset((v, ref)))
            # With none handled first, ss+mask - none keeps the full method on the left: a
            # positive difference means "ss+mask wins", as in every other row.
            pairs.append((v, ref))
    return pairs


def _compare(a: Cell, b: Cell, at: float | None = None) -> Comparison:
    a_units = dict(zip(a.units, a.summary.values if a.summary else (), strict=True))
    b_units = dict(zip(b.units, b.summary.values if b.summary else (), strict=True))
    common = [u for u in a.units if u in b_units]
    test = paired_test([a_units[u] for u in common], [b_units[u] for u in common], common)
    if test.n == 0:
        note = "no unit with both values"
    elif test.n == 1:
        note = "one paired unit: no test possible"
    elif test.p_t is None:
        note = "constant differences: t-test undefined"
    else:
        note = ""
    return Comparison(a.column, a.variant, b.variant, test, at=at, note=note)


def _with_holm(comparisons: Sequence[Comparison], alpha: float) -> tuple[Comparison, ...]:
    adjusted = holm([c.test.p_t for c in comparisons])
    return tuple(
        Comparison(
            c.column,
            c.variant,
            c.reference,
            c.test,
            p_holm=p,
            significant=p is not None and p <= alpha,
            at=c.at,
            note=c.note,
        )
        for c, p in zip(comparisons, adjusted, strict=True)
    )


def significance(table: AblationTable, alpha: float = ALPHA) -> tuple[Comparison, ...]:
    """Every variant against ``none`` and ``ss+mask`` per column, paired by unit; Holm over
    the whole table."""
    comparisons = [
        _compare(table.cell(v, c), table.cell(ref, c))
        for c in table.columns
        for v, ref in _pairs(table.variants)
    ]
    return _with_holm(comparisons, alpha)


@dataclass(frozen=True)
class Curve:
    """One line of a figure: mean ± interval of a variant on one column against x.

    Attributes:
        variant: The variant.
        column: The column.
        x: x values (label fractions, λ values), ascending.
        summaries: Summary per x.
    """

    variant: str
    column: Column
    x: tuple[float, ...]
    summaries: tuple[Summary, ...]


@dataclass(frozen=True)
class LabelEfficiency:
    """Accuracy against the label fraction, and where ss+mask beats none.

    Attributes:
        fractions: Label fractions with results, ascending.
        curves: One curve per variant and column.
        comparisons: ``ss+mask - none`` per fraction and column, Holm over all of them.
        significant: Column label -> fractions at which ss+mask beats none significantly
            (Holm-adjusted p <= alpha and a positive mean difference).
        note: Why there are no comparisons, if there are none.
    """

    fractions: tuple[float, ...]
    curves: tuple[Curve, ...]
    comparisons: tuple[Comparison, ...]
    significant: Mapping[str, tuple[float, ...]]
    note: str = ""


def _curves(
    selected: Mapping[tuple[Setting, str, str], TrialRecord],
    settings: Mapping[float, Setting],
    variants: Sequence[str],
    columns: Sequence[Column],
) -> tuple[Curve, ...]:
    curves = []
    for v in variants:
        for c in columns:
            xs, sums = [], []
            for x in sorted(settings):
                s = summarize([val for _, val, _ in _values(selected, settings[x], v, c)])
                if s is not None:
                    xs.append(x)
                    sums.append(s)
            if xs:
                curves.append(Curve(v, c, tuple(xs), tuple(sums)))
    return tuple(curves)


def label_efficiency(
    selected: Mapping[tuple[Setting, str, str], TrialRecord],
    main: Setting,
    variants: Sequence[str],
    columns: Sequence[Column],
    alpha: float = ALPHA,
) -> LabelEfficiency | None:
    """Curves over the label fractions (other settings as in ``main``); None with one fraction."""
    by_fraction = {
        s.label_fraction: s
        for s, _, _ in selected
        if s.grid == main.grid and s.label_fraction is not None
    }
    if len(by_fraction) < 2:
        return None
    curves = _curves(selected, by_fraction, variants, columns)
    comparisons: list[Comparison] = []
    note = ""
    if "none" in variants and "ss+mask" in variants:
        for c in columns:
            for f in sorted(by_fraction):
                table = ablation_table(selected, by_fraction[f], ("ss+mask", "none"), (c,))
                comparisons.append(_compare(table.cell("ss+mask", c), table.cell("none", c), f))
    else:
        note = "the study lacks none or ss+mask: no comparison"
    adjusted = _with_holm(comparisons, alpha)
    significant = {
        c.label: tuple(
            x.at
            for x in adjusted
            if x.column == c and x.significant and x.at is not None and (x.test.mean_diff or 0) > 0
        )
        for c in columns
    }
    return LabelEfficiency(tuple(sorted(by_fraction)), curves, adjusted, significant, note)


@dataclass(frozen=True)
class LambdaSensitivity:
    """Accuracy against λ.

    Attributes:
        mode: ``grid`` (λ gridded: mean ± interval per value), ``sampled`` (λ drawn by the
            search: one point per trial, no interval), ``fixed`` (one λ: no curve).
        values: The λ values seen in complete trials, ascending.
        curves: Grid mode: one curve per variant and column.
        points: Sampled mode: ``(variant, λ, column label, accuracy)`` per complete trial.
        note: What the section says.
    """

    mode: str
    values: tuple[float, ...]
    curves: tuple[Curve, ...] = ()
    points: tuple[tuple[str, float, str, float], ...] = ()
    note: str = ""


def lambda_sensitivity(
    trials: Sequence[TrialRecord],
    selected: Mapping[tuple[Setting, str, str], TrialRecord],
    main: Setting | None,
    info: StudyInfo,
    columns: Sequence[Column],
) -> LambdaSensitivity:
    """λ curves: per gridded value with intervals, or per sampled trial without."""
    complete = [t for t in trials if t.complete and "lam" in t.params]
    values = tuple(sorted({t.params["lam"] for t in complete}))
    if "lam" in info.sampled:
        points = tuple(
            (t.variant, t.params["lam"], c.label, t.acc[c.protocol])
            for t in complete
            for c in columns
            if t.dataset == c.dataset and c.protocol in t.acc
        )
        return LambdaSensitivity(
            "sampled",
            values,
            points=points,
            note=(
                "λ was sampled by the search: each trial is one point (no two trials share a "
                "λ), so no interval can be drawn."
            ),
        )
    if main is None or "lam" not in info.grid or len(values) < 2:
        if "lam" in info.grid:
            shown = ", ".join(_fmt_number(v) for v in info.grid["lam"])
            note = f"λ grid ({shown}): fewer than two values have results yet, no curve."
        else:
            if not values and "lam" in info.fixed:
                values = (info.fixed["lam"],)
            shown = ", ".join(_fmt_number(v) for v in values) or "no result yet"
            note = f"λ was not varied in this study (λ = {shown}): no curve."
        return LambdaSensitivity("fixed", values, note=note)
    main_grid = dict(main.grid)
    settings: dict[float, Setting] = {}
    for s, _, _ in selected:
        grid = dict(s.grid)
        lam = grid.get("lam")
        same_rest = all(v == main_grid.get(k) for k, v in grid.items() if k != "lam")
        if isinstance(lam, float | int) and s.label_fraction == main.label_fraction and same_rest:
            settings[float(lam)] = s
    curves = _curves(selected, settings, info.variants, columns)
    return LambdaSensitivity(
        "grid",
        tuple(sorted(settings)),
        curves=curves,
        note="mean ± 95 % t interval over replication units per λ.",
    )


@dataclass(frozen=True)
class Counts:
    """How many trials are in which state.

    Attributes:
        expected: Trials a complete launch has (times the number of launches covered).
        total: Trials found in MLflow.
        complete: FINISHED with test results (candidates for the statistics).
        selected: Trials the tables use (one per setting, variant and unit).
        failed: FAILED (an error).
        running: Still RUNNING (or SCHEDULED).
        stopped: KILLED (a scheduler such as ASHA stopped the trial, or an interrupt), or
            FINISHED without test results: ended before testing, without an error.
    """

    expected: int
    total: int
    complete: int
    selected: int
    failed: int
    running: int
    stopped: int


def count_trials(trials: Sequence[TrialRecord], selected_count: int, expected: int) -> Counts:
    return Counts(
        expected=expected,
        total=len(trials),
        complete=sum(t.complete for t in trials),
        selected=selected_count,
        failed=sum(t.status == "FAILED" for t in trials),
        running=sum(t.status in ("RUNNING", "SCHEDULED") for t in trials),
        stopped=sum(t.status == "KILLED" or (t.status == "FINISHED" and not t.acc) for t in trials),
    )


@dataclass(frozen=True)
class Excluded:
    """A trial that is not in the statistics, and why."""

    name: str
    launch: str
    status: str
    variant: str
    unit: str
    reason: str


def excluded_trials(trials: Sequence[TrialRecord]) -> tuple[Excluded, ...]:
    # The runner ends a trial Tune stopped (an ASHA stop, a shutdown, Ctrl-C) as KILLED and a
    # trial that raised an error as FAILED.
    reasons = {
        "FAILED": "failed (an error)",
        "KILLED": "stopped before testing (scheduler stop or interrupt)",
        "RUNNING": "still running",
        "SCHEDULED": "not started",
    }
    out = []
    for t in trials:
        if t.complete:
            continue
        if t.status == "FINISHED":
            reason = "finished without test results"
        else:
            reason = reasons.get(t.status, t.status.lower())
        out.append(Excluded(t.name, t.launch, t.status, t.variant, t.unit, reason))
    return tuple(out)


@dataclass(frozen=True)
class SearchBest:
    """The best trial of a variant by the validation search metric.

    Attributes:
        variant: The variant.
        trial: Trial name.
        run_id: MLflow run id.
        unit: Replication unit.
        label_fraction: Label fraction.
        params: Method parameters (study names).
        objective: Value of the search metric.
        acc: Test accuracy per protocol (reported, never used to choose).
        trials: Trials of the variant with a value of the search metric.
    """

    variant: str
    trial: str
    run_id: str
    unit: str
    label_fraction: float | None
    params: Mapping[str, float]
    objective: float
    acc: Mapping[str, float]
    trials: int


def search_best(
    trials: Sequence[TrialRecord], info: StudyInfo, label_fraction: float | None = None
) -> tuple[SearchBest, ...]:
    """Best FINISHED trial per variant by the validation metric (the search's own choice).

    Args:
        trials: The trials.
        info: The study.
        label_fraction: Only trials with this label fraction (validation values of models
            trained on different amounts of labels answer different questions); all when None.
    """
    sign = 1.0 if info.mode == "max" else -1.0
    out = []
    for v in info.variants:
        scored = [
            (value, t)
            for t in trials
            if t.variant == v and t.status == "FINISHED"
            if label_fraction is None or t.label_fraction == label_fraction
            if (value := objective(t, info)) is not None
        ]
        if not scored:
            continue
        value, best = max(scored, key=lambda vt: (sign * vt[0], vt[1].start_time))
        out.append(
            SearchBest(
                v,
                best.name,
                best.run_id,
                best.unit,
                best.label_fraction,
                best.params,
                value,
                best.acc,
                len(scored),
            )
        )
    return tuple(out)


def varying_params(trials: Sequence[TrialRecord]) -> tuple[str, ...]:
    """Method parameters that take more than one value among finished trials."""
    finished = [t for t in trials if t.status == "FINISHED"]
    names = ("lam", "tau", "lr", "pretext_lr")
    return tuple(n for n in names if len({t.params.get(n) for t in finished if n in t.params}) > 1)
