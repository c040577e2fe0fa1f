"""Studies: typed definitions of many runs of the method (:mod:`occstudy.study.spec`) and,
below, the runner that executes them on Ray.

Importing this package needs neither Ray nor MLflow for the definitions.
"""

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

# ---------------------------------------------------------------------------------------------
# runner exports are added below (imports and `__all__ += [...]`); the definitions end above.
# ---------------------------------------------------------------------------------------------
from occstudy.study.runner import RunOptions, StudyOutcome, ablation_table, run_study  # noqa: E402

__all__ += ["RunOptions", "StudyOutcome", "ablation_table", "run_study"]
