"""A real tiny study end to end: Ray (local, 127.0.0.1) + Tune + MLflow (sqlite)."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow_server import MlflowServer

from occstudy import tracking
from occstudy.study import (
    FinetuneSpec,
    LogUniform,
    PretextSpec,
    Resources,
    RunOptions,
    SearchSpec,
    Study,
    TestSpec,
    run_study,
)

TINY = Study(
    name="tiny",
    image_size=32,
    batch_size=16,
    variants=("none", "ss+mask"),
    pretext=PretextSpec(epochs=1, limit=48),
    finetune=FinetuneSpec(epochs=2, train_limit=48, synthetic_size=96),
    test=TestSpec(protocols=("clean", "r16")),
)


@pytest.mark.usefixtures("local_ray")
def test_tiny_study_in_process_then_ray_train_then_cache_reuse(tmp_path) -> None:
    """Launch 1 runs both stages in the trial processes, launch 2 in one-worker TorchTrainers
    (the two paths agree for the same seed), launch 3 reuses the cached pretext stage."""
    first = run_study(TINY, RunOptions(storage=str(tmp_path), progress=False))
    assert not first.failed, [r.error for r in first.failed]
    assert (first.pretext_computed, first.pretext_cached) == (1, 0)
    assert sorted(r.point["variant"] for r in first.rows) == ["none", "ss+mask"]
    for row in first.rows:
        assert 0 <= row.metrics["test.clean.acc"] <= 1 and "test.r16.acc" in row.metrics
        # Where the trial's time went, phase by phase, adds up to the trial's own time.
        phases = [row.metrics[f"seconds_{p}"] for p in ("load", "train", "test", "log")]
        assert all(s >= 0 for s in phases) and phases[1] > 0
        assert sum(phases) <= row.metrics["trial_seconds"] + 1e-6
    # The report's ablation table, printed by `occstudy run` and written next to the study.
    table = first.table
    assert "| none |" in table and "| ss+mask |" in table
    assert (tmp_path / "tiny" / "ablation.md").read_text() == table

    uri = first.tracking_uri
    assert uri == f"sqlite:///{tmp_path / 'tiny' / 'mlflow.db'}"
    parents = tracking.find_runs(uri, "tiny", kind="study")
    trials = tracking.find_runs(uri, "tiny", kind="finetune")
    pretext = tracking.find_runs(uri, "tiny", kind="pretext")
    assert len(parents) == 1 and len(trials) == 2 and len(pretext) == 1
    # What the MLflow UI shows: the launch run's description is its ablation table, and the
    # experiment opens as model training (not MLflow 3's GenAI view).
    assert parents[0].data.tags[tracking.TAG_NOTE] == table
    experiment = tracking.store._client(uri).get_experiment(parents[0].info.experiment_id)
    assert experiment.tags[tracking.TAG_EXPERIMENT_KIND] == "custom_model_development"
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

    # Launch 2: ss+mask (every head) with both stages in one-worker TorchTrainers (Ray Train),
    # pretext recomputed (--no-cache): same seed, same results as the trial-process loop.
    ray_train = Study(
        **{**TINY.__dict__, "variants": ("ss+mask",), "resources": Resources(ray_train=True)}
    )
    second = run_study(ray_train, RunOptions(storage=str(tmp_path), no_cache=True, progress=False))
    assert not second.failed, [r.error for r in second.failed]
    assert (second.pretext_computed, second.pretext_cached) == (1, 0)
    by_variant = {r.point["variant"]: r.metrics for r in first.rows}
    assert [r.point["variant"] for r in second.rows] == ["ss+mask"]
    for row in second.rows:
        a, b = by_variant[row.point["variant"]], row.metrics
        keys = sorted(k for k in a if k.startswith("test."))
        assert keys and keys == sorted(k for k in b if k.startswith("test."))
        for key in [*keys, "val_acc", "best_val_acc"]:
            assert b[key] == pytest.approx(a[key], abs=1e-6), (row.point["variant"], key)
    (pretext_run,) = tracking.find_runs(uri, "tiny", kind="pretext")  # found again, not new
    losses = tracking.store._client(uri).get_metric_history(pretext_run.info.run_id, "pretext.loss")
    assert len(losses) == 2 and losses[0].value == pytest.approx(losses[1].value, abs=1e-6)
    trials = tracking.find_runs(uri, "tiny", kind="finetune")
    assert sorted(r.data.tags.get("ray_workers", "-") for r in trials) == ["-", "-", "1"]

    # Launch 3 finds its pretext stage in the cache, whatever the resources were.
    third = run_study(TINY, RunOptions(storage=str(tmp_path), progress=False))
    assert (third.pretext_computed, third.pretext_cached) == (0, 1)
    assert not third.failed
    assert len(tracking.find_runs(uri, "tiny", kind="pretext")) == 1


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
@pytest.mark.usefixtures("ray_loopback")
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
        history = tracking.store._client(uri).get_metric_history(run_id, "val_acc")
        assert len(history) == 3


@pytest.mark.usefixtures("local_ray")
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
    out = run_study(study, RunOptions(storage=str(tmp_path), progress=False))
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


def test_progress_of_a_restored_launch_counts_finished_trials_and_restarts_the_clock(
    capsys,
) -> None:
    from types import SimpleNamespace

    from ray import cloudpickle  # how Tune pickles its callbacks with the Tuner

    from occstudy.study.progress import Progress

    progress = Progress("finetune", 4, "val_acc", "max", True)
    progress.start -= 5000  # as if pickled with the Tuner long ago
    restored = cloudpickle.loads(cloudpickle.dumps(progress))
    restored.setup()
    trials = [SimpleNamespace(status=s) for s in ("TERMINATED", "TERMINATED", "ERROR", "PENDING")]
    restored.on_step_begin(0, trials)
    restored.on_trial_start(0, trials, "t3")
    restored.on_step_begin(1, trials)  # counted once, not at every step
    restored.on_trial_complete(1, trials, "t3")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "done 3/4, running 0, failed 0" in line, line
    assert float(line.split()[1].rstrip("s]")) < 60, line


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_a_trial_whose_worker_dies_is_retried_from_its_last_checkpoint(tmp_path) -> None:
    """SIGKILL the trial's process after its first epoch's checkpoint: Tune's failure config
    restarts it, it resumes at epoch 2, and the MLflow run is the same one, finished."""
    import threading

    from ray.util.state import list_actors

    # Epochs of a few seconds each, so the kill lands inside the trial.
    study = replace(
        TINY,
        name="tiny-fault",
        variants=("none",),
        finetune=FinetuneSpec(epochs=3, train_limit=256, synthetic_size=96),
        test=TestSpec(protocols=("clean",)),
    )
    killed: list[int] = []

    def kill_after_first_checkpoint() -> None:
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            time.sleep(0.05)
            if not list((tmp_path / "tiny-fault" / "trials").rglob("last.pt")):
                continue
            for actor in list_actors(filters=[("state", "=", "ALIVE")]):
                if actor.class_name == "ImplicitFunc" and actor.pid:
                    os.kill(actor.pid, signal.SIGKILL)
                    killed.append(actor.pid)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    out = run_study(study, RunOptions(storage=str(tmp_path), progress=False))
    killer.join(timeout=5)
    assert killed, "the trial finished before its process could be killed"
    assert not out.failed, [r.error for r in out.failed]
    (row,) = out.rows
    assert "test.clean.acc" in row.metrics
    (run,) = tracking.find_runs(out.tracking_uri, "tiny-fault", kind="finetune")
    assert run.info.status == "FINISHED"
    history = tracking.store._client(out.tracking_uri).get_metric_history(
        run.info.run_id, "val_acc"
    )
    # Epoch 0 ran once: the retry resumed from last.pt instead of starting over.
    assert sorted(m.step for m in history) == [0, 1, 2]
    # The same study uninterrupted: the resumed trial ends with the same numbers.
    ref = run_study(replace(study, name="tiny-nofault"), RunOptions(storage=str(tmp_path)))
    (ref_row,) = ref.rows
    for key in ("test.clean.acc", "val_acc", "best_val_acc"):
        assert row.metrics[key] == ref_row.metrics[key], key
    (ref_run,) = tracking.find_runs(ref.tracking_uri, "tiny-nofault", kind="finetune")
    ref_history = tracking.store._client(ref.tracking_uri).get_metric_history(
        ref_run.info.run_id, "val_acc"
    )
    by_step = {m.step: m.value for m in history}
    assert by_step == {m.step: m.value for m in ref_history}


def _wait_for(predicate, what: str, proc: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        assert proc.poll() is None, f"the study ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.mark.usefixtures("ray_loopback")
def test_signals_stop_each_stage_and_resume_finishes_without_repeating_work(tmp_path) -> None:
    """SIGINT in stage 1 (pretext), then SIGTERM in stage 2 (fine-tune) of the resumed launch:
    each exits 130 / 143 naming the --resume command, with the launch and its unfinished runs
    KILLED in MLflow; a last --resume finishes, and no pretext epoch or fine-tune epoch was
    logged twice."""
    study_file = tmp_path / "sig_study.py"
    study_file.write_text(
        "from occstudy.study import FinetuneSpec, PretextSpec, Resources, Study, TestSpec\n"
        "study = Study(name='sig', image_size=32, batch_size=16, variants=('none', 'ss'),\n"
        "    pretext=PretextSpec(epochs=2, limit=1024),\n"
        "    finetune=FinetuneSpec(epochs=2, train_limit=96, synthetic_size=192),\n"
        "    test=TestSpec(protocols=('clean',)), resources=Resources(max_concurrent=1))\n"
    )
    cmd = [sys.executable, "-m", "occstudy.cli", "run", str(study_file)]
    cmd += ["--storage", str(tmp_path), "--num-cpus", "2"]
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_TMPDIR": ray_tmp}
    uri = f"sqlite:///{tmp_path / 'sig' / 'mlflow.db'}"

    def runs(kind: str, status: str | None = None) -> list:
        if not (tmp_path / "sig" / "mlflow.db").exists():
            return []
        return tracking.find_runs(uri, "sig", kind=kind, status=status)

    def interrupted(extra: list[str], signum: int, markers: tuple[str, ...], what: str) -> None:
        # Wait on the driver's own progress lines, not on MLflow: opening the store while the
        # driver creates it would race its schema migration.
        err = tmp_path / f"stderr-{signum}.txt"
        with open(err, "w") as fh:
            proc = subprocess.Popen([*cmd, *extra], env=env, stdout=subprocess.DEVNULL, stderr=fh)
            try:
                _wait_for(lambda: any(m in err.read_text() for m in markers), what, proc)
                proc.send_signal(signum)
                code = proc.wait(timeout=180)
            finally:
                if proc.poll() is None:
                    proc.kill()
        text = err.read_text()
        assert code == 128 + signum, text[-3000:]
        assert text.rstrip().endswith("--resume"), text[-1500:]  # the command to continue
        (parent,) = runs("study")
        assert parent.info.status == "KILLED"
        assert runs("pretext", "RUNNING") == [] and runs("finetune", "RUNNING") == []

    # Stage 1: Ctrl-C while the pretext job trains.
    interrupted([], signal.SIGINT, ("] started pretext-",), "the pretext job")
    # Stage 2 of the resumed launch: SIGTERM once a fine-tune trial has finished.
    finetune_done = ("] finished none_", "] finished ss_")  # trial names start with the variant
    interrupted(["--resume"], signal.SIGTERM, finetune_done, "a finished fine-tune trial")
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (parent,) = runs("study")
    assert parent.info.status == "FINISHED"
    client = tracking.store._client(uri)
    trials = runs("finetune")
    assert sorted(r.data.tags["variant"] for r in trials) == ["none", "ss"]
    for run in trials:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == [0, 1], f"{run.info.run_name}: epochs logged {steps}"
    (pretext,) = runs("pretext")
    steps = [m.step for m in client.get_metric_history(pretext.info.run_id, "pretext.loss")]
    assert sorted(steps) == [0, 1], f"pretext epochs logged {steps}"
    _kill_processes_mentioning(ray_tmp)


@pytest.mark.usefixtures("ray_loopback")
def test_a_study_waits_for_a_stopped_mlflow_server_and_loses_no_metric(tmp_path) -> None:
    """The MLflow server stops while a trial trains and comes back 10 s later on the same port
    and database: the trial says it waits, the study finishes, every epoch's metrics and every
    artifact of every trial are in MLflow."""
    server = MlflowServer(tmp_path / "server")
    server.folder.mkdir()
    uri = server.start()
    study_file = tmp_path / "outage_study.py"
    study_file.write_text(
        "from occstudy.study import FinetuneSpec, Resources, Study, TestSpec\n"
        "study = Study(name='outage', image_size=32, batch_size=16, variants=('none',),\n"
        "    seeds=(0, 1), finetune=FinetuneSpec(epochs=4, train_limit=192, synthetic_size=192),\n"
        "    test=TestSpec(protocols=('clean',)), resources=Resources(max_concurrent=1))\n"
    )
    cmd = [sys.executable, "-m", "occstudy.cli", "run", str(study_file), "--storage"]
    cmd += [str(tmp_path / "storage"), "--num-cpus", "2", "--tracking-uri", uri]
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_TMPDIR": ray_tmp}
    env["OCCSTUDY_TRACKING_WAIT_S"] = "300"
    client = tracking.store._client(uri)

    def first_epoch_logged() -> bool:
        runs = tracking.find_runs(uri, "outage", kind="finetune")
        return any(client.get_metric_history(r.info.run_id, "val_acc") for r in runs)

    out = tmp_path / "output.txt"
    try:
        with open(out, "w") as fh:
            proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
            try:
                _wait_for(first_epoch_logged, "a first epoch in MLflow", proc)
                server.stop()
                _wait_for(lambda: "is not answering" in out.read_text(), "the wait message", proc)
                time.sleep(10)
                server.start()
                code = proc.wait(timeout=600)
            finally:
                if proc.poll() is None:
                    proc.kill()
        text = out.read_text()
        assert code == 0, text[-3000:]
        assert "answers again" in text, text[-3000:]
        (parent,) = tracking.find_runs(uri, "outage", kind="study")
        assert parent.info.status == "FINISHED"
        trials = tracking.find_runs(uri, "outage", kind="finetune")
        assert len(trials) == 2
        for run in trials:
            assert run.info.status == "FINISHED"
            for key in ("val_acc", "images_per_s"):
                steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
                assert steps == [0, 1, 2, 3], f"{run.info.run_name} {key}: epochs logged {steps}"
            artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
            assert "checkpoints/best.pt" in artifacts
            assert client.list_artifacts(run.info.run_id, "confusion")
    finally:
        server.stop()
        _kill_processes_mentioning(ray_tmp)


@contextlib.contextmanager
def _small_disk(folder: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` MiB mounted on ``folder`` (root only), unmounted afterwards."""
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.usefixtures("ray_loopback")
def test_a_full_disk_stops_the_study_clearly_and_resume_finishes_it(tmp_path) -> None:
    """The study's storage (checkpoints and the embedded MLflow store) fills up after a trial's
    first epoch: the study stops with one line naming the file and the free space, exit 1; the
    earlier checkpoint is intact and no half-written file is left; once there is space again,
    --resume finishes the trial from that checkpoint, every epoch logged once."""
    from occstudy.train import load_checkpoint

    study_file = tmp_path / "full_study.py"
    study_file.write_text(
        "from occstudy.study import FinetuneSpec, Resources, Study, TestSpec\n"
        "study = Study(name='full', recipe='fast', image_size=32, batch_size=16,\n"
        "    variants=('none',), finetune=FinetuneSpec(epochs=3, train_limit=640, synthetic_size=640),\n"
        "    test=TestSpec(protocols=('clean',)), resources=Resources(max_concurrent=1))\n"
    )
    with _small_disk(tmp_path / "disk", 600) as disk:
        cmd = [sys.executable, "-m", "occstudy.cli", "run", str(study_file)]
        cmd += ["--storage", str(disk), "--num-cpus", "2"]
        ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_TMPDIR": ray_tmp}
        filler = disk / "filler"
        try:
            with open(tmp_path / "output.txt", "w") as fh:
                proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
                try:
                    _wait_for(lambda: any(disk.glob("full/trials/*/*/last.pt")), "epoch 0", proc)
                    # Leave 2 MiB: room for the MLflow store's small writes, not for a checkpoint.
                    with open(filler, "wb") as f:
                        os.posix_fallocate(f.fileno(), 0, shutil.disk_usage(disk).free - 2**21)
                    code = proc.wait(timeout=600)
                finally:
                    if proc.poll() is None:
                        proc.kill()
            text = (tmp_path / "output.txt").read_text()
            assert code == 1, text[-3000:]
            last_lines = text.rstrip().splitlines()[-2:]
            assert last_lines[0].startswith("occstudy run: fine-tune: cannot write "), text[-3000:]
            assert "no space left on its file system" in last_lines[0], text[-3000:]
            assert str(disk) in last_lines[0] and "MiB free" in last_lines[0]
            assert last_lines[1].strip().endswith("--resume")
            (last,) = disk.glob("full/trials/*/*/last.pt")
            assert load_checkpoint(last)["epoch"] < 2  # intact (it loads) and not the last epoch
            assert not list(disk.rglob("*.tmp")), "a half-written file was left behind"
            filler.unlink()
            done = subprocess.run(
                [*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600
            )
            assert done.returncode == 0, done.stderr[-3000:]
        finally:
            _kill_processes_mentioning(ray_tmp)
        uri = f"sqlite:///{disk / 'full' / 'mlflow.db'}"
        (run,) = tracking.find_runs(uri, "full", kind="finetune")
        assert run.info.status == "FINISHED"
        client = tracking.store._client(uri)
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc"))
        assert steps == [0, 1, 2], f"epochs logged {steps}"


def test_a_full_storage_is_found_behind_rays_wrapping() -> None:
    """The runner names the disk error with its own one-line message, not Ray's traceback."""
    import ray

    from occstudy.study.runner import _storage_full
    from occstudy.train import StorageFullError

    original = StorageFullError(28, "cannot write /s/best.pt: no space left on its file system")
    wrapped = ray.exceptions.RayTaskError("train", "Traceback ...\nmany lines", original)
    found = _storage_full([RuntimeError("other"), wrapped.as_instanceof_cause()])
    assert found is original and found.strerror.startswith("cannot write /s/best.pt")
    assert _storage_full([RuntimeError("other")]) is None
