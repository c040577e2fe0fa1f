"""Rendering a built report: one self-contained HTML page, Markdown, CSV and JSON.

Both text formats are rendered from the same *views* (:class:`Section`, :class:`TableView`),
so the HTML page and the Markdown file always hold the same tables and numbers. The page comes
from the Jinja2 template ``report.html.j2`` with autoescaping on; its styles (``report.css``)
and every figure (base64 PNG) are inlined, and a Content-Security-Policy forbids every network
request, so it opens offline and shows the same everywhere. Both files ship inside the package
(``occstudy/report/templates/``, read with :mod:`importlib.resources`, so an installed wheel
renders reports); ``$OCCSTUDY_REPORT_TEMPLATES`` names a folder of one's own instead.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from occstudy.report.figures import ConfusionSum
from occstudy.report.stats import ALPHA, LEVEL, MAX_EXACT_SIGN_FLIP, Summary
from occstudy.report.tables import (
    AblationTable,
    Column,
    Comparison,
    Counts,
    Curve,
    Excluded,
    LabelEfficiency,
    LambdaSensitivity,
    RegionTable,
    SearchBest,
    Setting,
    StudyInfo,
    objective,
)
from occstudy.tracking import schema
from occstudy.tracking.reader import TrialRecord

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "MISSING",
    "TEMPLATES_ENV",
    "Report",
    "ReportFigure",
    "render_html",
    "render_markdown",
    "template_folder",
    "write_report",
]

#: Shown for a missing cell (no finished trial has that result).
MISSING = "—"
#: Environment variable naming a folder of one's own with ``report.html.j2`` and ``report.css``.
TEMPLATES_ENV = "OCCSTUDY_REPORT_TEMPLATES"
#: Its older name (from when the template lived in the repository's ``dashboards/``), still read.
_LEGACY_TEMPLATES_ENV = "OCCSTUDY_DASHBOARDS"
#: The page template and its style sheet.
TEMPLATE, STYLES = "report.html.j2", "report.css"
_SYMBOLS = {"lam": "λ", "tau": "τ", "lr": "lr", "pretext_lr": "pretext lr"}


@dataclass(frozen=True)
class ReportFigure:
    """A figure of the report.

    Attributes:
        section: Id of the section it belongs to.
        name: File stem (``figures/<name>.png``).
        title: Short title.
        caption: What it shows.
        png: The PNG bytes.
    """

    section: str
    name: str
    title: str
    caption: str
    png: bytes

    @property
    def file(self) -> str:
        # Names come from protocol and variant names: keep them one safe path component.
        return f"figures/{re.sub(r'[^A-Za-z0-9_.-]', '-', self.name)}.png"

    @property
    def b64(self) -> str:
        return base64.b64encode(self.png).decode("ascii")


@dataclass(frozen=True)
class Report:
    """Everything a report shows, computed; rendering only formats it.

    Attributes:
        info: The study definition's essentials.
        tracking_uri: Where the runs are (credentials removed).
        launches: Launches covered.
        parent_run_id: Parent run of the last launch covered (receives the artifacts).
        generated: When the report was made (ISO 8601, UTC).
        counts: Trial counts by state.
        columns: Dataset x protocol columns.
        tables: Ablation table per setting (the main one first).
        comparisons: Paired comparisons per table, in the same order.
        main: The main setting.
        label_efficiency: Curves over label fractions (None with one fraction).
        lam: λ sensitivity.
        search: Best configuration per variant by the validation metric.
        search_params: Parameters that vary across trials.
        excluded: Trials not in the statistics.
        trials: Every trial covered.
        selected: Run ids of the trials the tables use.
        region_tables: Accuracy per occluded region of the real-occlusion sets, grouped by
            ablation table (none when no set was tested per region).
        occluded_areas: Mean occluded share of the image per synthetic column of the main
            table, as its trials logged it (see :func:`occstudy.report.tables.occluded_areas`).
        figures: Figures, in page order.
        confusions: Confusion matrices of the main setting, summed per variant and column.
        notes: Section id -> remarks (what could not be drawn and why).
    """

    info: StudyInfo
    tracking_uri: str
    launches: tuple[str, ...]
    parent_run_id: str | None
    generated: str
    counts: Counts
    columns: tuple[Column, ...]
    tables: tuple[AblationTable, ...]
    comparisons: tuple[tuple[Comparison, ...], ...]
    main: Setting | None
    label_efficiency: LabelEfficiency | None
    lam: LambdaSensitivity
    search: tuple[SearchBest, ...]
    search_params: tuple[str, ...]
    excluded: tuple[Excluded, ...]
    trials: tuple[TrialRecord, ...]
    selected: frozenset[str]
    region_tables: tuple[RegionTable, ...] = ()
    occluded_areas: Mapping[Column, float] = field(default_factory=dict)
    figures: tuple[ReportFigure, ...] = ()
    confusions: tuple[ConfusionSum, ...] = ()
    notes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def figures_of(self, section: str) -> list[ReportFigure]:
        return [f for f in self.figures if f.section == section]


# ---------------------------------------------------------------------------------------------
# Number formatting


def pct(x: float | None, digits: int = 2) -> str:
    """A fraction as a percentage without the sign: ``0.71234 -> 71.23``."""
    return MISSING if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def pp(x: float | None) -> str:
    """A difference of fractions in percentage points, signed: ``+1.23``."""
    return MISSING if x is None or not math.isfinite(x) else f"{100 * x:+.2f}"


def pval(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return MISSING
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _num(x: float | None, digits: int = 4) -> str:
    return MISSING if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


# ---------------------------------------------------------------------------------------------
# Views shared by Markdown and HTML


@dataclass(frozen=True)
class CellView:
    """One table cell: main text, a small suffix (``n=3``), emphasis, a tooltip, and for heat
    maps a shade in [0, 1] (the cell's background)."""

    text: str
    sub: str = ""
    best: bool = False
    title: str = ""
    cls: str = ""
    shade: float | None = None

    @property
    def style(self) -> str:
        """Inline background of a heat-map cell (empty for other cells)."""
        if self.shade is None:
            return ""
        s = min(1.0, max(0.0, self.shade))
        colour = "#fff" if s > 0.55 else "#1d232a"
        return f"background: rgba(11, 92, 173, {s:.3f}); color: {colour}"


@dataclass(frozen=True)
class TableView:
    """A table: header, rows of cells, caption above and note below."""

    id: str
    caption: str
    header: tuple[str, ...]
    rows: tuple[tuple[CellView, ...], ...]
    note: str = ""
    collapsed: bool = False
    cls: str = ""


@dataclass(frozen=True)
class Section:
    """A section of the page: paragraphs, tables, figures, remarks."""

    id: str
    title: str
    paragraphs: tuple[str, ...] = ()
    tables: tuple[TableView, ...] = ()
    figures: tuple[ReportFigure, ...] = ()
    notes: tuple[str, ...] = ()


def _summary_cell(s: Summary | None, best: bool, units: Sequence[str] = ()) -> CellView:
    if s is None:
        return CellView(MISSING, title="no finished trial with this result", cls="missing")
    values = ", ".join(f"{u}: {pct(v)}" for u, v in zip(units, s.values, strict=False))
    if s.half_width is None:
        return CellView(
            pct(s.mean),
            sub=f"n={s.n}",
            best=best,
            title=f"one unit ({values}): no interval can be given",
            cls="single",
        )
    return CellView(
        f"{pct(s.mean)} ± {pct(s.half_width)}",
        sub=f"n={s.n}",
        best=best,
        title=f"95 % CI [{pct(s.low)}, {pct(s.high)}]; {values}",
    )


def _variant_rows(table: AblationTable) -> tuple[tuple[CellView, ...], ...]:
    """One row per variant: its name, then a summary cell per column."""
    rows = []
    for v in table.variants:
        row = [CellView(v, cls="rowhead")]
        for c in table.columns:
            cell = table.cell(v, c)
            row.append(_summary_cell(cell.summary, cell.best, cell.units))
        rows.append(tuple(row))
    return tuple(rows)


def _ablation_view(table: AblationTable, index: int) -> TableView:
    rows = _variant_rows(table)
    n_text = (
        f"n = {table.max_n}"
        if table.min_n == table.max_n
        else f"n = {table.min_n} to {table.max_n}"
    )
    note = (
        f"Test accuracy (%), mean ± half-width of the {100 * LEVEL:g} % t confidence interval over "
        f"replication units ({n_text} per cell, shown in each cell). Bold: best mean of the column. "
        f"{MISSING}: no finished trial with this result."
    )
    if table.min_n == 1:
        note += " Cells with n=1 have no interval: one unit cannot give one."
    return TableView(
        id=f"ablation-{index}",
        caption=f"Ablation: {table.setting.label}",
        header=("variant", *(c.label for c in table.columns)),
        rows=rows,
        note=note,
    )


def _images_text(counts: Sequence[int]) -> str:
    if not counts:
        return ""
    shown = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f" ({shown} images)"


def _region_view(rt: RegionTable, index: int) -> TableView:
    """A region table: the set's overall accuracy, then one column per occluded region."""
    table = rt.table
    header = (
        "variant",
        "all regions",
        *(f"{c.region}{_images_text(rt.images.get(c, ()))}" for c in rt.regions),
    )
    note = (
        f"Test accuracy (%) on the {rt.real.base} images of each occluded region, mean ± "
        f"half-width of the {100 * LEVEL:g} % t confidence interval over replication units (n "
        "per cell), from the same trials and predictions as the ablation table; all regions = "
        "its column. Regions as the loader names them (Occlusion-FERPlus: the list's "
        "undocumented third column, names read off samples, unverified). Bold: best mean of "
        "the column. Descriptive only: these columns are not tested (the ablation table's "
        "tests and their Holm correction are unchanged), and a region holds few images, so "
        "one run's accuracy on it is coarse."
    )
    return TableView(
        id=f"regions-{index}",
        caption=f"By occluded region: {rt.real.label}, {table.setting.label}",
        header=header,
        rows=_variant_rows(table),
        note=note,
    )


def _comparison_rows(
    comparisons: Sequence[Comparison], with_at: bool
) -> list[tuple[CellView, ...]]:
    """One row per comparison with at least one pair; the column label only on the first row
    of its group (the tables are long and wide enough)."""
    rows = []
    previous: Column | None = None
    for c in comparisons:
        t = c.test
        if t.n == 0:
            continue
        ci = (
            f"[{pp(t.mean_diff - t.half_width)}, {pp(t.mean_diff + t.half_width)}]"
            if t.mean_diff is not None and t.half_width is not None
            else MISSING
        )
        diffs = ", ".join(f"{u}: {pp(d)}" for u, d in zip(t.units, t.differences, strict=True))
        row = [CellView(c.column.label if c.column != previous else "", cls="rowhead")]
        previous = c.column
        if with_at:
            row.append(CellView(f"{100 * c.at:g} %" if c.at is not None else MISSING))
        row += [
            CellView(f"{c.variant} − {c.reference}"),
            CellView(str(t.n)),
            CellView(pp(t.mean_diff), title=diffs),
            CellView(ci),
            CellView(_num(t.t, 3)),
            CellView(pval(t.p_t)),
            CellView(pval(t.p_sign_flip)),
            CellView(pval(c.p_holm), best=c.significant),
            CellView(
                "yes" if c.significant else ("no" if c.p_holm is not None else c.note or MISSING),
                cls="sig" if c.significant else "why",
            ),
        ]
        rows.append(tuple(row))
    return rows


_COMPARISON_HEADER = (
    "comparison",
    "n",
    "Δ (pp)",
    "95 % CI of Δ",
    "t",
    "p (t)",
    "p (sign-flip)",
    "p (Holm)",
    "significant",
)


def _missing_pairs_note(comps: Sequence[Comparison]) -> str:
    missing = sum(c.test.n == 0 for c in comps)
    if not missing:
        return ""
    return (
        f" {missing} comparison(s) with a missing cell (no unit with both values) are left out "
        "(they are in comparisons.csv)."
    )


_TEST_NOTE = (
    "Δ = variant − reference in percentage points, paired by replication unit; 95 % t interval "
    "of the mean Δ; p (t): two-sided paired t-test; p (sign-flip): exact sign-flip test; "
    f"p (Holm): t-test p after Holm's correction; significant: p (Holm) ≤ {ALPHA:g}."
)


def _significance_view(table: AblationTable, comps: Sequence[Comparison], index: int) -> TableView:
    n_tests = sum(c.test.p_t is not None for c in comps)
    return TableView(
        id=f"significance-{index}",
        caption=f"Significance: {table.setting.label}",
        header=("column", *_COMPARISON_HEADER),
        rows=tuple(_comparison_rows(comps, with_at=False)),
        note=(
            _TEST_NOTE
            + (
                f" Holm correction over the {n_tests} t-tests of this table."
                if n_tests
                else " No t-test was possible in this table."
            )
            + _missing_pairs_note(comps)
        ),
    )


def _method_paragraphs(report: Report) -> tuple[str, ...]:
    info = report.info
    unit = "seed and fold" if info.folds else "seed"
    units = len(info.seeds) * (info.folds or 1)
    min_p = 2 / 2**units if 2 <= units <= MAX_EXACT_SIGN_FLIP else None
    paragraphs = [
        f"Each cell is the mean test accuracy over replication units (one per {unit}) with the "
        f"half-width of its {100 * LEVEL:g} % confidence interval from Student's t "
        "(mean ± t·s/√n, n − 1 degrees of freedom).",
        "Variants are compared with none and with ss+mask on the same units (paired): the "
        "primary test is the two-sided paired t-test on the per-unit differences. The exact "
        "sign-flip (permutation) test is shown beside it; it assumes nothing about the "
        "distribution but cannot go below p = 2/2ⁿ with n paired units"
        + (f" ({min_p:.3g} with this study's {units} units)" if min_p else "")
        + ", so with few seeds it is a robustness check, not the decision. "
        f"p-values are Holm-corrected over all comparisons of a table (family-wise α = {ALPHA:g}).",
        "When a grid point has several trials (Optuna samples, or reruns with --launch all), the "
        f"one with the best validation metric ({info.metric}, {info.mode}) is used; test numbers "
        "never choose. Only trials that FINISHED with test results count; the others are listed "
        "at the end.",
    ]
    if len(info.seeds) == 1 and not info.folds:
        paragraphs.append(
            "This study has a single seed: no confidence interval and no test can be given; "
            "cells show the single value (n=1) and the comparison tables say so."
        )
    return tuple(paragraphs)


def _overview(report: Report) -> Section:
    c = report.counts
    info = report.info
    launches = ", ".join(report.launches)
    p = [
        info.description or "",
        f"Launch{'es' if len(report.launches) > 1 else ''}: {launches}. Tracking: "
        f"{report.tracking_uri} (experiment occstudy/{info.name}). Generated {report.generated}.",
        f"Trials: {c.complete} of {c.expected} finished with test results "
        f"({c.failed} failed, {c.stopped} stopped before testing, {c.running} running"
        f"{', study incomplete' if c.running or c.total < c.expected else ''}); {c.selected} "
        "used in the tables.",
    ]
    return Section(
        "overview",
        f"Study {info.name}",
        tuple(x for x in p if x),
        notes=report.notes.get("overview", ()),
    )


def _ablation_sections(report: Report) -> list[Section]:
    tables = []
    for i, table in enumerate(report.tables):
        tables.append(_ablation_view(table, i))
        # Each setting's region tables right under its ablation table: the overall real-
        # occlusion number and its breakdown are read together.
        tables += [
            _region_view(rt, j)
            for j, rt in enumerate(report.region_tables)
            if rt.table.setting == table.setting
        ]
    paragraphs = list(_method_paragraphs(report))
    if not report.tables:
        paragraphs.insert(0, "No trial has finished with test results yet.")
    ablation = Section("ablation", "Ablation", tuple(paragraphs), tuple(tables))
    sig_tables = []
    notes = []
    for i, (table, comps) in enumerate(zip(report.tables, report.comparisons, strict=True)):
        if not comps:
            notes.append(
                f"{table.setting.label}: nothing to compare (the table needs none or ss+mask and "
                "a second variant)."
            )
            continue
        if all(c.test.n == 0 for c in comps):
            notes.append(
                f"{table.setting.label}: no two variants have results on a common unit yet: "
                "nothing to compare."
            )
            continue
        if all(c.test.n <= 1 for c in comps):
            notes.append(
                f"{table.setting.label}: at most one unit per pair (a single seed): no interval "
                "and no test can be given."
            )
        sig_tables.append(_significance_view(table, comps, i))
    sig_text = () if report.tables else ("No trial has finished with test results yet.",)
    sig = Section("significance", "Significance", sig_text, tuple(sig_tables), notes=tuple(notes))
    return [ablation, sig]


def _label_efficiency_section(report: Report) -> Section:
    le = report.label_efficiency
    figs = tuple(report.figures_of("label-efficiency"))
    if le is None:
        seen = {t.setting.label_fraction for t in report.tables}
        shown = ", ".join(f"{100 * f:g} %" for f in sorted(x for x in seen if x is not None))
        return Section(
            "label-efficiency",
            "Label efficiency",
            (f"Only one label fraction has results ({shown or 'none yet'}): no curve.",),
        )
    paragraphs = [
        "Test accuracy against the fraction of expression labels used for fine-tuning (log "
        "axis), mean ± 95 % CI per variant; other settings as in the main table."
    ]
    for label, sig_fractions in le.significant.items():
        where = ", ".join(f"{100 * f:g} %" for f in sig_fractions) or "no fraction"
        paragraphs.append(f"{label}: ss+mask beats none significantly (Holm) at {where}.")
    if le.note:
        paragraphs.append(le.note)
    tables: tuple[TableView, ...] = ()
    if le.comparisons:
        n_tests = sum(c.test.p_t is not None for c in le.comparisons)
        tables = (
            TableView(
                id="label-efficiency-tests",
                caption="ss+mask − none per label fraction",
                header=("column", "labels", *_COMPARISON_HEADER),
                rows=tuple(_comparison_rows(le.comparisons, with_at=True)),
                note=(
                    f"{_TEST_NOTE} Holm correction over the {n_tests} t-tests of this table."
                    + _missing_pairs_note(le.comparisons)
                ),
            ),
        )
    return Section(
        "label-efficiency",
        "Label efficiency",
        tuple(paragraphs),
        tables,
        figs,
        report.notes.get("label-efficiency", ()),
    )


def _lambda_section(report: Report) -> Section:
    ls = report.lam
    tables: tuple[TableView, ...] = ()
    if ls.mode == "grid" and ls.curves:
        columns = list(dict.fromkeys(c.column for c in ls.curves))
        rows = []
        for variant in dict.fromkeys(c.variant for c in ls.curves):
            for lam in ls.values:
                row = [CellView(variant, cls="rowhead"), CellView(f"{lam:g}")]
                for col in columns:
                    curve = next(
                        (c for c in ls.curves if c.variant == variant and c.column == col), None
                    )
                    s = None
                    if curve is not None and lam in curve.x:
                        s = curve.summaries[curve.x.index(lam)]
                    row.append(_summary_cell(s, False))
                rows.append(tuple(row))
        tables = (
            TableView(
                id="lambda-table",
                caption="Test accuracy (%) against λ",
                header=("variant", "λ", *(c.label for c in columns)),
                rows=tuple(rows),
                note=f"Mean ± 95 % CI over units. {MISSING}: no result.",
            ),
        )
    return Section(
        "lambda",
        "λ sensitivity",
        (ls.note,),
        tables,
        tuple(report.figures_of("lambda")),
        report.notes.get("lambda", ()),
    )


def _search_section(report: Report) -> Section:
    info = report.info
    params = ("lam", "tau", "lr", "pretext_lr")
    rows = []
    clean = next((c for c in report.columns if c.protocol == "clean"), None)
    for b in report.search:
        rows.append(
            (
                CellView(b.variant, cls="rowhead"),
                CellView(b.trial, cls="mono"),
                CellView(b.unit),
                CellView(MISSING if b.label_fraction is None else f"{100 * b.label_fraction:g} %"),
                *(CellView(_num(b.params.get(p))) for p in params),
                CellView(_num(b.objective)),
                CellView(pct(b.acc.get(clean.protocol)) if clean else MISSING),
                CellView(str(b.trials)),
            )
        )
    main_fraction = None if report.main is None else report.main.label_fraction
    search = (
        f"Optuna {info.algorithm} over {', '.join(_SYMBOLS.get(p, p) for p in info.sampled)}"
        if info.sampled
        else "grid"
    )
    paragraphs = [
        f"Search: {search}; metric {info.metric} ({info.mode}) on the validation split. The best "
        "configuration per variant is the trial with the best validation value"
        + (
            f" among those with the main table's label fraction ({100 * main_fraction:g} %)"
            if main_fraction is not None and len(info.label_fractions) > 1
            else ""
        )
        + "; its test accuracy is reported, never used to choose.",
    ]
    if report.search_params:
        paragraphs.append(
            "Optuna's optimisation history, parallel coordinates and fANOVA parameter importances "
            "for the parameters that vary ("
            + ", ".join(_SYMBOLS.get(p, p) for p in report.search_params)
            + "), drawn on an in-memory Optuna study rebuilt from the MLflow trials."
        )
    else:
        paragraphs.append("No method parameter varies across trials: nothing to search over.")
    table = TableView(
        id="search-best",
        caption="Best configuration per variant (by validation)",
        header=(
            "variant",
            "trial",
            "unit",
            "labels",
            "λ",
            "τ",
            "lr",
            "pretext lr",
            info.metric,
            "test clean (%)",
            "trials",
        ),
        rows=tuple(rows),
    )
    return Section(
        "search",
        "Search",
        tuple(paragraphs),
        (table,) if rows else (),
        tuple(report.figures_of("search")),
        report.notes.get("search", ()),
    )


def _figure_section(report: Report, sid: str, title: str, paragraph: str) -> Section:
    figs = tuple(report.figures_of(sid))
    notes = report.notes.get(sid, ())
    if not figs and not notes:
        notes = (
            ("The study tests on one protocol only: no curve.",)
            if sid == "robustness" and len(report.columns) == 1
            else ("Nothing to show yet.",)
        )
    return Section(sid, title, (paragraph,), (), figs, notes)


def _confusion_section(report: Report) -> Section:
    """Per column, one heat-map table per variant: counts summed over the main setting's
    trials, each row as % of its true class (the counts in the tooltips)."""
    tables = []
    for c in report.confusions:
        matrix = c.matrix
        total = sum(map(sum, matrix))
        correct = sum(matrix[i][i] for i in range(len(matrix)))
        acc = correct / total if total else None
        rows = []
        for t, name in enumerate(c.classes):
            row_total = sum(matrix[t])
            cells = [CellView(name, cls="rowhead")]
            for p, pred in enumerate(c.classes):
                share = matrix[t][p] / row_total if row_total else None
                cells.append(
                    CellView(
                        MISSING if share is None else f"{100 * share:.0f}",
                        title=f"true {name}, predicted {pred}: {matrix[t][p]} of {row_total}",
                        shade=share,
                        cls="heat",
                    )
                )
            rows.append(tuple(cells))
        tables.append(
            TableView(
                id=f"confusion-{c.column.dataset}-{c.column.protocol}-{c.variant}",
                caption=(
                    f"{c.column.label}, {c.variant}: {pct(acc, 1)} % "
                    f"({c.runs} run{'s' if c.runs != 1 else ''})"
                ),
                header=("true ↓ predicted →", *(name[:5] for name in c.classes)),
                rows=tuple(rows),
                cls="confusion",
            )
        )
    label = "" if report.main is None else f" ({report.main.label})"
    paragraph = (
        "Per test protocol, one matrix per variant: the confusion matrices of the main "
        f"setting's trials{label} summed, each row as % of its true class (hover a cell for "
        "the counts); the caption gives the pooled accuracy."
    )
    notes = report.notes.get("confusion", ()) or (
        () if tables else ("No trial logged confusion matrices yet.",)
    )
    return Section("confusion", "Confusion matrices", (paragraph,), tuple(tables), (), notes)


def _excluded_section(report: Report) -> Section:
    rows = tuple(
        (
            CellView(e.name, cls="mono"),
            CellView(e.launch),
            CellView(e.status),
            CellView(e.variant),
            CellView(e.unit),
            CellView(e.reason),
        )
        for e in report.excluded
    )
    tables = (
        (
            TableView(
                id="excluded",
                caption="Trials not in the statistics",
                header=("trial", "launch", "status", "variant", "unit", "why"),
                rows=rows,
            ),
        )
        if rows
        else ()
    )
    if rows:
        paragraphs: tuple[str, ...] = (f"{len(rows)} trial(s) are not in the statistics.",)
    elif report.trials:
        paragraphs = ("Every trial found finished with test results.",)
    else:
        paragraphs = ("No fine-tune trial has started yet.",)
    return Section("excluded", "Trials not in the statistics", paragraphs, tables)


def _trials_section(report: Report) -> Section:
    protocols = [c.protocol for c in report.columns]
    rows = []
    for t in report.trials:
        value = objective(t, report.info)
        rows.append(
            (
                CellView(t.name, cls="mono"),
                CellView(t.status),
                CellView(t.variant),
                CellView(t.unit),
                CellView(_num(t.label_fraction)),
                CellView(_num(t.params.get("lam"))),
                CellView(_num(value)),
                CellView("yes" if t.run_id in report.selected else ""),
                *(CellView(pct(t.acc.get(p))) for p in protocols),
            )
        )
    table = TableView(
        id="trials",
        caption=f"All {len(rows)} trials (test accuracy %)",
        header=(
            "trial",
            "status",
            "variant",
            "unit",
            "labels",
            "λ",
            report.info.metric,
            "in tables",
            *protocols,
        ),
        rows=tuple(rows),
        collapsed=True,
    )
    files = (
        "Raw numbers: trials.csv (one row per trial), cells.csv (every ablation cell with its "
        "values), comparisons.csv (every test) and report.json (all of it)."
    )
    return Section("trials", "All trials", (files,), (table,) if rows else ())


def sections(report: Report) -> list[Section]:
    """The page's sections, in order."""
    return [
        _overview(report),
        *_ablation_sections(report),
        _lambda_section(report),
        _label_efficiency_section(report),
        _search_section(report),
        _figure_section(
            report,
            "robustness",
            "Robustness to occlusion",
            "Test accuracy per variant from clean images through growing synthetic occluders "
            "(R8 → R16 → R24 squares, eye and mouth bands, objects; mean occluded share of the "
            "image under each name) to real occlusions; mean ± 95 % CI, main setting.",
        ),
        _confusion_section(report),
        _figure_section(
            report,
            "masks",
            "Mask pictures",
            "Inputs with synthetic occluders (top) next to the true and the predicted masks, "
            "from the first replication unit of each variant with a mask network; real "
            "occlusions have no true mask, only the prediction.",
        ),
        _excluded_section(report),
        _trials_section(report),
    ]


# ---------------------------------------------------------------------------------------------
# Markdown


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_cell(c: CellView) -> str:
    text = _md_escape(c.text)
    if c.best:
        text = f"**{text}**"
    if c.sub:
        text += f" ({c.sub})"
    return text


def _md_table(t: TableView) -> list[str]:
    lines = [f"**{_md_escape(t.caption)}**", ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in t.header) + " |")
    lines.append("|" + "---|" * len(t.header))
    for row in t.rows:
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    if t.note:
        lines += ["", f"_{t.note}_"]
    return [*lines, ""]


def render_markdown(report: Report, only: Sequence[str] | None = None) -> str:
    """The report as Markdown: the same tables; figures as links to ``figures/*.png``.

    Args:
        report: The computed report.
        only: Ids of the sections to render (e.g. ``("ablation",)``); None renders all.
    """
    lines = [f"# Study report: {report.info.name}", ""]
    for s in sections(report):
        if only is not None and s.id not in only:
            continue
        if s.id != "overview":
            lines += [f"## {s.title}", ""]
        for p in s.paragraphs:
            lines += [p, ""]
        for t in s.tables:
            lines += _md_table(t)
        for f in s.figures:
            lines += [f"![{f.title}]({f.file})", "", f"_{f.caption}_", ""]
        for n in s.notes:
            lines += [f"> {n}", ""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# HTML


def template_folder() -> Traversable:
    """Folder with the page template and its styles: ``$OCCSTUDY_REPORT_TEMPLATES`` (or the
    older ``$OCCSTUDY_DASHBOARDS``) when set, else the package's own ``templates/``.

    Raises:
        FileNotFoundError: When the folder named by the environment lacks either file.
    """
    var = next((v for v in (TEMPLATES_ENV, _LEGACY_TEMPLATES_ENV) if os.environ.get(v)), None)
    if var is None:
        return resources.files(__package__ or "occstudy.report").joinpath("templates")
    folder = Path(os.environ[var])
    for name in (TEMPLATE, STYLES):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"no {name} in {folder} (named by ${var}); unset it to use the template "
                f"shipped with occstudy, or point it at a folder holding {TEMPLATE} and {STYLES}"
            )
    return folder


def render_html(report: Report, template_dir: Path | Traversable | None = None) -> str:
    """The report as one self-contained HTML page (inline styles and base64 images).

    Args:
        report: The computed report.
        template_dir: Folder with ``report.html.j2`` and ``report.css`` (default:
            :func:`template_folder`).
    """
    import jinja2
    from markupsafe import Markup

    folder = template_dir if template_dir is not None else template_folder()

    def source(name: str) -> str:
        # A traversable, not a file-system path: the package may be installed as a zip.
        return folder.joinpath(name).read_text(encoding="utf-8")

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(source),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # The style sheet is our own file; "</" would end the <style> element early.
    css = source(STYLES).replace("</", "<\\/")
    return env.get_template(TEMPLATE).render(
        title=f"occstudy report: {report.info.name}",
        study=report.info.name,
        generated=report.generated,
        css=Markup(css),
        sections=sections(report),
    )


# ---------------------------------------------------------------------------------------------
# Raw numbers


def _csv(rows: Sequence[Mapping[str, Any]], header: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in header})
    return buf.getvalue()


def _trial_rows(report: Report) -> tuple[list[dict[str, Any]], list[str]]:
    protocols = sorted({p for t in report.trials for p in t.acc})
    header = [
        "run_id",
        "name",
        "launch",
        "status",
        "in_tables",
        "dataset",
        "variant",
        "seed",
        "fold",
        "label_fraction",
        "lam",
        "tau",
        "lr",
        "pretext_lr",
        "objective",
        *(schema.test_metric(p, "acc") for p in protocols),
        *(schema.test_metric(p, "macro_f1") for p in protocols),
    ]
    rows = []
    for t in report.trials:
        row: dict[str, Any] = {
            "run_id": t.run_id,
            "name": t.name,
            "launch": t.launch,
            "status": t.status,
            "in_tables": t.run_id in report.selected,
            "dataset": t.dataset,
            "variant": t.variant,
            "seed": t.seed,
            "fold": t.fold,
            "label_fraction": t.label_fraction,
            "objective": objective(t, report.info),
            **{p: t.params.get(p) for p in ("lam", "tau", "lr", "pretext_lr")},
        }
        row.update({schema.test_metric(p, "acc"): v for p, v in t.acc.items()})
        row.update({schema.test_metric(p, "macro_f1"): v for p, v in t.macro_f1.items()})
        rows.append(row)
    return rows, header


_CELL_HEADER = [
    "setting",
    "label_fraction",
    "grid",
    "variant",
    "dataset",
    "protocol",
    "n",
    "mean",
    "sd",
    "ci_low",
    "ci_high",
    "best",
    "units",
    "values",
]


def _curves_json(curves: Sequence[Curve]) -> list[dict[str, Any]]:
    """Curves (label efficiency, λ sensitivity) as plain data: one point per x."""
    return [
        {
            "variant": c.variant,
            "dataset": c.column.dataset,
            "protocol": c.column.protocol,
            "x": list(c.x),
            "mean": [s.mean for s in c.summaries],
            "ci_half_width": [s.half_width for s in c.summaries],
            "n": [s.n for s in c.summaries],
        }
        for c in curves
    ]


def _cell_rows(report: Report) -> list[dict[str, Any]]:
    """Every ablation cell, then every region cell (protocol ``<set>.region.<region>``; the
    region tables' overall column is the ablation table's and is not repeated)."""
    cells = [(table, cell) for table in report.tables for cell in table.cells.values()] + [
        (rt.table, cell)
        for rt in report.region_tables
        for cell in rt.table.cells.values()
        if cell.column.region is not None
    ]
    rows = []
    for table, cell in cells:
        s = cell.summary
        rows.append(
            {
                "setting": table.setting.label,
                "label_fraction": table.setting.label_fraction,
                "grid": json.dumps(dict(table.setting.grid)),
                "variant": cell.variant,
                "dataset": cell.column.dataset,
                "protocol": cell.column.protocol,
                "n": 0 if s is None else s.n,
                "mean": None if s is None else s.mean,
                "sd": None if s is None else s.sd,
                "ci_low": None if s is None else s.low,
                "ci_high": None if s is None else s.high,
                "best": cell.best,
                "units": " ".join(cell.units),
                "values": "" if s is None else " ".join(repr(v) for v in s.values),
            }
        )
    return rows


_COMPARISON_CSV = [
    "table",
    "dataset",
    "protocol",
    "at",
    "variant",
    "reference",
    "n",
    "mean_diff",
    "ci_low",
    "ci_high",
    "t",
    "p_t",
    "p_sign_flip",
    "p_holm",
    "significant",
    "units",
    "differences",
    "note",
]


def _comparison_dict(table: str, c: Comparison) -> dict[str, Any]:
    t = c.test
    half = t.half_width
    return {
        "table": table,
        "dataset": c.column.dataset,
        "protocol": c.column.protocol,
        "at": c.at,
        "variant": c.variant,
        "reference": c.reference,
        "n": t.n,
        "mean_diff": t.mean_diff,
        "ci_low": None if t.mean_diff is None or half is None else t.mean_diff - half,
        "ci_high": None if t.mean_diff is None or half is None else t.mean_diff + half,
        "t": t.t,
        "p_t": t.p_t,
        "p_sign_flip": t.p_sign_flip,
        "p_holm": c.p_holm,
        "significant": c.significant,
        "units": " ".join(t.units),
        "differences": " ".join(repr(d) for d in t.differences),
        "note": c.note,
    }


def _comparison_rows_raw(report: Report) -> list[dict[str, Any]]:
    rows = []
    for table, comps in zip(report.tables, report.comparisons, strict=True):
        rows += [_comparison_dict(f"ablation: {table.setting.label}", c) for c in comps]
    if report.label_efficiency is not None:
        rows += [
            _comparison_dict("label efficiency", c) for c in report.label_efficiency.comparisons
        ]
    return rows


def _jsonable(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def report_json(report: Report) -> dict[str, Any]:
    """Every number of the report as plain JSON data."""
    info = report.info
    trial_rows, _ = _trial_rows(report)
    le = report.label_efficiency
    return {
        "study": {
            "name": info.name,
            "description": info.description,
            "variants": list(info.variants),
            "seeds": list(info.seeds),
            "label_fractions": list(info.label_fractions),
            "folds": info.folds,
            "protocols": list(info.protocols),
            "real": list(info.real),
            "search": {"algorithm": info.algorithm, "metric": info.metric, "mode": info.mode},
        },
        "tracking_uri": report.tracking_uri,
        "launches": list(report.launches),
        "parent_run_id": report.parent_run_id,
        "generated": report.generated,
        "statistics": {
            "interval": f"{100 * LEVEL:g} % Student t interval of the mean over replication units",
            "test": "two-sided paired t-test (primary); exact sign-flip test alongside",
            "correction": "Holm over the comparisons of each table",
            "alpha": ALPHA,
        },
        "counts": dataclasses.asdict(report.counts),
        "main_setting": None if report.main is None else report.main.label,
        "cells": _cell_rows(report),
        # Which cells form each region table (the cells themselves are under "cells").
        "region_tables": [
            {
                "setting": rt.table.setting.label,
                "dataset": rt.real.dataset,
                "protocol": rt.real.protocol,
                "regions": [
                    {
                        "region": c.region,
                        "protocol": c.protocol,
                        "images": list(rt.images.get(c, ())),
                    }
                    for c in rt.regions
                ],
            }
            for rt in report.region_tables
        ],
        "comparisons": _comparison_rows_raw(report),
        # What labels the robustness curve: each synthetic occluder's mean share of the image.
        "occluded_areas": [
            {"dataset": c.dataset, "protocol": c.protocol, "area": area}
            for c, area in report.occluded_areas.items()
        ],
        "label_efficiency": None
        if le is None
        else {
            "fractions": list(le.fractions),
            "curves": _curves_json(le.curves),
            "significant_fractions": {k: list(v) for k, v in le.significant.items()},
        },
        "lambda": {
            "mode": report.lam.mode,
            "values": list(report.lam.values),
            "curves": _curves_json(report.lam.curves),
            "points": [list(p) for p in report.lam.points],
        },
        "search_best": [
            {
                "variant": b.variant,
                "trial": b.trial,
                "run_id": b.run_id,
                "unit": b.unit,
                "label_fraction": b.label_fraction,
                "params": dict(b.params),
                "objective": _jsonable(b.objective),
                "test_acc": dict(b.acc),
            }
            for b in report.search
        ],
        "excluded": [dataclasses.asdict(e) for e in report.excluded],
        "trials": trial_rows,
        "confusion": [
            {
                "variant": c.variant,
                "dataset": c.column.dataset,
                "protocol": c.column.protocol,
                "classes": list(c.classes),
                "matrix": [list(r) for r in c.matrix],
                "runs": c.runs,
            }
            for c in report.confusions
        ],
        "figures": [f.file for f in report.figures],
        "notes": {k: list(v) for k, v in report.notes.items()},
    }


def write_report(
    report: Report, out: Path, template_dir: Path | Traversable | None = None
) -> dict[str, Path]:
    """Write ``report.html``, ``report.md``, ``figures/*.png``, ``trials.csv``, ``cells.csv``,
    ``comparisons.csv`` and ``report.json`` into ``out``.

    Returns:
        Kind -> path of every file written (``html``, ``markdown``, ``json``, ``trials``,
        ``cells``, ``comparisons``, and ``figure:<name>`` per figure).
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    # A figure the previous report listed and this one no longer draws must not linger; files
    # the report did not write itself are left alone.
    previous = out / "report.json"
    if previous.is_file():
        try:
            old_figures = json.loads(previous.read_text()).get("figures", [])
        except (ValueError, AttributeError):
            old_figures = []
        for name in old_figures:
            if isinstance(name, str) and re.fullmatch(r"figures/[A-Za-z0-9_.-]+\.png", name):
                (out / name).unlink(missing_ok=True)
    for f in report.figures:
        (out / f.file).write_bytes(f.png)
    paths = {
        "html": out / "report.html",
        "markdown": out / "report.md",
        "json": out / "report.json",
        "trials": out / "trials.csv",
        "cells": out / "cells.csv",
        "comparisons": out / "comparisons.csv",
    }
    paths["html"].write_text(render_html(report, template_dir), encoding="utf-8")
    paths["markdown"].write_text(render_markdown(report), encoding="utf-8")
    paths["json"].write_text(
        json.dumps(report_json(report), indent=2, allow_nan=False, default=_json_default),
        encoding="utf-8",
    )
    trial_rows, trial_header = _trial_rows(report)
    paths["trials"].write_text(_csv(trial_rows, trial_header), encoding="utf-8")
    paths["cells"].write_text(_csv(_cell_rows(report), _CELL_HEADER), encoding="utf-8")
    paths["comparisons"].write_text(
        _csv(_comparison_rows_raw(report), _COMPARISON_CSV), encoding="utf-8"
    )
    paths.update({f"figure:{f.name}": out / f.file for f in report.figures})
    return paths


def _json_default(obj: Any) -> Any:
    if isinstance(obj, tuple | frozenset | set):
        return list(obj)
    return str(obj)
