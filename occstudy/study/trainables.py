"""The Tune trainables of a study (one trial each) and the Ray Train launch behind them.

A trial runs the per-worker loops of :mod:`occstudy.study.worker` in its own process (one
CPU worker), or launches a ``TorchTrainer`` when the study asks for several workers or GPUs
(DDP over gloo/NCCL). Each trial opens and closes its own nested MLflow run.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from occstudy import tracking
from occstudy.method import MethodConfig
from occstudy.pipeline import pretext_data_settings
from occstudy.study.cache import PretextCache, pretext_cache_key
from occstudy.study.environment import use_assigned_cpus, worker_runtime
from occstudy.study.layout import StudyLayout
from occstudy.study.spec import Study
from occstudy.study.worker import (
    FinetuneTask,
    PretextTask,
    Report,
    finetune_worker,
    pretext_key_for,
    pretext_worker,
)
from occstudy.train import Runtime

__all__ = [
    "StudyContext",
    "ensure_pretext",
    "finetune_trainable",
    "flat_point",
    "pretext_data_id",
    "pretext_trainable",
]


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
        layout = StudyLayout(Path(self.study_dir).parent, Path(self.study_dir).name)
        return tracking.StudyTracker(
            self.tracking_uri, self.study.name, layout.artifact_root(self.tracking_uri)
        )

    def pretext_key(self, config: MethodConfig) -> str | None:
        """Cache key of ``config``'s pretext stage (None for ``none``)."""
        if not config.runs_pretext:
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
    runtime = worker_runtime()
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
    runtime = worker_runtime()
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


def finish_failed(
    tracker: Any, run: tracking.RunRef, exc: BaseException, status: str | None = None
) -> None:
    """End the run of a trial (or launch) that ``exc`` stopped, as ``status`` (default: from
    the error, see :func:`_end_status`); when that fails too because ``exc`` is a file-system
    error (a store on the same full disk), ``exc`` is the one that propagates."""
    try:
        tracker.finish(run, status or _end_status(exc))
    except Exception as finish_exc:
        if not isinstance(exc, OSError):
            raise
        print(f"[mlflow] could not end run {run.run_id}: {finish_exc}", file=sys.stderr)


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
            tags={
                **tracking.method_tags(config, f"pretext-{task.key}"),
                tracking.TAG_CACHE_KEY: task.key,
            },
            params=tracking.method_params(config),
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
            finish_failed(tracker, run, exc)
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
    point = flat_point(config, study)
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
        tags={**tracking.method_tags(mc, name), **({tracking.TAG_CACHE_KEY: key} if key else {})},
        params=tracking.method_params(mc),
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
            finish_failed(tracker, run, exc)
            raise
        tracker.finish(run)
        return
    report = _report_all_but_last_epoch(tune.report, mc.epochs)
    try:
        summary = finetune_worker(task, Runtime.auto(ctx.device), report)
    except BaseException as exc:
        finish_failed(tracker, run, exc)
        raise
    tracker.finish(run)
    tune.report(summary)


def flat_point(config: Mapping[str, Any], study: Study) -> dict[str, Any]:
    """The study point of a Tune trial's config (a grid ``point``, or sampled values)."""
    if "point" in config and isinstance(config["point"], Mapping):
        return dict(config["point"])
    return _point_of(config, study)
