"""The pretraining configuration: one YAML file per run (``config/pretrain/<recipe>.yaml``).

Top-level sections: ``data`` (DataConfig), ``preprocessing`` (the node's PreprocessConfig, stored in
the exported checkpoint), ``encoder`` (``size`` preset plus overrides of EncoderConfig), ``recipe``
(``name`` plus that recipe's own Config fields), ``optim`` and ``run``. Unknown keys anywhere are
errors (ConfigError naming the key path).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


from ssl3d_ros.config import ConfigError, from_dict, load_with_overrides, to_dict
from ssl3d_ros.preprocessing import PreprocessConfig

from . import recipes
from .data import DataConfig


@dataclass
class OptimConfig:
    lr: float = 1e-3  # peak learning rate, per global batch of ``lr_batch`` scans
    lr_batch: int = 0  # > 0: lr scales linearly with global batch / lr_batch
    min_lr: float = 1e-5
    weight_decay: float = 0.04
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 10
    grad_clip: float = 3.0  # max global gradient norm (0: off)
    ema_momentum: float = 0.994  # EMA teacher momentum at step 0, cosine to ema_momentum_end
    ema_momentum_end: float = 1.0


@dataclass
class RunConfig:
    steps: int = 100
    batch_size: int = 2  # scans per process per step
    checkpoint_every: int = 50  # steps between training-state checkpoints
    keep_checkpoints: int = 2  # the latest and the previous one
    log_every: int = 1
    out_dir: str = "runs/pretrain"
    seed: int = 0
    workers: int = 2  # DataLoader worker processes per rank
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["bf16", "fp32"] = "bf16"  # bf16 autocast on CUDA; CPU always runs fp32
    export: Literal["teacher", "student"] = "teacher"  # which encoder becomes encoder.safetensors
    threads: int = 0  # torch CPU threads per process (0: auto, one per core the DataLoader workers leave)
    tensorboard: bool = True
    novelty_scans: int = 16  # encoder.safetensors also holds a novelty reference fitted on this many scans (0: none)


@dataclass
class PretrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    preprocessing: PreprocessConfig = field(default_factory=PreprocessConfig)
    encoder: dict[str, Any] = field(default_factory=lambda: {"size": "nano"})
    recipe: Any = None  # the selected recipe's Config instance
    recipe_name: str = "sonata"
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        out = to_dict(self)
        recipe = out.pop("recipe") or {}
        out["recipe"] = {"name": out.pop("recipe_name"), **recipe}
        return out


SECTIONS = ("data", "preprocessing", "encoder", "recipe", "optim", "run")


def config_from_dict(data: Any) -> PretrainConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"pretraining config: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown top-level section(s) {unknown}; allowed: {list(SECTIONS)}")
    data = copy.deepcopy(data)
    recipe_data = data.pop("recipe", None) or {}
    if not isinstance(recipe_data, dict):
        raise ConfigError("recipe: expected a mapping with a 'name'")
    name = recipe_data.pop("name", "sonata")
    try:
        cls = recipes.recipe_class(name)
    except KeyError as exc:
        raise ConfigError(f"recipe.name: {exc.args[0]}") from None
    encoder = data.pop("encoder", None) or {}
    if not isinstance(encoder, dict):
        raise ConfigError("encoder: expected a mapping (size: nano|micro|small|base plus EncoderConfig overrides)")
    if "in_channels" in encoder:
        raise ConfigError("encoder.in_channels is derived from preprocessing.features; remove it")
    cfg = from_dict(PretrainConfig, data)
    if cfg.data.view_retries < 0:
        raise ConfigError(f"data.view_retries must be >= 0, got {cfg.data.view_retries}")
    if cfg.run.novelty_scans < 0:
        raise ConfigError(f"run.novelty_scans must be >= 0 (0: no novelty reference), got {cfg.run.novelty_scans}")
    cfg.data.temporal.validate()
    cfg.encoder = {"size": "nano", **encoder}
    encoder_config(cfg.encoder, 1)  # validate now, not after the data is opened
    cfg.recipe = from_dict(cls.Config, recipe_data, "recipe")
    cls.validate_config(cfg.recipe)
    cfg.recipe_name = name
    return cfg


def encoder_config(spec: dict[str, Any], in_channels: int, overrides: dict[str, Any] | None = None):
    """EncoderConfig from the ``encoder`` section (ConfigError naming the problem)."""
    from ssl3d_ros.models.encoder import encoder_config_from

    return encoder_config_from(spec, "encoder", in_channels=in_channels, **(overrides or {}))


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """The config in ``path`` with ``SECTION.KEY=VALUE`` overrides applied before validation."""
    return load_with_overrides(path, overrides, config_from_dict)


__all__ = ["OptimConfig", "RunConfig", "PretrainConfig", "config_from_dict", "load_config", "encoder_config"]
