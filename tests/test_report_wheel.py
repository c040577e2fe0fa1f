"""The report page's template ships inside the package: a wheel built from the sources holds
``report.html.j2`` and ``report.css``, and a report renders from the unpacked wheel alone (no
repository folder, no environment variable)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = "occstudy/report/templates"

# Rendered in a fresh interpreter that finds occstudy only in the unpacked wheel: a one-trial
# report (no figures: nothing but the template and the styles are needed).
RENDER = """
import sys
from pathlib import Path
import occstudy.report.render as render
from occstudy.report import compute_report
from occstudy.tracking.reader import StudyRuns, TrialRecord
from occstudy.report.tables import StudyInfo

assert Path(render.__file__).is_relative_to(Path(sys.argv[1])), render.__file__
trial = TrialRecord(
    run_id="r0", name="t0", launch="launch-1", status="FINISHED", dataset="synthetic-faces",
    variant="none", seed=0, fold=None, label_fraction=1.0, params={}, acc={"clean": 0.5},
    macro_f1={}, mask_iou={}, metrics={"best_val_acc": 0.5}, start_time=1, artifact_uri="",
)
runs = StudyRuns("wheel", "", ("launch-1",), (), (trial,), {})
report = compute_report(StudyInfo(name="wheel", variants=("none",)), runs, figures=False)
print(str(render.template_folder()))
sys.stdout.write(render.render_html(report))
"""


def _skip_unless_offline_build() -> None:
    """The wheel is built with this interpreter's setuptools (no download): it must satisfy
    pyproject's build-system (setuptools >= 68) and build wheels (built in from 70.1, else the
    ``wheel`` package)."""
    setuptools = pytest.importorskip("setuptools")
    version = tuple(int(x) for x in setuptools.__version__.split(".")[:2] if x.isdigit())
    if version < (68, 0):
        pytest.skip(f"setuptools {setuptools.__version__} < 68 (pyproject's build-system)")
    if version < (70, 1) and importlib.util.find_spec("wheel") is None:
        pytest.skip(f"setuptools {setuptools.__version__} builds wheels only with `wheel`")


def test_wheel_ships_the_template_and_renders_a_report(tmp_path: Path) -> None:
    _skip_unless_offline_build()
    # Built from a copy: building in place would write build/ and *.egg-info into the tree.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "occstudy", src / "occstudy", ignore=shutil.ignore_patterns("__pycache__")
    )
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    proc = subprocess.run(
        [*build, "--no-index", "-q", "-w", str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = dist.glob("occstudy-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        for name in ("report.html.j2", "report.css"):
            packaged = z.read(f"{TEMPLATES}/{name}")
            assert packaged == (REPO / TEMPLATES / name).read_bytes(), name
        z.extractall(site)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.pop("OCCSTUDY_REPORT_TEMPLATES", None)
    env.pop("OCCSTUDY_DASHBOARDS", None)
    env["PYTHONPATH"] = str(site)  # ahead of the editable install of the working tree
    proc = subprocess.run(
        [sys.executable, "-c", RENDER, str(site)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder, page = proc.stdout.split("\n", 1)
    assert Path(folder) == site / TEMPLATES
    assert "<h1>Study report: wheel</h1>" in page
    assert "--ink: #1d232a;" in page  # the packaged styles, inlined
    assert page.rstrip().endswith("</html>")
