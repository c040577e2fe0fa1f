"""A real ``mlflow server`` on 127.0.0.1 for tests (started and stopped by the test)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mlflow_server(folder: Path, start_timeout_s: float = 180) -> Iterator[str]:
    """Run ``mlflow server`` (sqlite backend, artifacts served from ``folder/served``) and
    yield its URI; the server is stopped on exit."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}"]
    cmd += ["--artifacts-destination", str(folder / "served")]
    log_path = folder / "server.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        try:
            t0 = time.monotonic()
            while True:
                try:
                    with urllib.request.urlopen(f"{uri}/health", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None:
                    raise RuntimeError(f"mlflow server exited: {log_path.read_text()[-3000:]}")
                if time.monotonic() - t0 > start_timeout_s:
                    raise TimeoutError(f"mlflow server did not start in {start_timeout_s} s")
                time.sleep(0.5)
            print(f"mlflow server answered after {time.monotonic() - t0:.1f} s")
            yield uri
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
