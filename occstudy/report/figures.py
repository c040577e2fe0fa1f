"""Figures of a study report, as PNG bytes (matplotlib, Agg; no plotly).

Own figures use :class:`matplotlib.figure.Figure` directly (no pyplot state, safe in threads).
The search figures are Optuna's own ``optuna.visualization.matplotlib`` plots, drawn on an
in-memory Optuna study rebuilt from the MLflow trials with ``optuna.trial.create_trial``;
those go through pyplot, so the Agg backend is selected first unless pyplot is already in use.
"""

from __future__ import annotations

import io
import math
import sys
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from occstudy.report.tables import (
    AblationTable,
    Column,
    Curve,
    LabelEfficiency,
    LambdaSensitivity,
    StudyInfo,
    objective,
)
from occstudy.tracking.reader import TrialRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "ConfusionSum",
    "label_efficiency_figure",
    "lambda_figure",
    "optuna_figures",
    "png_bytes",
    "robustness_figure",
]

DPI = 100
#: One colour per variant, the same in every figure.
VARIANT_COLOURS: dict[str, str] = {
    "none": "#7f7f7f",
    "ss": "#1f77b4",
    "mask": "#ff7f0e",
    "ss+mask": "#d62728",
}
_MARKERS = {"none": "o", "ss": "s", "mask": "^", "ss+mask": "D"}


def _colour(variant: str) -> str:
    return VARIANT_COLOURS.get(variant, "#2ca02c")


def png_bytes(fig: Figure, tight: bool = False) -> bytes:
    """Encode a figure as PNG (and free it when pyplot knows it).

    Args:
        fig: The figure.
        tight: Crop to the drawn content (costs a second draw; own figures use the
            constrained layout instead, which already fits everything).
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight" if tight else None)
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return buf.getvalue()


def _axes_png(ax: Axes) -> bytes:
    """PNG of the whole figure an Optuna plot drew its axes in."""
    fig = ax.get_figure(root=True)
    assert fig is not None
    return png_bytes(fig, tight=True)


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _errorbar(ax: Axes, curve: Curve, colour: Any, label: str, marker: str = "o") -> None:
    """Means with t-interval bars; a point with n = 1 gets no bar (no interval exists)."""
    means = [100 * s.mean for s in curve.summaries]
    err = [100 * s.half_width if s.half_width is not None else math.nan for s in curve.summaries]
    ax.errorbar(
        curve.x, means, yerr=err, color=colour, marker=marker, ms=4, capsize=3, lw=1.2, label=label
    )


def _grid_of_axes(fig: Figure, n: int, cols: int = 3) -> list[Axes]:
    rows = math.ceil(n / cols)
    axes = fig.subplots(rows, min(cols, n), squeeze=False, sharey=False)
    flat = [a for row in axes for a in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return flat[:n]


# ---------------------------------------------------------------------------------------------
# Robustness, label efficiency, λ


def robustness_figure(
    table: AblationTable, areas: Mapping[Column, float], real: Collection[str] = ()
) -> bytes | None:
    """Accuracy per variant from clean to growing synthetic and real occlusion.

    Args:
        table: The (main) ablation table.
        areas: Mean occluded share of the image per synthetic column, as the trials logged it
            (see :func:`occstudy.report.tables.occluded_areas`); a column without one is
            labelled by its name only.
        real: Protocols that are real-occlusion test sets (labelled "real").
    """
    datasets = sorted({c.dataset for c in table.columns})
    if not datasets or len(table.columns) < 2:
        return None  # a curve needs at least two test protocols
    fig = _new_figure(7.5, 3.6 * len(datasets))
    axes = fig.subplots(len(datasets), 1, squeeze=False)
    for ax, dataset in zip((a[0] for a in axes), datasets, strict=True):
        cols = [c for c in table.columns if c.dataset == dataset]
        labels = []
        for c in cols:
            area = areas.get(c)
            if c.protocol == "clean":
                labels.append("clean\n0 %")
            elif area is not None:
                labels.append(f"{c.protocol}\n{100 * area:.0f} %")
            elif c.protocol in real:
                labels.append(f"{c.protocol}\n(real)")
            else:
                labels.append(c.protocol)
        for i, v in enumerate(table.variants):
            xs, means, errs = [], [], []
            for j, c in enumerate(cols):
                s = table.cell(v, c).summary
                if s is None:
                    continue
                xs.append(j + (i - 1.5) * 0.06)  # small dodge so bars do not overlap
                means.append(100 * s.mean)
                errs.append(100 * s.half_width if s.half_width is not None else math.nan)
            if xs:
                ax.errorbar(
                    xs,
                    means,
                    yerr=errs,
                    color=_colour(v),
                    marker=_MARKERS.get(v, "o"),
                    ms=4,
                    capsize=3,
                    lw=1.2,
                    label=v,
                )
        ax.set_xticks(range(len(cols)), labels, fontsize=8)
        ax.set_ylabel("test accuracy (%)")
        ax.set_xlabel("test protocol, mean occluded area of the image")
        ax.set_title(f"{dataset}: robustness ({table.setting.label})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return png_bytes(fig)


def label_efficiency_figure(le: LabelEfficiency) -> bytes | None:
    """Accuracy against the fraction of labels (log axis), one line per variant, per column."""
    columns = list(dict.fromkeys(c.column for c in le.curves))
    if not columns:
        return None
    cols = min(3, len(columns))
    fig = _new_figure(4.2 * cols, 3.2 * math.ceil(len(columns) / cols))
    for ax, column in zip(_grid_of_axes(fig, len(columns), cols), columns, strict=True):
        for curve in le.curves:
            if curve.column == column:
                _errorbar(
                    ax,
                    curve,
                    _colour(curve.variant),
                    curve.variant,
                    _MARKERS.get(curve.variant, "o"),
                )
        ax.set_xscale("log")
        ax.set_xticks(le.fractions, [f"{100 * f:g} %" for f in le.fractions], fontsize=7)
        ax.minorticks_off()
        ax.set_title(column.label, fontsize=9)
        ax.set_xlabel("labels used")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return png_bytes(fig)


def lambda_figure(ls: LambdaSensitivity) -> bytes | None:
    """Accuracy against λ (log axis): per gridded value with intervals, or per sampled trial."""
    if ls.mode == "grid" and ls.curves:
        variants = list(dict.fromkeys(c.variant for c in ls.curves))
        fig = _new_figure(6.5, 3.6 * len(variants))
        axes = fig.subplots(len(variants), 1, squeeze=False)
        import matplotlib

        palette = matplotlib.colormaps["tab10"]
        for ax, v in zip((a[0] for a in axes), variants, strict=True):
            for i, curve in enumerate(c for c in ls.curves if c.variant == v):
                _errorbar(ax, curve, palette(i % 10), curve.column.protocol)
            ax.set_xscale("log")
            ax.set_xticks(ls.values, [f"{x:g}" for x in ls.values])
            ax.minorticks_off()
            ax.set_xlabel("λ (weight of L_mask)")
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(f"{v}: accuracy against λ (mean ± 95 % CI)", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
        return png_bytes(fig)
    if ls.mode == "sampled" and ls.points:
        import matplotlib

        palette = matplotlib.colormaps["tab10"]
        columns = list(dict.fromkeys(p[2] for p in ls.points))
        fig = _new_figure(6.5, 3.8)
        ax = fig.add_subplot()
        for i, col in enumerate(columns):
            pts = [(lam, acc) for _, lam, c, acc in ls.points if c == col]
            ax.scatter(
                [p[0] for p in pts],
                [100 * p[1] for p in pts],
                s=14,
                color=palette(i % 10),
                label=col,
                alpha=0.8,
            )
        ax.set_xscale("log")
        ax.set_xlabel("λ (weight of L_mask), sampled")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("accuracy against λ, one point per trial (no intervals)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        return png_bytes(fig)
    return None


# ---------------------------------------------------------------------------------------------
# Confusion matrices


@dataclass(frozen=True)
class ConfusionSum:
    """Confusion matrices of one variant on one column, summed over replication units.

    Attributes:
        variant: The variant.
        column: The column.
        classes: Class names, index = label id.
        matrix: ``matrix[t][p]`` = test images of true class t predicted as p, summed.
        runs: Number of runs summed.
    """

    variant: str
    column: Column
    classes: tuple[str, ...]
    matrix: tuple[tuple[int, ...], ...]
    runs: int


# ---------------------------------------------------------------------------------------------
# Search (Optuna's plots on a study rebuilt from the trials)


def _use_agg() -> None:
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")


def _distributions(
    trials: Sequence[TrialRecord], info: StudyInfo, params: Sequence[str]
) -> dict[str, Any]:
    """Optuna distributions of the varying parameters: the study's bounds, widened to every
    value seen (a launch may have used an earlier definition)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    out: dict[str, Any] = {}
    for name in params:
        seen = sorted({t.params[name] for t in trials if name in t.params})
        if name in info.grid or name not in info.sampled:
            out[name] = CategoricalDistribution(seen)
            continue
        low, high, log = info.sampled[name]
        out[name] = FloatDistribution(min(low, seen[0]), max(high, seen[-1]), log=log)
    return out


def optuna_study(
    trials: Sequence[TrialRecord], info: StudyInfo, variant: str, params: Sequence[str]
) -> Any:
    """An in-memory Optuna study holding a variant's trials, oldest first.

    Finished trials with test results are COMPLETE with the validation metric as value;
    trials stopped before testing (KILLED by an ASHA stop, or FINISHED without test results)
    that reported a validation value are PRUNED; failed ones FAIL; running ones are left out.
    """
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    mine = sorted(
        (t for t in trials if t.variant == variant and all(p in t.params for p in params)),
        key=lambda t: t.start_time,
    )
    dists = _distributions(mine, info, params)
    study = optuna.create_study(
        direction="maximize" if info.mode == "max" else "minimize",
        study_name=f"{info.name}:{variant}",
    )
    for t in mine:
        value = objective(t, info)
        trial_params = {p: t.params[p] for p in params}
        if t.status == "FINISHED" and value is not None and t.acc:
            state, values, inter = TrialState.COMPLETE, value, {}
        elif t.status in ("FINISHED", "KILLED") and value is not None:
            # Stopped before testing (ASHA): its last validation value, as Optuna's pruner
            # would have recorded it.
            state, values, inter = TrialState.PRUNED, None, {0: value}
        elif t.status in ("FAILED", "KILLED"):
            state, values, inter = TrialState.FAIL, None, {}
        else:
            continue
        study.add_trial(
            create_trial(
                state=state,
                value=values,
                params=trial_params,
                distributions=dists,
                intermediate_values=inter,
                user_attrs={"trial": t.name, "run_id": t.run_id},
            )
        )
    return study


def optuna_figures(
    trials: Sequence[TrialRecord], info: StudyInfo, variant: str, params: Sequence[str]
) -> tuple[dict[str, bytes], list[str]]:
    """Optimisation history, parallel coordinates and parameter importances of one variant.

    Returns:
        ``(name -> PNG, notes)``: figures that could be drawn, and why others could not.
    """
    _use_agg()
    import optuna
    from optuna.trial import TrialState

    study = optuna_study(trials, info, variant, params)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    notes: list[str] = []
    out: dict[str, bytes] = {}
    if not complete:
        return out, [f"{variant}: no complete trial yet"]
    with warnings.catch_warnings():
        # The matplotlib backend of optuna.visualization is marked experimental.
        warnings.simplefilter("ignore")
        import optuna.visualization.matplotlib as ovm

        ax = ovm.plot_optimization_history(study, target_name=info.metric)
        ax.set_title(f"{variant}: optimisation history ({info.metric})")
        out["history"] = _axes_png(ax)
        if params:
            ax = ovm.plot_parallel_coordinate(study, params=list(params), target_name=info.metric)
            ax.set_title(f"{variant}: parallel coordinates")
            out["parallel"] = _axes_png(ax)
            if len(complete) >= 2:
                try:
                    # fANOVA (Optuna's default evaluator), seeded so the report is reproducible.
                    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
                    ax = ovm.plot_param_importances(
                        study, evaluator=evaluator, params=list(params), target_name=info.metric
                    )
                    ax.set_title(f"{variant}: parameter importances (fANOVA)")
                    out["importance"] = _axes_png(ax)
                except (RuntimeError, ValueError) as exc:
                    notes.append(f"{variant}: no parameter importances ({exc})")
            else:
                notes.append(f"{variant}: parameter importances need two complete trials")
    return out, notes
