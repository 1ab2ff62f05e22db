"""Every option of every config group composes and instantiates (a broken YAML fails CI)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mpc.secagg.identity import write_identities
from mpc.secagg.wire import secure_enabled
from strategies.secure import ROBUST
from task.constants import REPO_ROOT
from task.data.augment import BatchAugment
from task.privacy import privacy_of

CONF = REPO_ROOT / "conf"
SHARED = ["data", "transforms", "model", "optimizer", "logger"]
#: top-level config -> its groups; experiments and searches belong to one entry point each.
GROUPS = {
    "train_central": [*SHARED, "scheduler"],
    "train": [*SHARED, "strategy", "partition", "secure", "privacy"],
}
ONLY = {
    "experiment/quick": "train_central",
    "experiment/resnet18": "train_central",
    "hparams_search/central_optuna": "train_central",
    "experiment/fed_quick": "train",
    "hparams_search/federated_optuna": "train",
}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _cases() -> list[tuple[str, str, str]]:
    cases = [(name, g, o) for name, groups in GROUPS.items() for g in groups for o in _options(g)]
    for group in ("experiment", "hparams_search"):
        cases += [(ONLY[f"{group}/{o}"], group, o) for o in _options(group)]
    return cases


def _compose(overrides: list[str], hydra: bool = False, name: str = "train_central"):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(name, overrides, return_hydra_config=hydra)


def test_every_experiment_and_search_is_assigned() -> None:
    listed = {f"{g}/{o}" for g in ("experiment", "hparams_search") for o in _options(g)}
    assert listed == set(ONLY)


@pytest.mark.parametrize(("name", "group", "option"), _cases(), ids=str)
def test_every_option_composes_and_instantiates(
    name: str, group: str, option: str, tmp_path: Path
) -> None:
    overrides = [f"{group}={option}"]
    if group == "data" and option == "folder":
        overrides.append(f"data.train={tmp_path}")
    if group == "model" and option == "densenet121":
        overrides.append("data.resolution=64")
    cfg = _compose(overrides, hydra=group == "hparams_search", name=name)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    instantiate(cfg.data)
    res = cfg.data.resolution
    pre = instantiate(cfg.transforms.preprocess)
    out = pre(torch.rand(1, 40, 50))
    assert tuple(out.shape) == (1, res, res)
    if cfg.transforms.get("augment"):
        augment = instantiate(cfg.transforms.augment)
        batch = isinstance(augment, BatchAugment)
        augmented = augment(out[None] if batch else out)
        assert tuple(augmented.shape) == ((1, 1, res, res) if batch else (1, res, res))
    model = instantiate(cfg.model)
    assert model(torch.zeros(2, 1, res, res)).shape == (2, 2)
    opt = instantiate(cfg.optimizer)(params=model.parameters())
    if name == "train_central":
        instantiate(cfg.scheduler)(optimizer=opt)
    else:
        strategy = instantiate(cfg.strategy)
        assert strategy.min_available_nodes == cfg.federation.num_sites
        wrap = instantiate(cfg.secure)
        if secure_enabled(cfg):
            roster = str(write_identities(tmp_path / "ids", ["site-0", "site-1"]))
            if isinstance(strategy, ROBUST):
                with pytest.raises(ValueError, match="needs the individual updates"):
                    wrap(strategy, roster=roster)
            else:
                assert wrap(strategy, roster=roster).inner is strategy
        else:
            assert wrap(strategy) is strategy
        assert privacy_of(cfg).name == (option if group == "privacy" else "none")
        parts = instantiate(cfg.partition)(torch.randint(0, 2, (400,)).numpy(), 3, seed=0)
        assert sum(len(p) for p in parts) == 400
    instantiate(cfg.logger)
    if group == "hparams_search":
        assert cfg.hydra.sweeper.direction == "maximize"
        assert cfg.hydra.sweeper.params


def test_misspelt_override_fails_loudly() -> None:
    with pytest.raises(ConfigCompositionException, match="trian"):
        _compose(["trian.epochs=3"])
    with pytest.raises(ConfigCompositionException, match="smal_cnn"):
        _compose(["model=smal_cnn"])


def test_folder_source_requires_train_path() -> None:
    cfg = _compose(["data=folder"])
    with pytest.raises(Exception, match="train"):
        instantiate(cfg.data)


def test_audit_config_composes_and_builds_its_attack() -> None:
    from task.audit.inversion import AttackSettings
    from task.audit.run import VIEWS

    cfg = _compose([], name="audit")
    OmegaConf.resolve(cfg)
    assert isinstance(instantiate(cfg.audit.attack), AttackSettings)
    assert list(cfg.audit.batch_sizes) == [1, 4, 16]
    assert set(cfg.audit.views) == set(VIEWS)  # every view runs by default
    assert all(cfg.audit.round_images % b == 0 for b in cfg.audit.batch_sizes)


@pytest.mark.parametrize("data", ["pneumoniamnist", "folder"])
def test_check_site_config_takes_the_run_data_group(data: str) -> None:
    """A site checks with the run's data group, whichever it is; folder's own train path
    is not needed (the site's data_path is read instead)."""
    from task.data.sites import reading_settings

    cfg = _compose(
        ["data_path=/data/site", f"data={data}", "data.resolution=32"], name="check_site"
    )
    assert reading_settings(cfg, cfg.data_path)["resolution"] == 32
    instantiate(cfg.transforms.preprocess)
