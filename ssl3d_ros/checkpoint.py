"""Self-describing checkpoints: one ``.safetensors`` file with the weights and a JSON document.

Tensors: ``encoder.*`` (the SparseEncoder state_dict), optional ``head.seg.weight``/``head.seg.bias``
(linear segmentation probe on hypercolumn features), ``pca.mean``/``pca.basis`` (embedding reduction),
``kmeans.centroids`` (unsupervised segments), and caller-named extra tensors.

The JSON document sits in the safetensors metadata under the key ``ssl3d`` (see :class:`CheckpointMeta`):
architecture, the preprocessing the encoder was trained with (so the node feeds it identically),
recipe, training-data summary, class names/colours and what heads are present.

Loading never unpickles: the file is parsed as safetensors (a JSON header and raw little-endian
buffers), and a pickle or ``torch.save`` zip is refused before anything in it is interpreted. Every
problem (missing, truncated, corrupt, wrong schema, weights not matching the architecture, head not
matching the encoder) raises :class:`CheckpointError` with the file name and the problem.

Writing is atomic (temporary file in the same directory, fsync, ``os.replace``): a crash or a full
disk leaves any earlier checkpoint at that path intact.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from ssl3d_ros import __version__
from ssl3d_ros.atomic import atomic_write
from ssl3d_ros.config import ConfigError, from_dict, to_dict
from ssl3d_ros.models.heads import LinearSegHead, PCAProjection, StreamingKMeans
from ssl3d_ros.preprocessing import PreprocessConfig, feature_channels

FORMAT_VERSION = 1
METADATA_KEY = "ssl3d"
#: a safetensors header is a few hundred kB at most; a larger length field means "not safetensors".
MAX_HEADER_BYTES = 64 * 2**20

ENCODER_PREFIX = "encoder."
SEG_HEAD_PREFIX = "head.seg."
PCA_PREFIX = "pca."
KMEANS_CENTROIDS = "kmeans.centroids"
RESERVED_PREFIXES = (ENCODER_PREFIX, "head.", PCA_PREFIX, "kmeans.")


class CheckpointError(ValueError):
    """A checkpoint cannot be read, written or used; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------------
# The JSON document
# --------------------------------------------------------------------------------------------------


@dataclass
class ClassInfo:
    """Label space of the segmentation head: ``names[i]`` is class id i."""

    names: list[str]
    colors: list[tuple[int, int, int]] | None = None  # RGB 0..255 per class
    ignore_index: int | None = None  # label id ignored in training/evaluation (not a head output)

    def __post_init__(self) -> None:
        if not self.names:
            raise ConfigError("classes.names must not be empty")
        if self.colors is not None:
            self.colors = [tuple(int(v) for v in c) for c in self.colors]
            if len(self.colors) != len(self.names):
                raise ConfigError(f"classes.colors has {len(self.colors)} entries for {len(self.names)} names")
            if any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in self.colors):
                raise ConfigError("classes.colors must be [r, g, b] triples in 0..255")


@dataclass
class RecipeInfo:
    """The pretraining recipe and its full config (plain data), for provenance."""

    name: str
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class SegHeadInfo:
    in_channels: int
    num_classes: int
    input: Literal["hypercolumn"] = "hypercolumn"


@dataclass
class PCAInfo:
    in_channels: int
    dim: int
    input: Literal["hypercolumn"] = "hypercolumn"


@dataclass
class KMeansInfo:
    k: int
    dim: int
    input: Literal["hypercolumn", "pca"] = "hypercolumn"


@dataclass
class HeadsInfo:
    seg: SegHeadInfo | None = None
    pca: PCAInfo | None = None
    kmeans: KMeansInfo | None = None


@dataclass
class CheckpointMeta:
    """Schema of the ``ssl3d`` JSON document (unknown keys are rejected on load)."""

    format_version: int
    encoder: dict[str, Any]  # to_dict(EncoderConfig); validated by EncoderConfig on load
    preprocessing: PreprocessConfig
    recipe: RecipeInfo | None = None
    training_data: dict[str, Any] | None = None  # {sources, scans, ...}
    classes: ClassInfo | None = None
    heads: HeadsInfo = field(default_factory=HeadsInfo)
    extra_tensors: list[str] = field(default_factory=list)
    created: str = ""
    ssl3d_ros_version: str = ""


@dataclass
class Checkpoint:
    """A loaded, validated checkpoint. ``encoder`` is in eval mode on the requested device."""

    path: Path
    encoder: nn.Module
    encoder_config: Any  # EncoderConfig
    preprocessing: PreprocessConfig
    seg_head: LinearSegHead | None
    pca: PCAProjection | None
    kmeans_centroids: torch.Tensor | None
    classes: ClassInfo | None
    recipe: RecipeInfo | None
    training_data: dict[str, Any] | None
    extra_tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]  # the JSON document as stored

    @property
    def class_names(self) -> list[str]:
        """Names by class id of the segmentation head ([] without classes)."""
        return list(self.classes.names) if self.classes else []

    @property
    def class_colors(self) -> list[tuple[int, int, int]]:
        """RGB 0..255 by class id ([] when the checkpoint has none)."""
        return list(self.classes.colors) if self.classes and self.classes.colors else []

    def kmeans(self, seed: int = 0, **kwargs: Any) -> StreamingKMeans | None:
        """A StreamingKMeans starting from the stored centroids (None when there are none)."""
        if self.kmeans_centroids is None:
            return None
        return StreamingKMeans.from_centroids(self.kmeans_centroids, seed, **kwargs)


# --------------------------------------------------------------------------------------------------
# Encoder construction (the one place that knows how to build an encoder from its config)
# --------------------------------------------------------------------------------------------------

#: ``encoder_factory(encoder_config_dict, backend) -> (config, module)``: builds the encoder described
#: by the document's ``encoder`` section. The default builds ``ssl3d_ros.models.encoder.SparseEncoder``;
#: tests of this module alone may inject another architecture.
EncoderFactory = Callable[[Mapping[str, Any], str], tuple[Any, nn.Module]]


def build_encoder(encoder_config: Mapping[str, Any], backend: str = "auto") -> tuple[Any, nn.Module]:
    """EncoderConfig and a fresh SparseEncoder from the plain-data config (ConfigError if invalid).

    The stored ``backend`` is replaced by ``backend``: which sparse-conv implementation runs is a
    deployment choice, the weights are the same for both.
    """
    from ssl3d_ros.models.encoder import EncoderConfig, SparseEncoder

    try:
        cfg = from_dict(EncoderConfig, {**encoder_config, "backend": backend})
    except (TypeError, ValueError) as exc:  # EncoderConfig validates in __post_init__ with ValueError
        raise ConfigError(str(exc)) from None
    return cfg, SparseEncoder(cfg)


def _encoder_config(encoder: nn.Module) -> Any:
    cfg = getattr(encoder, "cfg", None) or getattr(encoder, "config", None)
    if cfg is None:
        raise CheckpointError(f"{type(encoder).__name__} has no .cfg: cannot describe its architecture")
    return cfg


def _hypercolumn_channels(encoder: nn.Module) -> int:
    return int(encoder.hypercolumn_channels)


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
    created: str | None = None,
) -> Path:
    """Write encoder weights, heads and the JSON document to ``path`` atomically; returns the path.

    Everything is validated before writing (heads against the encoder's hypercolumn channels and the
    class count, the encoder's in_channels against the preprocessing features), so an unusable
    checkpoint is never produced.
    """
    path = Path(path)
    encoder_cfg = _encoder_config(encoder)
    channels = _hypercolumn_channels(encoder)
    recipe_info = _as(RecipeInfo, recipe, path, "recipe")
    class_info = _as(ClassInfo, {"names": list(classes)} if _is_name_list(classes) else classes, path, "classes")
    in_channels = getattr(encoder_cfg, "in_channels", None)
    if in_channels is not None and in_channels != feature_channels(preprocessing):
        raise CheckpointError(
            f"{path}: encoder in_channels={in_channels} but preprocessing features {list(preprocessing.features)} "
            f"give {feature_channels(preprocessing)} channels"
        )

    tensors: dict[str, torch.Tensor] = {
        ENCODER_PREFIX + name: value for name, value in encoder.state_dict().items()
    }
    heads = HeadsInfo()
    if seg_head is not None:
        if class_info is None:
            raise CheckpointError(f"{path}: a segmentation head needs class names (classes=...)")
        _check_seg_head(path, seg_head.weight.shape, seg_head.bias.shape, channels, len(class_info.names))
        heads.seg = SegHeadInfo(in_channels=channels, num_classes=len(class_info.names))
        tensors[SEG_HEAD_PREFIX + "weight"] = seg_head.weight
        tensors[SEG_HEAD_PREFIX + "bias"] = seg_head.bias
    if pca is not None:
        _check_pca(path, pca.mean.shape, pca.basis.shape, channels)
        heads.pca = PCAInfo(in_channels=channels, dim=pca.out_channels)
        tensors[PCA_PREFIX + "mean"] = pca.mean
        tensors[PCA_PREFIX + "basis"] = pca.basis
    if kmeans is not None:
        centroids = kmeans.centroids if isinstance(kmeans, StreamingKMeans) else kmeans
        if centroids is None:
            raise CheckpointError(f"{path}: the k-means has no centroids yet (run step() on a frame first)")
        expected_dim = channels if kmeans_input == "hypercolumn" else (pca.out_channels if pca is not None else None)
        if expected_dim is None:
            raise CheckpointError(f"{path}: k-means on PCA embeddings needs the PCA basis (pca=...)")
        if centroids.ndim != 2 or centroids.shape[1] != expected_dim:
            raise CheckpointError(
                f"{path}: k-means centroids {tuple(centroids.shape)} do not match {kmeans_input} dim {expected_dim}"
            )
        heads.kmeans = KMeansInfo(k=centroids.shape[0], dim=expected_dim, input=kmeans_input)
        tensors[KMEANS_CENTROIDS] = centroids
    extra_names = []
    for name, value in (extra_tensors or {}).items():
        if name.startswith(RESERVED_PREFIXES) or name in tensors:
            raise CheckpointError(f"{path}: extra tensor name {name!r} uses a reserved prefix {RESERVED_PREFIXES}")
        tensors[name] = value
        extra_names.append(name)

    meta = CheckpointMeta(
        format_version=FORMAT_VERSION,
        encoder=to_dict(encoder_cfg),
        preprocessing=preprocessing,
        recipe=recipe_info,
        training_data=dict(training_data) if training_data is not None else None,
        classes=class_info,
        heads=heads,
        extra_tensors=sorted(extra_names),
        created=created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        ssl3d_ros_version=__version__,
    )
    try:
        document = json.dumps(to_dict(meta), allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: metadata is not plain JSON data ({exc}); pass dicts, lists, finite numbers, strings"
        ) from None

    # Own contiguous copies: safetensors refuses views sharing storage (tied or sliced parameters).
    plain = {name: value.detach().to("cpu").contiguous().clone() for name, value in tensors.items()}
    blob = save(plain, metadata={METADATA_KEY: document, "format": "pt"})
    _atomic_write(path, blob)
    return path


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
    """The checkpoint's JSON document without loading any tensor (for listings and tools)."""
    path = Path(path)
    header = _read_header(path)
    return _document(path, header)


def load_checkpoint(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    backend: str = "auto",
    encoder_factory: EncoderFactory | None = None,
) -> Checkpoint:
    """Read and validate a checkpoint; the encoder comes back in eval mode on ``device``.

    ``backend`` selects the sparse-conv implementation ("auto", "torch", "spconv"); weights are the
    same for both. ``encoder_factory`` replaces :func:`build_encoder` (tests of other architectures).
    Raises CheckpointError naming the file and the problem.
    """
    path = Path(path)
    header = _read_header(path)
    document = _document(path, header)
    try:
        meta = from_dict(CheckpointMeta, document, METADATA_KEY)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: invalid checkpoint metadata: {exc}") from None
    if meta.format_version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {meta.format_version} is newer than this ssl3d_ros ({__version__}) "
            f"reads ({FORMAT_VERSION}); upgrade ssl3d_ros"
        )

    try:
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: tensor data cannot be read ({exc})") from None

    factory = encoder_factory or build_encoder
    try:
        encoder_cfg, encoder = factory(meta.encoder, backend)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: invalid encoder config: {exc}") from None
    in_channels = getattr(encoder_cfg, "in_channels", None)
    if in_channels is not None and in_channels != feature_channels(meta.preprocessing):
        raise CheckpointError(
            f"{path}: encoder in_channels={in_channels} but preprocessing features "
            f"{list(meta.preprocessing.features)} give {feature_channels(meta.preprocessing)}"
        )
    encoder_state = {k[len(ENCODER_PREFIX):]: v for k, v in tensors.items() if k.startswith(ENCODER_PREFIX)}
    _check_state_dict(path, encoder, encoder_state)
    encoder.load_state_dict(encoder_state, strict=True)
    channels = _hypercolumn_channels(encoder)

    known = {k for k in tensors if k.startswith(ENCODER_PREFIX)}
    seg_head = _load_seg_head(path, meta, tensors, channels, known)
    pca = _load_pca(path, meta, tensors, channels, known)
    kmeans_centroids = _load_kmeans(path, meta, tensors, channels, pca, known)
    extra = {}
    for name in meta.extra_tensors:
        if name not in tensors:
            raise CheckpointError(f"{path}: extra tensor {name!r} listed in the metadata is missing")
        extra[name] = tensors[name]
        known.add(name)
    unexpected = sorted(set(tensors) - known)
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensors not described by the metadata: {unexpected[:10]}")

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
        extra_tensors=extra,
        meta=document,
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
) -> Path:
    """Copy checkpoint ``path`` to ``out_path`` with heads added or replaced (e.g. a trained probe).

    Heads not given are kept from ``path``; ``classes`` defaults to the stored ones. ``out_path`` may
    equal ``path`` (the write is atomic).
    """
    ckpt = load_checkpoint(path)
    meta_kmeans = (ckpt.meta.get("heads") or {}).get("kmeans") or {}
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
        kmeans_input=kmeans_input or meta_kmeans.get("input", "hypercolumn"),
        extra_tensors=ckpt.extra_tensors,
        created=ckpt.meta.get("created") or None,
    )


def _read_header(path: Path) -> dict[str, Any]:
    """Parse the safetensors header by hand, with messages that say what the file is instead."""
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: file is {size} bytes: empty or truncated, not a safetensors checkpoint")
            header_len = int.from_bytes(prefix, "little")
            if header_len > min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(f"{path}: {_what_is_it(prefix, header_len, size)}")
            header_bytes = handle.read(header_len)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from None
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_size = size - 8 - header_len
    end = 0
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        offsets = spec.get("data_offsets") if isinstance(spec, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise CheckpointError(f"{path}: corrupt safetensors header entry for tensor {name!r}")
        end = max(end, offsets[1])
    if end > data_size:
        raise CheckpointError(
            f"{path}: truncated: tensor data needs {end} bytes after the header, the file has {data_size}"
        )
    return header


def _what_is_it(prefix: bytes, header_len: int, size: int) -> str:
    if prefix.startswith(b"PK\x03\x04"):
        return ("a zip archive (torch.save format, which holds a pickle), not a safetensors checkpoint; "
                "refusing to load it because unpickling can run arbitrary code")
    if prefix[:1] == b"\x80" and prefix[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return ("a Python pickle, not a safetensors checkpoint; refusing to load it because unpickling "
                "can run arbitrary code")
    return (f"not a safetensors checkpoint or truncated: header length field says {header_len} bytes, "
            f"the file has {size}")


def _document(path: Path, header: dict[str, Any]) -> dict[str, Any]:
    metadata = header.get("__metadata__") or {}
    text = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
    if text is None:
        raise CheckpointError(
            f"{path}: safetensors file without the '{METADATA_KEY}' metadata document: not an ssl3d_ros "
            "checkpoint (write it with ssl3d_ros.checkpoint.save_checkpoint)"
        )
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: the '{METADATA_KEY}' metadata is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise CheckpointError(f"{path}: the '{METADATA_KEY}' metadata is not a JSON object")
    return document


def _check_state_dict(path: Path, encoder: nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{name} {tuple(state[name].shape)} vs {tuple(expected[name].shape)}"
        for name in sorted(set(state) & set(expected))
        if state[name].shape != expected[name].shape
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
    bad = [n for n, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{path}: encoder weights contain NaN/Inf (corrupt or diverged training): {bad[:8]}")


def _check_seg_head(path: Path, weight_shape, bias_shape, channels: int, num_classes: int) -> None:
    if tuple(weight_shape) != (num_classes, channels) or tuple(bias_shape) != (num_classes,):
        raise CheckpointError(
            f"{path}: segmentation head weight {tuple(weight_shape)} / bias {tuple(bias_shape)} does not match "
            f"{num_classes} classes on {channels} hypercolumn channels"
        )


def _check_pca(path: Path, mean_shape, basis_shape, channels: int) -> None:
    if tuple(mean_shape) != (channels,) or len(basis_shape) != 2 or basis_shape[0] != channels or basis_shape[1] < 1:
        raise CheckpointError(
            f"{path}: PCA mean {tuple(mean_shape)} / basis {tuple(basis_shape)} does not match "
            f"{channels} hypercolumn channels"
        )


def _require(path: Path, tensors: dict[str, torch.Tensor], names: list[str], what: str) -> list[torch.Tensor]:
    absent = [n for n in names if n not in tensors]
    if absent:
        raise CheckpointError(f"{path}: metadata declares a {what} but tensors {absent} are missing")
    return [tensors[n] for n in names]


def _load_seg_head(path, meta, tensors, channels, known) -> LinearSegHead | None:
    names = [SEG_HEAD_PREFIX + "weight", SEG_HEAD_PREFIX + "bias"]
    if meta.heads.seg is None:
        return None
    weight, bias = _require(path, tensors, names, "segmentation head")
    if meta.classes is None:
        raise CheckpointError(f"{path}: segmentation head without class names")
    num_classes = len(meta.classes.names)
    if (meta.heads.seg.in_channels, meta.heads.seg.num_classes) != (channels, num_classes):
        raise CheckpointError(
            f"{path}: heads.seg says {meta.heads.seg.num_classes} classes on {meta.heads.seg.in_channels} channels; "
            f"the checkpoint has {num_classes} class names and {channels} hypercolumn channels"
        )
    _check_seg_head(path, weight.shape, bias.shape, channels, num_classes)
    head = LinearSegHead(channels, num_classes)
    head.load_state_dict({"weight": weight, "bias": bias})
    known.update(names)
    return head


def _load_pca(path, meta, tensors, channels, known) -> PCAProjection | None:
    names = [PCA_PREFIX + "mean", PCA_PREFIX + "basis"]
    if meta.heads.pca is None:
        return None
    mean, basis = _require(path, tensors, names, "PCA basis")
    _check_pca(path, mean.shape, basis.shape, channels)
    if basis.shape[1] != meta.heads.pca.dim:
        raise CheckpointError(f"{path}: PCA basis has {basis.shape[1]} components, metadata says {meta.heads.pca.dim}")
    known.update(names)
    return PCAProjection(mean, basis)


def _load_kmeans(path, meta, tensors, channels, pca, known) -> torch.Tensor | None:
    info = meta.heads.kmeans
    if info is None:
        return None
    (centroids,) = _require(path, tensors, [KMEANS_CENTROIDS], "k-means")
    dim = channels if info.input == "hypercolumn" else (pca.out_channels if pca is not None else None)
    if dim is None or tuple(centroids.shape) != (info.k, dim) or info.dim != dim:
        raise CheckpointError(
            f"{path}: k-means centroids {tuple(centroids.shape)} do not match k={info.k} on {info.input} dim {dim}"
        )
    known.add(KMEANS_CENTROIDS)
    return centroids


__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "CheckpointMeta",
    "ClassInfo",
    "HeadsInfo",
    "RecipeInfo",
    "add_heads",
    "build_encoder",
    "load_checkpoint",
    "read_metadata",
    "save_checkpoint",
]
