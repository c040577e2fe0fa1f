"""A real tiny study end to end: Ray (local, 127.0.0.1) + Tune + MLflow (sqlite)."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from occstudy import tracking
from occstudy.study import (
    FinetuneSpec,
    LogUniform,
    PretextSpec,
    RunOptions,
    SearchSpec,
    Study,
    TestSpec,
    run_study,
)
from occstudy.study.runner import ablation_table

TINY = Study(
    name="tiny",
    image_size=32,
    batch_size=16,
    variants=("none", "ss+mask"),
    pretext=PretextSpec(epochs=1, limit=48),
    finetune=FinetuneSpec(epochs=2, train_limit=48, synthetic_size=96),
    test=TestSpec(protocols=("clean", "r16")),
)


pytestmark = pytest.mark.usefixtures("ray_loopback")


def test_tiny_study_through_ray_and_mlflow_then_cache_reuse(tmp_path) -> None:
    first = run_study(TINY, RunOptions(storage=str(tmp_path), num_cpus=2, progress=False))
    assert not first.failed, [r.error for r in first.failed]
    assert (first.pretext_computed, first.pretext_cached) == (1, 0)
    assert sorted(r.point["variant"] for r in first.rows) == ["none", "ss+mask"]
    for row in first.rows:
        assert 0 <= row.metrics["test.clean.acc"] <= 1 and "test.r16.acc" in row.metrics
    table = ablation_table(first.rows, TINY)
    assert "| none |" in table and "| ss+mask |" in table

    uri = first.tracking_uri
    assert uri == f"sqlite:///{tmp_path / 'tiny' / 'mlflow.db'}"
    parents = tracking.find_runs(uri, "tiny", kind="study")
    trials = tracking.find_runs(uri, "tiny", kind="finetune")
    pretext = tracking.find_runs(uri, "tiny", kind="pretext")
    assert len(parents) == 1 and len(trials) == 2 and len(pretext) == 1
    for run in trials + pretext:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.status == "FINISHED"
        assert {"lambda", "tau", "lr", "variant", "seed"} <= set(run.data.params)
    ss = next(r for r in trials if r.data.params["variant"] == "ss+mask")
    assert "test.r16.mask_iou" in ss.data.metrics and "val_acc" in ss.data.metrics
    art = Path(ss.info.artifact_uri.removeprefix("file://"))
    assert (art / "confusion" / "clean.json").is_file() and (
        art / "confusion" / "r16.png"
    ).is_file()
    assert json.loads((tmp_path / "tiny" / "study.json").read_text())["name"] == "tiny"

    # A second launch of the same study finds its pretext stage in the cache.
    second = run_study(TINY, RunOptions(storage=str(tmp_path), num_cpus=2, progress=False))
    assert (second.pretext_computed, second.pretext_cached) == (0, 1)
    assert not second.failed
    assert len(tracking.find_runs(uri, "tiny", kind="pretext")) == 1  # found again, not duplicated


def _kill_processes_mentioning(text: str) -> None:
    """SIGKILL every process whose command line contains ``text`` (Ray's daemons that outlive
    a killed driver; a crashed machine would take them down too)."""
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            if text.encode() in (proc_dir / "cmdline").read_bytes():
                os.kill(int(proc_dir.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


@pytest.mark.slow
def test_killed_driver_resumes_without_rerunning_or_duplicating(tmp_path) -> None:
    study_file = tmp_path / "tiny_study.py"
    study_file.write_text(
        "from occstudy.study import FinetuneSpec, PretextSpec, Study, TestSpec\n"
        "study = Study(name='tiny', image_size=32, batch_size=16, variants=('none', 'ss', 'ss+mask'),\n"
        "    pretext=PretextSpec(epochs=1, limit=48),\n"
        "    finetune=FinetuneSpec(epochs=3, train_limit=48, synthetic_size=96),\n"
        "    test=TestSpec(protocols=('clean',)), resources=__import__('occstudy.study', fromlist=['x']).Resources(max_concurrent=1))\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "occstudy.cli",
        "run",
        str(study_file),
        "--storage",
        str(tmp_path),
        "--num-cpus",
        "2",
    ]
    # Ray's own folder, short (unix socket paths) and private to this test, so the processes
    # of the killed driver's Ray can be found and stopped without touching any other Ray.
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_TMPDIR": ray_tmp,
    }
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    uri = f"sqlite:///{tmp_path / 'tiny' / 'mlflow.db'}"
    deadline = time.time() + 900
    finished = []
    while time.time() < deadline:
        time.sleep(5)
        if (tmp_path / "tiny" / "mlflow.db").exists():
            finished = tracking.find_runs(uri, "tiny", kind="finetune", status="FINISHED")
            if finished:
                break
    assert finished, "no trial finished in time"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything in its session
    proc.wait()
    _kill_processes_mentioning(ray_tmp)
    done_before = {r.data.tags["occstudy.key"]: r.info.run_id for r in finished}

    resumed = subprocess.run(
        [*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=1200
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = tracking.find_runs(uri, "tiny", kind="finetune")
    keys = [r.data.tags["occstudy.key"] for r in trials]
    assert len(keys) == len(set(keys)) == 3  # no duplicate runs
    assert all(r.info.status == "FINISHED" for r in trials)
    assert len(tracking.find_runs(uri, "tiny", kind="study")) == 1  # the same parent run
    for key, run_id in done_before.items():
        run = next(r for r in trials if r.data.tags["occstudy.key"] == key)
        assert run.info.run_id == run_id
        # Not rerun: its per-epoch history was logged once.
        history = tracking._client(uri).get_metric_history(run_id, "val_acc")
        assert len(history) == 3


def test_optuna_search_with_asha_logs_sampled_params(tmp_path) -> None:
    study = Study(
        name="tiny-hpo",
        image_size=32,
        batch_size=16,
        variants=("none",),
        finetune=FinetuneSpec(epochs=2, train_limit=48, synthetic_size=96),
        test=TestSpec(protocols=("clean",)),
        search_space={"lr": LogUniform(1e-5, 1e-2)},
        search=SearchSpec(algorithm="tpe", num_samples=3, scheduler="asha", grace_period=1),
    )
    out = run_study(study, RunOptions(storage=str(tmp_path), num_cpus=2, progress=False))
    assert not out.failed, [r.error for r in out.failed]
    assert len(out.rows) == 3
    lrs = {r.point["lr"] for r in out.rows}
    assert len(lrs) == 3 and all(1e-5 <= lr <= 1e-2 for lr in lrs)
    runs = tracking.find_runs(out.tracking_uri, "tiny-hpo", kind="finetune")
    assert sorted(float(r.data.params["lr"]) for r in runs) == pytest.approx(sorted(lrs))
    # A trial ASHA stopped early is closed too (no run left RUNNING).
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}
    # One Optuna search per grid point, its state saved for a restore.
    (search_dir,) = (tmp_path / "tiny-hpo" / "tune").glob("launch-1-search-*")
    assert search_dir.name == "launch-1-search-none_s0_f1_lam0.2_tau2_plr0.0001"
    assert list(search_dir.glob("searcher-state-*.pkl"))


def test_an_interrupted_tune_run_is_not_reported_done() -> None:
    from occstudy.study.runner import _raise_if_interrupted

    class Grid(list):  # the two counts a Tune ResultGrid has
        def __init__(self, n: int, terminated: int, errors: int) -> None:
            super().__init__(range(n))
            self.num_terminated, self.num_errors = terminated, errors

    _raise_if_interrupted(Grid(3, 2, 1), "fine-tune")
    with pytest.raises(KeyboardInterrupt, match="2 fine-tune trial"):
        _raise_if_interrupted(Grid(3, 1, 0), "fine-tune")
