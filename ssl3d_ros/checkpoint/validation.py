"""The one consistency check of a checkpoint, run by save before writing and by load before allocating.

It compares the typed document with the tensors' names and shapes only (the loader gets them from the
safetensors header, the saver from the tensors it is about to write): encoder input channels against
the preprocessing features, every encoder tensor against the shapes the declared EncoderConfig gives
(computed on the meta device: no storage), a hard cap on the declared parameter count, each head
against the encoder's hypercolumn channels and the class names, a novelty reference's tensors against
its sizes in the document (shapes and F32), and no tensor left undescribed.

Together with the header check (each tensor's byte span is exactly numel * itemsize, inside the file),
a declared architecture that passes here is backed by that many bytes on disk: a small file cannot make
the loader build a huge encoder.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import torch

from .meta import CheckpointError, CheckpointMeta
from ssl3d_ros.models.encoder import EncoderConfig, build_encoder
from ssl3d_ros.models.novelty import TENSOR_NAMES as NOVELTY_TENSOR_NAMES
from ssl3d_ros.preprocessing import feature_channels

ENCODER_PREFIX = "encoder."
SEG_HEAD_PREFIX = "head.seg."
SEG_HEAD_TENSORS = (SEG_HEAD_PREFIX + "weight", SEG_HEAD_PREFIX + "bias")
PCA_PREFIX = "pca."
PCA_TENSORS = (PCA_PREFIX + "mean", PCA_PREFIX + "basis")
KMEANS_CENTROIDS = "kmeans.centroids"
NOVELTY_PREFIX = "novelty."
NOVELTY_TENSORS = tuple(NOVELTY_PREFIX + name for name in NOVELTY_TENSOR_NAMES)
RESERVED_PREFIXES = (ENCODER_PREFIX, "head.", PCA_PREFIX, "kmeans.", NOVELTY_PREFIX)
#: 8x the base preset (63 M); 2 GB of fp32 weights
MAX_ENCODER_PARAMETERS = 500_000_000

Shapes = Mapping[str, tuple[int, ...]]
Dtypes = Mapping[str, str]  # tensor name -> safetensors dtype ("F32", ...)


def hypercolumn_channels(cfg: EncoderConfig) -> int:
    """Channels of the encoder's hypercolumn (all levels concatenated), from its config."""
    return sum(cfg.level_channels)


def expected_encoder_shapes(cfg: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of the encoder's state_dict, without allocating its storage."""
    module = build_encoder(cfg, device="meta")
    return {name: tuple(value.shape) for name, value in module.state_dict().items()}


def check_contents(path: Path, meta: CheckpointMeta, shapes: Shapes, dtypes: Dtypes | None = None) -> None:
    """CheckpointError naming ``path`` and the first problem with ``meta`` and the tensor ``shapes``
    (and ``dtypes``, safetensors names, where the document fixes them)."""
    cfg = meta.encoder
    features = feature_channels(meta.preprocessing)
    if cfg.in_channels != features:
        raise CheckpointError(
            f"{path}: encoder in_channels={cfg.in_channels} but preprocessing features "
            f"{list(meta.preprocessing.features)} give {features} channels"
        )
    stored = {name[len(ENCODER_PREFIX):]: shape for name, shape in shapes.items() if name.startswith(ENCODER_PREFIX)}
    check_encoder_shapes(path, cfg, stored)
    channels = hypercolumn_channels(cfg)
    described = {ENCODER_PREFIX + name for name in stored}
    described |= _check_seg_head(path, meta, shapes, channels)
    described |= _check_pca(path, meta, shapes, channels)
    described |= _check_kmeans(path, meta, shapes, channels)
    described |= _check_novelty(path, meta, shapes, dtypes or {}, channels)
    for name in meta.extra_tensors:
        if name.startswith(RESERVED_PREFIXES):
            raise CheckpointError(f"{path}: extra tensor name {name!r} uses a reserved prefix {RESERVED_PREFIXES}")
        if name not in shapes:
            raise CheckpointError(f"{path}: extra tensor {name!r} listed in the metadata is missing")
        described.add(name)
    unexpected = sorted(set(shapes) - described)
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensors not described by the metadata: {unexpected[:10]}")


def check_encoder_shapes(path: Path, cfg: EncoderConfig, stored: Shapes) -> None:
    """The stored encoder tensors (names without the ``encoder.`` prefix) are exactly the declared
    architecture's, and that architecture is within the size limit."""
    # Every stage, stem and block holds at least one tensor: a declaration of more blocks than the
    # file has tensors is refused before the meta build, whose time grows with the block count.
    blocks = 1 + cfg.stem_depth + len(cfg.stage_channels) + sum(cfg.stage_depths)
    if blocks > len(stored):
        raise CheckpointError(
            f"{path}: encoder weights do not match the architecture in the metadata: it declares {blocks} "
            f"layers and blocks, the file holds {len(stored)} encoder tensors"
        )
    try:
        expected = expected_encoder_shapes(cfg)
    except (RuntimeError, ValueError) as exc:  # a combination EncoderConfig's checks let through
        raise CheckpointError(f"{path}: the encoder architecture in the metadata cannot be built ({exc})") from None
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    mismatched = [
        f"{name} {stored[name]} vs {expected[name]}"
        for name in sorted(set(stored) & set(expected))
        if tuple(stored[name]) != expected[name]
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {missing[:8]}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {unexpected[:8]}")
    if mismatched:
        problems.append(f"shape mismatch (stored vs architecture) {len(mismatched)}: {mismatched[:8]}")
    if problems:
        raise CheckpointError(
            f"{path}: encoder weights do not match the architecture in the metadata: " + "; ".join(problems)
        )
    # The stored tensors are this architecture, so the file holds its bytes; a cap still, for files
    # that are genuinely that large.
    parameters = sum(math.prod(shape) for shape in expected.values())
    if parameters > MAX_ENCODER_PARAMETERS:
        raise CheckpointError(
            f"{path}: the metadata declares an encoder of {parameters:,} parameters, more than the "
            f"{MAX_ENCODER_PARAMETERS:,} this loader accepts"
        )


def check_finite(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Encoder weights without NaN/Inf (data, so after the shapes have been checked)."""
    bad = [name[len(ENCODER_PREFIX):] for name, value in tensors.items()
           if name.startswith(ENCODER_PREFIX) and value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        raise CheckpointError(f"{path}: encoder weights contain NaN/Inf (corrupt or diverged training): {bad[:8]}")


def check_novelty_values(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """A novelty reference's values (data, so after the shapes have been checked): finite, quantiles
    positive and non-decreasing, share_mean a distribution, share_std positive. No-op without a reference."""
    if not all(name in tensors for name in NOVELTY_TENSORS):
        return
    values = {name[len(NOVELTY_PREFIX):]: tensors[name].double() for name in NOVELTY_TENSORS}
    bad = [name for name, value in values.items() if not bool(torch.isfinite(value).all())]
    if bad:
        raise CheckpointError(f"{path}: novelty reference tensors contain NaN/Inf: {bad}")
    for name in ("voxel_quantiles", "frame_quantiles"):
        q = values[name]
        if not bool((q > 0).all()) or not bool((q[1:] >= q[:-1]).all()):
            raise CheckpointError(f"{path}: novelty.{name} must be positive and non-decreasing, got {q.tolist()[:8]}")
    share = values["share_mean"]
    if bool((share < 0).any()) or abs(float(share.sum()) - 1.0) > 1e-3:
        raise CheckpointError(f"{path}: novelty.share_mean must be non-negative and sum to 1 (sum {float(share.sum()):.4f})")
    if not bool((values["share_std"] > 0).all()):
        raise CheckpointError(f"{path}: novelty.share_std must be positive")


def _require(path: Path, shapes: Shapes, names: tuple[str, ...], what: str) -> list[tuple[int, ...]]:
    absent = [name for name in names if name not in shapes]
    if absent:
        raise CheckpointError(f"{path}: metadata declares a {what} but tensors {absent} are missing")
    return [tuple(shapes[name]) for name in names]


def _check_seg_head(path: Path, meta: CheckpointMeta, shapes: Shapes, channels: int) -> set[str]:
    info = meta.heads.seg
    if info is None:
        return set()
    weight, bias = _require(path, shapes, SEG_HEAD_TENSORS, "segmentation head")
    if meta.classes is None:
        raise CheckpointError(f"{path}: segmentation head without class names")
    num_classes = len(meta.classes.names)
    if (info.in_channels, info.num_classes) != (channels, num_classes):
        raise CheckpointError(
            f"{path}: heads.seg says {info.num_classes} classes on {info.in_channels} channels; "
            f"the checkpoint has {num_classes} class names and {channels} hypercolumn channels"
        )
    if weight != (num_classes, channels) or bias != (num_classes,):
        raise CheckpointError(
            f"{path}: segmentation head weight {weight} / bias {bias} does not match "
            f"{num_classes} classes on {channels} hypercolumn channels"
        )
    return set(SEG_HEAD_TENSORS)


def _check_pca(path: Path, meta: CheckpointMeta, shapes: Shapes, channels: int) -> set[str]:
    info = meta.heads.pca
    if info is None:
        return set()
    mean, basis = _require(path, shapes, PCA_TENSORS, "PCA basis")
    if mean != (channels,) or len(basis) != 2 or basis[0] != channels or basis[1] < 1 or info.in_channels != channels:
        raise CheckpointError(
            f"{path}: PCA mean {mean} / basis {basis} (heads.pca.in_channels {info.in_channels}) does not match "
            f"{channels} hypercolumn channels"
        )
    if basis[1] != info.dim:
        raise CheckpointError(f"{path}: PCA basis has {basis[1]} components, metadata says {info.dim}")
    return set(PCA_TENSORS)


def _check_kmeans(path: Path, meta: CheckpointMeta, shapes: Shapes, channels: int) -> set[str]:
    info = meta.heads.kmeans
    if info is None:
        return set()
    (centroids,) = _require(path, shapes, (KMEANS_CENTROIDS,), "k-means")
    pca = meta.heads.pca
    dim = channels if info.input == "hypercolumn" else (pca.dim if pca is not None else None)
    if dim is None:
        raise CheckpointError(f"{path}: k-means on PCA embeddings needs the PCA basis")
    if centroids != (info.k, dim) or info.dim != dim or info.k < 1:
        raise CheckpointError(
            f"{path}: k-means centroids {centroids} do not match k={info.k} on {info.input} dim {dim}"
        )
    return {KMEANS_CENTROIDS}


def _check_novelty(path: Path, meta: CheckpointMeta, shapes: Shapes, dtypes: Dtypes, channels: int) -> set[str]:
    info = meta.heads.novelty
    if info is None:
        return set()
    got = dict(zip(NOVELTY_TENSOR_NAMES, _require(path, shapes, NOVELTY_TENSORS, "novelty reference")))
    if info.in_channels != channels or info.dims > channels:
        raise CheckpointError(f"{path}: heads.novelty says {info.dims} dims of {info.in_channels} channels; the "
                              f"encoder's hypercolumn has {channels}")
    q = len(info.quantile_levels)
    expected = {"mean": (channels,), "basis": (channels, info.dims), "prototypes": (info.prototypes, info.dims),
                "share_mean": (info.prototypes,), "share_std": (info.prototypes,), "voxel_quantiles": (q,),
                "frame_quantiles": (q,)}
    wrong = [f"novelty.{name} {got[name]} (expected {shape})" for name, shape in expected.items() if got[name] != shape]
    if wrong:
        raise CheckpointError(f"{path}: novelty reference does not match heads.novelty "
                              f"({info.prototypes} prototypes, {info.dims} dims, {q} quantiles, {channels} channels): "
                              + "; ".join(wrong))
    not_f32 = [f"{name} {dtypes[name]}" for name in NOVELTY_TENSORS if dtypes.get(name, "F32") != "F32"]
    if not_f32:
        raise CheckpointError(f"{path}: novelty reference tensors must be F32: {not_f32}")
    return set(NOVELTY_TENSORS)


__all__ = [
    "ENCODER_PREFIX", "KMEANS_CENTROIDS", "MAX_ENCODER_PARAMETERS", "NOVELTY_PREFIX", "NOVELTY_TENSORS", "PCA_PREFIX", "PCA_TENSORS",
    "RESERVED_PREFIXES", "SEG_HEAD_PREFIX", "SEG_HEAD_TENSORS", "Dtypes", "Shapes", "check_contents",
    "check_encoder_shapes", "check_finite", "check_novelty_values",
    "expected_encoder_shapes", "hypercolumn_channels",
]
