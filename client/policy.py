"""A hospital's site policy: the least protection it accepts, which no run can loosen.

Each site composes its whole config from the run's overrides, and whoever starts a run
(``flwr run``) chooses them. Without a policy of the site's own, the coordinator could send
``secure=none``, a lower threshold, ``privacy=none`` or a larger ε, and the site would
comply. The policy is the site's: a YAML file named by its node config (``site-policy``),
or, where it names none, :data:`DEFAULT`. A run may ask for more than the policy, never
less; one that asks for less is refused by every message handler before any data is
touched, naming the policy line it breaks.

A policy file states only the lines it changes::

    require_secure: true      # secure aggregation, never an update in the clear
    min_threshold: 0.66       # the smallest secure.threshold (fraction of the cohort)
    min_cohort: 3             # the smallest secure.min_cohort
    require_dp: false         # true: only privacy=local_dp (DP-SGD at this site)
    max_epsilon: null         # the largest privacy.epsilon of a run
    lifetime_epsilon: null    # the largest ε the site's ledger may ever reach
    max_rounds: null          # the most rounds of a run
    share_site_metrics: false # whether this site's own AUC / accuracy / MCC may leave it
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable
from omegaconf import DictConfig

from mpc.secagg.protocol import DEFAULT_MIN_COHORT
from mpc.secagg.wire import secure_enabled
from task.privacy import privacy_of

log = logging.getLogger(__name__)

#: Node-config key naming the site's policy file.
POLICY_KEY = "site-policy"


class PolicyViolation(PermissionError):
    """The run asks for less protection than the site's policy; nothing was touched."""


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


@dataclass(frozen=True)
class SitePolicy:
    """The minimum protection a site accepts (see the module docstring for each line)."""

    require_secure: bool = True
    min_threshold: float = 0.66
    min_cohort: int = DEFAULT_MIN_COHORT
    require_dp: bool = False
    max_epsilon: float | None = None
    lifetime_epsilon: float | None = None
    max_rounds: int | None = None
    share_site_metrics: bool = False
    #: Where the policy came from, for messages.
    source: str = "the default site policy"

    def __post_init__(self) -> None:
        def bad(key: str, want: str) -> ValueError:
            return ValueError(f"{self.source}: {key}: {getattr(self, key)!r} must be {want}")

        for key in ("require_secure", "require_dp", "share_site_metrics"):
            if type(getattr(self, key)) is not bool:
                raise bad(key, "true or false")
        if not (_is_number(self.min_threshold) and 0 < self.min_threshold <= 1):
            raise bad("min_threshold", "a fraction in (0, 1]")
        if type(self.min_cohort) is not int or self.min_cohort < 2:
            raise bad("min_cohort", "an integer of at least 2")
        for key in ("max_epsilon", "lifetime_epsilon"):
            value = getattr(self, key)
            if value is not None and not (_is_number(value) and value > 0):
                raise bad(key, "a positive number or null")
        if self.max_rounds is not None and (
            type(self.max_rounds) is not int or self.max_rounds < 1
        ):
            raise bad("max_rounds", "a positive integer or null")

    @classmethod
    def from_file(cls, path: str | Path) -> SitePolicy:
        """The policy in ``path`` (YAML); unknown keys and bad values are refused by name."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"site policy {path} (node config {POLICY_KEY!r}) not found")
        try:
            lines = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ValueError(f"site policy {path} is not YAML: {err}") from None
        if not isinstance(lines, dict):
            raise ValueError(f"site policy {path} must be a mapping of policy lines")
        known = {f.name for f in fields(cls)} - {"source"}
        unknown = sorted(str(k) for k in lines if k not in known)
        if unknown:
            raise ValueError(f"site policy {path}: unknown lines {unknown}; known: {sorted(known)}")
        return cls(**lines, source=f"site policy {path}")

    @classmethod
    def lab(cls) -> SitePolicy:
        """A simulation's sites belong to whoever runs it: they accept what the run asks."""
        return cls(require_secure=False, min_threshold=1e-9, min_cohort=2, source="simulation")

    def violations(self, cfg: DictConfig) -> list[str]:
        """Each policy line ``cfg`` breaks, as ``line: what the run asks``."""
        broken = []
        if self.require_secure and not secure_enabled(cfg):
            broken.append("require_secure: true, but the run asks secure=none")
        if secure_enabled(cfg):
            threshold = float(cfg.secure.threshold)
            if threshold < self.min_threshold:
                broken.append(
                    f"min_threshold: {self.min_threshold}, but the run asks "
                    f"secure.threshold={threshold}"
                )
            cohort = int(cfg.secure.get("min_cohort", DEFAULT_MIN_COHORT))
            if cohort < self.min_cohort:
                broken.append(
                    f"min_cohort: {self.min_cohort}, but the run asks secure.min_cohort={cohort}"
                )
        broken += self._privacy_violations(cfg)
        rounds = int(cfg.federation.num_rounds)
        if self.max_rounds is not None and rounds > self.max_rounds:
            broken.append(
                f"max_rounds: {self.max_rounds}, but the run asks federation.num_rounds={rounds}"
            )
        return broken

    def _privacy_violations(self, cfg: DictConfig) -> list[str]:
        privacy = privacy_of(cfg)
        local = privacy.name == "local_dp"
        broken = []
        if self.require_dp and not local:
            broken.append(f"require_dp: true, but the run asks privacy={privacy.name}")
        epsilon = getattr(privacy, "epsilon", None) if local else None
        for key in ("max_epsilon", "lifetime_epsilon"):
            bound = getattr(self, key)
            if bound is None or not local:
                continue
            if epsilon is None or epsilon > bound:
                broken.append(f"{key}: {bound}, but the run asks privacy.epsilon={epsilon}")
        return broken

    def check(self, cfg: DictConfig, server_round: int | None = None) -> None:
        """Raise :class:`PolicyViolation` naming every broken line (one line of text)."""
        broken = self.violations(cfg)
        rounds = self.max_rounds
        if server_round is not None and rounds is not None and server_round > rounds:
            broken.append(f"max_rounds: {rounds}, but the server sent round {server_round}")
        if broken:
            raise PolicyViolation(
                f"{self.source}: {'; '.join(broken)}; refused before any data was touched"
            )


#: What a hospital gets without writing anything.
DEFAULT = SitePolicy()


@cache
def _from_file(path: str, mtime_ns: int) -> SitePolicy:
    return SitePolicy.from_file(path)


def site_policy(node_config: dict[str, Any], default: SitePolicy) -> SitePolicy:
    """The policy the node config names, else ``default`` (read again when it changes)."""
    path = node_config.get(POLICY_KEY)
    if not path:
        return default
    path = Path(str(path))
    # A missing file is refused by SitePolicy.from_file, naming it.
    mtime = path.stat().st_mtime_ns if path.is_file() else -1
    return _from_file(str(path), mtime)


def make_policy_mod(get_cfg: Callable[[Context], DictConfig], default: SitePolicy):
    """A mod that refuses, before its handler runs, any message of a run that asks for
    less than the site's policy (and a round beyond its ``max_rounds``)."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        policy = site_policy(dict(context.node_config), default)
        config = msg.content.config_records.get("config")
        server_round = None
        if config is not None and "server-round" in config:
            server_round = int(config["server-round"])
        try:
            policy.check(get_cfg(context), server_round)
        except PolicyViolation as err:
            log.warning("%s", err)  # the error reply carries the same words to the server
            raise
        return call_next(msg, context)

    return mod
