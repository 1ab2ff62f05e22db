"""OmegaConf resolvers used by ``conf/`` (registered once by every entry point)."""

from __future__ import annotations

from omegaconf import OmegaConf


def register_resolvers() -> None:
    """``${scale:RES,FRACTION}`` -> ``round(RES * FRACTION)`` (pixels from a fraction)."""
    if not OmegaConf.has_resolver("scale"):
        OmegaConf.register_new_resolver("scale", lambda res, frac: round(float(res) * float(frac)))
