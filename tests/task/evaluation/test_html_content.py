"""report.html's content, read as text: each section only where its data is, every text
escaped, every figure embedded, nothing loaded from elsewhere."""

from __future__ import annotations

import base64
import re
import struct
from pathlib import Path

import pytest

from task.data.errors import BadFileError
from task.evaluation.html_report import write_html_report
from tests.task.evaluation.run_dirs import ODD_SITE, evaluation_run, federation_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def embedded_pngs(html: str) -> list[tuple[int, int]]:
    """(width, height) of each ``data:image/png`` image, from its decoded IHDR chunk."""
    sizes = []
    for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html):
        png = base64.b64decode(data, validate=True)
        assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR"
        sizes.append(struct.unpack(">II", png[16:24]))
    return sizes


def test_a_federation_report_holds_every_section_and_figure(tmp_path: Path) -> None:
    html = write_html_report(federation_run(tmp_path / "fed")).read_text()
    for title in (
        "Metrics (test)",
        "Figures",
        "Federation history",
        "Differential privacy",
        "Secure aggregation",
        "Run",
    ):
        assert f"<h2>{title}</h2>" in html
    # roc, confusion, curves + pooled, participation and ε, drawn for the report
    sizes = embedded_pngs(html)
    assert len(sizes) == 6 and all(w > 0 and h > 0 for w, h in sizes)
    assert "0.9100" in html and "0.8300 – 0.9700" in html  # test AUC and its interval
    assert "<th>NPV</th>" in html and "0.8765" in html  # per-class NPV beside PPV
    assert "2 of 3: &lt;b&gt;site-x&lt;/b&gt;, site-0" in html  # round 2: site-1 declined
    assert "site-1: budget" in html
    assert "2 of 3: site-0, site-1" in html  # round 3: the refused site did not take part
    assert "strategies.secure.SecureAggregation" in html and "unmask (s)" in html


def test_text_from_the_run_is_escaped_and_nothing_is_loaded(tmp_path: Path) -> None:
    html = write_html_report(federation_run(tmp_path / "fed")).read_text()
    assert ODD_SITE not in html and "&lt;b&gt;site-x&lt;/b&gt;" in html
    assert "&lt;bound&gt;" in html  # the refusal's reason
    assert "<script" not in html and "<link" not in html
    assert not re.search(r'(src|href)="(?!data:)', html)


def test_an_evaluation_report_shows_only_what_the_evaluation_wrote(tmp_path: Path) -> None:
    html = write_html_report(evaluation_run(tmp_path / "eval")).read_text()
    assert "<h2>Metrics</h2>" in html and "<h2>Predictions</h2>" in html
    assert "7 rows in predictions.csv" in html
    for absent in ("Federation history", "Differential privacy", "Secure aggregation"):
        assert absent not in html
    assert len(embedded_pngs(html)) == 1  # the ROC: no confusion matrix was written


def test_an_unreadable_metrics_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(BadFileError, match=r"metrics\.json: not readable as JSON"):
        write_html_report(tmp_path)


def test_an_empty_run_dir_gives_a_page_with_no_section(tmp_path: Path) -> None:
    html = write_html_report(tmp_path).read_text()
    assert html.startswith("<!DOCTYPE html>") and "<section>" not in html
