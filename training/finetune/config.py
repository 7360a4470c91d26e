"""The fine-tuning configuration: one YAML file per run (``config/finetune/default.yaml``).

Top-level keys: ``init`` (``none`` or a checkpoint path), ``random_weights``, ``init_head``, ``pca_dims``,
``novelty_scans``, ``data``, ``labels``,
``validation``, ``augment`` (views.py's ViewGroupConfig: crop + AugmentConfig), ``encoder`` and
``preprocessing`` (used only from scratch: a checkpoint brings its own), ``optim``, ``loss``, ``run``.
Unknown keys anywhere are errors (ConfigError naming the key path).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ssl3d_ros.config import ConfigError, from_dict, load_with_overrides, to_dict
from ssl3d_ros.preprocessing import PreprocessConfig

from ..config import encoder_config
from ..data import DataConfig
from ..views import ViewGroupConfig


@dataclass
class LabelConfig:
    """Which labels train. Limited-label options are seeded (``seed``) and recorded in OUT/labels.json.

    class_map: name (config/classes) or YAML path; empty: ``sim-<scene>`` for simulated data. Maps of
        label space ``semantickitti-raw`` take the lower 16 bits of each label (the instance id lives
        in the upper 16).
    label_field: PointCloud2 field holding labels (bags).
    scans: train on K randomly chosen scans (0: all).
    fraction: keep this fraction of each scan's labelled points (0 < p <= 1).
    selection: ``random`` (uniform over points) or ``blocks`` (whole xy squares of ``block_size``
        metres around randomly chosen labelled points, added until ``fraction`` is reached, as an
        annotator labels a few regions).
    """

    class_map: str = ""
    label_field: str | None = None
    scans: int = 0
    fraction: float = 1.0
    selection: Literal["random", "blocks"] = "random"
    block_size: float = 4.0
    seed: int = 0


@dataclass
class ValidationConfig:
    """Held-out labelled scans, scored (mIoU) every ``every`` steps and at the end.

    sources: separate labelled scans (paths or sim:KIND:COUNT, read like data.sources).
    holdout_scans: scans of data.sources held out (the last ones; never trained on).
    split: ``block`` holds out, inside every training scan, a seeded ``test_fraction`` of its
        ``block_size`` xy squares (their labels never train) and validates on them.
    keep: which weights become model.safetensors: ``best`` (the best validation mIoU, chosen on these
        scans: they must not be the test scans) or ``last`` (the final weights).
    """

    sources: list[str] = field(default_factory=list)
    holdout_scans: int = 0
    split: Literal["none", "block"] = "none"
    block_size: float = 8.0
    test_fraction: float = 0.3
    every: int = 50
    seed: int = 0  # seed of the block split (fixed across label seeds: every run is scored on the same blocks)
    sim_seed: int = 1000  # seed of simulated validation sources (distinct from data.sim_seed)
    zero_intensity: bool = False  # score with intensity zeroed, as the node feeds a cloud without that field
    keep: Literal["best", "last"] = "best"  # model.safetensors: the best validation's weights, or the last ones


@dataclass
class FinetuneOptimConfig:
    lr: float = 2e-3  # peak learning rate of the head; encoder layers get lr * layer_decay ** depth
    min_lr: float = 1e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 20
    grad_clip: float = 3.0  # max global gradient norm (0: off)
    layer_decay: float = 0.75  # 1: one lr everywhere; the stem gets lr * layer_decay ** (stages + 1)
    freeze_encoder_steps: int = 0  # first steps train the head only (linear warm-up on frozen features)


@dataclass
class LossConfig:
    kind: Literal["ce", "lovasz", "ce+lovasz"] = "ce"
    class_weights: Literal["none", "balanced"] = "none"  # balanced: (mean count / class count) ** power
    balance_power: float = 0.5
    lovasz_weight: float = 1.0  # weight of the Lovasz-softmax term in ce+lovasz


@dataclass
class FinetuneRunConfig:
    steps: int = 1000
    batch_size: int = 2  # scans per process per step
    checkpoint_every: int = 50  # steps between resumable training states
    keep_checkpoints: int = 2
    log_every: int = 1
    out_dir: str = "runs/finetune"
    seed: int = 0
    workers: int = 1  # DataLoader workers per process
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["bf16", "fp32"] = "bf16"  # bf16 autocast on CUDA; CPU always runs fp32
    threads: int = 0  # torch CPU threads per process (0: auto, one per core the DataLoader workers leave)
    tensorboard: bool = True


@dataclass
class FinetuneConfig:
    init: str = "none"  # "none" (scratch) or a checkpoint (ssl3d-pretrain's encoder.safetensors, ...)
    random_weights: bool = False  # with a checkpoint: its architecture and preprocessing, fresh weights
    init_head: bool = False  # start the head from init's segmentation head (its classes: the class map's)
    pca_dims: int = 0  # > 0: the output also holds a PCA basis of its hypercolumns (the node's reduced embeddings)
    novelty_scans: int = 16  # > 0: the output also holds a novelty reference fitted on this many training scans
    data: DataConfig = field(default_factory=DataConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    augment: ViewGroupConfig = field(default_factory=lambda: ViewGroupConfig(crop="none", crop_points=120_000))
    encoder: dict[str, Any] | None = None  # scratch only: size preset + EncoderConfig overrides
    preprocessing: PreprocessConfig | None = None  # scratch only
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: FinetuneRunConfig = field(default_factory=FinetuneRunConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @property
    def from_scratch(self) -> bool:
        return self.init in ("", "none")


#: what shapes the weights and the labels trained on: a resumed run must keep these
MODEL_KEYS = ("init", "random_weights", "init_head", "encoder", "preprocessing", "labels")


def validate(cfg: FinetuneConfig) -> FinetuneConfig:
    if cfg.from_scratch:
        if cfg.random_weights:
            raise ConfigError("random_weights needs init: a checkpoint whose architecture to copy")
        cfg.encoder = {"size": "nano", **(cfg.encoder or {})}
        if "in_channels" in cfg.encoder:
            raise ConfigError("encoder.in_channels is derived from preprocessing.features; remove it")
        cfg.preprocessing = cfg.preprocessing or PreprocessConfig()
        encoder_config(cfg.encoder, 1)
    if cfg.init_head and (cfg.from_scratch or cfg.random_weights):
        raise ConfigError("init_head needs init: a checkpoint with a segmentation head, and no random_weights")
    if not cfg.from_scratch and (cfg.encoder is not None or cfg.preprocessing is not None):
        raise ConfigError(f"init: {cfg.init} brings its own encoder and preprocessing; remove the "
                          "'encoder' / 'preprocessing' sections (they apply to init: none)")
    if cfg.pca_dims < 0:
        raise ConfigError(f"pca_dims must be >= 0, got {cfg.pca_dims}")
    if cfg.novelty_scans < 0:
        raise ConfigError(f"novelty_scans must be >= 0 (0: no novelty reference), got {cfg.novelty_scans}")
    lab = cfg.labels
    if not 0 < lab.fraction <= 1:
        raise ConfigError(f"labels.fraction must be in (0, 1], got {lab.fraction}")
    if lab.scans < 0 or lab.block_size <= 0:
        raise ConfigError("labels.scans must be >= 0 and labels.block_size > 0")
    val = cfg.validation
    if val.every < 1 or val.holdout_scans < 0 or not 0 < val.test_fraction < 1 or val.block_size <= 0:
        raise ConfigError("validation: every >= 1, holdout_scans >= 0, 0 < test_fraction < 1, block_size > 0")
    run = cfg.run
    if run.steps < 1 or run.batch_size < 1 or run.checkpoint_every < 1 or run.log_every < 1:
        raise ConfigError("run.steps, run.batch_size, run.checkpoint_every and run.log_every must be >= 1")
    opt = cfg.optim
    if not 0 < opt.layer_decay <= 1 or opt.freeze_encoder_steps < 0 or opt.lr <= 0:
        raise ConfigError("optim: 0 < layer_decay <= 1, freeze_encoder_steps >= 0, lr > 0")
    if cfg.loss.balance_power < 0 or cfg.loss.lovasz_weight < 0:
        raise ConfigError("loss.balance_power and loss.lovasz_weight must be >= 0")
    return cfg


def config_from_dict(data: Any) -> FinetuneConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"fine-tuning config: expected a mapping, got {type(data).__name__}")
    return validate(from_dict(FinetuneConfig, copy.deepcopy(data)))


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> FinetuneConfig:
    """The config in ``path`` (None: the defaults) with ``SECTION.KEY=VALUE`` overrides applied."""
    return load_with_overrides(path, overrides, config_from_dict)


__all__ = ["LabelConfig", "ValidationConfig", "FinetuneOptimConfig", "LossConfig", "FinetuneRunConfig",
           "FinetuneConfig", "MODEL_KEYS", "config_from_dict", "load_config", "validate"]
