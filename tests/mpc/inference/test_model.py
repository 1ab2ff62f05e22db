"""The served model: BatchNorm folding, checkpoint checks, the public architecture."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from mpc.inference.model import (
    ModelNotServable,
    UntrustedConfig,
    build_architecture,
    check_targets,
    fold_batchnorm,
    load_served,
)
from task.runtime import checkpoint


def test_folded_model_matches_and_has_no_batchnorm(trained_checkpoint) -> None:
    state = checkpoint.load(trained_checkpoint)
    from hydra.utils import instantiate

    model = instantiate(state["config"]["model"])
    model.load_state_dict(state["model"])
    model.eval()
    folded = fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


def test_batchnorm_after_no_convolution_is_refused() -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.BatchNorm2d(3), torch.nn.Flatten()
    )
    with pytest.raises(ModelNotServable, match=r"BatchNorm layers \['2'\] follow no convolution"):
        fold_batchnorm(net, "net.pt")


def test_checkpoints_that_cannot_be_served_are_named(tmp_path, trained_checkpoint) -> None:
    state = checkpoint.load(trained_checkpoint)
    no_config = tmp_path / "no_config.pt"
    checkpoint.save_atomic({"model": state["model"]}, no_config)
    with pytest.raises(ModelNotServable, match=re.escape("no_config.pt: has no inference config")):
        load_served(no_config)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelNotServable, match=re.escape("garbage.pt: not a readable checkpoint")):
        load_served(garbage)
    wrong = tmp_path / "wrong.pt"
    weights = dict(state["model"])
    weights.pop(next(iter(weights)))
    checkpoint.save_atomic({**state, "model": weights}, wrong)
    with pytest.raises(ModelNotServable, match=re.escape("wrong.pt: weights do not fit")):
        load_served(wrong)
    with pytest.raises(FileNotFoundError):
        load_served(tmp_path / "missing.pt")
    dp = tmp_path / "dp.pt"
    checkpoint.save_atomic({**state, "config": {**state["config"], "dp_compatible": True}}, dp)
    with pytest.raises(ModelNotServable, match=re.escape("dp.pt: was trained with differential")):
        load_served(dp)


def test_received_config_may_only_name_monai(trained_checkpoint) -> None:
    config = checkpoint.load(trained_checkpoint)["config"]
    check_targets(config)
    evil = copy.deepcopy(config)
    evil["preprocess"]["transforms"][0]["_target_"] = "os.system"
    with pytest.raises(UntrustedConfig, match=re.escape("'os.system'")):
        check_targets(evil)
    evil = copy.deepcopy(config)
    evil["model"]["_target_"] = "monai.networks.nets.resnet.torch.load"
    with pytest.raises(UntrustedConfig, match=re.escape("torch.load")):
        check_targets(evil)


def test_data_owner_builds_the_owners_graph_without_the_weights(trained_checkpoint) -> None:
    from mpc.inference.party import convert, graph_signature

    served = load_served(trained_checkpoint)
    public = build_architecture(served.config)
    owner = convert(served.model, served.input_shape)
    data_owner = convert(public, served.input_shape)
    assert graph_signature(data_owner) == graph_signature(owner)
    real = dict(served.model.named_parameters())
    for name, p in public.named_parameters():
        assert not torch.equal(p, real[name]), name
