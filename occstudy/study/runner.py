"""Running a study on Ray: the driver.

Three layers, as in Ray's Train/Tune interop pattern:

1. the per-worker loops (:mod:`occstudy.study.worker`), which know the method, not Ray;
2. the trainables (:mod:`occstudy.study.trainables`), one Tune trial each, which run those
   loops in the trial process (one CPU worker) or launch a ``TorchTrainer`` (several workers
   or GPUs: DDP over gloo/NCCL);
3. this driver (:func:`run_study`), which builds the ``Tuner`` runs.

Stage 1 computes each distinct pretext configuration once into the pretext cache; stage 2 runs
the fine-tune trials (grid over variants × seeds × label fractions × gridded parameters, and
Optuna over sampled ones), each of which reuses the cached pretext result. Ray's environment
lives in :mod:`occstudy.study.environment`, the progress lines in
:mod:`occstudy.study.progress`, where the files go in :mod:`occstudy.study.layout`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from occstudy import tracking
from occstudy.report import ablation_markdown
from occstudy.study.cache import PretextCache
from occstudy.study.environment import (
    check_ray_address,
    configure_environment,
    ray_session,
    resolve_resources,
    trial_resources,
)
from occstudy.study.layout import StudyLayout
from occstudy.study.plan import StudyPlan, plan_pretext, plan_study
from occstudy.study.progress import Progress
from occstudy.study.space import LogUniform
from occstudy.study.spec import Study, StudyError
from occstudy.study.trainables import (
    StudyContext,
    finetune_trainable,
    finish_failed,
    flat_point,
    pretext_trainable,
)
from occstudy.study.worker import PretextTask
from occstudy.tracking.views import launch_views
from occstudy.train import StorageFullError

__all__ = [
    "RunOptions",
    "StudyOutcome",
    "TrialRow",
    "ablation_table",
    "plan_pretext",
    "run_study",
]


@dataclass(frozen=True)
class RunOptions:
    """How to run a study (everything that is not the study's definition).

    Attributes:
        storage: Storage root (a path shared by all nodes on a cluster); the study lives in
            ``<storage>/<study name>``. Default ``./occstudy-runs``.
        address: Ray cluster address; None starts Ray locally on 127.0.0.1.
        tracking_uri: MLflow tracking URI; default ``$MLFLOW_TRACKING_URI`` or
            ``sqlite:///<study dir>/mlflow.db``.
        resume: Continue the last launch: finished trials and pretext jobs are not rerun.
        no_cache: Recompute every pretext result this study needs.
        smoke: Run the study's shrunk ``smoke()`` version.
        num_cpus: CPUs of a locally started Ray (default: all).
        device: Device of in-process trials.
        progress: Print progress lines.
    """

    storage: str | None = None
    address: str | None = None
    tracking_uri: str | None = None
    resume: bool = False
    no_cache: bool = False
    smoke: bool = False
    num_cpus: int | None = None
    device: str = "auto"
    progress: bool = True


@dataclass
class TrialRow:
    """One finished (or failed) fine-tune trial."""

    name: str
    point: dict[str, Any]
    metrics: dict[str, float]
    error: str | None = None


@dataclass
class StudyOutcome:
    """What a study run produced."""

    study: Study
    study_dir: Path
    tracking_uri: str
    parent_run_id: str
    experiment_id: str
    launch: str = ""
    rows: list[TrialRow] = field(default_factory=list)
    pretext_computed: int = 0
    pretext_cached: int = 0
    seconds: float = 0.0
    table: str = ""

    @property
    def failed(self) -> list[TrialRow]:
        return [r for r in self.rows if r.error is not None]


def _raise_if_interrupted(results: Any, stage: str) -> None:
    """Tune ends ``fit()`` quietly on Ctrl-C (SIGINT), leaving trials unfinished: turn that
    into a ``KeyboardInterrupt`` so the launch is marked KILLED instead of reported done."""
    unfinished = len(results) - results.num_terminated - results.num_errors
    if unfinished > 0:
        raise KeyboardInterrupt(f"{unfinished} {stage} trial(s) left unfinished")


def _storage_full(errors: Sequence[Any]) -> StorageFullError | None:
    """The first :class:`~occstudy.train.StorageFullError` among trial errors (Ray hands them
    over wrapped: as the cause of a ``RayTaskError``, or chained)."""
    for error in errors:
        seen: set[int] = set()
        todo: list[Any] = [error]
        while todo:
            exc = todo.pop()
            if exc is None or id(exc) in seen:
                continue
            seen.add(id(exc))
            # Ray's RayTaskError(StorageFullError) is an instance of both, with a traceback for
            # a message: only the original error (its ``cause``) has the one-line message.
            if type(exc) is StorageFullError:
                return exc
            todo += [getattr(exc, "cause", None), exc.__cause__, exc.__context__]
    return None


def _raise_if_storage_full(errors: Sequence[Any], stage: str) -> None:
    """A full storage fails every trial the same way: stop the launch with that one reason
    instead of reporting each trial failed (their earlier checkpoints are intact)."""
    full = _storage_full(errors)
    if full is not None:
        raise StorageFullError(full.errno, f"{stage}: {full.strerror}")


def _close_running_runs(ctx: StudyContext) -> None:
    """Mark this launch's child runs that are still RUNNING as KILLED (their trials were
    stopped with the driver); ``--resume`` sets them RUNNING again."""
    tracker = ctx.tracker()
    for kind in ("pretext", "finetune"):
        for run in tracking.find_runs(
            ctx.tracking_uri, ctx.study.name, kind=kind, status="RUNNING"
        ):
            key = run.data.tags.get(tracking.TAG_KEY, "")
            if kind == "pretext" or key.startswith(f"{ctx.launch}/"):
                ref = tracking.RunRef(run.info.run_id, run.info.experiment_id, ctx.tracking_uri)
                tracker.finish(ref, "KILLED")


def _result_loggers() -> list[Any]:
    """Tune's JSON and CSV result files (``result.json``, ``progress.csv`` per trial), which
    Tune's result analysis and a restore read; the automatic set would also add TensorBoard."""
    return [JsonLoggerCallback(), CSVLoggerCallback()]


class StudyInterrupted(KeyboardInterrupt):
    """The study was stopped by a signal (``signum``: SIGINT, SIGTERM or SIGHUP)."""

    def __init__(self, signum: int, detail: str = "") -> None:
        super().__init__(detail or signal.Signals(signum).name)
        self.signum = signum


class _Stopper:
    """Turns SIGINT, SIGTERM and SIGHUP into a clean stop of the study.

    Inside a Tune ``fit()`` the first signal is handed to Tune as SIGUSR1, its graceful stop
    (trials stopped, experiment state saved for ``--resume``); ``fit()`` then returns and
    :meth:`check` raises :class:`StudyInterrupted`. Tune's own SIGINT handler is off
    (``TUNE_DISABLE_SIGINT_HANDLER``) because it ends ``fit()`` as if the trials had finished,
    so a Ctrl-C in stage 1 would carry on into stage 2. Outside a fit, or on a second signal,
    the signal raises at once.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: list[int] = []
        self.in_fit = False

    def _handle(self, signum: int, _frame: Any) -> None:
        first = not self.received
        self.received.append(signum)
        if self.in_fit and first and hasattr(signal, "SIGUSR1"):
            os.kill(os.getpid(), signal.SIGUSR1)
            return
        raise StudyInterrupted(self.received[0])

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Stopper]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals are only delivered to the main thread
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def check(self) -> None:
        """Raise :class:`StudyInterrupted` if a stop signal arrived."""
        if self.received:
            raise StudyInterrupted(self.received[0])


_STOPPER = _Stopper()


def stop_on_signals() -> contextlib.AbstractContextManager[_Stopper]:
    """SIGINT, SIGTERM and SIGHUP stop the study within the block (a :class:`StudyInterrupted`
    naming the signal); ``run_study`` installs the same handlers again once Ray has started,
    since ``ray.init`` replaces the SIGTERM handler."""
    return _STOPPER.installed()


def _fit(
    make_tuner: Callable[[], Any],
    trainable: Any,
    path: Path,
    resume: bool,
    param_space: dict[str, Any],
) -> Any:
    """A Tuner, restored from ``path`` when resuming (finished trials are kept), else fresh."""
    if resume and tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(
            str(path),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
            param_space=param_space,
        )
    else:
        tuner = make_tuner()
    _STOPPER.in_fit = True
    try:
        results = tuner.fit()
    finally:
        _STOPPER.in_fit = False
    _STOPPER.check()
    return results


def run_study(study: Study, options: RunOptions | None = None) -> StudyOutcome:
    """Run a study: stage 1 (pretext cache), stage 2 (fine-tune trials), ablation table.

    Fails before anything starts when the MLflow tracking server cannot be reached.
    """
    options = options or RunOptions()
    if options.smoke:
        study = study.smoke()
    check_ray_address(options.address)
    if options.address is None and options.device != "auto":
        # Trials run on this machine: a device it lacks is an error now, not in every trial.
        from occstudy.train import check_device

        check_device(options.device)
    configure_environment(local=options.address is None)
    layout = StudyLayout.of(study.name, options.storage)
    tracking.check_reachable(layout.tracking_uri(options.tracking_uri))  # before writing anything
    with _one_launch_at_a_time(layout):
        return _run_launch(study, options)


@contextlib.contextmanager
def _one_launch_at_a_time(layout: StudyLayout) -> Iterator[None]:
    """Hold ``<study dir>/.launch.lock`` for the whole launch: a second launch of the same study
    in the same storage (another terminal, another node on shared storage) is refused before it
    writes anything, instead of both writing the same trials. The lock goes with the process,
    so a crashed or killed driver never leaves it behind.

    Raises:
        StudyError: naming the study, the storage and the process holding the lock.
    """
    import fcntl

    layout.study_dir.mkdir(parents=True, exist_ok=True)
    path = layout.study_dir / ".launch.lock"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise StudyError(
                f"study {layout.name!r} is already running in {layout.storage} ({holder} holds "
                f"{path}); wait for it to end or stop it, then --resume continues it"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {os.uname().nodename}")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _run_launch(study: Study, options: RunOptions) -> StudyOutcome:
    """The launch itself (under the study's launch lock): open, both stages, close."""
    ctx, tasks = _open_launch(study, options)
    tracker = ctx.tracker()
    outcome = StudyOutcome(
        study,
        Path(ctx.study_dir),
        ctx.tracking_uri,
        ctx.parent.run_id,
        ctx.parent.experiment_id,
        launch=ctx.launch,
    )
    start = time.perf_counter()
    _STOPPER.received.clear()
    try:
        # Handlers after Ray starts: ray.init installs its own SIGTERM handler (which aborts).
        with (
            ray_session(
                options.address, options.num_cpus, needs_dashboard=study.resources.use_ray_train
            ),
            _STOPPER.installed(),
        ):
            ctx = replace(ctx, study=resolve_resources(study))
            plan = _launch_plan(ctx, options)
            _stage1(ctx, options, outcome, tasks, plan)
            _stage2(ctx, options, outcome, plan)
    except KeyboardInterrupt:
        _close_running_runs(ctx)
        tracker.finish(ctx.parent, "KILLED")
        if options.progress:
            print(
                f"study {study.name}: interrupted; finish it with --resume (finished trials "
                "and pretext jobs are kept)",
                file=sys.stderr,
                flush=True,
            )
        raise
    except BaseException as exc:
        finish_failed(tracker, ctx.parent, exc, "FAILED")
        raise
    outcome.seconds = time.perf_counter() - start
    _close_launch(ctx, outcome)
    return outcome


def _open_launch(study: Study, options: RunOptions) -> tuple[StudyContext, dict[str, PretextTask]]:
    """Record the launch (study file, launch name, parent MLflow run) and plan stage 1."""
    layout = StudyLayout.of(study.name, options.storage)
    uri = layout.tracking_uri(options.tracking_uri)  # checked by run_study before the lock
    layout.study_dir.mkdir(parents=True, exist_ok=True)
    layout.study_file.write_text(json.dumps(study.to_dict(), indent=2))
    launch = layout.start_launch(options.resume)
    tracker = tracking.StudyTracker(uri, study.name, layout.artifact_root(uri))
    tracker.describe_experiment(study.description)
    parent = tracker.parent_run(launch, study.to_dict(), resume=options.resume)
    fingerprints: dict[str, str] = {}
    tasks = plan_pretext(study, layout.cache_dir, fingerprints)
    ctx = StudyContext(
        study,
        str(layout.study_dir),
        str(layout.cache_dir),
        uri,
        parent,
        launch,
        options.device,
        fingerprints,
    )
    return ctx, tasks


def _close_launch(ctx: StudyContext, outcome: StudyOutcome) -> None:
    """Write the trials and the ablation table, log them to the launch's run, and end it."""
    study_dir = Path(ctx.study_dir)
    outcome.table = ablation_table(outcome)
    (study_dir / "ablation.md").write_text(outcome.table)
    rows = [r.__dict__ for r in outcome.rows]
    (study_dir / "trials.json").write_text(json.dumps(rows, indent=2, default=str))
    tracking.log_json(ctx.parent, rows, tracking.TRIALS_ARTIFACT)
    tracking.log_json(ctx.parent, {"table": outcome.table}, tracking.ABLATION_ARTIFACT)
    # The launch run's description in the MLflow UI (Markdown): its ablation table.
    tracking.set_description(
        ctx.parent,
        outcome.table,
        more=f"the whole table: artifact {tracking.ABLATION_ARTIFACT} or `occstudy report`",
    )
    tracking.log_metrics(
        ctx.parent,
        {"study_seconds": outcome.seconds, "failed_trials": float(len(outcome.failed))},
    )
    ctx.tracker().finish(ctx.parent, "FINISHED" if not outcome.failed else "FAILED")
    # The MLflow UI's trials table and chart view of this launch (shared view states on the
    # experiment; `occstudy ui` prints their links). A UI nicety: never fail a launch on it.
    try:
        launch_views(ctx.tracking_uri, ctx.study.name, launch=ctx.launch)
    except Exception as exc:
        print(f"[mlflow] could not write the UI views of {ctx.launch}: {exc}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Stage 1: the pretext cache
# ---------------------------------------------------------------------------------------------


def _launch_plan(ctx: StudyContext, options: RunOptions) -> StudyPlan | None:
    """The cost model of this launch, for the live ETA; None where it has no measured
    throughput for the study on this machine (a launch never spends time measuring: ``occstudy
    run --plan`` does), on a cluster (its nodes are not this machine) and without progress."""
    if not options.progress or options.address is not None:
        return None
    try:
        return plan_study(
            ctx.study,
            storage=options.storage,
            num_cpus=options.num_cpus,
            no_cache=options.no_cache,
            measure=False,
            fingerprints=dict(ctx.fingerprints),
        )
    except LookupError:
        return None


def _stage1(
    ctx: StudyContext,
    options: RunOptions,
    outcome: StudyOutcome,
    tasks: Mapping[str, PretextTask],
    plan: StudyPlan | None = None,
) -> None:
    cache = PretextCache(ctx.cache_root)
    if options.no_cache and not options.resume:
        for key in tasks:
            cache.invalidate(key)
    for key in tasks:
        with cache.lock(key):
            moved = cache.heal(key)
        if moved is not None:
            print(
                f"[pretext] cache entry {key} was not intact; set aside as {moved.name}, "
                "computing it again",
                file=sys.stderr,
                flush=True,
            )
    todo = sorted(k for k in tasks if not cache.has(k))
    outcome.pretext_cached = len(tasks) - len(todo)
    outcome.pretext_computed = len(todo)
    if options.progress:
        print(
            f"[pretext] {len(tasks)} distinct pretext jobs: {len(todo)} to compute, "
            f"{outcome.pretext_cached} cached",
            file=sys.stderr,
            flush=True,
        )
    # Cached jobs still go through a (fast) trial so each gets its nested MLflow run.
    keys = sorted(tasks)
    if not keys:
        return
    trainable = tune.with_resources(
        tune.with_parameters(pretext_trainable, ctx=ctx, tasks=tasks), trial_resources(ctx.study)
    )
    param_space = {"key": tune.grid_search(keys)}
    path = Path(ctx.study_dir) / "tune" / f"{ctx.launch}-pretext"

    def make() -> tune.Tuner:
        return tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                max_concurrent_trials=ctx.study.resources.max_concurrent,
                reuse_actors=True,  # see _finetune_tuner
                trial_name_creator=lambda t: f"pretext-{t.config['key']}",
                trial_dirname_creator=lambda t: f"pretext-{t.config['key']}",
            ),
            run_config=tune.RunConfig(
                name=path.name,
                storage_path=str(path.parent),
                failure_config=tune.FailureConfig(max_failures=2),
                callbacks=[
                    Progress(
                        "pretext",
                        len(keys),
                        None,
                        "max",
                        options.progress,
                        estimates=plan.estimates("pretext") if plan else None,
                        concurrent=plan.concurrent if plan else 1,
                    ),
                    *_result_loggers(),
                ],
                verbose=0,
            ),
        )

    results = _fit(make, trainable, path, options.resume, param_space)
    _raise_if_interrupted(results, "pretext")
    _raise_if_storage_full(results.errors, "pretext")
    if results.errors:
        raise RuntimeError(
            f"{len(results.errors)} pretext job(s) failed; first error: {results.errors[0]}"
        )


# ---------------------------------------------------------------------------------------------
# Stage 2: the fine-tune trials
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TuneRun:
    """One Tune run of stage 2: the whole grid, or one grid point's Optuna search."""

    name: str
    param_space: dict[str, Any]
    searcher: Any = None
    num_samples: int = 1

    @property
    def trials(self) -> int:
        point = self.param_space.get("point")
        if isinstance(point, dict) and "grid_search" in point:
            return len(point["grid_search"]) * self.num_samples
        return self.num_samples


def _finetune_runs(ctx: StudyContext) -> list[_TuneRun]:
    study = ctx.study
    points = study.grid_points()
    sampled = study.sampled_params()
    if not sampled:
        # One Tune run over the whole grid (variants × seeds × fractions × gridded params).
        return [_TuneRun(f"{ctx.launch}-finetune", {"point": tune.grid_search(points)})]
    # Ray Tune's OptunaSearch cannot expand grid dimensions, so each grid point (variant,
    # seed, label fraction, ...) gets its own Optuna search over the sampled parameters.
    runs = []
    for point in points:
        space: dict[str, Any] = dict(point)
        for name, dist in sampled.items():
            lo, hi = dist.bounds()
            space[name] = (
                tune.loguniform(lo, hi) if isinstance(dist, LogUniform) else tune.uniform(lo, hi)
            )
        name = f"{ctx.launch}-search-{study.grid_label(point)}"
        runs.append(_TuneRun(name, space, _searcher(study), study.search.num_samples))
    return runs


def _stage2(
    ctx: StudyContext, options: RunOptions, outcome: StudyOutcome, plan: StudyPlan | None = None
) -> None:
    trainable = tune.with_resources(
        tune.with_parameters(finetune_trainable, ctx=ctx), trial_resources(ctx.study)
    )
    runs = _finetune_runs(ctx)
    # The ETA covers one Tune run; a searched study's runs (one per grid point) go without.
    estimates = plan.estimates("finetune") if plan is not None and len(runs) == 1 else None
    concurrent = plan.concurrent if plan is not None else 1
    for run in runs:
        path = Path(ctx.study_dir) / "tune" / run.name

        def make(run: _TuneRun = run, path: Path = path) -> tune.Tuner:
            return _finetune_tuner(
                ctx, options, trainable, run, path, estimates=estimates, concurrent=concurrent
            )

        results = _fit(make, trainable, path, options.resume, run.param_space)
        _raise_if_interrupted(results, "fine-tune")
        _raise_if_storage_full(results.errors, "fine-tune")
        outcome.rows += [_trial_row(r, ctx.study) for r in results]


def _finetune_tuner(
    ctx: StudyContext,
    options: RunOptions,
    trainable: Any,
    run: _TuneRun,
    path: Path,
    *,
    estimates: Mapping[str, float] | None = None,
    concurrent: int = 1,
) -> tune.Tuner:
    study, search = ctx.study, ctx.study.search
    scheduler = None
    if search.scheduler == "asha":
        # A scheduler holds per-run state: one per Tune run.
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=study.finetune.epochs,
            grace_period=search.grace_period,
            reduction_factor=search.reduction_factor,
        )

    def trial_name(t: Any) -> str:
        return study.trial_name(flat_point(t.config, study))

    return tune.Tuner(
        trainable,
        param_space=run.param_space,
        tune_config=tune.TuneConfig(
            metric=search.metric,
            mode=search.mode,
            search_alg=run.searcher,
            # The next trial runs in the process the last one finished in: no new process to
            # start, torch, MLflow and occstudy already imported, the MLflow client open.
            reuse_actors=True,
            scheduler=scheduler,
            num_samples=run.num_samples,
            max_concurrent_trials=study.resources.max_concurrent,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=path.name,
            storage_path=str(path.parent),
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[
                *_result_loggers(),
                Progress(
                    "finetune",
                    run.trials,
                    search.metric,
                    search.mode,
                    options.progress,
                    estimates=estimates,
                    concurrent=concurrent,
                ),
            ],
            verbose=0,
        ),
    )


def _trial_row(result: Any, study: Study) -> TrialRow:
    point = flat_point(result.config or {}, study)
    return TrialRow(
        name=study.trial_name(point) if point else "?",
        point=point,
        metrics={
            k: float(v)
            for k, v in (result.metrics or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        },
        error=repr(result.error) if result.error else None,
    )


def _searcher(study: Study) -> Any:
    seed = study.seeds[0]
    sampler = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed),
    }[study.search.algorithm]()
    searcher = OptunaSearch(sampler=sampler, metric=study.search.metric, mode=study.search.mode)
    if study.resources.max_concurrent:
        return ConcurrencyLimiter(searcher, max_concurrent=study.resources.max_concurrent)
    return searcher


# ---------------------------------------------------------------------------------------------
# The ablation table
# ---------------------------------------------------------------------------------------------


def ablation_table(outcome: StudyOutcome) -> str:
    """The report's ablation table(s) of ``outcome``'s launch as Markdown (mean ± std over
    seeds per variant and protocol; see :mod:`occstudy.report`), read back from MLflow."""
    return ablation_markdown(outcome.study, outcome.tracking_uri, outcome.launch)
