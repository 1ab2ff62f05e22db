"""Pieces of the self-contained ``report.html``: tables, embedded figures and the page.

Everything a run wrote is text from files (site names, reasons, verdicts), so every piece
escapes it; the page holds no script and loads nothing from elsewhere, so it opens the
same on a machine with no network, as the hospitals' often are.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left;font-size:.92em}th{background:#f3f3f3}td.num{text-align:right}
figure{display:inline-block;margin:.5em 1em .5em 0}figcaption{font-size:.85em;color:#555}
img{max-width:100%}.note{color:#555;font-size:.9em}
"""


def cell(value: Any) -> str:
    """One value as table text: floats to 4 digits, None (undefined) as a dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e4 or abs(value) < 1e-3 else f"{value:.4f}"
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], caption: str = "") -> str:
    """An HTML table; numbers right-aligned, every value escaped."""
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for value in row:
            num = isinstance(value, int | float) and not isinstance(value, bool)
            attr = ' class="num"' if num else ""
            cells.append(f"<td{attr}>{escape(cell(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure(png: bytes, caption: str) -> str:
    """A PNG embedded as a ``data:`` URI, so the report needs no file beside it."""
    data = base64.b64encode(png).decode("ascii")
    alt = escape(caption, quote=True)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def section(title: str, *parts: str) -> str:
    """A titled section; empty parts are left out."""
    return f"<section><h2>{escape(title)}</h2>{''.join(p for p in parts if p)}</section>"


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def page(title: str, sections: Sequence[str]) -> str:
    """The whole document: inline CSS, no script, no external resource."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{''.join(sections)}</body></html>\n"
    )


def flat_scalars(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) for every number, string or boolean in ``data``, nested dicts
    followed; lists are left out (they are drawn, such as the confusion matrix)."""
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += flat_scalars(value, name + ".")
        elif value is None or isinstance(value, int | float | str | bool):
            out.append((name, value))
    return out
