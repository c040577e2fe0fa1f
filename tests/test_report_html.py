"""The report page in a real browser: headless Chromium loads a copy of the page with a small
probe script that writes into the DOM how many images decoded and how many tables exist; the
dumped DOM is checked, and a screenshot is kept in ``test-artifacts/`` at the repository root.

Skipped when no Chromium binary exists (CI installs Debian's ``chromium`` first, see .ci/run).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser import ARTIFACTS, render, requires_chromium
from test_report import Fixture, report_fixture

from occstudy.report.render import sections

pytestmark = requires_chromium

# Runs after every image has loaded or failed ("load" waits for both). The page's own
# Content-Security-Policy forbids scripts; the probe copy allows inline ones only.
PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var probe = document.createElement("div");
  probe.id = "occstudy-probe";
  probe.setAttribute("data-images", String(imgs.length));
  probe.setAttribute("data-loaded", String(ok));
  probe.setAttribute("data-tables", String(document.querySelectorAll("table").length));
  document.body.appendChild(probe);
});
</script>"""


@pytest.fixture()
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return report_fixture(tmp_path_factory.getbasetemp() / "report-store")


def test_page_is_self_contained(fx: Fixture) -> None:
    html = fx.main.files["html"].read_text()
    assert "default-src 'none'" in html and "script-src 'none'" in html
    # Every image is inline, and nothing references another file or the network.
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", html)
    assert refs, "no src/href at all?"
    assert all(r.startswith(("data:image/png;base64,", "#")) for r in refs), [
        r[:60] for r in refs if not r.startswith(("data:", "#"))
    ]
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert html.count("<img ") == len(fx.main.report.figures) >= 4


def test_chromium_renders_tables_and_every_image(fx: Fixture, tmp_path: Path) -> None:
    page = fx.main.files["html"].read_text()
    probe = page.replace("script-src 'none'", "script-src 'unsafe-inline'")
    probe = probe.replace("</body>", PROBE + "\n</body>")
    probe_file = tmp_path / "probe.html"
    probe_file.write_text(probe)
    shot = ARTIFACTS / "report-screenshot.png"
    shot.unlink(missing_ok=True)
    proc = render(
        probe_file.as_uri(),
        profile=tmp_path / "profile",
        shot=shot,
        window="1280,2000",
        budget_ms=10000,
        timeout_s=120,
    )
    dom = proc.stdout
    found = re.search(
        r'id="occstudy-probe" data-images="(\d+)" data-loaded="(\d+)" data-tables="(\d+)"', dom
    )
    assert found, f"probe did not run; DOM tail: {dom[-2000:]}\nstderr: {proc.stderr[-2000:]}"
    images, loaded, tables = map(int, found.groups())
    report = fx.main.report
    expected_tables = sum(len(s.tables) for s in sections(report))
    assert images == len(report.figures) >= 4
    assert loaded == images, f"{images - loaded} image(s) did not decode"
    assert tables == expected_tables >= 5
    for table_id in (
        "ablation-0",
        "ablation-1",
        "significance-0",
        "label-efficiency-tests",
        "confusion-synthetic-faces-clean-none",
    ):
        assert f'id="{table_id}"' in dom
    assert "Study report: rep" in dom
    # The screenshot is kept for people (and CI artifacts) to look at.
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000
