"""Running a study on Ray: the driver, the Tune trainables and the Ray Train launch.

Three layers, as in Ray's Train/Tune interop pattern:

1. the per-worker loops (:mod:`occstudy.study.worker`), which know the method, not Ray;
2. the trainables here, one Tune trial each, which run those loops in the trial process (one CPU
   worker) or launch a ``TorchTrainer`` (several workers or GPUs: DDP over gloo/NCCL);
3. the driver (:func:`run_study`), which builds the ``Tuner`` runs.

Stage 1 computes each distinct pretext configuration once into the pretext cache; stage 2 runs
the fine-tune trials (grid over variants × seeds × label fractions × gridded parameters, and
Optuna over sampled ones), each of which reuses the cached pretext result.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from occstudy import tracking
from occstudy.pipeline import MethodConfig, load_pretext_data, pretext_data_settings
from occstudy.study.cache import PretextCache, pretext_cache_key
from occstudy.study.spec import Grid, LogUniform, Study
from occstudy.study.worker import (
    FinetuneTask,
    PretextTask,
    Report,
    finetune_worker,
    pretext_key_for,
    pretext_worker,
)
from occstudy.train import Runtime

DEFAULT_STORAGE = "occstudy-runs"


def configure_environment(local: bool) -> None:
    """Environment for Ray, Train V2 and MLflow, set before either starts.

    A local Ray listens on 127.0.0.1 only (Ray otherwise binds to the machine's external
    address) and skips token authentication, which only matters for remote clients.
    """
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Tune's own console table would interleave with occstudy's progress lines.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if local:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tracking.disable_telemetry()


@contextlib.contextmanager
def ray_session(
    address: str | None, num_cpus: int | None = None, *, needs_dashboard: bool = False
) -> Iterator[None]:
    """Connect to (``address``) or start (None) Ray; shut down only what was started here.

    Args:
        address: Ray cluster address; None starts Ray locally on 127.0.0.1.
        num_cpus: CPUs of a locally started Ray.
        needs_dashboard: Fail fast when the cluster runs no dashboard. Train V2 frees a
            finished ``TorchTrainer``'s placement group through the state API the dashboard
            serves; without it the next ``TorchTrainer`` waits forever for the CPUs.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    if address is None:
        context = ray.init(
            num_cpus=num_cpus,
            _node_ip_address="127.0.0.1",
            logging_level=logging.WARNING,
        )
    else:
        context = ray.init(address=address, logging_level=logging.WARNING)
    try:
        if needs_dashboard and not context.dashboard_url:
            raise RuntimeError(
                f"The Ray cluster at {address or 'localhost'} runs no dashboard, which Ray Train "
                "needs to release each trial's workers (install ray[default]; start the head "
                "without --include-dashboard=false)."
            )
        yield
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------------------------
# What every trial needs to know (small and picklable: shipped to each trial)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyContext:
    """The study-wide settings a trial needs.

    Attributes:
        study: The study definition.
        study_dir: The study's folder in the (shared) storage.
        cache_root: The pretext cache folder (shared across studies in the same storage).
        tracking_uri: MLflow tracking URI.
        parent: The launch's parent MLflow run.
        launch: Launch name (``launch-N``): part of trial folders and MLflow run keys.
        device: Device for in-process trials.
        fingerprints: Unlabelled-data fingerprints the driver computed while planning stage 1
            (by :func:`pretext_data_id`), so trials need not load the data only to name a
            cache entry.
    """

    study: Study
    study_dir: str
    cache_root: str
    tracking_uri: str
    parent: tracking.RunRef
    launch: str
    device: str = "auto"
    fingerprints: Mapping[str, str] = field(default_factory=dict)

    def tracker(self) -> tracking.StudyTracker:
        return tracking.StudyTracker(self.tracking_uri, self.study.name, _artifact_root(self))

    def pretext_key(self, config: MethodConfig) -> str | None:
        """Cache key of ``config``'s pretext stage (None for ``none``)."""
        if config.variant == "none" or config.pretext_epochs == 0:
            return None
        fp = self.fingerprints.get(pretext_data_id(config))
        if fp is not None:
            return pretext_cache_key(config, fp)
        return pretext_key_for(config)[0]


def pretext_data_id(config: MethodConfig) -> str:
    """The settings that decide which unlabelled faces a pretext stage sees (not the variant
    or the loss settings): every source in order, the sizes, the cap and the validation/test
    sets whose duplicates are dropped. Equal ids, equal data fingerprints."""
    return json.dumps(pretext_data_settings(config), sort_keys=True)


def _artifact_root(ctx: StudyContext) -> str | None:
    if ctx.tracking_uri.startswith("sqlite:"):
        return (Path(ctx.study_dir) / "mlartifacts").resolve().as_uri()
    return None


def _fold(config: MethodConfig) -> int | None:
    fold = dict(config.data.options).get("fold")
    return None if fold is None else int(fold)


def method_params(config: MethodConfig) -> dict[str, Any]:
    """MLflow params of a run: the same names in every run of every study (``fold`` only in
    k-fold studies)."""
    fold = _fold(config)
    return {
        **({"fold": fold} if fold is not None else {}),
        "variant": config.variant,
        "seed": config.seed,
        "lambda": config.lam,
        "tau": config.tau,
        "lr": config.lr,
        "pretext_lr": config.pretext_lr,
        "label_fraction": config.label_fraction,
        "dataset": str(config.data),
        "pretext_data": ",".join(config.pretext_data),
        "epochs": config.epochs,
        "pretext_epochs": config.pretext_epochs,
        "batch_size": config.batch_size,
        "image_size": config.image_size,
        "recipe": config.recipe,
        "arch": config.arch,
        "stem": config.stem,
        "optimizer": config.optimizer,
        "weight_decay": config.weight_decay,
        "schedule": config.schedule,
        "warmup_epochs": config.warmup_epochs,
        "label_smoothing": config.label_smoothing,
        "augment": config.augment,
        "tta_flip": config.tta_flip,
        "pretext_policy": config.pretext_policy,
        "finetune_policy": config.finetune_policy,
        "balanced": config.balanced,
    }


def _tags(config: MethodConfig, trial: str) -> dict[str, str]:
    fold = _fold(config)
    return {
        **({"fold": str(fold)} if fold is not None else {}),
        "dataset": config.data.name,
        "variant": config.variant,
        "seed": str(config.seed),
        "label_fraction": str(config.label_fraction),
        "trial": trial,
    }


# ---------------------------------------------------------------------------------------------
# Ray Train launch (several workers or GPUs)
# ---------------------------------------------------------------------------------------------


def _worker_runtime() -> Runtime:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    return Runtime(
        device=device,
        amp=on_gpu,
        channels_last=on_gpu,
        rank=ctx.get_world_rank(),
        world_size=ctx.get_world_size(),
    )


def _tag_placement(run: tracking.RunRef | None, runtime: Runtime) -> None:
    """Tag the run with how many workers and Ray nodes trained it (``ray_workers``,
    ``ray_nodes``), so a user can see in MLflow that a job really ran data-parallel."""
    import ray
    import torch.distributed as dist

    node = ray.get_runtime_context().get_node_id()
    nodes: list[Any] = [node]
    if runtime.world_size > 1 and dist.is_initialized():
        nodes = [None] * runtime.world_size
        dist.all_gather_object(nodes, node)
    if runtime.is_main and run is not None:
        tracking.set_tags(
            run, {"ray_workers": str(runtime.world_size), "ray_nodes": str(len(set(nodes)))}
        )


def _train_pretext_loop(cfg: dict[str, Any]) -> None:
    import ray.train

    task: PretextTask = cfg["task"]
    use_assigned_cpus()
    runtime = _worker_runtime()
    _tag_placement(task.run, runtime)
    pretext_worker(task, runtime, lambda m, e: ray.train.report(dict(m)))


def _report_all_but_last_epoch(send: Callable[[dict[str, Any]], Any], epochs: int) -> Report:
    """A per-epoch hook that sends every epoch's metrics but the last to Tune (``send``:
    ``tune.report`` or ``ray.train.report``). ASHA stops a trial at its last rung, so the last
    epoch must go out with the test results: in the trial's final report, the summary of
    :func:`finetune_worker`, which carries that epoch's metrics."""

    def report(metrics: Mapping[str, float], epoch: int) -> None:
        if epoch < epochs - 1:
            send({**metrics, "epoch": epoch})

    return report


def _train_finetune_loop(cfg: dict[str, Any]) -> None:
    import ray.train

    task: FinetuneTask = cfg["task"]
    use_assigned_cpus()
    runtime = _worker_runtime()
    _tag_placement(task.run, runtime)
    report = _report_all_but_last_epoch(ray.train.report, task.config.epochs)
    ray.train.report(finetune_worker(task, runtime, report))


def _fit_torch_trainer(
    loop: Callable[[dict[str, Any]], None],
    task: PretextTask | FinetuneTask,
    ctx: StudyContext,
    name: str,
    to_tune: bool,
) -> None:
    """Run ``loop`` on ``workers`` Ray Train workers (DDP; gloo on CPU, NCCL on GPU)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    res = ctx.study.resources
    use_gpu = res.gpus_per_worker > 0
    per_worker: dict[str, float] = {"CPU": float(res.cpus)}
    if use_gpu:
        per_worker["GPU"] = float(res.gpus_per_worker)
    callbacks: list[Any] = []
    if to_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    trainer = TorchTrainer(
        loop,
        train_loop_config={"task": task},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.workers, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(Path(ctx.study_dir) / "ray-train"),
            failure_config=ray.train.FailureConfig(max_failures=2),
            callbacks=callbacks,
        ),
    )
    trainer.fit()


# ---------------------------------------------------------------------------------------------
# Trainables (one Tune trial each)
# ---------------------------------------------------------------------------------------------


def _end_status(exc: BaseException) -> str:
    """MLflow status of a run its trial left by ``exc``: Tune stops a trial (an ASHA stop, a
    driver shutting down) with ``SystemExit`` inside ``tune.report``, Ctrl-C is a
    ``KeyboardInterrupt``: both ``KILLED``; anything else ``FAILED``."""
    return "KILLED" if isinstance(exc, SystemExit | KeyboardInterrupt) else "FAILED"


def ensure_pretext(
    task: PretextTask,
    ctx: StudyContext,
    report: Callable[[Mapping[str, float], int], None] | None = None,
) -> dict[str, Any]:
    """The pretext result of ``task``: from the cache, or computed once under the cache lock.

    Every pretext job gets a nested MLflow run (get-or-create by cache key, so a rerun or a
    trial that finds the result cached does not duplicate it).
    """
    cache = PretextCache(task.cache_root)
    tracker = ctx.tracker()
    config = task.config
    with cache.lock(task.key):
        run = tracker.child_run(
            ctx.parent,
            kind="pretext",
            key=task.key,
            name=f"pretext-{task.key}",
            tags={**_tags(config, f"pretext-{task.key}"), "cache_key": task.key},
            params=method_params(config),
        )
        if cache.has(task.key):
            tracking.set_tags(run, {"occstudy.cached": "true"})
            tracker.finish(run)
            return cache.meta(task.key)
        task = replace(task, run=run)
        start = time.perf_counter()
        try:
            if ctx.study.resources.use_ray_train:
                _fit_torch_trainer(
                    _train_pretext_loop, task, ctx, f"{ctx.launch}-pretext-{task.key}", False
                )
                history: list[dict[str, float]] = []
            else:
                history = pretext_worker(task, Runtime.auto(ctx.device), report)
        except BaseException as exc:
            tracker.finish(run, _end_status(exc))
            raise
        meta = {
            "key": task.key,
            "config": config.pretext_key(),
            "history": history,
            "seconds": time.perf_counter() - start,
            "study": ctx.study.name,
        }
        cache.publish(task.key, cache.work_path(task.key), meta)
        tracker.finish(run)
        return meta


def pretext_trainable(
    config: dict[str, Any], ctx: StudyContext, tasks: Mapping[str, PretextTask]
) -> None:
    """Stage 1 trial: make sure one pretext result exists in the cache."""
    from ray import tune

    task = tasks.get(config["key"])
    if task is None:
        # A restored launch whose pretext plan no longer matches the study (its file or
        # occstudy changed since the launch began): resuming would mix two configurations.
        raise RuntimeError(
            f"pretext job {config['key']} of the launch being resumed is not in the study's "
            "current plan (the study or occstudy changed since the launch began); start a new "
            "launch without --resume"
        )
    use_assigned_cpus()
    meta = ensure_pretext(task, ctx, lambda m, e: tune.report({**m, "epoch": e}))
    tune.report({"pretext_seconds": float(meta.get("seconds", 0.0)), "done": 1})


def _point_of(config: Mapping[str, Any], study: Study) -> dict[str, Any]:
    keys = set(study.point_keys()) | set(study.sampled_params())
    return {k: v for k, v in config.items() if k in keys}


def finetune_trainable(config: dict[str, Any], ctx: StudyContext) -> None:
    """Stage 2 trial: fine-tune from the cached pretext result, then test every protocol."""
    from ray import tune

    study = ctx.study
    use_assigned_cpus()
    point = _flat_point(config, study)
    mc = replace(study.method_config(point), device=ctx.device)
    name = study.trial_name(point)
    key = ctx.pretext_key(mc)
    if key is not None:
        ensure_pretext(PretextTask(mc, key, ctx.cache_root), ctx)
    tracker = ctx.tracker()
    run = tracker.child_run(
        ctx.parent,
        kind="finetune",
        key=f"{ctx.launch}/{name}",
        name=name,
        tags={**_tags(mc, name), **({"cache_key": key} if key else {})},
        params=method_params(mc),
    )
    task = FinetuneTask(
        config=mc,
        name=name,
        trial_dir=str(Path(ctx.study_dir) / "trials" / ctx.launch / name),
        pretext_key=key,
        cache_root=ctx.cache_root,
        run=run,
    )
    if study.resources.use_ray_train:
        try:
            _fit_torch_trainer(_train_finetune_loop, task, ctx, f"{ctx.launch}-{name}", True)
        except BaseException as exc:
            tracker.finish(run, _end_status(exc))
            raise
        tracker.finish(run)
        return
    report = _report_all_but_last_epoch(tune.report, mc.epochs)
    try:
        summary = finetune_worker(task, Runtime.auto(ctx.device), report)
    except BaseException as exc:
        tracker.finish(run, _end_status(exc))
        raise
    tracker.finish(run)
    tune.report(summary)


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


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
    rows: list[TrialRow] = field(default_factory=list)
    pretext_computed: int = 0
    pretext_cached: int = 0
    seconds: float = 0.0

    @property
    def failed(self) -> list[TrialRow]:
        return [r for r in self.rows if r.error is not None]


def study_paths(study: Study, storage: str | None) -> tuple[Path, Path]:
    """(study folder, pretext cache folder) in a storage root."""
    root = Path(storage or DEFAULT_STORAGE).expanduser().resolve()
    return root / study.name, root / "pretext-cache"


def resolve_tracking_uri(study_dir: Path, tracking_uri: str | None) -> str:
    return (
        tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or tracking.default_tracking_uri(study_dir)
    )


def _launch_name(study_dir: Path, resume: bool) -> str:
    """``launch-N``: a new N per fresh launch, the last one again on ``resume``."""
    path = study_dir / "launches.json"
    launches: list[str] = json.loads(path.read_text()) if path.exists() else []
    if resume and launches:
        return launches[-1]
    name = f"launch-{len(launches) + 1}"
    launches.append(name)
    study_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(launches))
    return name


def plan_pretext(
    study: Study, cache_root: Path, fingerprints: dict[str, str] | None = None
) -> dict[str, PretextTask]:
    """The distinct pretext jobs the grid needs (sampled λ/τ are computed inside trials).

    Args:
        study: The study.
        cache_root: The pretext cache folder.
        fingerprints: Filled with the unlabelled-data fingerprints it computes, by
            :func:`pretext_data_id` (also for points whose pretext a trial computes).
    """
    tasks: dict[str, PretextTask] = {}
    sampled = study.sampled_params()
    fingerprints = {} if fingerprints is None else fingerprints
    for point in study.grid_points():
        if point["variant"] == "none":
            continue
        filled = dict(point)
        for name, dist in sampled.items():
            filled[name] = dist.bounds()[0]
        mc = study.method_config(filled)
        if mc.pretext_epochs == 0:
            continue
        # The data fingerprint depends on the data settings only: load each set once.
        data_id = pretext_data_id(mc)
        if data_id not in fingerprints:
            data = load_pretext_data(mc)
            assert data is not None  # a pretext variant with epochs > 0 has data
            fingerprints[data_id] = data.fingerprint()
        if any(p in sampled for p in _pretext_params(mc.variant)):
            continue
        key = pretext_cache_key(mc, fingerprints[data_id])
        tasks.setdefault(key, PretextTask(mc, key, str(cache_root)))
    return tasks


def _pretext_params(variant: str) -> tuple[str, ...]:
    return {
        "ss": ("tau", "pretext_lr"),
        "mask": ("pretext_lr",),
        "ss+mask": ("lam", "tau", "pretext_lr"),
    }.get(variant, ())


class _Progress:
    """A Tune callback: live progress lines and MLflow run status at the edges."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        from ray.tune import Callback

        class Impl(Callback):  # type: ignore[misc]
            def __init__(
                self,
                stage: str,
                total: int,
                metric: str | None,
                mode: str,
                enabled: bool,
                finalize: Callable[[Any, str], None] | None = None,
            ) -> None:
                self.stage, self.total, self.metric, self.mode = stage, total, metric, mode
                self.enabled = enabled
                self.finalize = finalize
                self.done = self.failed = self.running = 0
                self.best: tuple[float, str] | None = None
                self.start = time.perf_counter()
                self._seeded = False

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

            def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
                if not self._seeded:
                    self._seeded = True
                    self.done = sum(t.status == "TERMINATED" for t in trials)

            def _line(self, what: str) -> None:
                if not self.enabled:
                    return
                best = ""
                if self.best is not None:
                    best = f" | best {self.metric} {self.best[0]:.4f} ({self.best[1]})"
                elapsed = time.perf_counter() - self.start
                print(
                    f"[{self.stage} {elapsed:6.0f}s] {what}: done {self.done}/{self.total}, "
                    f"running {self.running}, failed {self.failed}{best}",
                    file=sys.stderr,
                    flush=True,
                )

            def on_trial_start(
                self, iteration: int, trials: list[Any], trial: Any, **info: Any
            ) -> None:
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

            def on_trial_complete(
                self, iteration: int, trials: list[Any], trial: Any, **info: Any
            ) -> None:
                self.running = max(0, self.running - 1)
                self.done += 1
                if self.finalize is not None:
                    self.finalize(trial, "FINISHED")
                self._line(f"finished {trial}")

            def on_trial_error(
                self, iteration: int, trials: list[Any], trial: Any, **info: Any
            ) -> None:
                self.running = max(0, self.running - 1)
                self.failed += 1
                if self.finalize is not None:
                    self.finalize(trial, "FAILED")
                self._line(f"FAILED {trial}")

        return Impl(*args, **kwargs)


def _raise_if_interrupted(results: Any, stage: str) -> None:
    """Tune ends ``fit()`` quietly on Ctrl-C (SIGINT), leaving trials unfinished: turn that
    into a ``KeyboardInterrupt`` so the launch is marked KILLED instead of reported done."""
    unfinished = len(results) - results.num_terminated - results.num_errors
    if unfinished > 0:
        raise KeyboardInterrupt(f"{unfinished} {stage} trial(s) left unfinished")


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
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]


def _fit(
    make_tuner: Callable[[], Any],
    trainable: Any,
    path: Path,
    resume: bool,
    param_space: dict[str, Any],
) -> Any:
    """A Tuner, restored from ``path`` when resuming (finished trials are kept), else fresh."""
    from ray import tune

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
    return tuner.fit()


#: Logical memory a Tune trial that only drives a TorchTrainer reserves (bytes).
DRIVER_MEMORY = 512 * 2**20


def resolve_resources(study: Study) -> Study:
    """``study`` with ``Resources.cpus_per_worker`` decided for the connected Ray cluster
    (see :class:`~occstudy.study.spec.Resources`): from its largest live node's CPUs and GPUs."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    node_cpus = max((int(r.get("CPU", 0)) for r in nodes), default=1)
    node_gpus = max((float(r.get("GPU", 0)) for r in nodes), default=0.0)
    resources = study.resources.resolved(node_cpus, node_gpus)
    return study if resources == study.resources else replace(study, resources=resources)


def use_assigned_cpus() -> int:
    """Run torch with as many threads as CPUs Ray gave this trial or worker (at least 1).

    Ray starts a trial's process with ``OMP_NUM_THREADS`` at its CPU count only in some
    versions and settings; setting torch's intra-op threads here makes it explicit.
    """
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    return threads


def _trial_resources(study: Study) -> dict[str, float]:
    res = study.resources
    if res.use_ray_train:
        # The trial only coordinates; the TorchTrainer's workers hold the CPUs/GPUs. Tune
        # rejects an all-zero request, so the trial reserves the memory its process uses
        # (Ray's logical "memory" resource) and no CPU, which a worker may need on its node.
        return {"CPU": 0, "memory": DRIVER_MEMORY}
    out = {"CPU": float(res.cpus)}
    if res.gpus_per_worker:
        out["GPU"] = float(res.gpus_per_worker)
    return out


def run_study(study: Study, options: RunOptions | None = None) -> StudyOutcome:
    """Run a study: stage 1 (pretext cache), stage 2 (fine-tune trials), ablation table.

    Fails before anything starts when the MLflow tracking server cannot be reached.
    """
    options = options or RunOptions()
    if options.smoke:
        study = study.smoke()
    configure_environment(local=options.address is None)
    study_dir, cache_root = study_paths(study, options.storage)
    uri = resolve_tracking_uri(study_dir, options.tracking_uri)
    tracking.check_reachable(uri)
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / "study.json").write_text(json.dumps(study.to_dict(), indent=2))
    launch = _launch_name(study_dir, options.resume)
    artifact_root = (
        (study_dir / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
    )
    tracker = tracking.StudyTracker(uri, study.name, artifact_root)
    parent = tracker.parent_run(launch, study.to_dict(), resume=options.resume)
    fingerprints: dict[str, str] = {}
    tasks = plan_pretext(study, cache_root, fingerprints)
    ctx = StudyContext(
        study, str(study_dir), str(cache_root), uri, parent, launch, options.device, fingerprints
    )
    outcome = StudyOutcome(study, study_dir, uri, parent.run_id, parent.experiment_id)
    start = time.perf_counter()
    try:
        with ray_session(
            options.address, options.num_cpus, needs_dashboard=study.resources.use_ray_train
        ):
            ctx = replace(ctx, study=resolve_resources(study))
            _stage1(ctx, options, outcome, tasks)
            _stage2(ctx, options, outcome)
    except KeyboardInterrupt:
        _close_running_runs(ctx)
        tracker.finish(parent, "KILLED")
        if options.progress:
            print(
                f"study {study.name}: interrupted; finish it with --resume (finished trials "
                "and pretext jobs are kept)",
                file=sys.stderr,
                flush=True,
            )
        raise
    except BaseException:
        tracker.finish(parent, "FAILED")
        raise
    outcome.seconds = time.perf_counter() - start
    table = ablation_table(outcome.rows, study)
    (study_dir / "ablation.md").write_text(table)
    (study_dir / "trials.json").write_text(
        json.dumps([r.__dict__ for r in outcome.rows], indent=2, default=str)
    )
    tracking.log_json(parent, [r.__dict__ for r in outcome.rows], "trials.json")
    tracking.log_json(parent, {"table": table}, "ablation.json")
    tracking.log_metrics(
        parent, {"study_seconds": outcome.seconds, "failed_trials": float(len(outcome.failed))}
    )
    tracker.finish(parent, "FINISHED" if not outcome.failed else "FAILED")
    return outcome


def _stage1(
    ctx: StudyContext, options: RunOptions, outcome: StudyOutcome, tasks: Mapping[str, PretextTask]
) -> None:
    from ray import tune

    study = ctx.study
    cache = PretextCache(ctx.cache_root)
    if options.no_cache and not options.resume:
        for key in tasks:
            cache.invalidate(key)
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
        tune.with_parameters(pretext_trainable, ctx=ctx, tasks=tasks), _trial_resources(study)
    )
    param_space = {"key": tune.grid_search(keys)}
    path = Path(ctx.study_dir) / "tune" / f"{ctx.launch}-pretext"

    def make() -> Any:
        return tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                max_concurrent_trials=study.resources.max_concurrent,
                trial_name_creator=lambda t: f"pretext-{t.config['key']}",
                trial_dirname_creator=lambda t: f"pretext-{t.config['key']}",
            ),
            run_config=tune.RunConfig(
                name=path.name,
                storage_path=str(path.parent),
                failure_config=tune.FailureConfig(max_failures=2),
                callbacks=[
                    _Progress("pretext", len(keys), None, "max", options.progress),
                    *_result_loggers(),
                ],
                verbose=0,
            ),
        )

    results = _fit(make, trainable, path, options.resume, param_space)
    _raise_if_interrupted(results, "pretext")
    if results.errors:
        raise RuntimeError(
            f"{len(results.errors)} pretext job(s) failed; first error: {results.errors[0]}"
        )


def _stage2(ctx: StudyContext, options: RunOptions, outcome: StudyOutcome) -> None:
    from ray import tune

    study = ctx.study
    search = study.search
    trainable = tune.with_resources(
        tune.with_parameters(finetune_trainable, ctx=ctx), _trial_resources(study)
    )
    points = study.grid_points()
    sampled = study.sampled_params()
    scheduler = None
    runs: list[tuple[str, dict[str, Any], Any, int]] = []
    if not sampled:
        # One Tune run over the whole grid (variants × seeds × fractions × gridded params).
        runs.append((f"{ctx.launch}-finetune", {"point": tune.grid_search(points)}, None, 1))
    else:
        # Ray Tune's OptunaSearch cannot expand grid dimensions, so each grid point (variant,
        # seed, label fraction, ...) gets its own Optuna search over the sampled parameters.
        for point in points:
            space: dict[str, Any] = dict(point)
            for name, dist in sampled.items():
                lo, hi = dist.bounds()
                space[name] = (
                    tune.loguniform(lo, hi)
                    if isinstance(dist, LogUniform)
                    else tune.uniform(lo, hi)
                )
            runs.append(
                (
                    f"{ctx.launch}-search-{study.grid_label(point)}",
                    space,
                    _searcher(study),
                    search.num_samples,
                )
            )
    for run_name, param_space, searcher, num_samples in runs:
        if search.scheduler == "asha":
            from ray.tune.schedulers import ASHAScheduler

            # A scheduler holds per-run state: one per Tune run.
            scheduler = ASHAScheduler(
                time_attr="training_iteration",
                max_t=study.finetune.epochs,
                grace_period=search.grace_period,
                reduction_factor=search.reduction_factor,
            )
        path = Path(ctx.study_dir) / "tune" / run_name

        def trial_name(t: Any) -> str:
            return study.trial_name(_flat_point(t.config, study))

        def finalize(t: Any, status: str) -> None:
            # A trial ASHA stopped early (or that died) never closed its own MLflow run.
            tracking.finish_by_key(
                ctx.tracking_uri,
                study.name,
                kind="finetune",
                key=f"{ctx.launch}/{trial_name(t)}",
                status=status,
            )

        def make(
            param_space: dict[str, Any] = param_space,
            searcher: Any = searcher,
            num_samples: int = num_samples,
            scheduler: Any = scheduler,
            path: Path = path,
        ) -> Any:
            return tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    metric=search.metric,
                    mode=search.mode,
                    search_alg=searcher,
                    scheduler=scheduler,
                    num_samples=num_samples,
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
                        _Progress(
                            "finetune",
                            _count(param_space, num_samples),
                            search.metric,
                            search.mode,
                            options.progress,
                        ),
                    ],
                    verbose=0,
                ),
            )

        results = _fit(make, trainable, path, options.resume, param_space)
        _raise_if_interrupted(results, "fine-tune")
        for r in results:
            point = _flat_point(r.config or {}, study)
            outcome.rows.append(
                TrialRow(
                    name=study.trial_name(point) if point else "?",
                    point=point,
                    metrics={
                        k: float(v)
                        for k, v in (r.metrics or {}).items()
                        if isinstance(v, int | float) and not isinstance(v, bool)
                    },
                    error=repr(r.error) if r.error else None,
                )
            )


def _count(param_space: Mapping[str, Any], num_samples: int) -> int:
    point = param_space.get("point")
    if isinstance(point, dict) and "grid_search" in point:
        return len(point["grid_search"]) * num_samples
    return num_samples


def _flat_point(config: Mapping[str, Any], study: Study) -> dict[str, Any]:
    if "point" in config and isinstance(config["point"], Mapping):
        return dict(config["point"])
    return _point_of(config, study)


def _searcher(study: Study) -> Any:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    seed = study.seeds[0]
    sampler = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed),
    }[study.search.algorithm]()
    searcher = OptunaSearch(sampler=sampler, metric=study.search.metric, mode=study.search.mode)
    if study.resources.max_concurrent:
        from ray.tune.search import ConcurrencyLimiter

        return ConcurrencyLimiter(searcher, max_concurrent=study.resources.max_concurrent)
    return searcher


# ---------------------------------------------------------------------------------------------
# Ablation table
# ---------------------------------------------------------------------------------------------


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def ablation_rows(
    rows: Sequence[TrialRow], study: Study
) -> tuple[list[str], list[tuple[str, dict[str, list[float]]]]]:
    """Group finished trials by everything but the seed; collect test accuracies per protocol."""
    protocols: list[str] = []
    groups: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        if row.error is not None:
            continue
        label_parts = [row.point.get("variant", "?")]
        if len(study.label_fractions) > 1:
            label_parts.append(f"labels {100 * float(row.point.get('label_fraction', 1)):g}%")
        for p, value in sorted(row.point.items()):
            if p in ("variant", "seed", "label_fraction", "fold"):
                continue
            if isinstance(study.search_space.get(p), Grid):
                label_parts.append(f"{p}={value}" if isinstance(value, str) else f"{p}={value:g}")
        label = ", ".join(label_parts)
        g = groups.setdefault(label, {})
        for k, v in row.metrics.items():
            # Per-region accuracies (test.<set>.region.<r>.acc) belong to the report's
            # region tables, not to the protocol columns.
            if k.startswith("test.") and k.endswith(".acc") and ".region." not in k:
                proto = k[len("test.") : -len(".acc")]
                if proto not in protocols:
                    protocols.append(proto)
                g.setdefault(proto, []).append(v)
    order = {v: i for i, v in enumerate(study.variants)}
    items = sorted(groups.items(), key=lambda kv: (order.get(kv[0].split(",")[0], 99), kv[0]))
    return protocols, items


def ablation_table(rows: Sequence[TrialRow], study: Study) -> str:
    """Markdown table: mean ± std of test accuracy (%) over seeds, per variant and protocol."""
    protocols, items = ablation_rows(rows, study)
    if not items:
        return "(no finished trials)\n"
    n_seeds = max((len(v) for _, g in items for v in g.values()), default=0)
    lines = [
        f"Test accuracy (%), mean ± std over seeds (up to {n_seeds} per cell)",
        "",
        "| variant | " + " | ".join(protocols) + " |",
        "|---|" + "---|" * len(protocols),
    ]
    for label, g in items:
        lines.append(
            f"| {label} | " + " | ".join(_mean_std(g.get(p, [])) for p in protocols) + " |"
        )
    return "\n".join(lines) + "\n"
