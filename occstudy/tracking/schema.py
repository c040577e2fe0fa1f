"""The MLflow schema of occstudy: every name a run is written and read back under.

Tags (how runs are found again), params of a run of the method (the same names in every study),
metric names (``test.<protocol>.<stat>``, ``val_acc``, ...) and artifact paths. The writer
(:mod:`occstudy.tracking.writer`), the reader (:mod:`occstudy.tracking.reader`), the evaluation
and the report all spell a name through this module, so renaming one renames it everywhere.

Imports neither MLflow nor torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from occstudy.method import PARAMETERS, mlflow_param_name

if TYPE_CHECKING:
    from occstudy.method import MethodConfig

#: Terminal statuses accepted by :meth:`StudyTracker.finish`.
RUN_STATUSES: tuple[str, ...] = ("FINISHED", "FAILED", "KILLED")

# Tag names. The occstudy.* tags are how runs are found again; keep them stable across versions.
TAG_ROLE = "occstudy.role"
TAG_KIND = "occstudy.kind"
TAG_KEY = "occstudy.key"
TAG_LAUNCH = "occstudy.launch"
TAG_STUDY = "occstudy.study"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
#: The description MLflow's UI shows (and renders as Markdown) for an experiment or a run.
TAG_NOTE = "mlflow.note.content"
#: Experiment tag the MLflow UI reads to choose its view; ``custom_model_development`` opens
#: the runs table of classic training instead of the GenAI traces overview.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

CHILD_KINDS: tuple[str, ...] = ("pretext", "finetune")


def experiment_name(study_name: str) -> str:
    """MLflow experiment name of a study."""
    return f"occstudy/{study_name}"


# --------------------------------------------------------------------------------------------
# Artifact names (written by the trials and the driver, read back by the report)

#: Mask picture of a pretext job (synthetic object occluders), under ``masks/``.
PRETEXT_MASKS = "pretext-objects.png"
#: Mask picture of a fine-tune trial (synthetic object occluders), under ``masks/``.
FINETUNE_MASKS = "finetune-objects.png"
#: A launch's finished trials and its ablation table (artifacts of the launch's parent run).
TRIALS_ARTIFACT = "trials.json"
ABLATION_ARTIFACT = "ablation.json"


def mask_artifact(name: str) -> str:
    """Artifact path of a mask picture called ``name`` (``masks/<name>``)."""
    return f"masks/{name}"


def confusion_artifact(protocol: str, ext: str = "json") -> str:
    """Artifact path of a trial's confusion matrix on ``protocol`` (``json`` or ``png``)."""
    return f"confusion/{protocol}.{ext}"


# --------------------------------------------------------------------------------------------
# The params and tags of a run of the method (the names every study's runs share)

#: MLflow param name of each method parameter that has one of its own (λ is ``lam`` in
#: configs and studies, ``lambda`` in MLflow), from :data:`occstudy.method.PARAMETERS`.
PARAM_NAMES: dict[str, str] = {name: mlflow_param_name(name) for name in PARAMETERS}
#: Categorical method parameters, logged (and read back) as text.
CATEGORICAL_PARAMS: tuple[str, ...] = tuple(n for n, p in PARAMETERS.items() if p.categorical)
#: MethodConfig fields logged under their own name, after the parameters.
_CONFIG_PARAMS: tuple[str, ...] = (
    "label_fraction",
    "epochs",
    "pretext_epochs",
    "batch_size",
    "image_size",
    "recipe",
    "stem",
    "optimizer",
    "weight_decay",
    "schedule",
    "warmup_epochs",
    "label_smoothing",
    "augment",
    "tta_flip",
    "pretext_policy",
    "finetune_policy",
    "balanced",
)


def _fold(config: MethodConfig) -> int | None:
    fold = dict(config.data.options).get("fold")
    return None if fold is None else int(fold)


def method_params(config: MethodConfig) -> dict[str, Any]:
    """MLflow params of a run: the same names in every run of every study (``fold`` only in
    k-fold studies, ``gather_negatives`` only where it is on)."""
    fold = _fold(config)
    return {
        **({"fold": fold} if fold is not None else {}),
        "variant": config.variant,
        "seed": config.seed,
        **{PARAM_NAMES[name]: getattr(config, name) for name in PARAMETERS},
        "dataset": str(config.data),
        "pretext_data": ",".join(config.pretext_data),
        **{name: getattr(config, name) for name in _CONFIG_PARAMS},
        **({"gather_negatives": True} if config.gather_negatives else {}),
    }


def method_tags(config: MethodConfig, trial: str) -> dict[str, str]:
    """Tags of a run that the MLflow UI filters on (``tags.variant = 'ss'``)."""
    fold = _fold(config)
    return {
        **({"fold": str(fold)} if fold is not None else {}),
        "dataset": config.data.name,
        "variant": config.variant,
        "seed": str(config.seed),
        "label_fraction": str(config.label_fraction),
        "trial": trial,
    }


def real_mask_picture_name(test_set: str) -> str:
    """File name (under ``masks/``) of a trial's predicted masks on a real-occlusion test set:
    ``real-<set>.png``, the set's name (its ``test.<set>.*`` protocol) made file-safe.

    The fine-tune trial logs it (:func:`occstudy.study.worker.log_real_mask_examples`) and the
    report reads it back under this name.
    """
    return f"real-{re.sub(r'[^A-Za-z0-9_.-]', '_', test_set)}.png"


# --------------------------------------------------------------------------------------------
# Metric names

#: Clean validation accuracy, logged per epoch (step = epoch) by every fine-tune trial.
VAL_ACC = "val_acc"
#: Validation macro-F1 per epoch.
VAL_MACRO_F1 = "val_macro_f1"
#: Best :data:`VAL_ACC` of a trial (the epoch whose weights are tested).
BEST_VAL_ACC = "best_val_acc"
#: Mean share of the image an occluder covers on a protocol's test images (``test.<p>.<this>``).
OCCLUDED_AREA = "occluded_area"
#: Separator of a per-region protocol: ``occlusion-ferplus.region.mouth``.
REGION_SEP = ".region."


def test_metric(protocol: str, stat: str) -> str:
    """``test.<protocol>.<stat>``: a test statistic of one protocol (``test.r16.acc``)."""
    return f"test.{protocol}.{stat}"


def region_protocol(test_set: str, region: str) -> str:
    """Protocol name of one occluded region of a real-occlusion set
    (``occlusion-ferplus.region.mouth``), so that ``test_metric(region_protocol(...), "acc")``
    names its accuracy."""
    return f"{test_set}{REGION_SEP}{region}"


def per_protocol(metrics: Mapping[str, float], stat: str) -> dict[str, float]:
    """The finite ``test.<protocol>.<stat>`` values of ``metrics``, keyed by protocol.

    Protocol names may hold dots (``occlusion-ferplus.region.mouth``): the protocol is what lies
    between ``test.`` and ``.<stat>``.
    """
    out: dict[str, float] = {}
    prefix, suffix = "test.", f".{stat}"
    for key, value in metrics.items():
        if key.startswith(prefix) and key.endswith(suffix):
            protocol = key[len(prefix) : -len(suffix)]
            if protocol and math.isfinite(value):
                out[protocol] = float(value)
    return out


# Tags a run of the method carries besides :func:`method_tags` (read back by the reader).
#: Cache key of the pretext result a run made or started from.
TAG_CACHE_KEY = "cache_key"
