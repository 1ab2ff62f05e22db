"""``report.html``: one self-contained page of a run, beside its ``metrics.json``.

The same function serves centralised runs, federations, evaluations and audits: it reads
whatever of the run's files exist (``metrics.json``, ``history.json``, ``audit.json``,
``predictions.csv`` and the PNG plots) and writes a section only where its data is, so a
reader at a hospital can open one file, offline, and see what the run did.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from task.constants import HISTORY_FILE, METRICS_FILE
from task.data.errors import BadFileError
from task.evaluation import html_parts as h
from task.evaluation.federation_sections import federation_sections

REPORT_FILE = "report.html"
#: The plots an entry point writes beside ``metrics.json``, in the order shown.
PLOTS = (
    ("roc.png", "ROC (test)"),
    ("confusion_matrix.png", "Confusion matrix (test)"),
    ("calibration.png", "Calibration"),
    ("curves.png", "Training curves"),
)
SUMMARY_KEYS = ("n", "auc", "accuracy", "balanced_accuracy", "mcc")


def write_html_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` from the run's files and return its path."""
    run_dir = Path(run_dir)
    metrics = _json(run_dir / METRICS_FILE) or {}
    history = _json(run_dir / HISTORY_FILE) or []
    audit = _json(run_dir / "audit.json")
    sections = [
        _metrics_section(metrics),
        _plots_section(run_dir),
        *federation_sections(history, metrics),
        _audit_section(audit, run_dir),
        _predictions_section(run_dir / "predictions.csv"),
        _settings_section(metrics),
    ]
    path = run_dir / REPORT_FILE
    path.write_text(h.page(f"Run report: {run_dir.resolve().name}", sections), encoding="utf-8")
    return path


def _json(path: Path) -> Any:
    """The file's JSON, or None when the run did not write it."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadFileError(path, f"not readable as JSON: {err}") from err


def _metrics_section(metrics: dict[str, Any]) -> str:
    """The test metrics (with the AUC's interval), per class, and the expert readers."""
    if not metrics:
        return ""
    test = metrics.get("test", metrics)
    rows = [(k, test[k]) for k in SUMMARY_KEYS if k in test]
    ci = test.get("auc_ci")
    if ci:
        rows.append((f"AUC {ci['level']:.0%} CI", f"{h.cell(ci['low'])} – {h.cell(ci['high'])}"))
    if not rows:
        rows = [(k, v) for k, v in h.flat_scalars(test) if not k.startswith("per_class.")]
    per_class = test.get("per_class", {})
    class_rows = [
        (
            name,
            *(
                c.get(k)
                for k in ("sensitivity", "specificity", "precision", "npv", "f1", "support")
            ),
        )
        for name, c in per_class.items()
    ]
    experts = metrics.get("expert_readers")
    return h.section(
        "Metrics" + (" (test)" if "test" in metrics else ""),
        h.table(("metric", "value"), rows),
        class_rows
        and h.table(
            ("class", "sensitivity", "specificity", "PPV", "NPV", "F1", "support"), class_rows
        ),
        experts and h.table(("expert readers (PriMIA)", "value"), list(experts.items())),
        _validation_table(metrics.get("val")),
    )


def _validation_table(val: dict[str, Any] | None) -> str:
    if not val:
        return ""
    rows = [(k, v) for k, v in val.items() if isinstance(v, int | float)]
    return h.table(("validation (tested round)", "value"), rows)


def _plots_section(run_dir: Path) -> str:
    figures = [
        h.figure((run_dir / name).read_bytes(), caption)
        for name, caption in PLOTS
        if (run_dir / name).is_file()
    ]
    return h.section("Figures", *figures) if figures else ""


def _audit_section(audit: dict[str, Any] | None, run_dir: Path) -> str:
    """The privacy audit's verdicts and its reconstructions, from ``audit.json``."""
    if not audit:
        return ""
    attacks = [
        (
            e.get("view"),
            e.get("batch_size"),
            e.get("attack"),
            e.get("ssim"),
            e.get("prior_ssim"),
            e.get("verdict"),
        )
        for e in audit.get("gradient_inversion", [])
    ]
    inversions = [
        (e.get("class"), e.get("ssim"), e.get("prior_ssim"), e.get("verdict"))
        for e in audit.get("model_inversion", [])
    ]
    grids = [
        h.figure((run_dir / e["grid"]).read_bytes(), e.get("view") or e.get("class") or e["grid"])
        for e in [*audit.get("gradient_inversion", []), *audit.get("model_inversion", [])]
        if e.get("grid") and (run_dir / e["grid"]).is_file()
    ]
    return h.section(
        "Privacy audit",
        attacks and h.table(("view", "batch", "attack", "SSIM", "prior SSIM", "verdict"), attacks),
        inversions and h.table(("class", "SSIM", "prior SSIM", "verdict"), inversions),
        *grids,
    )


def _predictions_section(path: Path) -> str:
    """How many predictions the evaluation wrote, and the first few."""
    if not path.is_file():
        return ""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return ""
    header, body = rows[0], rows[1:]
    return h.section(
        "Predictions",
        h.note(f"{len(body)} rows in {path.name}; the first {min(5, len(body))}:"),
        h.table(header, body[:5]),
    )


def _settings_section(metrics: dict[str, Any]) -> str:
    """Everything else ``metrics.json`` holds: the run's settings and totals."""
    skip = {"test", "val", "sites", "expert_readers", "per_class"}
    rows = [
        (k, v)
        for k, v in h.flat_scalars({k: v for k, v in metrics.items() if k not in skip})
        if "test" in metrics or k not in SUMMARY_KEYS
    ]
    return h.section("Run", h.table(("setting", "value"), rows)) if rows else ""
