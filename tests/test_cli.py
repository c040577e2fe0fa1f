import json
import os
import subprocess
import sys

import pytest

from occstudy.cli import main


def test_train_smoke_prints_table_and_json(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--smoke",
                "--no-progress",
                "--image-size",
                "32",
                "--out",
                str(out),
                "--json",
                str(tmp_path / "m.json"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "protocol" in text and "objects" in text
    payload = json.loads(text[text.index("{") :])
    assert 0 <= payload["metrics"]["test.clean.acc"] <= 1
    assert json.loads((tmp_path / "m.json").read_text())["results"]["mouth"]["n"] > 0
    assert (out / "results.json").exists()


def test_train_bad_value_is_a_clear_error(capsys) -> None:
    assert main(["train", "--tau", "0", "--smoke"]) == 2
    assert "MethodConfig.tau=0.0" in capsys.readouterr().err
    assert main(["train", "--data", "fer2013:/no/such/dir", "--smoke"]) == 2
    assert "/no/such/dir" in capsys.readouterr().err


def test_data_check_synthetic_and_missing_root(tmp_path, capsys) -> None:
    assert main(["data", "check", "synthetic-faces"]) == 0
    assert "happiness" in capsys.readouterr().out
    assert main(["data", "check", "fer2013", "--root", str(tmp_path / "nothing")]) == 1
    assert "nothing" in capsys.readouterr().err


def test_console_script_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "occstudy.cli", "data", "list"],
        capture_output=True,
        text=True,
        env={**os.environ},
        check=True,
    )
    assert "fer2013" in proc.stdout.split()


def test_run_rejects_an_invalid_study_naming_the_field(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from occstudy.study import Study\nstudy = Study(name='bad', variants=())\n")
    assert main(["run", str(bad), "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "variants" in err and "bad.py" in err


def test_run_stops_before_training_when_tracking_is_unreachable(tmp_path, capsys) -> None:
    study = tmp_path / "s.py"
    study.write_text("from occstudy.study import Study\nstudy = Study(name='s')\n")
    code = main(
        ["run", str(study), "--storage", str(tmp_path), "--tracking-uri", "http://127.0.0.1:9"]
    )
    assert code == 2
    assert "not reachable" in capsys.readouterr().err
    assert not (tmp_path / "s" / "launches.json").exists()  # nothing started


def test_status_of_a_study_never_run(tmp_path, capsys) -> None:
    study = tmp_path / "q.py"
    study.write_text("from occstudy.study import Study\nstudy = Study(name='q', seeds=(0, 1))\n")
    assert main(["status", str(study), "--storage", str(tmp_path)]) == 0
    assert "not run yet (8 trials planned)" in capsys.readouterr().out
    assert main(["status", "nosuchstudy", "--storage", str(tmp_path)]) == 2


def test_status_reads_mlflow_without_torch_or_ray_train(tmp_path) -> None:
    """`occstudy status` on a study with runs answers from MLflow alone: a fresh interpreter
    that runs it has loaded neither torch, torchvision nor Ray Train or Tune."""
    from occstudy.study.layout import StudyLayout
    from occstudy.tracking import StudyTracker

    study = tmp_path / "q.py"
    study.write_text("from occstudy.study import Study\nstudy = Study(name='q', seeds=(0,))\n")
    layout = StudyLayout.of("q", str(tmp_path))
    launch = layout.start_launch(resume=False)
    tracker = StudyTracker(layout.tracking_uri(None), "q")
    parent = tracker.parent_run(launch, {"name": "q"}, resume=False)
    key = f"{launch}/none_s0"
    run = tracker.child_run(parent, kind="finetune", key=key, name="none_s0", tags={}, params={})
    tracker.finish(run, "FINISHED")
    code = (
        "import sys\n"
        "from occstudy.cli import main\n"
        f"rc = main(['status', {str(study)!r}, '--storage', {str(tmp_path)!r}])\n"
        "heavy = ('torch', 'torchvision', 'ray.train', 'ray.tune')\n"
        "print('heavy:', *[m for m in heavy if m in sys.modules], 'rc', rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fine-tune trials: 1 finished" in proc.stdout
    assert proc.stdout.strip().endswith("heavy: rc 0"), proc.stdout


def _store_with_a_run(tmp_path) -> str:
    """A study file and an MLflow store holding one launch of it; returns the study file."""
    from occstudy.study.layout import StudyLayout
    from occstudy.tracking import StudyTracker

    study = tmp_path / "u.py"
    study.write_text("from occstudy.study import Study\nstudy = Study(name='u', seeds=(0,))\n")
    layout = StudyLayout.of("u", str(tmp_path))
    launch = layout.start_launch(resume=False)
    tracker = StudyTracker(layout.tracking_uri(None), "u")
    tracker.finish(tracker.parent_run(launch, {"name": "u"}, resume=False), "FINISHED")
    return str(study)


def test_ui_refuses_a_busy_port(tmp_path, capsys) -> None:
    import socket

    study = _store_with_a_run(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = main(["ui", study, "--storage", str(tmp_path), "--port", str(port)])
    assert rc == 2
    assert f"port {port} on 127.0.0.1 is not free" in capsys.readouterr().err


def test_ui_stops_its_server_on_sigterm(tmp_path) -> None:
    """SIGTERM to `occstudy ui` stops the MLflow server it started and everything in its
    process group: afterwards the port is free and no process of the group is left."""
    import signal
    import socket
    import time
    import urllib.request

    study = _store_with_a_run(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "occstudy.cli", "ui", study, "--storage", str(tmp_path)]
    proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                break
            except OSError:
                assert proc.poll() is None, "occstudy ui ended before its server answered"
                assert time.monotonic() < deadline, "the MLflow server did not start"
                time.sleep(0.5)
        servers = subprocess.run(
            ["pgrep", "-f", f"mlflow server .*--port {port}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        assert servers, "no server process found"
        group = os.getpgid(int(servers[0]))
        assert group != os.getpgid(proc.pid)  # its own group, stopped as a whole
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)  # no process of the server's group is left
    with socket.socket() as s:
        # Free again: nothing listens on it (a closed server's connections may still be in
        # TIME_WAIT, which servers, occstudy ui included, bind over with SO_REUSEADDR).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
    # And occstudy ui would take the port again at once.
    from occstudy.cli import _port_problem

    assert _port_problem("127.0.0.1", port) is None
