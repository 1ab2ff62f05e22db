"""The two options both entry points share, with one meaning each (torch-free).

``resume`` is the path of a run's ``last.pt``, or null; ``selection`` names which weights a
run tests and reports. Checked here once, for ``train.*`` and ``federation.*`` alike, so the
two entry points cannot drift apart again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from task.constants import SELECTIONS


def check_selection(selection: str, key: str) -> str:
    """``selection`` if it is one of :data:`SELECTIONS`; a ``ValueError`` naming ``key``."""
    if selection not in SELECTIONS:
        raise ValueError(f"{key}={selection!r} is not one of {SELECTIONS}")
    return selection


def resume_path(value: Any) -> Path | None:
    """``resume``: the path of a ``last.pt`` to continue from, or null (both entry points)."""
    if value is None:
        return None
    if isinstance(value, bool) or not str(value).strip():
        raise ValueError(
            f"resume={value!r} must be the path of a run's last.pt (or null), "
            "e.g. resume=outputs/train/<run>/last.pt"
        )
    return Path(str(value))
