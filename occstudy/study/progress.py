"""Live progress of a study's Tune runs: one line per trial event on stderr."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from ray.tune import Callback

__all__ = ["Progress"]


class Progress(Callback):  # type: ignore[misc]
    """A Tune callback: live progress lines of one stage on stderr, and the best value of its
    metric so far.

    Args:
        stage: ``pretext`` or ``finetune`` (the line's prefix).
        total: Trials the stage runs.
        metric: The result to track the best of (None: none).
        mode: ``max`` or ``min``.
        enabled: Print the lines (False: count only).
        finalize: Called with (trial, MLflow status) when a trial completes or fails.
        estimates: Estimated seconds per trial name (:meth:`occstudy.study.plan.StudyPlan.
            estimates`); with them each line ends with an ETA of the stage.
        concurrent: Trials that run at once (for the ETA).
    """

    def __init__(
        self,
        stage: str,
        total: int,
        metric: str | None,
        mode: str,
        enabled: bool,
        finalize: Callable[[Any, str], None] | None = None,
        estimates: Mapping[str, float] | None = None,
        concurrent: int = 1,
    ) -> None:
        self.stage, self.total, self.metric, self.mode = stage, total, metric, mode
        self.enabled = enabled
        self.finalize = finalize
        self.done = self.failed = self.running = 0
        self.best: tuple[float, str] | None = None
        self.start = time.perf_counter()
        self._seeded = False
        self.estimates = dict(estimates or {})
        self.concurrent = max(1, concurrent)
        self.ended: set[str] = set()  # trials that ended before (restored) or during this run
        self.ended_now: set[str] = set()  # trials that ended during this run

    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        # A restored Tuner brings back the callback as pickled when the launch began:
        # restart the clock, and count the trials that already finished at the first
        # step (Tune passes the restored trials only there).
        self.start = time.perf_counter()
        self.done = self.failed = self.running = 0
        self._seeded = False
        self.ended, self.ended_now = set(), set()

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if not self._seeded:
            self._seeded = True
            self.done = sum(t.status == "TERMINATED" for t in trials)
            self.ended = {str(t) for t in trials if t.status == "TERMINATED"}

    def eta(self) -> float | None:
        """Seconds until the stage ends: the estimates of the trials not ended yet, run
        ``concurrent`` at a time, scaled by how this run's ended trials compared with theirs
        (None without estimates)."""
        if not self.estimates:
            return None
        left = sum(v for k, v in self.estimates.items() if k not in self.ended)
        scale = 1.0
        spent = sum(self.estimates.get(k, 0.0) for k in self.ended_now)
        if spent > 0:
            elapsed = time.perf_counter() - self.start
            scale = elapsed / (spent / self.concurrent)
        return left / self.concurrent * scale

    def _ended(self, trial: Any) -> None:
        self.ended.add(str(trial))
        self.ended_now.add(str(trial))

    def _line(self, what: str) -> None:
        if not self.enabled:
            return
        best = ""
        if self.best is not None:
            best = f" | best {self.metric} {self.best[0]:.4f} ({self.best[1]})"
        eta = self.eta()
        if eta is not None and self.done + self.failed < self.total:
            best += f" | eta {eta / 60:.1f} min"
        elapsed = time.perf_counter() - self.start
        print(
            f"[{self.stage} {elapsed:6.0f}s] {what}: done {self.done}/{self.total}, "
            f"running {self.running}, failed {self.failed}{best}",
            file=sys.stderr,
            flush=True,
        )

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.running += 1
        self._line(f"started {trial}")

    def on_trial_result(
        self,
        iteration: int,
        trials: list[Any],
        trial: Any,
        result: dict[str, Any],
        **info: Any,
    ) -> None:
        if self.metric and self.metric in result:
            v = float(result[self.metric])
            better = self.best is None or (
                v > self.best[0] if self.mode == "max" else v < self.best[0]
            )
            if better and math.isfinite(v):
                self.best = (v, str(trial))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.running = max(0, self.running - 1)
        self.done += 1
        self._ended(trial)
        if self.finalize is not None:
            self.finalize(trial, "FINISHED")
        self._line(f"finished {trial}")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.running = max(0, self.running - 1)
        self.failed += 1
        self._ended(trial)
        if self.finalize is not None:
            self.finalize(trial, "FAILED")
        self._line(f"FAILED {trial}")
