"""Every configured network builds, runs at its resolution, and fails loudly otherwise."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from opacus.validators import ModuleValidator

from task.constants import REPO_ROOT
from task.models.factory import build_model


def _model_cfg(name: str, resolution: int):
    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose("train_central", [f"model={name}", f"data.resolution={resolution}"]).model


@pytest.mark.parametrize(
    ("name", "resolution"), [("small_cnn", 28), ("resnet18", 28), ("densenet121", 64)]
)
def test_builds_and_opacus_fix_makes_it_dp_compatible(name: str, resolution: int) -> None:
    model = build_model(_model_cfg(name, resolution), (1, resolution, resolution), 2)
    assert ModuleValidator.validate(model, strict=False)  # BatchNorm is not DP-compatible
    fixed = ModuleValidator.fix(model)
    assert ModuleValidator.validate(fixed, strict=False) == []


def test_too_small_input_fails_loudly() -> None:
    with pytest.raises(ValueError, match="DenseNet121 cannot process images of shape"):
        build_model(_model_cfg("densenet121", 16), (1, 16, 16), 2)


def test_wrong_number_of_outputs_fails_loudly() -> None:
    with pytest.raises(ValueError, match="3 classes"):
        build_model(_model_cfg("small_cnn", 28), (1, 28, 28), 3)
