"""What running the method as a study on Ray costs, and what the pretext cache saves.

Two measurements, in one process, on the built-in synthetic faces:

1. **Overhead per trial.** The same fine-tune trials (variant ``none``, one per seed) run
   (a) as a plain loop in this process (``run_method``, one after the other),
   (b) as a study: Ray Tune trials that run the loop in the trial process, one at a time, and
   (c) as a study whose trials each launch a one-worker Ray Train ``TorchTrainer``.
   All use as many torch threads as a trial gets (every CPU up to 8), so the difference per
   trial is what Ray, Tune, Train and MLflow add. The in-process study is launched with n and
   2n trials: the difference is the cost of n trials without the launch's fixed cost (Ray
   start, the launch's MLflow run), printed apart. Ray's own ``TorchTrainer`` with a no-op loop
   is timed for comparison with the Ray Train trials.
2. **Pretext cache.** A 4-variant x 2-seed study launched with ``--no-cache`` (every pretext
   stage computed), then launched again with the cache (none computed): wall-time ratio.

Prints the machine, the figures and the command to repeat them.

Run:  .venv/bin/python bench/bench_study.py [--trials 3] [--images 512] [--out runs/bench-study]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from machine import machine_line

from occstudy.pipeline import run_method
from occstudy.study import (
    FinetuneSpec,
    PretextSpec,
    Resources,
    RunOptions,
    Study,
    TestSpec,
    run_study,
)


def _study(name: str, images: int, variants: tuple[str, ...], seeds: tuple[int, ...]) -> Study:
    return Study(
        name=name,
        variants=variants,
        seeds=seeds,
        pretext=PretextSpec(epochs=1, limit=images),
        finetune=FinetuneSpec(epochs=1, train_limit=images, synthetic_size=images),
        test=TestSpec(protocols=("clean", "r16")),
        resources=Resources(max_concurrent=1),
    )


PHASES = ("load", "train", "test", "log")


def _timed_study(
    study: Study, storage: Path, phases: dict[str, float] | None = None, **options: object
) -> tuple[float, int, int]:
    """Wall time of a launch, pretext jobs computed, trials; ``phases`` gets the trials' mean
    seconds per phase (load, train, test, log: measured inside each trial)."""
    start = time.perf_counter()
    out = run_study(study, RunOptions(storage=str(storage), progress=False, **options))  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    if out.failed:
        raise SystemExit(f"{study.name}: {len(out.failed)} trial(s) failed: {out.failed[0].error}")
    if phases is not None:
        for phase in PHASES:
            values = [r.metrics.get(f"seconds_{phase}", float("nan")) for r in out.rows]
            phases[phase] = sum(values) / len(values)
    return seconds, out.pretext_computed, len(out.rows)


def bare_torchtrainer(threads: int, repeats: int = 2) -> float:
    """Mean seconds of Ray's own ``TorchTrainer.fit()`` with a loop that does nothing (one
    worker of ``threads`` CPUs, local Ray): what Ray Train costs before any occstudy code."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    def noop(config: dict[str, object]) -> None:
        ray.train.report({"done": 1})

    ray.init(num_cpus=threads, include_dashboard=True, log_to_driver=False)
    try:
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            TorchTrainer(
                noop,
                scaling_config=ray.train.ScalingConfig(
                    num_workers=1, resources_per_worker={"CPU": threads}
                ),
                run_config=ray.train.RunConfig(name=f"bare-{i}", storage_path="/tmp/bare-tt"),
            ).fit()
            times.append(time.perf_counter() - start)
    finally:
        ray.shutdown()
    return sum(times) / len(times)


def overhead(trials: int, images: int, storage: Path) -> dict[str, float]:
    """Seconds per trial: plain loop, in-process Tune trial (fixed launch cost apart), Ray
    Train trial, and Ray's bare TorchTrainer."""
    # A trial gets every CPU of this (one-node) machine up to 8, and torch as many threads: the
    # plain loop gets the same.
    threads = min(os.cpu_count() or 1, 8)
    torch.set_num_threads(threads)
    seeds = tuple(range(trials))
    study = _study("bench-overhead", images, ("none",), seeds)
    start = time.perf_counter()
    plain_phases = dict.fromkeys(PHASES, 0.0)
    for seed in seeds:
        config = replace(
            study.method_config({**study.grid_points()[0], "seed": seed}), device="cpu"
        )
        seconds = run_method(config).seconds
        plain_phases["load"] += seconds["load"] / trials
        plain_phases["train"] += seconds["finetune"] / trials
        plain_phases["test"] += seconds["evaluate"] / trials
    plain = (time.perf_counter() - start) / trials
    # Two launches, n and 2n trials: the difference is what n more trials cost, without the
    # launch's fixed cost (Ray start and stop, the launch's MLflow run, the two Tune runs).
    tune_phases: dict[str, float] = {}
    tune_n, _, n = _timed_study(study, storage / "in-process", tune_phases, num_cpus=threads)
    assert n == trials
    double = replace(study, name="bench-overhead-2n", seeds=tuple(range(2 * trials)))
    tune_2n, _, n = _timed_study(double, storage / "in-process-2n", num_cpus=threads)
    assert n == 2 * trials
    per_trial = (tune_2n - tune_n) / trials
    for phase in PHASES:
        print(
            f"  {phase:5s} per trial: plain loop {plain_phases[phase]:5.2f} s, "
            f"Tune trial {tune_phases[phase]:5.2f} s",
            flush=True,
        )
    train_study = replace(
        study, name="bench-overhead-train", resources=Resources(max_concurrent=1, ray_train=True)
    )
    train_s, _, n = _timed_study(train_study, storage / "ray-train", num_cpus=threads)
    assert n == trials
    return {
        "threads": threads,
        "plain": plain,
        "tune": tune_n / trials,
        "tune_per_trial": per_trial,
        "tune_fixed": tune_n - trials * per_trial,
        "train": train_s / trials,
        "bare_torchtrainer": bare_torchtrainer(threads),
    }


def cache(images: int, storage: Path) -> dict[str, float]:
    """Wall time of a 4-variant x 2-seed study without and with the pretext cache."""
    study = _study("bench-cache", images, ("none", "ss", "mask", "ss+mask"), (0, 1))
    no_cache, computed, n = _timed_study(study, storage, no_cache=True)
    cached, computed_again, n2 = _timed_study(study, storage)
    assert n == n2 == 8 and computed_again == 0, (n, n2, computed_again)
    return {
        "no_cache": no_cache,
        "cached": cached,
        "pretext_computed": computed,
        "pretext_computed_cached": computed_again,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3, help="trials of the overhead part")
    parser.add_argument("--images", type=int, default=512, help="images per stage and trial")
    parser.add_argument("--out", default="runs/bench-study", help="scratch storage (wiped)")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-cache", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    storage = Path(args.out).resolve()
    shutil.rmtree(storage, ignore_errors=True)
    print(machine_line(), flush=True)
    if not args.skip_overhead:
        o = overhead(args.trials, args.images, storage / "overhead")
        print(
            f"overhead per trial ({args.trials} fine-tune trials, {args.images} images, 1 epoch, "
            f"{o['threads']:.0f} torch threads everywhere):\n"
            f"  plain loop        {o['plain']:6.1f} s/trial\n"
            f"  Tune, in-process  {o['tune_per_trial']:6.1f} s/trial  (+"
            f"{o['tune_per_trial'] - o['plain']:.1f} s, ratio {o['tune_per_trial'] / o['plain']:.2f};"
            f" from launches of {args.trials} and {2 * args.trials} trials) plus "
            f"{o['tune_fixed']:.1f} s per launch\n"
            f"  Tune, in-process, launch of {args.trials} all-in: {o['tune']:6.1f} s/trial "
            f"(ratio {o['tune'] / o['plain']:.2f})\n"
            f"  Tune + Ray Train  {o['train']:6.1f} s/trial  (+{o['train'] - o['plain']:.1f} s, "
            f"ratio {o['train'] / o['plain']:.2f}); Ray's bare TorchTrainer.fit() with a "
            f"no-op loop: {o['bare_torchtrainer']:.1f} s",
            flush=True,
        )
    if not args.skip_cache:
        c = cache(args.images, storage / "cache")
        print(
            f"4 variants x 2 seeds ({args.images} images per stage):\n"
            f"  --no-cache  {c['no_cache']:6.1f} s ({c['pretext_computed']:.0f} pretext jobs)\n"
            f"  cached      {c['cached']:6.1f} s ({c['pretext_computed_cached']:.0f} pretext jobs)\n"
            f"  ratio cached / no-cache = {c['cached'] / c['no_cache']:.2f}",
            flush=True,
        )
    print("repeat: .venv/bin/python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
