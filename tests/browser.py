"""Headless Chromium for the tests that look at a page the way a user does (the report page,
the MLflow UI views): where the binary is, the skip mark without it, and one render call.

Screenshots (and, when asked, the dumped DOM) go to ``test-artifacts/`` at the repository root,
for people and CI artifacts to look at.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

#: Skip a module without Chromium (CI installs Debian's ``chromium`` first, see .ci/run).
requires_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium binary on PATH (install Debian's: apt-get install chromium)",
)


def render(
    url: str,
    *,
    profile: Path,
    shot: Path,
    window: str,
    budget_ms: int,
    timeout_s: float,
    keep_dom: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Load ``url`` in headless Chromium, screenshot it to ``shot`` and dump the DOM (stdout).

    ``budget_ms`` of virtual time lets the page's scripts and requests finish; ``keep_dom``
    writes the DOM next to the screenshot (``.html``). Asserts that Chromium exited 0.
    """
    assert CHROMIUM is not None
    shot.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        f"--window-size={window}",
        f"--screenshot={shot}",
        "--dump-dom",
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if keep_dom:
        shot.with_suffix(".html").write_text(proc.stdout)
    return proc
