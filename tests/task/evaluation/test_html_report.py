"""report.html in a real headless browser (Chromium, Debian's ``chromium`` package): the
page renders, every figure decodes to an image with a size, and the metrics table is there.

The report itself holds no script; the test renders a copy with one added, which writes each
image's decoded size into the DOM that ``--dump-dom`` prints.
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from task.evaluation.html_report import write_html_report
from tests.task.evaluation.run_dirs import federation_run
from tests.task.evaluation.test_html_content import PNG_SIGNATURE, embedded_pngs

SIZES_SCRIPT = (
    "<script>window.addEventListener('load', () => { for (const img of document.images) "
    "img.setAttribute('data-decoded', img.naturalWidth + 'x' + img.naturalHeight); });</script>"
)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars")


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless browser: chromium is missing (apt-get install -y chromium)")


def _chromium(*args: str, cwd: Path) -> str:
    proc = subprocess.run(
        [_browser(), *FLAGS, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


class _Dom(HTMLParser):
    """The rendered DOM's images (their attributes) and table header cells."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.headers: list[str] = []
        self._in_th = False

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "img":
            self.images.append(dict(attrs))
        self._in_th = tag == "th"

    def handle_data(self, data: str) -> None:
        if self._in_th:
            self.headers.append(data)
            self._in_th = False


def test_the_report_renders_with_its_figures_in_chromium(tmp_path: Path) -> None:
    _browser()
    report = write_html_report(federation_run(tmp_path / "fed"))
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", SIZES_SCRIPT + "</body>"))
    dom = _Dom()
    dom.feed(_chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri(), cwd=tmp_path))
    assert len(dom.images) == 6
    for img in dom.images:
        assert img["src"].startswith("data:image/png;base64,")
        width, height = (int(n) for n in img["data-decoded"].split("x"))
        assert width > 0 and height > 0, img["alt"]  # the browser decoded the figure
    assert {"metric", "value", "class", "sensitivity", "round", "val AUC"} <= set(dom.headers)
    assert len(embedded_pngs(probe.read_text())) == 6


def test_a_screenshot_of_the_report_is_an_image(tmp_path: Path) -> None:
    _browser()
    report = write_html_report(federation_run(tmp_path / "fed"))
    shot = tmp_path / "report.png"
    _chromium("--window-size=1280,2000", f"--screenshot={shot}", report.as_uri(), cwd=tmp_path)
    assert shot.read_bytes()[:8] == PNG_SIGNATURE and shot.stat().st_size > 10_000
