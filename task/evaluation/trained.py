"""A trained checkpoint, rebuilt for evaluation exactly as training tested it.

Centralised and federated training write ``best.pt`` / ``final.pt`` with the weights
(``model``) and the inference config (``config``: the network, the preprocessing with the
normalisation actually used, the classes, the resolution and the channels). The network is
rebuilt from that config, not from the evaluator's, so that the checkpoint is evaluated
with its own preprocessing and class order; a data set that disagrees with it is refused
by name before anything is predicted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from task.config import config_targets
from task.runtime import checkpoint

#: Keys a checkpoint's ``config`` holds when written by training.
CONFIG_KEYS = checkpoint.INFERENCE_KEYS
#: What evaluation adds to the shared reading's refusals: which file to evaluate instead.
ADVICE = {
    "no-config": "; evaluate the best.pt or final.pt that training wrote",
    "no-weights": " (last.pt of a federation?)",
}

#: Where a checkpoint's config may point ``_target_``: a config is code (Hydra calls what
#: it names), and a checkpoint may come from elsewhere; MONAI and this project only.
ALLOWED_TARGET_PREFIXES = ("monai.", "task.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be evaluated, or not on the given data; names the file."""


@dataclass(frozen=True)
class Trained:
    """A checkpoint's network (eval mode, weights loaded) and its inference config."""

    path: Path
    model: torch.nn.Module
    config: dict[str, Any]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.config["classes"])

    @property
    def threshold(self) -> float | None:
        """The checkpoint's decision threshold on the positive class's probability, where
        training fixed one; ``None``: the arg-max, as training tested."""
        value = self.config.get("threshold")
        return None if value is None else float(value)


def _check_targets(path: Path, config: dict[str, Any]) -> None:
    for target in config_targets({"model": config["model"], "preprocess": config["preprocess"]}):
        if not target.startswith(ALLOWED_TARGET_PREFIXES):
            raise CheckpointError(
                f"{path}: its config names _target_ {target!r}; only "
                f"{', '.join(p + '*' for p in ALLOWED_TARGET_PREFIXES)} are built"
            )


def load_trained(path: str | Path) -> Trained:
    """Read ``path`` and rebuild its network with its weights; :class:`CheckpointError`
    for a file that is no training checkpoint."""
    path = Path(path)
    try:
        config, weights = checkpoint.read_inference_checkpoint(path)
    except checkpoint.NotAnInferenceCheckpoint as err:
        raise CheckpointError(f"{err}{ADVICE.get(err.problem, '')}") from err
    _check_targets(path, config)
    model = instantiate(config["model"])
    if config.get("dp_compatible"):
        from task.privacy.dpsgd import make_compatible  # Opacus: only for a DP-trained net

        model = make_compatible(model)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit its configured model: {err}") from err
    return Trained(path, model.eval(), config)


def check_data(
    trained: Trained,
    data_classes: Sequence[str],
    *,
    resolution: int | None = None,
    channels: int | None = None,
) -> None:
    """Refuse data the checkpoint was not trained for: a class it does not know (the data
    may lack some of its classes), or a resolution or channel count that the data config
    asks for and the checkpoint was not trained at (``None``: the checkpoint's own)."""
    known = trained.classes
    if not set(data_classes) <= set(known):
        raise CheckpointError(
            f"checkpoint {trained.path} was trained on classes {list(known)}, the data has "
            f"{list(data_classes)}"
        )
    own = int(trained.config["resolution"])
    if resolution is not None and int(resolution) != own:
        raise CheckpointError(
            f"checkpoint {trained.path} was trained at {own} px, the data config asks "
            f"{resolution} px"
        )
    own = int(trained.config["channels"])
    if channels is not None and int(channels) != own:
        raise CheckpointError(
            f"checkpoint {trained.path} was trained on {own}-channel images, the data config "
            f"asks {channels} channels"
        )
