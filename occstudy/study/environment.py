"""Ray's environment for a study: settings made before Ray starts, the session, and the
resources each trial and worker gets."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import replace

from occstudy import tracking
from occstudy.study.spec import Resources, Study, StudyError
from occstudy.train import Runtime

__all__ = [
    "DRIVER_MEMORY",
    "configure_environment",
    "ray_session",
    "resolve_resources",
    "trial_resources",
    "use_assigned_cpus",
    "worker_runtime",
]


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
    # The runner stops Tune itself on SIGINT/SIGTERM/SIGHUP (runner._Stopper): Tune's own
    # SIGINT handler would end fit() as if every trial had finished.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
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


#: Logical memory a Tune trial that only drives a TorchTrainer reserves (bytes).
DRIVER_MEMORY = 512 * 2**20


def resolve_resources(study: Study) -> Study:
    """``study`` with ``Resources.cpus_per_worker`` decided for the connected Ray cluster
    (see :class:`~occstudy.study.spec.Resources`): from its largest live node's CPUs and GPUs."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    node_cpus = max((int(r.get("CPU", 0)) for r in nodes), default=1)
    node_gpus = max((float(r.get("GPU", 0)) for r in nodes), default=0.0)
    check_gpus(study.resources, node_gpus, len(nodes))
    resources = study.resources.resolved(node_cpus, node_gpus)
    return study if resources == study.resources else replace(study, resources=resources)


def check_ray_address(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail at once, before anything is written, when nothing answers at a Ray address
    (``ray.init`` would otherwise wait about a minute and then fail with a traceback).

    ``None`` (start Ray locally), ``auto`` and ``local`` are not checked.

    Raises:
        StudyError: naming the address and why it cannot be reached.
    """
    import socket

    if address is None or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port_text = hostport.rpartition(":")
    if not host or not port_text.isdigit():
        raise StudyError(f"--address {address}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port_text)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise StudyError(
            f"--address {address}: no Ray cluster answers there "
            f"({exc.strerror or type(exc).__name__}); start one with `ray start --head`, or "
            "drop --address to run on a local Ray"
        ) from None


def check_gpus(resources: Resources, node_gpus: float, n_nodes: int) -> None:
    """Refuse GPU requests the cluster can never meet (Ray would leave the trials pending
    forever): GPUs on a cluster without any, or more per worker than the largest node has.

    Raises:
        StudyError: naming the request and what the cluster has.
    """
    want = resources.gpus_per_worker
    if want <= 0:
        return
    if node_gpus <= 0:
        raise StudyError(
            f"Resources.gpus_per_worker={want:g}: the study asks for GPUs but none of the Ray "
            f"cluster's {n_nodes} node(s) has one (drop --gpus-per-trial, or add a GPU node)"
        )
    if want > node_gpus:
        raise StudyError(
            f"Resources.gpus_per_worker={want:g}: one worker needs more GPUs than the largest "
            f"node has ({node_gpus:g}); use more workers with fewer GPUs each (--workers)"
        )


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


def trial_resources(study: Study) -> dict[str, float]:
    """Ray resources of one Tune trial of ``study``."""
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


def worker_runtime() -> Runtime:
    """The device, precision and rank of this Ray Train worker."""
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
