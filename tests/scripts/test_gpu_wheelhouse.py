"""scripts.gpu_wheelhouse's closure: what travels to the GPU machine, from this install."""

from __future__ import annotations

from packaging.requirements import Requirement

from scripts.gpu_wheelhouse import closure, project_requirements


def test_the_closure_leaves_torch_the_image_and_ray_behind():
    pins = closure(project_requirements(), "3.12", with_ray=False)
    assert {"flwr", "monai", "hydra-core", "antlr4-python3-runtime", "opacus"} <= set(pins)
    for name in pins:
        assert not name.startswith(("torch", "nvidia-", "triton")), name
    assert "numpy" not in pins  # the image has it
    assert "wandb" not in pins and "ray" not in pins


def test_extras_bring_their_needs():
    with_ray = closure([Requirement("flwr[simulation]")], "3.12", with_ray=True)
    assert "ray" in with_ray
    without = closure([Requirement("flwr[simulation]")], "3.12", with_ray=False)
    assert "ray" not in without
