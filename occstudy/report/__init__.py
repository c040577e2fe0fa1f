"""Study reports: paper-style tables with honest statistics, figures and a self-contained page,
read from a study's MLflow runs (``occstudy report STUDY``).

:func:`build_report` reads the runs (:mod:`~occstudy.tracking.reader`), computes the tables
(:mod:`~occstudy.report.tables`, statistics in :mod:`~occstudy.report.stats`), draws the
figures (:mod:`~occstudy.report.figures`), writes HTML, Markdown, CSV and JSON
(:mod:`~occstudy.report.render`) into ``<study dir>/report/`` and logs them to the study's
parent run under ``report/``. It works on finished and on partly finished studies: whatever
has finished is reported, the rest is counted and listed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from occstudy import tracking
from occstudy.report.figures import (
    ConfusionSum,
    label_efficiency_figure,
    lambda_figure,
    optuna_figures,
    robustness_figure,
)
from occstudy.report.render import Report, ReportFigure, render_markdown, write_report
from occstudy.report.tables import (
    AblationTable,
    Column,
    Setting,
    StudyInfo,
    ablation_table,
    columns_of,
    count_trials,
    excluded_trials,
    label_efficiency,
    lambda_sensitivity,
    occluded_areas,
    real_columns,
    region_tables,
    search_best,
    select_trials,
    settings_of,
    significance,
    varying_params,
)
from occstudy.study.layout import StudyLayout
from occstudy.tracking.reader import (
    ArtifactReader,
    ReportError,
    StudyRuns,
    TrialRecord,
    collect_runs,
)

__all__ = [
    "Report",
    "ReportError",
    "ReportResult",
    "StudyInfo",
    "ablation_markdown",
    "build_report",
    "compute_report",
]


@dataclass(frozen=True)
class ReportResult:
    """What :func:`build_report` produced.

    Attributes:
        report: The computed report.
        out_dir: Folder of the written files.
        files: Kind -> path of every file written (``html``, ``markdown``, ``json``,
            ``trials``, ``cells``, ``comparisons``, ``figure:<name>``).
        logged_to: Parent run id the files were logged to (None with ``log=False``).
        seconds: Wall time of the whole build.
    """

    report: Report
    out_dir: Path
    files: Mapping[str, Path]
    logged_to: str | None
    seconds: float


def _main_first(settings: Sequence[Setting], main: Setting | None) -> list[Setting]:
    return sorted(settings, key=lambda s: s != main)


def _variants(info: StudyInfo, trials: Sequence[TrialRecord]) -> tuple[str, ...]:
    # Variants of an earlier study definition (seen with --launch all) still get a row.
    extra = [t.variant for t in trials if t.variant not in info.variants]
    return tuple(dict.fromkeys([*info.variants, *extra]))


def _confusions(
    table: AblationTable,
    selected: Mapping[tuple[Setting, str, str], TrialRecord],
    reader: ArtifactReader,
) -> dict[Column, list[ConfusionSum]]:
    """Confusion matrices of the main setting's trials, summed per variant and column."""
    wanted: list[tuple[TrialRecord, Column]] = [
        (t, c)
        for (s, v, _), t in selected.items()
        if s == table.setting
        for c in table.columns
        if c.dataset == t.dataset and c.protocol in t.acc
    ]
    docs = reader.read_many_json(
        (t.artifact_uri, tracking.confusion_artifact(c.protocol)) for t, c in wanted
    )
    out: dict[Column, list[ConfusionSum]] = {}
    for c in table.columns:
        for v in table.variants:
            classes: tuple[str, ...] | None = None
            total: list[list[int]] | None = None
            runs = 0
            for t, col in wanted:
                if col != c or t.variant != v:
                    continue
                doc = docs.get((t.artifact_uri, tracking.confusion_artifact(c.protocol)))
                if not isinstance(doc, dict) or "matrix" not in doc or "classes" not in doc:
                    continue
                names = tuple(str(x) for x in doc["classes"])
                matrix = [[int(x) for x in row] for row in doc["matrix"]]
                if classes is None:
                    classes, total = names, matrix
                elif names != classes or total is None:
                    continue  # another label space cannot be summed into this one
                else:
                    total = [
                        [a + b for a, b in zip(r1, r2, strict=True)]
                        for r1, r2 in zip(total, matrix, strict=True)
                    ]
                runs += 1
            if classes is not None and total is not None:
                out.setdefault(c, []).append(
                    ConfusionSum(v, c, classes, tuple(tuple(r) for r in total), runs)
                )
    return out


def _mask_figures(
    table: AblationTable,
    selected: Mapping[tuple[Setting, str, str], TrialRecord],
    runs: StudyRuns,
    real: Sequence[Column],
    reader: ArtifactReader,
) -> tuple[list[ReportFigure], list[str]]:
    """The mask pictures the trials logged (fine-tune on synthetic objects, pretext, and one
    per real-occlusion test set), for the first unit of each variant with a mask network."""
    figures: list[ReportFigure] = []
    notes: list[str] = []
    first: dict[str, TrialRecord] = {}
    for (s, v, _), t in selected.items():
        if s == table.setting and v not in first:
            first[v] = t
    for v in table.variants:
        found = first.get(v)
        if found is None or v in ("none", "ss"):
            continue  # no mask network U_o in these variants
        t = found
        slug = v.replace("+", "-")
        png = reader.read_bytes(t.artifact_uri, tracking.mask_artifact(tracking.FINETUNE_MASKS))
        if png is not None:
            figures.append(
                ReportFigure(
                    "masks",
                    f"masks-{slug}-finetune",
                    f"{v}: fine-tuned model, synthetic objects",
                    f"{v}, trial {t.name} ({t.unit}): inputs with synthetic object occluders, "
                    "true masks and the fine-tuned U_o's predicted P(occluded).",
                    png,
                )
            )
        else:
            notes.append(
                f"{v}: trial {t.name} logged no {tracking.mask_artifact(tracking.FINETUNE_MASKS)}"
            )
        pre = runs.pretext.get(t.cache_key or "")
        pre_png = (
            None
            if pre is None
            else reader.read_bytes(pre.artifact_uri, tracking.mask_artifact(tracking.PRETEXT_MASKS))
        )
        if pre_png is not None:
            figures.append(
                ReportFigure(
                    "masks",
                    f"masks-{slug}-pretext",
                    f"{v}: after the pretext stage",
                    f"{v}, pretext job {t.cache_key}: predicted masks on synthetic objects before "
                    "fine-tuning.",
                    pre_png,
                )
            )
        for c in real:
            if c.dataset != t.dataset:
                continue
            picture = tracking.real_mask_picture_name(c.protocol)
            real_png = reader.read_bytes(t.artifact_uri, tracking.mask_artifact(picture))
            if real_png is None:
                notes.append(f"{v}: trial {t.name} logged no {tracking.mask_artifact(picture)}")
                continue
            figures.append(
                ReportFigure(
                    "masks",
                    f"masks-{slug}-{picture.removesuffix('.png')}",
                    f"{v}: real occlusions ({c.protocol})",
                    f"{v}, trial {t.name} ({t.unit}): the first test images of {c.protocol} "
                    "(real occlusions, no true mask) and the predicted P(occluded).",
                    real_png,
                )
            )
    return figures, notes


def compute_report(
    info: StudyInfo,
    runs: StudyRuns,
    *,
    reader: ArtifactReader | None = None,
    figures: bool = True,
) -> Report:
    """Tables, tests and figures of a study's runs (nothing is written).

    Everything comes from what the trials logged: metrics (accuracies, the synthetic
    occluders' areas) and artifacts (confusion matrices, mask pictures); no model or data set
    is loaded.

    Args:
        info: The study definition's essentials.
        runs: The runs (see :func:`occstudy.tracking.reader.collect_runs`).
        reader: Artifact reader (confusion matrices, mask pictures).
        figures: Draw the figures (tables only when False).
    """
    trials = runs.trials
    selected = select_trials(trials, info)
    settings, main = settings_of(selected, info)
    columns = columns_of(trials, info)
    variants = _variants(info, trials)
    tables = tuple(
        ablation_table(selected, s, variants, columns) for s in _main_first(settings, main)
    )
    comparisons = tuple(significance(t) for t in tables)
    areas = occluded_areas(selected, tables[0]) if tables else {}
    regions = region_tables(selected, tables, trials, info)
    le = label_efficiency(selected, main, variants, columns) if main is not None else None
    lam = lambda_sensitivity(trials, selected, main, info, columns)
    params = varying_params(trials)
    report = Report(
        info=info,
        tracking_uri=tracking.redact(runs.tracking_uri),
        launches=runs.launches,
        parent_run_id=runs.parents[-1].run_id if runs.parents else None,
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        counts=count_trials(trials, len(selected), info.expected_trials * len(runs.launches)),
        columns=columns,
        tables=tables,
        comparisons=comparisons,
        region_tables=regions,
        main=main,
        label_efficiency=le,
        lam=lam,
        search=search_best(trials, info, None if main is None else main.label_fraction),
        search_params=params,
        excluded=excluded_trials(trials),
        trials=trials,
        selected=frozenset(t.run_id for t in selected.values()),
        occluded_areas=areas,
    )
    if not figures:
        return report
    figs: list[ReportFigure] = []
    confusions: tuple[ConfusionSum, ...] = ()
    notes: dict[str, list[str]] = {}
    png = lambda_figure(lam)
    if png is not None:
        figs.append(
            ReportFigure(
                "lambda",
                "lambda",
                "accuracy against λ",
                "Test accuracy against λ (log axis)"
                + (
                    ", mean ± 95 % CI over units."
                    if lam.mode == "grid"
                    else ", one point per trial."
                ),
                png,
            )
        )
    if le is not None:
        png = label_efficiency_figure(le)
        if png is not None:
            figs.append(
                ReportFigure(
                    "label-efficiency",
                    "label-efficiency",
                    "accuracy against the label fraction",
                    "Test accuracy against the fraction of expression labels (log axis), one "
                    "line per variant, mean ± 95 % CI over units.",
                    png,
                )
            )
    for v in variants:
        search_figs, search_notes = optuna_figures(trials, info, v, params) if params else ({}, [])
        notes.setdefault("search", []).extend(search_notes)
        for kind, data in search_figs.items():
            figs.append(
                ReportFigure(
                    "search",
                    f"search-{v.replace('+', '-')}-{kind}",
                    f"{v}: {kind}",
                    {
                        "history": f"{v}: {info.metric} of each trial in start order, and the best so far.",
                        "parallel": f"{v}: parameter values of each complete trial, coloured by {info.metric}.",
                        "importance": f"{v}: fANOVA importance of each parameter for {info.metric}.",
                    }[kind],
                    data,
                )
            )
    if tables:
        main_table = tables[0]
        real = real_columns(main_table.columns, info, areas)
        unmeasured = [
            c.label
            for c in main_table.columns
            if c.protocol != "clean" and c not in areas and c not in real
        ]
        if unmeasured:
            notes.setdefault("robustness", []).append(
                "No trial logged the occluded area (test.<protocol>.occluded_area) of "
                + ", ".join(unmeasured)
                + ": trials logged before occstudy recorded it lack it; labelled by name only."
            )
        png = robustness_figure(main_table, areas, {c.protocol for c in real})
        if png is not None:
            figs.append(
                ReportFigure(
                    "robustness",
                    "robustness",
                    "robustness curve",
                    "Test accuracy against the occluded area (synthetic protocols, mean share of "
                    "the image) and on real occlusions, per variant, mean ± 95 % CI.",
                    png,
                )
            )
        if reader is not None:
            # Rendered as heat-map tables, not pictures: exact numbers, and drawing dozens of
            # text-filled matrices with matplotlib would take most of a report's time.
            summed = _confusions(main_table, selected, reader)
            confusions = tuple(s for sums in summed.values() for s in sums)
            mask_figs, mask_notes = _mask_figures(main_table, selected, runs, real, reader)
            figs += mask_figs
            notes.setdefault("masks", []).extend(mask_notes)
            notes.setdefault("overview", []).extend(dict.fromkeys(reader.problems))
    return dataclasses.replace(
        report,
        figures=tuple(figs),
        confusions=confusions,
        notes={k: tuple(v) for k, v in notes.items() if v},
    )


def _log_artifacts(tracking_uri: str, run_id: str, files: Mapping[str, Path]) -> None:
    """Log the report's files (only those: --out may name a folder holding other things)
    under ``report/`` (figures under ``report/figures/``)."""
    tracking.log_files(
        tracking_uri,
        run_id,
        {
            path: "report/figures" if kind.startswith("figure:") else "report"
            for kind, path in files.items()
        },
    )


def build_report(
    study: Any,
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    launch: str | None = None,
    out: str | Path | None = None,
    log: bool = True,
) -> ReportResult:
    """Build a study's report from MLflow, write it, and log it to the parent run.

    Args:
        study: The :class:`occstudy.study.Study`.
        storage: Storage root (default ``./occstudy-runs``).
        tracking_uri: MLflow tracking URI (default ``$MLFLOW_TRACKING_URI`` or the study's
            sqlite store).
        launch: A launch name, ``all``, or None for the last launch.
        out: Output folder (default ``<study dir>/report``).
        log: Log the files to the last covered launch's parent run under ``report/``.

    Raises:
        ReportError: When the study has no runs or the launch is unknown.
    """
    start = time.perf_counter()
    info = StudyInfo.from_study(study)
    layout = StudyLayout.of(study.name, storage)
    uri = layout.tracking_uri(tracking_uri)
    db = tracking.sqlite_path(uri) if uri.startswith("sqlite:") else None
    if db is not None and not db.is_file():
        # MLflow would create an empty store there: a report only reads.
        raise ReportError(f"no MLflow store at {db}: run the study first")
    if db is None:
        tracking.check_reachable(uri)  # fail at once, not after MLflow's minutes of retries
    runs = collect_runs(uri, info.name, launch=launch, known_launches=layout.launches())
    reader = ArtifactReader(uri)
    try:
        report = compute_report(info, runs, reader=reader)
    finally:
        reader.close()
    out_dir = Path(out) if out is not None else layout.report_dir
    files = write_report(report, out_dir)
    logged = None
    if log and report.parent_run_id is not None:
        _log_artifacts(uri, report.parent_run_id, files)
        logged = report.parent_run_id
    return ReportResult(report, out_dir, files, logged, time.perf_counter() - start)


def ablation_markdown(study: Any, tracking_uri: str, launch: str | None = None) -> str:
    """The ablation section of a launch's report as Markdown, tables only (what ``occstudy
    run`` prints and logs when a launch ends).

    Args:
        study: The :class:`occstudy.study.Study`.
        tracking_uri: Where its runs are.
        launch: A launch name, ``all``, or None for the last launch.
    """
    info = StudyInfo.from_study(study)
    runs = collect_runs(tracking_uri, info.name, launch=launch)
    report = compute_report(info, runs, figures=False)
    return render_markdown(report, only=("ablation",))
