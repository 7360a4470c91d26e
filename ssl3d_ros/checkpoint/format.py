"""Self-describing checkpoints: one ``.safetensors`` file with the weights and a JSON document.

Tensors: ``encoder.*`` (the SparseEncoder state_dict), optional ``head.seg.weight``/``head.seg.bias``
(linear segmentation probe on hypercolumn features), ``pca.mean``/``pca.basis`` (embedding reduction),
``kmeans.centroids`` (unsupervised segments), ``novelty.*`` (the reference a frame's novelty is scored
against, :mod:`ssl3d_ros.models.novelty`), and caller-named extra tensors.

The JSON document sits in the safetensors metadata under the key ``ssl3d`` (see :class:`CheckpointMeta`):
architecture, the preprocessing the encoder was trained with (so the node feeds it identically),
recipe, training-data summary, class names/colours and what heads are present.

Loading never unpickles: the file is parsed as safetensors (a JSON header and raw little-endian
buffers), and a pickle or ``torch.save`` zip is refused before anything in it is interpreted. The
header and the document are checked against each other before any tensor is read or any module built
(:mod:`ssl3d_ros.checkpoint.meta`, :mod:`ssl3d_ros.checkpoint.validation`; saving runs the same
check). Every problem (missing, truncated, corrupt, wrong schema, weights not matching the
architecture, an architecture over the size limit, head not matching the encoder) raises
:class:`CheckpointError` with the file name and the problem.

Writing is atomic (temporary file in the same directory, fsync, ``os.replace``): a crash or a full
disk leaves any earlier checkpoint at that path intact.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from ssl3d_ros import __version__
from ssl3d_ros.atomic import atomic_write
from .meta import (
    FORMAT_VERSION,
    METADATA_KEY,
    CheckpointError,
    CheckpointMeta,
    ClassInfo,
    HeadsInfo,
    KMeansInfo,
    NoveltyInfo,
    PCAInfo,
    RecipeInfo,
    SegHeadInfo,
    document,
    parse_meta,
    read_header,
)
from .validation import (
    ENCODER_PREFIX,
    KMEANS_CENTROIDS,
    NOVELTY_PREFIX,
    NOVELTY_TENSORS,
    PCA_PREFIX,
    RESERVED_PREFIXES,
    SEG_HEAD_PREFIX,
    check_contents,
    check_finite,
    check_novelty_values,
    hypercolumn_channels,
)
from ssl3d_ros.config import ConfigError, from_dict, to_dict
from ssl3d_ros.models.encoder import EncoderConfig, build_encoder
from ssl3d_ros.models.heads import LinearSegHead, PCAProjection, StreamingKMeans
from ssl3d_ros.models.novelty import TENSOR_NAMES as NOVELTY_TENSOR_NAMES, NoveltyReference
from ssl3d_ros.preprocessing import PreprocessConfig


@dataclass
class Checkpoint:
    """A loaded, validated checkpoint. ``encoder`` is in eval mode on the requested device."""

    path: Path
    encoder: nn.Module
    encoder_config: EncoderConfig  # meta.encoder with the backend chosen at load time
    preprocessing: PreprocessConfig
    seg_head: LinearSegHead | None
    pca: PCAProjection | None
    kmeans_centroids: torch.Tensor | None
    classes: ClassInfo | None
    recipe: RecipeInfo | None
    training_data: dict[str, Any] | None
    extra_tensors: dict[str, torch.Tensor]
    meta: CheckpointMeta  # the JSON document as stored, typed
    novelty: NoveltyReference | None = None  # the reference novelty is scored against (None: novelty off)

    @property
    def class_names(self) -> list[str]:
        """Names by class id of the segmentation head ([] without classes)."""
        return list(self.classes.names) if self.classes else []

    @property
    def class_colors(self) -> list[tuple[int, int, int]]:
        """RGB 0..255 by class id ([] when the checkpoint has none)."""
        return list(self.classes.colors) if self.classes and self.classes.colors else []

    @property
    def kmeans_input(self) -> Literal["hypercolumn", "pca"]:
        """What the stored k-means centroids cluster: hypercolumns or PCA embeddings."""
        return self.meta.kmeans_input

    def kmeans(self, seed: int = 0, **kwargs: Any) -> StreamingKMeans | None:
        """A StreamingKMeans starting from the stored centroids (None when there are none)."""
        if self.kmeans_centroids is None:
            return None
        return StreamingKMeans.from_centroids(self.kmeans_centroids, seed, **kwargs)


def _encoder_config(encoder: nn.Module) -> EncoderConfig:
    cfg = getattr(encoder, "cfg", None)
    if not isinstance(cfg, EncoderConfig):
        raise CheckpointError(f"{type(encoder).__name__} has no EncoderConfig .cfg: cannot describe its architecture")
    return cfg


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------


def save_checkpoint(
    path: str | Path,
    encoder: nn.Module,
    *,
    preprocessing: PreprocessConfig,
    recipe: RecipeInfo | Mapping[str, Any] | None = None,
    training_data: Mapping[str, Any] | None = None,
    classes: ClassInfo | Mapping[str, Any] | Sequence[str] | None = None,
    seg_head: LinearSegHead | None = None,
    pca: PCAProjection | None = None,
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
    kmeans: StreamingKMeans | torch.Tensor | None = None,
    kmeans_input: Literal["hypercolumn", "pca"] = "hypercolumn",
    novelty: NoveltyReference | None = None,
    created: str | None = None,
) -> Path:
    """Write encoder weights, heads and the JSON document to ``path`` atomically; returns the path.

    Everything is validated before writing, by the same check the loader runs (heads against the
    encoder's hypercolumn channels and the class count, the encoder's weights against its config and
    in_channels against the preprocessing features), so an unusable checkpoint is never produced.
    """
    path = Path(path)
    encoder_cfg = _encoder_config(encoder)
    channels = hypercolumn_channels(encoder_cfg)
    recipe_info = _as(RecipeInfo, recipe, path, "recipe")
    class_info = _as(ClassInfo, {"names": list(classes)} if _is_name_list(classes) else classes, path, "classes")

    tensors: dict[str, torch.Tensor] = {
        ENCODER_PREFIX + name: value for name, value in encoder.state_dict().items()
    }
    heads = HeadsInfo()
    if seg_head is not None:
        if class_info is None:
            raise CheckpointError(f"{path}: a segmentation head needs class names (classes=...)")
        heads.seg = SegHeadInfo(in_channels=channels, num_classes=len(class_info.names))
        tensors[SEG_HEAD_PREFIX + "weight"] = seg_head.weight
        tensors[SEG_HEAD_PREFIX + "bias"] = seg_head.bias
    if pca is not None:
        heads.pca = PCAInfo(in_channels=channels, dim=pca.out_channels)
        tensors[PCA_PREFIX + "mean"] = pca.mean
        tensors[PCA_PREFIX + "basis"] = pca.basis
    if kmeans is not None:
        centroids = kmeans.centroids if isinstance(kmeans, StreamingKMeans) else kmeans
        if centroids is None:
            raise CheckpointError(f"{path}: the k-means has no centroids yet (run step() on a frame first)")
        if kmeans_input == "pca" and pca is None:
            raise CheckpointError(f"{path}: k-means on PCA embeddings needs the PCA basis (pca=...)")
        dim = channels if kmeans_input == "hypercolumn" else pca.out_channels
        heads.kmeans = KMeansInfo(k=centroids.shape[0] if centroids.ndim else 0, dim=dim, input=kmeans_input)
        tensors[KMEANS_CENTROIDS] = centroids
    if novelty is not None:
        heads.novelty = NoveltyInfo(
            in_channels=novelty.in_channels, dims=novelty.dims, prototypes=novelty.num_prototypes,
            quantile_levels=list(novelty.quantile_levels), normalise_at=novelty.normalise_at, frames=novelty.frames,
            voxels=novelty.voxels, sources=list(novelty.sources))
        tensors.update({NOVELTY_PREFIX + name: value for name, value in novelty.tensors().items()})
    extra_names = []
    for name, value in (extra_tensors or {}).items():
        if name.startswith(RESERVED_PREFIXES) or name in tensors:
            raise CheckpointError(f"{path}: extra tensor name {name!r} uses a reserved prefix {RESERVED_PREFIXES}")
        tensors[name] = value
        extra_names.append(name)

    meta = CheckpointMeta(
        format_version=FORMAT_VERSION,
        encoder=encoder_cfg,
        preprocessing=preprocessing,
        recipe=recipe_info,
        training_data=dict(training_data) if training_data is not None else None,
        classes=class_info,
        heads=heads,
        extra_tensors=sorted(extra_names),
        created=created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        ssl3d_ros_version=__version__,
    )
    check_contents(path, meta, {name: tuple(value.shape) for name, value in tensors.items()},
                   {name: _DTYPE_NAMES.get(value.dtype, str(value.dtype)) for name, value in tensors.items()})
    check_finite(path, tensors)
    check_novelty_values(path, tensors)
    try:
        text = json.dumps(to_dict(meta), allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: metadata is not plain JSON data ({exc}); pass dicts, lists, finite numbers, strings"
        ) from None

    # Own contiguous copies: safetensors refuses views sharing storage (tied or sliced parameters).
    plain = {name: value.detach().to("cpu").contiguous().clone() for name, value in tensors.items()}
    blob = save(plain, metadata={METADATA_KEY: text, "format": "pt"})
    _atomic_write(path, blob)
    return path


#: safetensors dtype names of the torch dtypes a checkpoint holds (the validator compares these)
_DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


def _is_name_list(classes: Any) -> bool:
    return isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes)


def _as(cls: type, value: Any, path: Path, what: str) -> Any:
    if value is None or isinstance(value, cls):
        return value
    try:
        return from_dict(cls, to_dict(dict(value)), what)
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid {what}: {exc}") from None


def _atomic_write(path: Path, data: bytes) -> None:
    try:
        atomic_write(path, lambda tmp: tmp.write_bytes(data))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CheckpointError(
            f"{path}: could not write checkpoint ({reason}); any earlier file at this path is unchanged"
        ) from exc


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The checkpoint's JSON document as stored (plain data), without loading any tensor (for
    listings and tools that edit documents); :func:`read_meta` gives it typed."""
    path = Path(path)
    return document(path, read_header(path))


def read_meta(path: str | Path) -> CheckpointMeta:
    """The checkpoint's typed document, checked against the tensor shapes, without reading any tensor."""
    path = Path(path)
    header = read_header(path)
    meta = parse_meta(path, document(path, header))
    check_contents(path, meta, header.shapes, header.dtypes)
    return meta


def load_checkpoint(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    backend: str = "auto",
) -> Checkpoint:
    """Read and validate a checkpoint; the encoder comes back in eval mode on ``device``.

    ``backend`` selects the sparse-conv implementation ("auto", "torch", "spconv"); weights are the
    same for both. Nothing is allocated before the header and the document agree (shapes, counts,
    size limit). Raises CheckpointError naming the file and the problem.
    """
    path = Path(path)
    meta = read_meta(path)
    try:
        encoder_cfg = dataclasses.replace(meta.encoder, backend=backend)
    except ValueError as exc:
        raise CheckpointError(f"{path}: invalid encoder config: {exc}") from None

    try:
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: tensor data cannot be read ({exc})") from None
    check_finite(path, tensors)
    check_novelty_values(path, tensors)

    encoder = build_encoder(encoder_cfg)
    encoder.load_state_dict(
        {k[len(ENCODER_PREFIX):]: v for k, v in tensors.items() if k.startswith(ENCODER_PREFIX)}, strict=True
    )
    seg_head = pca = None
    if meta.heads.seg is not None:
        seg_head = LinearSegHead(meta.heads.seg.in_channels, meta.heads.seg.num_classes)
        seg_head.load_state_dict({"weight": tensors[SEG_HEAD_PREFIX + "weight"], "bias": tensors[SEG_HEAD_PREFIX + "bias"]})
    if meta.heads.pca is not None:
        pca = PCAProjection(tensors[PCA_PREFIX + "mean"], tensors[PCA_PREFIX + "basis"])
    kmeans_centroids = tensors[KMEANS_CENTROIDS] if meta.heads.kmeans is not None else None
    novelty = None
    if meta.heads.novelty is not None:
        info = meta.heads.novelty
        novelty = NoveltyReference(
            **{name: tensors[NOVELTY_PREFIX + name] for name in NOVELTY_TENSOR_NAMES},
            quantile_levels=tuple(info.quantile_levels), normalise_at=info.normalise_at, frames=info.frames,
            voxels=info.voxels, sources=list(info.sources))

    device = torch.device(device)
    encoder.to(device).eval()
    if seg_head is not None:
        seg_head.to(device).eval()
    if pca is not None:
        pca.to(device).eval()
    return Checkpoint(
        path=path,
        encoder=encoder,
        encoder_config=encoder_cfg,
        preprocessing=meta.preprocessing,
        seg_head=seg_head,
        pca=pca,
        kmeans_centroids=kmeans_centroids,
        classes=meta.classes,
        recipe=meta.recipe,
        training_data=meta.training_data,
        extra_tensors={name: tensors[name] for name in meta.extra_tensors},
        meta=meta,
        novelty=novelty,
    )


def add_heads(
    path: str | Path,
    out_path: str | Path,
    *,
    seg_head: LinearSegHead | None = None,
    classes: ClassInfo | Mapping[str, Any] | Sequence[str] | None = None,
    pca: PCAProjection | None = None,
    kmeans: StreamingKMeans | torch.Tensor | None = None,
    kmeans_input: Literal["hypercolumn", "pca"] | None = None,
    novelty: NoveltyReference | None = None,
) -> Path:
    """Copy checkpoint ``path`` to ``out_path`` with heads added or replaced (e.g. a trained probe, a
    novelty reference).

    Heads not given are kept from ``path``; ``classes`` defaults to the stored ones. ``out_path`` may
    equal ``path`` (the write is atomic).
    """
    ckpt = load_checkpoint(path)
    return save_checkpoint(
        out_path,
        ckpt.encoder,
        preprocessing=ckpt.preprocessing,
        recipe=ckpt.recipe,
        training_data=ckpt.training_data,
        classes=classes if classes is not None else ckpt.classes,
        seg_head=seg_head if seg_head is not None else ckpt.seg_head,
        pca=pca if pca is not None else ckpt.pca,
        kmeans=kmeans if kmeans is not None else ckpt.kmeans_centroids,
        kmeans_input=kmeans_input or ckpt.kmeans_input,
        novelty=novelty if novelty is not None else ckpt.novelty,
        extra_tensors=ckpt.extra_tensors,
        created=ckpt.meta.created or None,
    )


__all__ = ["Checkpoint", "add_heads", "load_checkpoint", "read_meta", "read_metadata", "save_checkpoint"]
