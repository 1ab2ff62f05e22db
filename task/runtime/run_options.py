"""The options the entry points share, with one meaning each (torch-free).

``resume`` is the path of a run's ``last.pt``, or null; ``selection`` names which weights a
run tests and reports; ``device`` where a run computes (resolved on the machine that
computes, by :mod:`task.runtime.device`). Checked here once, for ``train.*`` and
``federation.*`` alike, so the entry points cannot drift apart again.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from task.constants import SELECTIONS

#: The values ``device`` takes.
DEVICE_SPEC = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"


class DeviceError(ValueError):
    """A ``device`` value that is malformed or names hardware this machine lacks."""


def check_device(value: Any, key: str = "device") -> str:
    """``value`` if it is a ``device`` spelling; a :class:`DeviceError` naming ``key``.

    Only the spelling: whether the hardware exists is for the machine that computes to say
    (a coordinator without a GPU checks the config of sites that have one).
    """
    text = str(value).strip()
    if not DEVICE_SPEC.fullmatch(text):
        raise DeviceError(f"{key}={value!r} is not one of {DEVICE_CHOICES}")
    return text


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
