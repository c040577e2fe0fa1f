"""Study reports: paper-style tables with honest statistics, figures and a self-contained page,
read from a study's MLflow runs (``occstudy report STUDY``).

:func:`build_report` reads the runs (:mod:`~occstudy.report.collect`), computes the tables
(:mod:`~occstudy.report.tables`, statistics in :mod:`~occstudy.report.stats`), draws the
figures (:mod:`~occstudy.report.figures`), writes HTML, Markdown, CSV and JSON
(:mod:`~occstudy.report.render`) into ``<study dir>/report/`` and logs them to the study's
parent run under ``report/``. It works on finished and on partly finished studies: whatever
has finished is reported, the rest is counted and listed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from occstudy import tracking
from occstudy.report.collect import (
    ArtifactReader,
    ReportError,
    StudyRuns,
    TrialRecord,
    collect_runs,
)
from occstudy.report.figures import (
    ConfusionSum,
    label_efficiency_figure,
    lambda_figure,
    occluded_areas,
    optuna_figures,
    real_mask_picture,
    robustness_figure,
)
from occstudy.report.render import Report, ReportFigure, write_report
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
    region_tables,
    search_best,
    select_trials,
    settings_of,
    significance,
    varying_params,
)

__all__ = [
    "Report",
    "ReportError",
    "ReportResult",
    "StudyInfo",
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


def _known_launches(study_dir: Path) -> list[str]:
    path = study_dir / "launches.json"
    if not path.is_file():
        return []
    try:
        launches = json.loads(path.read_text())
    except ValueError:
        return []
    return [str(x) for x in launches] if isinstance(launches, list) else []


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
        (t.artifact_uri, f"confusion/{c.protocol}.json") for t, c in wanted
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
                doc = docs.get((t.artifact_uri, f"confusion/{c.protocol}.json"))
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
    info: StudyInfo,
    reader: ArtifactReader,
    real_masks: bool,
) -> tuple[list[ReportFigure], list[str]]:
    """Logged mask pictures (fine-tune and pretext) and, from the checkpoint, masks predicted
    on the real-occlusion test sets, for the first unit of each variant with a mask network."""
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
        png = reader.read_bytes(t.artifact_uri, "masks/finetune-objects.png")
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
            notes.append(f"{v}: trial {t.name} logged no masks/finetune-objects.png")
        pre = runs.pretext.get(t.cache_key or "")
        pre_png = (
            None
            if pre is None
            else reader.read_bytes(pre.artifact_uri, "masks/pretext-objects.png")
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
        if not real_masks or not info.real_specs:
            continue
        ckpt = reader.path(t.artifact_uri, "checkpoints/best.pt")
        if ckpt is None:
            notes.append(
                f"{v}: no checkpoints/best.pt in trial {t.name}: no masks on real occlusions"
            )
            continue
        for spec in info.real_specs:
            name = spec.split(":", 1)[0]
            try:
                real_png = real_mask_picture(str(ckpt), spec)
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                notes.append(f"{v}: no masks on {name}: {type(exc).__name__}: {exc}")
                continue
            figures.append(
                ReportFigure(
                    "masks",
                    f"masks-{slug}-{name}",
                    f"{v}: real occlusions ({name})",
                    f"{v}, trial {t.name} ({t.unit}): the first test images of {name} (real "
                    "occlusions, no true mask) and the predicted P(occluded).",
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
    real_masks: bool = True,
) -> Report:
    """Tables, tests and figures of a study's runs (nothing is written).

    Args:
        info: The study definition's essentials.
        runs: The runs (see :func:`occstudy.report.collect.collect_runs`).
        reader: Artifact reader (confusion matrices, mask pictures, checkpoints).
        figures: Draw the figures (tables only when False).
        real_masks: Predict masks on the real-occlusion test sets from the checkpoints.
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
        areas = occluded_areas([c.protocol for c in main_table.columns], info.image_size)
        png = robustness_figure(main_table, areas)
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
            mask_figs, mask_notes = _mask_figures(
                main_table, selected, runs, info, reader, real_masks
            )
            figs += mask_figs
            notes.setdefault("masks", []).extend(mask_notes)
    return dataclasses.replace(
        report,
        figures=tuple(figs),
        confusions=confusions,
        notes={k: tuple(v) for k, v in notes.items() if v},
    )


def _sqlite_file(uri: str) -> Path | None:
    """Database file of a ``sqlite:///PATH`` URI, None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    # sqlite:///rel.db is relative to the working folder, sqlite:////abs.db absolute.
    return None if path in ("", ":memory:") else Path(path)


def _log_artifacts(tracking_uri: str, run_id: str, files: Mapping[str, Path]) -> None:
    """Log the report's files (only those: --out may name a folder holding other things)
    under ``report/`` (figures under ``report/figures/``)."""
    from mlflow.tracking import MlflowClient

    tracking.disable_telemetry()
    client = MlflowClient(tracking_uri=tracking_uri)
    for kind, path in files.items():
        client.log_artifact(
            run_id, str(path), "report/figures" if kind.startswith("figure:") else "report"
        )


def build_report(
    study: Any,
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    launch: str | None = None,
    out: str | Path | None = None,
    log: bool = True,
    real_masks: bool = True,
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
        real_masks: Predict masks on the real-occlusion test sets from checkpoints.

    Raises:
        ReportError: When the study has no runs or the launch is unknown.
    """
    from occstudy.study.runner import resolve_tracking_uri, study_paths

    start = time.perf_counter()
    info = StudyInfo.from_study(study)
    study_dir, _ = study_paths(study, storage)
    uri = resolve_tracking_uri(study_dir, tracking_uri)
    db = _sqlite_file(uri)
    if db is not None and not db.is_file():
        # MLflow would create an empty store there: a report only reads.
        raise ReportError(f"no MLflow store at {db}: run the study first")
    runs = collect_runs(uri, info.name, launch=launch, known_launches=_known_launches(study_dir))
    reader = ArtifactReader(uri)
    try:
        report = compute_report(info, runs, reader=reader, real_masks=real_masks)
    finally:
        reader.close()
    out_dir = Path(out) if out is not None else study_dir / "report"
    files = write_report(report, out_dir)
    logged = None
    if log and report.parent_run_id is not None:
        _log_artifacts(uri, report.parent_run_id, files)
        logged = report.parent_run_id
    return ReportResult(report, out_dir, files, logged, time.perf_counter() - start)
