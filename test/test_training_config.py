"""Pretraining configuration (ssl3d_ros.training.config): the shipped recipes load, unknown keys are
refused, command-line overrides apply."""
from __future__ import annotations

from pathlib import Path

import pytest

from ssl3d_ros.config import ConfigError
from ssl3d_ros.training.config import config_from_dict, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("recipe", ["sonata", "msm", "jepa", "mae", "acl"])
def test_shipped_configs_load(recipe):
    cfg = load_config(REPO / "config" / "pretrain" / f"{recipe}.yaml")
    assert cfg.recipe_name == recipe and cfg.encoder["size"] == "nano"
    assert cfg.data.sources and cfg.run.steps > 0


def test_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="recipe"):
        config_from_dict({"recipe": {"name": "sonata", "not_a_key": 1}})
    with pytest.raises(ConfigError, match="unknown top-level"):
        config_from_dict({"recipes": {}})
    with pytest.raises(ConfigError, match="run"):
        config_from_dict({"run": {"stepz": 3}})
    with pytest.raises(ConfigError, match="unknown recipe"):
        config_from_dict({"recipe": {"name": "nope"}})
    with pytest.raises(ConfigError, match="view group"):
        config_from_dict({"recipe": {"name": "jepa", "views": {"global": {"count": 1}}}})
    with pytest.raises(ConfigError, match="view group"):
        config_from_dict({"recipe": {"name": "acl", "base": "msm", "base_config": {"views": {"scene": {}}}}})
    with pytest.raises(ConfigError, match="encoder"):
        config_from_dict({"encoder": {"size": "huge"}})
    with pytest.raises(ConfigError, match="in_channels"):
        config_from_dict({"encoder": {"in_channels": 4}})
    cfg = config_from_dict({"recipe": {"name": "mae", "leak_positions": True}, "run": {"steps": 7}})
    assert cfg.recipe.leak_positions is True and cfg.run.steps == 7
    assert cfg.to_dict()["recipe"]["name"] == "mae"


def test_config_overrides_from_the_command_line():
    path = REPO / "config" / "pretrain" / "sonata.yaml"
    cfg = load_config(path, ["preprocessing.voxel_size=0.15", "encoder.size=micro", "recipe.prototypes=64",
                             "preprocessing.features=[xyz, intensity]"])
    assert cfg.preprocessing.voxel_size == 0.15 and cfg.encoder["size"] == "micro"
    assert cfg.recipe.prototypes == 64 and tuple(cfg.preprocessing.features) == ("xyz", "intensity")
    assert load_config(path).preprocessing.voxel_size == 0.1  # the file itself is untouched
    with pytest.raises(ConfigError, match="preprocessing"):
        load_config(path, ["preprocessing.voxel_sise=0.15"])  # misspelt keys are still unknown keys
    with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
        load_config(path, ["preprocessing.voxel_size"])
    with pytest.raises(ConfigError, match="not a mapping"):
        load_config(path, ["run.steps.x=1"])
