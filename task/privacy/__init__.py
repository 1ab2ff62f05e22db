"""Differential privacy, Flower-free: settings, a persisted accountant, DP-SGD, update noise.

``privacy=local_dp``: each site trains with Opacus DP-SGD (per-sample clipping, Gaussian
noise) and keeps one accountant whose state lives on disk, so its ε only grows across rounds
and restarts. ``privacy=central_dp``: each site clips its model update and adds its share
of Gaussian noise before secure aggregation; the server accounts the noise on the sum.
"""

from task.privacy.accountant import Accountant
from task.privacy.settings import (
    BudgetExhausted,
    CentralDP,
    LocalDP,
    NoPrivacy,
    Privacy,
    privacy_of,
)

__all__ = [
    "Accountant",
    "BudgetExhausted",
    "CentralDP",
    "LocalDP",
    "NoPrivacy",
    "Privacy",
    "privacy_of",
]
