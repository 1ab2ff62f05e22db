"""Secure aggregation identities for the sites this machine launches itself.

A simulation or a local deployment plays every hospital, so with ``secure=smpc`` and no
configured roster it makes one identity per site for the run, and the roster beside them
(a real hospital makes its own key and sends only the public line to the coordinator).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from mpc.secagg.identity import write_identities
from mpc.secagg.wire import secure_enabled


def provision_identities(cfg: DictConfig, folder: Path, names: list[str]) -> Path | None:
    """The roster of fresh identities for ``names`` in ``folder`` (``<name>.key`` beside
    it), or None when secure aggregation is off or a roster is configured."""
    if not secure_enabled(cfg) or cfg.secure.get("roster"):
        return None
    return write_identities(folder, names)
