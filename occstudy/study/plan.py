"""What a study will cost, before it runs (``occstudy run STUDY --plan``).

The estimate is a small model of a launch, fed with measured numbers:

* **throughput** of this machine for each (architecture, stem, image size, batch, threads) the
  study uses, measured once by :func:`calibrate` (a few real fine-tune, pretext and test steps
  on random faces, about 20 s) and cached per machine in
  ``~/.cache/occstudy/throughput.json`` (``$OCCSTUDY_CACHE``);
* **data sizes** from the study's own data (decoded through the data cache, so the first plan
  of a new data set decodes it once);
* **fixed costs** per trial, per pretext job and per stage (:data:`OVERHEADS`), measured on
  launches of this project's studies on a 2-core machine (see the README).

A pretext job costs ``epochs x faces / pretext rate``; a fine-tune trial ``epochs x (train
images / training rate + validation images / test rate)`` plus its tests (every protocol and
real-occlusion set, twice with the test-time flip) and the fixed cost of a trial. Jobs run in
grid order on as many slots as the resources allow at once (Tune starts trials in that order),
stage 2 after stage 1. Every assumption the model makes is printed with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from occstudy.method import MethodConfig, get_variant, pretext_cache_key
from occstudy.pipeline import load_method_data, load_pretext_data
from occstudy.study.layout import StudyLayout
from occstudy.study.spec import Study
from occstudy.study.trainables import pretext_data_id
from occstudy.study.worker import PretextTask

__all__ = [
    "OVERHEADS",
    "JobEstimate",
    "NetConfig",
    "Overheads",
    "StudyPlan",
    "Throughput",
    "calibrate",
    "plan_pretext",
    "plan_study",
    "throughput",
]


@dataclass(frozen=True)
class Overheads:
    """Fixed costs of a launch besides training and testing, in seconds.

    Attributes:
        trial: One in-process fine-tune trial besides its epochs and tests: Tune starting it,
            loading the (cached) data, its MLflow child run, confusion-matrix and mask
            pictures, checkpoints, and the pause before the next trial starts.
        ray_train: Added per trial when it runs as a Ray Train job (a ``TorchTrainer``).
        pretext: One pretext job besides its epochs (same parts as ``trial``, no tests).
        stage: One Tune run (per stage).
        launch: Starting the command and Ray, and closing the launch (the ablation table).
    """

    trial: float = 10.0
    ray_train: float = 20.0
    pretext: float = 8.0
    stage: float = 8.0
    launch: float = 12.0


#: Measured on this project's 2-core machine (README, "Planning a study"): a quick-start
#: trial took 26-28 s of which 20 s were its epochs, and 4-5 s passed before the next one
#: started; its pretext jobs 8-12 s each for 5 s of epochs; the whole launch 176 s for
#: 161 s of stages. A TorchTrainer adds 15-25 s per trial.
OVERHEADS = Overheads()


# ---------------------------------------------------------------------------------------------
# Throughput: measured, cached per machine


@dataclass(frozen=True)
class Throughput:
    """Images per second of one network configuration on one machine.

    Attributes:
        finetune: Training images/s of a fine-tune step (crop/flip, occlusion, step).
        pretext: Unlabelled faces/s of a pretext step, per pretext variant.
        test: Test images/s of one pass of one protocol (occluder drawn, forward, no flip).
        config: What was measured.
        machine: The machine (CPU model, CPU count, torch version).
        measured_at: When (UTC, ISO 8601).
        load: The machine's 1-minute load average just before measuring (other work on the
            cores makes every rate look slower than the trials will see on an idle machine).
    """

    finetune: float
    pretext: Mapping[str, float]
    test: float
    config: NetConfig
    machine: str
    measured_at: str
    load: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"pretext": dict(self.pretext)}


def machine_signature() -> str:
    """CPU model, CPU count and torch version: what a measured throughput is valid for."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "?"
    return f"{model} x{os.cpu_count()} torch {torch_version}"


@dataclass(frozen=True)
class NetConfig:
    """What a throughput is measured for: the network, its input, the batch and the threads.

    Attributes:
        arch: Architecture of F.
        stem: Stem of F.
        image_size: Network input side.
        in_chans: Channels of the faces.
        batch_size: Training batch size.
        threads: torch threads (the CPUs a trial holds).
        device: Only ``cpu`` is measured.
    """

    arch: str
    stem: str
    image_size: int
    in_chans: int = 1
    batch_size: int = 64
    threads: int = 1
    device: str = "cpu"

    @staticmethod
    def of(config: MethodConfig, threads: int) -> NetConfig:
        """The network configuration of a run of the method, on ``threads`` threads."""
        return NetConfig(
            arch=config.arch,
            stem=config.stem,
            image_size=config.image_size,
            in_chans=config.in_chans,
            batch_size=config.batch_size,
            threads=threads,
        )


def calibrate(net_config: NetConfig, steps: int = 4) -> Throughput:
    """Measure the throughput of one network configuration on this machine (CPU).

    Runs ``steps`` timed steps (after one untimed) of the real fine-tune and pretext loops and
    of the real test path on random faces: about 20 s for a ResNet-18 at 48 px on 2 cores.

    Args:
        net_config: What to measure.
        steps: Timed steps per measurement.
    """
    import torch

    from occstudy.data import FaceSet
    from occstudy.evaluate import evaluate
    from occstudy.models import OccNet, PretextNet, heads_for_pretext
    from occstudy.occlusion import make_policy
    from occstudy.train import (
        Runtime,
        finetune_one_epoch,
        make_optimizer,
        pretext_one_epoch,
        seeded_generator,
    )

    c = net_config
    image_size, batch_size = c.image_size, c.batch_size
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    before = torch.get_num_threads()
    torch.set_num_threads(c.threads)
    try:
        runtime = Runtime.auto("cpu")
        g = torch.Generator().manual_seed(0)
        n = batch_size * (steps + 1)
        images = torch.randint(0, 256, (n, c.in_chans, image_size, image_size), generator=g)
        images = images.to(torch.uint8)
        labels = torch.randint(0, 7, (n,), generator=g)
        batches = [
            (images[i : i + batch_size], labels[i : i + batch_size])
            for i in range(0, n, batch_size)
        ]
        policy = make_policy("all")

        def rate(run: Any) -> float:
            run(batches[:1])
            start = time.perf_counter()
            run(batches[1:])
            return steps * batch_size / (time.perf_counter() - start)

        net = OccNet(in_chans=c.in_chans, stem=c.stem, arch=c.arch)
        opt = make_optimizer(net, 1e-3, 0.0, "adamw")
        finetune = rate(
            lambda b: finetune_one_epoch(
                net,
                b,
                opt,
                policy=policy,
                occlusion_prob=0.5,
                image_size=image_size,
                runtime=runtime,
                generator=seeded_generator(0),
            )
        )
        pretext: dict[str, float] = {}
        for variant in ("ss", "mask", "ss+mask"):
            pnet = OccNet(
                in_chans=c.in_chans, stem=c.stem, arch=c.arch, heads=heads_for_pretext(variant)
            )
            model = PretextNet(pnet)
            popt = make_optimizer(model, 1e-3, 0.0, "adamw")
            pretext[variant] = rate(
                lambda b, model=model, popt=popt, variant=variant: pretext_one_epoch(
                    model,
                    b,
                    popt,
                    variant=variant,
                    policy=policy,
                    tau=2.0,
                    lam=0.2,
                    image_size=image_size,
                    runtime=runtime,
                    generator=seeded_generator(0),
                )
            )
        faces = FaceSet(
            images=images,
            labels=labels,
            classes=tuple(f"c{i}" for i in range(7)),
            name="calibration",
            label_space="calibration-7",
        )
        net.eval()
        evaluate(net, faces, image_size=image_size, runtime=runtime, protocols=("clean",))
        start = time.perf_counter()
        evaluate(net, faces, image_size=image_size, runtime=runtime, protocols=("clean", "r16"))
        test = 2 * n / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return Throughput(
        finetune=finetune,
        pretext=pretext,
        test=test,
        config=net_config,
        machine=machine_signature(),
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        load=load,
    )


def _throughput_file() -> Path | None:
    from occstudy.data.imageio import cache_dir

    folder = cache_dir()
    return None if folder is None else folder / "throughput.json"


def throughput(
    net_config: NetConfig, *, recalibrate: bool = False, measure: bool = True
) -> tuple[Throughput, bool]:
    """This machine's throughput for one configuration, from the cache or measured now.

    Args:
        net_config: What to measure.
        recalibrate: Measure even when the cache has it.
        measure: Measure when the cache lacks it (False: raise LookupError instead).

    Returns:
        The throughput, and whether it came from the cache.

    Raises:
        LookupError: ``measure`` is False and this machine has no measurement of it.
    """
    machine = machine_signature()
    config = json.dumps(dataclasses.asdict(net_config), sort_keys=True)
    key = hashlib.sha256(f"{machine}\n{config}".encode()).hexdigest()[:16]
    file = _throughput_file()
    entries: dict[str, Any] = {}
    if file is not None and file.is_file():
        try:
            entries = json.loads(file.read_text())
        except (OSError, ValueError):
            entries = {}  # a damaged cache only costs a new measurement
    if not recalibrate and isinstance(entries.get(key), dict):
        try:
            e = entries[key]
            return (
                Throughput(
                    finetune=float(e["finetune"]),
                    pretext={k: float(v) for k, v in e["pretext"].items()},
                    test=float(e["test"]),
                    config=NetConfig(**e["config"]),
                    machine=e["machine"],
                    measured_at=e["measured_at"],
                    load=float(e.get("load", 0.0)),
                ),
                True,
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            pass
    if not measure:
        raise LookupError(f"no throughput measured on this machine for {net_config}")
    measured = calibrate(net_config)
    if file is not None:
        entries[key] = measured.to_dict()
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
            os.replace(tmp, file)
        except OSError:
            pass  # a read-only cache folder only costs the next plan a measurement
    return measured, False


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class JobEstimate:
    """One pretext job or fine-tune trial, and its estimated wall time.

    Attributes:
        kind: ``pretext`` or ``finetune``.
        name: Cache key (pretext) or trial name (fine-tune).
        variant: Ablation variant.
        seconds: Estimated wall time (0 for a cached pretext job).
        images: Training images per epoch (faces, for a pretext job).
        epochs: Epochs.
        cached: Pretext jobs: whether the cache already holds the result.
        parts: Seconds per part (``train``, ``validate``, ``test``, ``pretext``, ``fixed``).
    """

    kind: str
    name: str
    variant: str
    seconds: float
    images: int
    epochs: int
    cached: bool = False
    parts: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyPlan:
    """A launch's jobs, how many run at once, and its estimated wall time.

    Attributes:
        study: Study name.
        grid: Number of grid points (trials per sample).
        pretext: Stage-1 pretext jobs (cached ones cost nothing).
        finetune: Fine-tune trials, in the order Tune starts them.
        concurrent: Trials (and pretext jobs) running at once.
        cpus_per_trial: CPUs (torch threads) each trial holds.
        node_cpus: CPUs the plan assumed.
        stage_seconds: Estimated wall time of stage 1 and of stage 2 (which includes starting
            Ray and closing the launch).
        throughput: The measured throughputs used, one per network configuration.
        assumptions: What the estimate assumes, one line each.
    """

    study: str
    grid: int
    pretext: tuple[JobEstimate, ...]
    finetune: tuple[JobEstimate, ...]
    concurrent: int
    cpus_per_trial: int
    node_cpus: int
    stage_seconds: tuple[float, float]
    throughput: tuple[tuple[Throughput, bool], ...]
    assumptions: tuple[str, ...]

    @property
    def total_seconds(self) -> float:
        return sum(self.stage_seconds)

    def estimates(self, stage: str) -> dict[str, float]:
        """Estimated seconds per Tune trial name of ``stage`` (``pretext`` or ``finetune``),
        for the live ETA."""
        if stage == "pretext":
            return {f"pretext-{j.name}": j.seconds for j in self.pretext}
        return {j.name: j.seconds for j in self.finetune}

    def format(self) -> str:
        """The plan as text (what ``occstudy run --plan`` prints)."""
        lines = [
            f"study {self.study}: {self.grid} grid points, {len(self.finetune)} fine-tune "
            f"trials, {sum(not j.cached for j in self.pretext)} pretext jobs to compute "
            f"({sum(j.cached for j in self.pretext)} cached)",
            f"resources: {self.concurrent} at once, {self.cpus_per_trial} CPU(s) each "
            f"({self.node_cpus} CPUs)",
        ]
        for tp, cached in self.throughput:
            c = tp.config
            pre = ", ".join(f"{k} {v:.0f}" for k, v in tp.pretext.items())
            lines.append(
                f"throughput {c.arch}/{c.stem} {c.image_size} px, batch "
                f"{c.batch_size}, {c.threads} thread(s) "
                f"({'cached, measured ' + tp.measured_at if cached else 'measured now'}): "
                f"fine-tune {tp.finetune:.0f} img/s, pretext {pre}, test {tp.test:.0f} img/s"
            )
            if tp.load >= 0.5:
                lines.append(
                    f"  WARNING: measured while the machine was busy (load {tp.load:.1f}): the "
                    "estimate is too long for an idle machine; --recalibrate when it is idle"
                )
        if self.pretext:
            lines.append("stage 1, pretext:")
            for j in self.pretext:
                what = "cached" if j.cached else _minutes(j.seconds)
                lines.append(
                    f"  {j.variant:<8} {j.name}  {j.images} faces x {j.epochs} epoch(s)  {what}"
                )
        lines.append("stage 2, fine-tune:")
        for j in self.finetune:
            parts = ", ".join(f"{k} {_minutes(v)}" for k, v in j.parts.items() if v)
            lines.append(
                f"  {j.name}  {j.images} images x {j.epochs} epoch(s)  "
                f"{_minutes(j.seconds)}  ({parts})"
            )
        s1, s2 = self.stage_seconds
        lines.append(
            f"estimated wall time: {_minutes(self.total_seconds)} "
            f"(stage 1 {_minutes(s1)}, stage 2 {_minutes(s2)})"
        )
        lines.append("assumes:")
        lines.extend(f"  - {a}" for a in self.assumptions)
        return "\n".join(lines)


def _minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def makespan(durations: Sequence[float], slots: int) -> float:
    """Wall time of jobs started in the given order, each on the first free of ``slots``."""
    free = [0.0] * max(1, slots)
    for d in durations:
        i = min(range(len(free)), key=free.__getitem__)
        free[i] += d
    return max(free) if durations else 0.0


@dataclass
class _Sizes:
    """Sizes of a trial's data (computed once per data setting)."""

    train: int
    val: int
    test: int
    real: int


class _SizeBook:
    """Data sizes of the study's configurations, loading each data setting once."""

    def __init__(self) -> None:
        self._base: dict[str, Any] = {}
        self._pretext: dict[str, int] = {}

    def finetune(self, mc: MethodConfig) -> _Sizes:
        base_config = dataclasses.replace(mc, label_fraction=1.0, seed=0)
        key = repr((mc.data, mc.image_size, mc.in_chans, mc.train_limit, mc.synthetic_size))
        if key not in self._base:
            self._base[key] = load_method_data(base_config, with_pretext=False)
        data = self._base[key]
        train = data.train
        if mc.label_fraction < 1:
            train = train.stratified_fraction(mc.label_fraction, mc.seed)
        return _Sizes(
            train=len(train),
            val=len(data.val),
            test=len(data.test),
            real=sum(len(r) for r in data.real.values()),
        )

    def pretext(self, mc: MethodConfig) -> int:
        key = pretext_data_id(mc)
        if key not in self._pretext:
            faces = load_pretext_data(mc)
            self._pretext[key] = 0 if faces is None else len(faces)
        return self._pretext[key]


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
        filled = dict(point)
        for name, dist in sampled.items():
            filled[name] = dist.bounds()[0]
        mc = study.method_config(filled)
        if not mc.runs_pretext:
            continue
        # The data fingerprint depends on the data settings only: load each set once.
        data_id = pretext_data_id(mc)
        if data_id not in fingerprints:
            data = load_pretext_data(mc)
            assert data is not None  # a run with a pretext stage has data
            fingerprints[data_id] = data.fingerprint()
        if any(p in sampled for p in mc.method_variant.pretext_params):
            continue
        key = pretext_cache_key(mc, fingerprints[data_id])
        tasks.setdefault(key, PretextTask(mc, key, str(cache_root)))
    return tasks


def _trial_points(study: Study) -> list[dict[str, Any]]:
    """Every trial's point, in the order Tune starts them (samples take the range's low end,
    which sizes a trial as well as any other value)."""
    sampled = study.sampled_params()
    points = []
    for point in study.grid_points():
        for _ in range(study.search.num_samples if sampled else 1):
            filled = dict(point)
            for name, dist in sampled.items():
                filled[name] = dist.bounds()[0]
            points.append(filled)
    return points


def plan_study(
    study: Study,
    *,
    storage: str | None = None,
    num_cpus: int | None = None,
    no_cache: bool = False,
    recalibrate: bool = False,
    measure: bool = True,
    fingerprints: dict[str, str] | None = None,
    overheads: Overheads = OVERHEADS,
) -> StudyPlan:
    """Estimate a launch of ``study`` on this machine (nothing is trained or logged).

    Args:
        study: The study (already its ``smoke()`` version for a smoke launch).
        storage: Storage root (to see which pretext results are cached).
        num_cpus: CPUs of the (local) Ray the launch would start (default: all of them).
        no_cache: Plan as ``--no-cache``: every pretext job computes.
        recalibrate: Measure the throughput again instead of using the cached one.
        measure: Measure a throughput this machine has no measurement of (False: raise
            LookupError, as the driver does for its live ETA rather than spend the time).
        fingerprints: Unlabelled-data fingerprints already computed (see
            :func:`plan_pretext`); filled with the ones this computes.
        overheads: Fixed costs (default :data:`OVERHEADS`).

    Raises:
        LookupError: ``measure`` is False and a throughput is missing.
    """
    from occstudy.study.cache import PretextCache

    node_cpus = num_cpus or os.cpu_count() or 1
    resources = study.resources.resolved(node_cpus)
    cpus_per_trial = resources.cpus * resources.workers
    concurrent = max(1, node_cpus // cpus_per_trial)
    if resources.max_concurrent is not None:
        concurrent = min(concurrent, resources.max_concurrent)
    layout = StudyLayout.of(study.name, storage)
    cache = PretextCache(layout.cache_dir)
    sizes = _SizeBook()
    rates: dict[NetConfig, tuple[Throughput, bool]] = {}

    def rate(mc: MethodConfig) -> Throughput:
        net_config = NetConfig.of(mc, resources.cpus)
        if net_config not in rates:
            rates[net_config] = throughput(net_config, recalibrate=recalibrate, measure=measure)
        return rates[net_config][0]

    def pretext_seconds(mc: MethodConfig) -> tuple[int, float]:
        faces = sizes.pretext(mc)
        per_s = rate(mc).pretext[mc.variant] * resources.workers
        return faces, mc.pretext_epochs * faces / per_s

    # Stage 1: the grid's distinct pretext jobs.
    pretext_jobs: list[JobEstimate] = []
    for key, task in plan_pretext(study, layout.cache_dir, fingerprints).items():
        faces, seconds = pretext_seconds(task.config)
        cached = cache.has(key) and not no_cache
        pretext_jobs.append(
            JobEstimate(
                kind="pretext",
                name=key,
                variant=task.config.variant,
                seconds=0.0 if cached else seconds + overheads.pretext,
                images=faces,
                epochs=task.config.pretext_epochs,
                cached=cached,
                parts={} if cached else {"pretext": seconds, "fixed": overheads.pretext},
            )
        )
    sampled = study.sampled_params()

    # Stage 2: every fine-tune trial.
    trials: list[JobEstimate] = []
    for point in _trial_points(study):
        mc = study.method_config(point)
        size = sizes.finetune(mc)
        tp = rate(mc)
        flips = 2 if mc.tta_flip else 1
        train = mc.epochs * size.train / (tp.finetune * resources.workers)
        validate = mc.epochs * size.val * flips / tp.test
        test = (size.test * len(mc.protocols) + size.real) * flips / tp.test
        fixed = overheads.trial + (overheads.ray_train if resources.use_ray_train else 0.0)
        pretext = 0.0
        if mc.runs_pretext and any(p in sampled for p in get_variant(mc.variant).pretext_params):
            pretext = pretext_seconds(mc)[1]  # a sampled λ/τ: the trial computes its own
        parts = {
            "pretext": pretext,
            "train": train,
            "validate": validate,
            "test": test,
            "fixed": fixed,
        }
        trials.append(
            JobEstimate(
                kind="finetune",
                name=study.trial_name(point),
                variant=mc.variant,
                seconds=sum(parts.values()),
                images=size.train,
                epochs=mc.epochs,
                parts=parts,
            )
        )
    computing = [j.seconds for j in pretext_jobs if not j.cached]
    stage1 = makespan(computing, concurrent) + (overheads.stage if computing else 0.0)
    stage2 = makespan([j.seconds for j in trials], concurrent) + overheads.stage
    stage2 += overheads.launch
    assumptions = [
        f"{node_cpus} CPUs on this machine (a cluster's nodes: pass --num-cpus per node "
        "or plan on the head node)",
        "training speed as measured for the configuration on idle cores: other work on the "
        "machine slows every trial (two jobs on the same cores about halve each)",
        "every trial runs all its epochs (an ASHA scheduler stops some early) and fails "
        "no attempt (a retry repeats its epochs since the last checkpoint)",
        f"fixed costs: {overheads.trial:.0f} s per trial, {overheads.pretext:.0f} s per "
        f"pretext job, {overheads.stage:.0f} s per stage, {overheads.launch:.0f} s to start "
        "Ray and close the launch"
        + (f", {overheads.ray_train:.0f} s per Ray Train job" if resources.use_ray_train else ""),
    ]
    if resources.workers > 1:
        assumptions.append(
            f"{resources.workers} data-parallel workers per trial scale linearly (an upper "
            "bound on speed)"
        )
    if sampled:
        assumptions.append(
            "sampled parameters sized at their range's low end; a trial whose λ/τ is "
            "sampled computes its own pretext stage"
        )
    return StudyPlan(
        study=study.name,
        grid=len(study.grid_points()),
        pretext=tuple(pretext_jobs),
        finetune=tuple(trials),
        concurrent=concurrent,
        cpus_per_trial=cpus_per_trial,
        node_cpus=node_cpus,
        stage_seconds=(stage1, stage2),
        throughput=tuple(rates.values()),
        assumptions=tuple(assumptions),
    )
