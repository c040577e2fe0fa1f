"""Does a study trial train as fast as one process with the same cores?

Measures, in one run on this machine, the fine-tune step throughput (images/s of the
training loop, as logged in ``images_per_s``) of

(a) one process: :func:`occstudy.pipeline.run_method` with torch using every core, as
    ``occstudy train`` runs it, and
(b) a one-trial study on a local Ray with the default resources: the plan gives the single
    trial every CPU of the node, and the trial sets torch's threads to the CPUs it holds.

Both run the same configuration (variant ``none``, ``fast`` recipe, built-in synthetic faces,
48 px) so only the platform differs. Issue 9 asks for a ratio (b) / (a) of at least 0.9.

Run:  .venv/bin/python bench/bench_trial_threads.py [--images 3000] [--epochs 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from machine import machine_line

from occstudy.pipeline import run_method
from occstudy.study import FinetuneSpec, RunOptions, Study, TestSpec, run_study


def _study(images: int, epochs: int) -> Study:
    return Study(
        name="bench-threads",
        variants=("none",),
        recipe="fast",
        finetune=FinetuneSpec(epochs=epochs, train_limit=images, synthetic_size=images),
        test=TestSpec(protocols=("clean",)),
    )


def plain(study: Study) -> float:
    """Mean images/s over the epochs of a plain in-process run with every core."""
    torch.set_num_threads(os.cpu_count() or 1)
    config = replace(study.method_config(study.grid_points()[0]), device="cpu")
    history = run_method(config).finetune_history
    return sum(h["images_per_s"] for h in history) / len(history)


def in_trial(study: Study, storage: Path) -> tuple[float, float]:
    """(images/s logged by the one study trial, the study's wall seconds)."""
    start = time.perf_counter()
    out = run_study(study, RunOptions(storage=str(storage), progress=False))
    seconds = time.perf_counter() - start
    if out.failed or len(out.rows) != 1:
        raise SystemExit(f"study did not finish its one trial: {out.failed}")
    metrics = out.rows[0].metrics
    if "images_per_s" not in metrics:
        raise SystemExit(f"the trial reported no images_per_s: {sorted(metrics)}")
    return float(metrics["images_per_s"]), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000, help="training images")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="A/B pairs")
    parser.add_argument("--out", default="runs/bench-threads", help="scratch storage (wiped)")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    storage = Path(args.out).resolve()
    shutil.rmtree(storage, ignore_errors=True)
    print(machine_line(), flush=True)
    study = _study(args.images, args.epochs)
    print(
        f"fine-tune step, fast recipe, {args.images} images x {args.epochs} epochs, 48 px "
        f"(images/s; one process with {os.cpu_count()} threads vs a one-trial study):",
        flush=True,
    )
    ratios = []
    for r in range(args.repeats):
        a = plain(study)
        b, wall = in_trial(study, storage / f"repeat-{r}")
        ratios.append(b / a)
        print(
            f"  pair {r + 1}: process {a:6.1f}   trial {b:6.1f}   ratio {b / a:.2f}   "
            f"(study wall {wall:.0f} s)",
            flush=True,
        )
    print(f"  median ratio trial / process = {statistics.median(ratios):.2f}", flush=True)
    print("repeat: .venv/bin/python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
