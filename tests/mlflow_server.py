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


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 (sqlite backend ``folder/server.db``, artifacts served from
    ``folder/served``); :meth:`stop` and :meth:`start` again keep the port and the data, as a
    restarted server would."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, start_timeout_s: float = 180) -> str:
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        cmd = [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--workers", "1", "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}"]
        cmd += ["--artifacts-destination", str(self.folder / "served")]
        log_path = self.folder / "server.log"
        with log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        t0 = time.monotonic()
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {log_path.read_text()[-3000:]}")
            if time.monotonic() - t0 > start_timeout_s:
                self.stop()
                raise TimeoutError(f"mlflow server did not start in {start_timeout_s} s")
            time.sleep(0.5)
        print(f"mlflow server answered after {time.monotonic() - t0:.1f} s")
        return self.uri

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def mlflow_server(folder: Path, start_timeout_s: float = 180) -> Iterator[str]:
    """Run ``mlflow server`` (see :class:`MlflowServer`) and yield its URI; the server is
    stopped on exit."""
    server = MlflowServer(folder)
    try:
        yield server.start(start_timeout_s)
    finally:
        server.stop()
