"""A checkpoint's JSON document, typed, and the safetensors header it sits in, read without trusting it.

:func:`read_header` parses the header by hand (nothing else of the file is read): every tensor's dtype,
shape and byte span, checked against each other and against the file size, so a shape in the header is
backed by that many bytes on disk. :func:`parse_meta` turns the ``ssl3d`` document into
:class:`CheckpointMeta`. JSON nesting is bounded before ``json.loads`` recurses, non-finite numbers are
refused, and every problem is a :class:`CheckpointError` naming the file.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ssl3d_ros.config import ConfigError, from_dict
from ssl3d_ros.models.encoder import EncoderConfig
from ssl3d_ros.models.novelty import MAX_PROTOTYPES, MAX_QUANTILES
from ssl3d_ros.preprocessing import PreprocessConfig

FORMAT_VERSION = 1
METADATA_KEY = "ssl3d"
#: the metadata key of a resumable training state (training/state.py: OUT/checkpoints/state-*.safetensors)
TRAINING_STATE_KEY = "ssl3d_training_state"
#: a safetensors header is a few hundred kB at most; a larger length field means "not safetensors".
MAX_HEADER_BYTES = 64 * 2**20
#: the document nests about 6 levels (recipe config sections); the bound keeps the recursion of
#: json.loads, from_dict and to_dict far below Python's limit
MAX_JSON_DEPTH = 64
#: bytes per element of the safetensors dtypes
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
               "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}


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
class NoveltyInfo:
    """The novelty reference (ssl3d_ros.models.novelty): its sizes, calibration levels and provenance.
    Tensors ``novelty.mean`` (C,), ``novelty.basis`` (C, dims), ``novelty.prototypes`` (prototypes, dims),
    ``novelty.share_mean`` and ``novelty.share_std`` (prototypes,), ``novelty.voxel_quantiles`` and
    ``novelty.frame_quantiles`` (one per quantile level), all F32."""

    in_channels: int
    dims: int
    prototypes: int
    quantile_levels: list[float]
    normalise_at: float = 0.95
    frames: int = 0  # reference frames
    voxels: int = 0  # reference voxels the subspace and prototypes were fitted on
    sources: list[str] = field(default_factory=list)  # what the reference frames were
    input: Literal["hypercolumn"] = "hypercolumn"

    def __post_init__(self) -> None:
        if self.dims < 1 or self.in_channels < 1:
            raise ConfigError(f"heads.novelty: dims {self.dims} and in_channels {self.in_channels} must be >= 1")
        if not 1 <= self.prototypes <= MAX_PROTOTYPES:
            raise ConfigError(f"heads.novelty.prototypes must be within 1..{MAX_PROTOTYPES}, got {self.prototypes}")
        levels = [float(q) for q in self.quantile_levels]
        if not 1 <= len(levels) <= MAX_QUANTILES or not all(0 < q < 1 for q in levels) or sorted(set(levels)) != levels:
            raise ConfigError(f"heads.novelty.quantile_levels must be 1..{MAX_QUANTILES} increasing levels in (0, 1), "
                              f"got {self.quantile_levels}")
        if float(self.normalise_at) not in levels:
            raise ConfigError(f"heads.novelty.normalise_at {self.normalise_at} is not one of the quantile levels {levels}")
        self.quantile_levels = levels
        self.normalise_at = float(self.normalise_at)


@dataclass
class HeadsInfo:
    seg: SegHeadInfo | None = None
    pca: PCAInfo | None = None
    kmeans: KMeansInfo | None = None
    novelty: NoveltyInfo | None = None  # absent in checkpoints written before it existed: novelty off


@dataclass
class CheckpointMeta:
    """Schema of the ``ssl3d`` JSON document (unknown keys are rejected on load)."""

    format_version: int
    encoder: EncoderConfig  # as stored; the loader swaps in the backend it is asked for
    preprocessing: PreprocessConfig
    recipe: RecipeInfo | None = None
    training_data: dict[str, Any] | None = None  # {sources, scans, ...}
    classes: ClassInfo | None = None
    heads: HeadsInfo = field(default_factory=HeadsInfo)
    extra_tensors: list[str] = field(default_factory=list)
    created: str = ""
    ssl3d_ros_version: str = ""

    @property
    def kmeans_input(self) -> Literal["hypercolumn", "pca"]:
        """What the stored k-means centroids cluster ("hypercolumn" when there are none)."""
        return self.heads.kmeans.input if self.heads.kmeans is not None else "hypercolumn"


def parse_meta(path: Path, document: dict[str, Any]) -> CheckpointMeta:
    """The typed document; CheckpointError for a newer format or anything the schema refuses."""
    version = document.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        from ssl3d_ros import __version__

        raise CheckpointError(
            f"{path}: format_version {version} is newer than this ssl3d_ros ({__version__}) "
            f"reads ({FORMAT_VERSION}); upgrade ssl3d_ros"
        )
    try:
        return from_dict(CheckpointMeta, document, METADATA_KEY)
    except ValueError as exc:  # ConfigError, and the configs' own checks in __post_init__
        raise CheckpointError(f"{path}: invalid checkpoint metadata: {exc}") from None


# --------------------------------------------------------------------------------------------------
# The safetensors header
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One tensor as the header declares it (its data is not read)."""

    dtype: str
    shape: tuple[int, ...]


@dataclass
class Header:
    tensors: dict[str, TensorSpec]
    metadata: dict[str, Any]

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: spec.shape for name, spec in self.tensors.items()}

    @property
    def dtypes(self) -> dict[str, str]:
        return {name: spec.dtype for name, spec in self.tensors.items()}


def read_header(path: Path) -> Header:
    """Parse and check the safetensors header, with messages that say what the file is instead."""
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
        text = header_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON: {exc})") from None
    header = parse_json(path, text, "corrupt safetensors header (not JSON: {})")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (__metadata__ is not a JSON object)")
    data_size = size - 8 - header_len
    tensors: dict[str, TensorSpec] = {}
    end = 0
    for name, entry in header.items():
        spec, span = _tensor_entry(path, name, entry)
        tensors[name] = spec
        end = max(end, span[1])
    if end > data_size:
        raise CheckpointError(
            f"{path}: truncated: tensor data needs {end} bytes after the header, the file has {data_size}"
        )
    return Header(tensors, metadata)


def _tensor_entry(path: Path, name: str, entry: Any) -> tuple[TensorSpec, tuple[int, int]]:
    """dtype, shape and byte span of one entry; the span must hold exactly numel * itemsize bytes, so
    that no shape claims more than the file holds."""
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise CheckpointError(f"{path}: corrupt safetensors header entry for tensor {name!r}")
    dtype, shape = entry.get("dtype"), entry.get("shape")
    if dtype not in DTYPE_BYTES or not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
        raise CheckpointError(f"{path}: corrupt safetensors header entry for tensor {name!r} "
                              f"(dtype {dtype!r}, shape {shape!r})")
    nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != nbytes:
        raise CheckpointError(f"{path}: corrupt safetensors header entry for tensor {name!r}: {dtype} {shape} "
                              f"needs {nbytes} bytes, its data span has {offsets[1] - offsets[0]}")
    return TensorSpec(dtype, tuple(shape)), (offsets[0], offsets[1])


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _what_is_it(prefix: bytes, header_len: int, size: int) -> str:
    if prefix.startswith(b"PK\x03\x04"):
        return ("a zip archive (torch.save format, which holds a pickle), not a safetensors checkpoint; "
                "refusing to load it because unpickling can run arbitrary code")
    if prefix[:1] == b"\x80" and prefix[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return ("a Python pickle, not a safetensors checkpoint; refusing to load it because unpickling "
                "can run arbitrary code")
    return (f"not a safetensors checkpoint or truncated: header length field says {header_len} bytes, "
            f"the file has {size}")


def document(path: Path, header: Header) -> dict[str, Any]:
    """The ``ssl3d`` JSON document as stored (plain data)."""
    text = header.metadata.get(METADATA_KEY)
    if text is None and TRAINING_STATE_KEY in header.metadata:
        raise CheckpointError(f"{path}: {_training_state_hint(path)}")
    if text is None:
        raise CheckpointError(
            f"{path}: safetensors file without the '{METADATA_KEY}' metadata document: not an ssl3d_ros "
            "checkpoint (write it with ssl3d_ros.checkpoint.save_checkpoint)"
        )
    if not isinstance(text, str):
        raise CheckpointError(f"{path}: the '{METADATA_KEY}' metadata is not a string")
    value = parse_json(path, text, f"the '{METADATA_KEY}' metadata is not valid JSON ({{}})")
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: the '{METADATA_KEY}' metadata is not a JSON object")
    return value


def _training_state_hint(path: Path) -> str:
    """What to use instead of a training state: the model its run exports (named when it exists)."""
    out = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    exported = [out / name for name in ("model.safetensors", "encoder.safetensors") if (out / name).is_file()]
    if exported:
        use = f"use {exported[0]}"
    else:
        use = (f"use {out / 'encoder.safetensors'} (ssl3d-pretrain writes it at the end of the run; --resume "
               f"finishes a stopped run) or {out / 'model.safetensors'} (ssl3d-finetune)")
    return f"a resumable training state (for --resume), not a model checkpoint: {use}"


# --------------------------------------------------------------------------------------------------
# JSON without unbounded recursion
# --------------------------------------------------------------------------------------------------

#: a JSON string literal (brackets inside strings do not nest); possessive, so long strings cannot backtrack
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_OPENERS = np.frombuffer(b"[{", np.uint8)
_CLOSERS = np.frombuffer(b"]}", np.uint8)


def json_depth(text: str) -> int:
    """Deepest bracket nesting of a JSON text, computed without recursion (vectorised over the bytes)."""
    skeleton = np.frombuffer(_JSON_STRING.sub("", text).encode("utf-8", "surrogatepass"), np.uint8)
    steps = np.isin(skeleton, _OPENERS).astype(np.int64) - np.isin(skeleton, _CLOSERS)
    return int(np.cumsum(steps).max(initial=0))


def _refuse_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} (not JSON)")


def parse_json(path: Path, text: str, problem: str) -> Any:
    """``json.loads`` of untrusted text: nesting bounded first, NaN/Infinity refused; ``problem`` is a
    format string for the CheckpointError message, ``{}`` receiving the parser's reason."""
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        reason = f"nested {depth} levels deep, more than the {MAX_JSON_DEPTH} a checkpoint can have"
        raise CheckpointError(f"{path}: " + problem.format(reason))
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:  # only if the depth scan disagreed with the parser; never a traceback
        raise CheckpointError(f"{path}: " + problem.format("nested too deep")) from None
    except ValueError as exc:  # JSONDecodeError, non-finite constants, integers over Python's digit limit
        raise CheckpointError(f"{path}: " + problem.format(exc)) from None


__all__ = [
    "FORMAT_VERSION", "METADATA_KEY", "TRAINING_STATE_KEY", "MAX_HEADER_BYTES", "MAX_JSON_DEPTH", "DTYPE_BYTES", "CheckpointError",
    "CheckpointMeta", "ClassInfo", "HeadsInfo", "KMeansInfo", "NoveltyInfo", "PCAInfo", "RecipeInfo", "SegHeadInfo", "Header",
    "TensorSpec", "document", "json_depth", "parse_json", "parse_meta", "read_header",
]
