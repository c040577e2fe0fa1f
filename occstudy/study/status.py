"""What a study has run, what failed, what remains (``occstudy status``), read from MLflow."""

from __future__ import annotations

from dataclasses import dataclass, field

from occstudy import tracking
from occstudy.study.layout import StudyLayout
from occstudy.study.spec import Study
from occstudy.tracking.reader import launch_statuses


@dataclass
class StudyStatus:
    """State of a study's last launch."""

    study: str
    launch: str | None
    tracking_uri: str
    expected_trials: int
    trials: dict[str, str] = field(default_factory=dict)  # trial name -> MLflow status
    pretext: dict[str, str] = field(default_factory=dict)  # cache key -> MLflow status

    def count(self, status: str) -> int:
        return sum(1 for s in self.trials.values() if s == status)

    @property
    def remaining(self) -> int:
        return max(0, self.expected_trials - self.count("FINISHED"))


def study_status(
    study: Study, *, storage: str | None = None, tracking_uri: str | None = None
) -> StudyStatus:
    """Collect the MLflow runs of the study's last launch."""
    layout = StudyLayout.of(study.name, storage)
    uri = layout.tracking_uri(tracking_uri)
    launch = layout.last_launch()
    expected = len(study.grid_points()) * (
        study.search.num_samples if study.sampled_params() else 1
    )
    status = StudyStatus(study.name, launch, uri, expected)
    if launch is None or (uri.startswith("sqlite:") and not layout.mlflow_db.exists()):
        return status
    tracking.check_reachable(uri)
    status.trials, status.pretext = launch_statuses(uri, study.name, launch)
    return status


def format_status(s: StudyStatus) -> str:
    """Human-readable summary."""
    if s.launch is None:
        return f"study {s.study}: not run yet ({s.expected_trials} trials planned)"
    lines = [
        f"study {s.study}, {s.launch} ({tracking.redact(s.tracking_uri)})",
        f"fine-tune trials: {s.count('FINISHED')} finished, {s.count('RUNNING')} running, "
        f"{s.count('FAILED') + s.count('KILLED')} failed, {s.remaining} of {s.expected_trials} remaining",
        f"pretext jobs: {sum(v == 'FINISHED' for v in s.pretext.values())} finished of {len(s.pretext)}",
    ]
    for name, st in sorted(s.trials.items()):
        if st != "FINISHED":
            lines.append(f"  {st:<8} {name}")
    return "\n".join(lines)
