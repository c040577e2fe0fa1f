"""`occstudy ui` in a real browser: the compare view it prints, rendered by headless Chromium
against the MLflow server it starts, names every fine-tune trial of the launch and shows each
one's test accuracy; the trials table and the chart view load the shared view states. A
screenshot of each view is kept in ``test-artifacts/``.

Skipped when no Chromium binary exists (CI installs Debian's ``chromium`` first, see .ci/run).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from browser import ARTIFACTS, render, requires_chromium

from occstudy import tracking
from occstudy.study.layout import StudyLayout

pytestmark = requires_chromium

#: Trials of the study: name -> (variant, seed, test.clean.acc, test.r16.acc).
TRIALS = {
    "none_s0": ("none", 0, 0.4321, 0.3812),
    "none_s1": ("none", 1, 0.4467, 0.3733),
    "ss-mask_s0": ("ss+mask", 0, 0.5123, 0.4876),
    "ss-mask_s1": ("ss+mask", 1, 0.5289, 0.4655),
}


def _study(tmp_path: Path) -> str:
    """A study file and a store with an old launch and a finished one of 4 trials."""
    study = tmp_path / "b.py"
    study.write_text("from occstudy.study import Study\nstudy = Study(name='b', seeds=(0, 1))\n")
    layout = StudyLayout.of("b", str(tmp_path))
    tracker = tracking.StudyTracker(layout.tracking_uri(None), "b")
    for launch in (layout.start_launch(resume=False), layout.start_launch(resume=False)):
        parent = tracker.parent_run(launch, {"name": "b"}, resume=False)
        trials = TRIALS if launch == "launch-2" else {"stale_s9": ("none", 9, 0.1111, 0.1)}
        for name, (variant, seed, clean, r16) in trials.items():
            run = tracker.child_run(
                parent,
                kind="finetune",
                key=f"{launch}/{name}",
                name=name,
                tags={"variant": variant, "seed": str(seed), "trial": name},
                params={
                    "variant": variant,
                    "seed": seed,
                    "label_fraction": 1.0,
                    "lambda": 0.2,
                    "tau": 2.0,
                    "lr": 0.002,
                },
            )
            for epoch, acc in enumerate((clean - 0.2, clean - 0.05, clean)):
                tracking.log_metrics(run, {tracking.VAL_ACC: acc}, step=epoch)
            tracking.log_metrics(run, {"test.clean.acc": clean, "test.r16.acc": r16})
            tracker.finish(run)
        tracker.finish(parent)
    return str(study)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _render(url: str, profile: Path, shot: Path) -> str:
    proc = render(
        url,
        profile=profile,
        shot=shot,
        window="1600,1000",
        budget_ms=20000,
        timeout_s=180,
        keep_dom=True,
    )
    return proc.stdout


def test_the_printed_compare_view_shows_every_trial_and_its_test_accuracy(tmp_path) -> None:
    study = _study(tmp_path)
    port = _free_port()
    cmd = [sys.executable, "-m", "occstudy.cli", "ui", study, "--storage", str(tmp_path)]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not any("charts, grouped by variant" in ln for ln in lines):
            line = proc.stdout.readline()
            assert line, f"occstudy ui ended early: {lines}"
            lines.append(line)
        urls = {
            key: next(ln.split()[-1] for ln in lines if marker in ln)
            for key, marker in (
                ("compare", "compare the trials"),
                ("trials", "trials table"),
                ("charts", "charts, grouped"),
            )
        }
        assert any(ln.startswith("launch-2: 4 fine-tune trial(s)") for ln in lines), lines
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "no MLflow server"
                time.sleep(0.5)
        dom = _render(urls["compare"], tmp_path / "p1", ARTIFACTS / "ui-compare.png")
        for name, (_, _, clean, r16) in TRIALS.items():
            assert name in dom, f"trial {name} not on the compare page"
            # The compare page shows metrics to 3 decimals.
            shown = (f">{clean:.3f}<", f">{r16:.3f}<")
            assert all(v in dom for v in shown), f"{name}'s test accuracy not shown"
        assert "stale_s9" not in dom  # only the latest launch
        assert "test.clean.acc" in dom and "lambda" in dom
        dom = _render(urls["trials"], tmp_path / "p2", ARTIFACTS / "ui-trials.png")
        assert "share key is invalid" not in dom and "does not exist" not in dom
        for name in TRIALS:
            assert name in dom, f"trial {name} not in the trials table"
        assert "stale_s9" not in dom
        dom = _render(urls["charts"], tmp_path / "p3", ARTIFACTS / "ui-charts.png")
        assert "share key is invalid" not in dom and "does not exist" not in dom
        assert "val_acc" in dom and "test.clean.acc" in dom
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
