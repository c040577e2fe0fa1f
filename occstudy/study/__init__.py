"""Studies: typed definitions of many runs of the method (:mod:`occstudy.study.spec`) and,
below, the runner that executes them on Ray.

Importing this package needs neither torch, Ray nor MLflow: the definitions import only
:mod:`occstudy.method`; the runner's names load on first use.
"""

from typing import Any

from occstudy.study.spec import (
    ALGORITHMS,
    PARAMS,
    PRETEXT_PARAMS,
    SCHEDULERS,
    FinetuneSpec,
    Fixed,
    Grid,
    LogUniform,
    Param,
    PretextSpec,
    Resources,
    SearchSpace,
    SearchSpec,
    Study,
    StudyError,
    TestSpec,
    Uniform,
    data_root,
    load_study,
)

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

#: Names of the launching side, which imports torch and Ray: loaded on first use (PEP 562), so
#: that study files, ``status`` and ``report`` can import the definitions above cheaply.
_RUNNER_NAMES = ("RunOptions", "StudyOutcome", "ablation_table", "run_study")
__all__ += list(_RUNNER_NAMES)


def __getattr__(name: str) -> Any:
    if name in _RUNNER_NAMES:
        from occstudy.study import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
