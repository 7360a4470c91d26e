"""File scan readers (KITTI/SemanticKITTI, nuScenes, Ouster, .npy, .pcd/.ply) and ``open_source``.

Each reader turns one file (plus its label file, when there is one) into a ``Scan``; damaged input
raises ``ScanReadError(path, reason)``. Labels are the dataset's own ids, never remapped.

``open_source`` dispatches on what a path is: a rosbag2 folder (``metadata.yaml``) or storage file
(``.mcap``/``.db3``), one scan file, or a folder of scan files (searched recursively; bag folders
inside it become bag sources).
"""
from __future__ import annotations

import errno
import functools
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np

from ..scan import Scan
from .errors import NoScansError, ScanReadError, UnknownScanFileError
from .source import ConcatSource, ScanSource, SkipStats, check_index

log = logging.getLogger(__name__)

BAG_FILE_SUFFIXES = (".mcap", ".db3")

# Frames the datasets document; "" where the file says nothing about its frame.
KITTI_FRAME = "velodyne"
NUSCENES_FRAME = "LIDAR_TOP"
OUSTER_FRAME = "os_sensor"
WORLD_FRAME = "world"  # ScanNet meshes (scene coordinates)


# --------------------------------------------------------------------------- low-level loaders


def load_float_records(path: Path, columns: int) -> np.ndarray:
    """A raw little-endian float32 file as an (N, columns) array; size must be whole records."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise ScanReadError(path, f"cannot stat file: {exc}") from None
    record = 4 * columns
    if size % record:
        raise ScanReadError(
            path, f"size {size} bytes is not a multiple of the {record}-byte record "
            f"({columns} float32 per point); the file is truncated or not this format"
        )
    try:
        values = np.fromfile(path, dtype="<f4")
    except (OSError, ValueError) as exc:
        raise ScanReadError(path, f"cannot read: {exc}") from None
    if values.size * 4 != size:  # file changed or was cut while we read it
        raise ScanReadError(path, f"read {values.size * 4} of {size} bytes")
    return values.reshape(-1, columns)


def load_npy(path: Path) -> np.ndarray:
    """``np.load`` without pickles; truncated or malformed files become ScanReadError."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ScanReadError(path, f"not a readable .npy file: {exc}") from None


def require_2d(path: Path, array: np.ndarray, min_columns: int, what: str) -> np.ndarray:
    if array.ndim != 2 or array.shape[1] < min_columns:
        raise ScanReadError(path, f"expected {what} with shape (N, >={min_columns}), got {array.shape}")
    if array.dtype.kind not in "fiu":
        raise ScanReadError(path, f"expected numeric {what}, got dtype {array.dtype}")
    return array


def load_label_array(path: Path, n_points: int) -> np.ndarray:
    """Per-point ids from a ``.npy`` label file ((N,) or (N,1)), as int32; count must match."""
    labels = load_npy(path)
    if labels.dtype.kind not in "iu":
        raise ScanReadError(path, f"labels must be integers, got dtype {labels.dtype}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != n_points:
        raise ScanReadError(path, f"labels have shape {labels.shape} for {n_points} points")
    return labels.astype(np.int32)


SEMANTICKITTI_SEMANTIC_BITS = 0xFFFF  # a raw SemanticKITTI label is ``semantic_id | instance_id << 16``


def semantickitti_semantic_ids(raw: np.ndarray) -> np.ndarray:
    """The semantic ids of raw SemanticKITTI labels (the lower 16 bits; the upper 16 are the instance id),
    as int32. Also right for labels that went through a signed 32-bit field (instance ids >= 0x8000
    make the int32 negative; the lower bits are the same)."""
    return (np.asarray(raw).astype(np.int64) & SEMANTICKITTI_SEMANTIC_BITS).astype(np.int32)


def load_semantickitti_label(path: Path, n_points: int) -> np.ndarray:
    """SemanticKITTI ``.label``: uint32 per point, the lower 16 bits are the raw semantic id."""
    try:
        size = os.path.getsize(path)
        raw = np.fromfile(path, dtype="<u4")
    except OSError as exc:
        raise ScanReadError(path, f"cannot read: {exc}") from None
    if size % 4:
        raise ScanReadError(path, f"size {size} bytes is not a multiple of 4 (uint32 per point)")
    if len(raw) != n_points:
        raise ScanReadError(path, f"{len(raw)} labels for {n_points} points")
    return semantickitti_semantic_ids(raw)


def stamp_from_name(path: Path) -> int:
    """nuScenes names end in a 16-digit microsecond timestamp; 0 when the name has none."""
    match = re.search(r"_(\d{16})\.pcd\.bin$", path.name)
    return int(match.group(1)) * 1000 if match else 0


# --------------------------------------------------------------------------- per-format readers


def read_kitti_bin(path: Path, label_path: Path | None = None) -> Scan:
    """KITTI velodyne ``.bin``: float32 (N,4) x, y, z, intensity 0..1."""
    rec = load_float_records(path, 4)
    labels = None if label_path is None else load_semantickitti_label(label_path, len(rec))
    return Scan(
        points=rec[:, :3], fields={"intensity": np.ascontiguousarray(rec[:, 3])},
        frame_id=KITTI_FRAME, labels=labels, intensity_scale=1.0, source=str(path),
    )


def read_ouster_bin(path: Path, label_path: Path | None = None) -> Scan:
    """Ouster ``.xyzi.bin``: float32 (N,4) x, y, z, reflectivity 0..255."""
    rec = load_float_records(path, 4)
    labels = None if label_path is None else load_semantickitti_label(label_path, len(rec))
    return Scan(
        points=rec[:, :3], fields={"intensity": np.ascontiguousarray(rec[:, 3])},
        frame_id=OUSTER_FRAME, labels=labels, intensity_scale=255.0, source=str(path),
    )


def read_nuscenes_bin(path: Path, label_path: Path | None = None) -> Scan:
    """nuScenes ``.pcd.bin``: float32 (N,5) x, y, z, intensity 0..255, ring index."""
    rec = load_float_records(path, 5)
    ring = rec[:, 4]
    if len(ring) and (not np.all(np.isfinite(ring)) or ring.min() < 0 or ring.max() > 65535):
        raise ScanReadError(path, "ring column is not a beam index in 0..65535; not a nuScenes sweep?")
    labels = None
    if label_path is not None:  # lidarseg: one uint8 class per point
        try:
            labels = np.fromfile(label_path, dtype=np.uint8).astype(np.int32)
        except OSError as exc:
            raise ScanReadError(label_path, f"cannot read: {exc}") from None
        if len(labels) != len(rec):
            raise ScanReadError(label_path, f"{len(labels)} labels for {len(rec)} points")
    return Scan(
        points=rec[:, :3],
        fields={"intensity": np.ascontiguousarray(rec[:, 3]), "ring": ring.astype(np.uint16)},
        frame_id=NUSCENES_FRAME, stamp_ns=stamp_from_name(path), labels=labels,
        intensity_scale=255.0, source=str(path),
    )


@functools.lru_cache(maxsize=64)
def folder_meta(folder: str) -> dict:
    """``frame_id``/``intensity_scale`` from a ``meta.json`` beside ``.points.npy`` files (the
    simulator writes one); {} when there is none or it is unreadable."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    if not isinstance(meta, dict):
        return {}
    out = {}
    if isinstance(meta.get("frame_id"), str):
        out["frame_id"] = meta["frame_id"]
    if isinstance(meta.get("intensity_scale"), (int, float)) and not isinstance(meta["intensity_scale"], bool):
        out["intensity_scale"] = float(meta["intensity_scale"])
    return out


def read_points_npy(path: Path, label_path: Path | None = None) -> Scan:
    """``NNNNNN.points.npy`` (N,3) x, y, z or (N,4) with intensity, labels from ``.labels.npy``.

    The frame is unknown from the file (SemanticKITTI's demo scan is in the world frame, the
    simulator's are in the sensor frame); a ``meta.json`` in the folder may name it and the
    intensity scale.
    """
    pts = require_2d(path, load_npy(path), 3, "points")
    fields: dict[str, np.ndarray] = {}
    if pts.shape[1] == 4:
        fields["intensity"] = np.ascontiguousarray(pts[:, 3], dtype=np.float32)
    elif pts.shape[1] > 4:
        fields["extra"] = np.ascontiguousarray(pts[:, 3:], dtype=np.float32)
    labels = None if label_path is None else load_label_array(label_path, len(pts))
    meta = folder_meta(str(path.parent))
    return Scan(
        points=pts[:, :3], fields=fields, frame_id=meta.get("frame_id", ""), labels=labels,
        intensity_scale=meta.get("intensity_scale") if fields.get("intensity") is not None else None,
        source=str(path),
    )


def read_scannet_npy(path: Path, label_path: Path | None = None) -> Scan:
    """ScanNet ``*_vert_all.npy``: (N,6) x, y, z, r, g, b 0..255; labels NYU40 ids."""
    vert = require_2d(path, load_npy(path), 6, "ScanNet vertices")
    rgb = np.clip(np.rint(vert[:, 3:6]), 0, 255).astype(np.uint8)
    labels = None if label_path is None else load_label_array(label_path, len(vert))
    return Scan(points=vert[:, :3], fields={"rgb": rgb}, frame_id=WORLD_FRAME, labels=labels, source=str(path))


def read_generic_npy(path: Path, label_path: Path | None = None) -> Scan:
    """Any (N,3+) numeric ``.npy``: x, y, z; a 4th column is intensity; more columns go to ``extra``."""
    arr = require_2d(path, load_npy(path), 3, "points")
    fields: dict[str, np.ndarray] = {}
    if arr.shape[1] == 4:
        fields["intensity"] = np.ascontiguousarray(arr[:, 3], dtype=np.float32)
    elif arr.shape[1] > 4:
        fields["extra"] = np.ascontiguousarray(arr[:, 3:], dtype=np.float32)
    labels = None if label_path is None else load_label_array(label_path, len(arr))
    return Scan(points=arr[:, :3], fields=fields, labels=labels, source=str(path))


LABEL_ATTRIBUTES = ("label", "labels", "semantic", "class")


def read_open3d(path: Path, label_path: Path | None = None, label_field: str | None = None) -> Scan:
    """``.pcd``/``.ply`` through Open3D's tensor API, keeping every per-point attribute.

    colours become ``rgb`` uint8 (float colours are taken as 0..1), normals ``normal``, a label
    attribute (``label_field`` or one of LABEL_ATTRIBUTES) becomes ``labels``; other attributes keep
    their names.
    """
    import open3d as o3d  # heavy import, only when such a file is read

    if not path.is_file():
        raise ScanReadError(path, "no such file")
    try:
        cloud = o3d.t.io.read_point_cloud(str(path))
    except (RuntimeError, ValueError, OSError) as exc:
        raise ScanReadError(path, f"Open3D cannot read it: {exc}") from None
    attrs = {name: cloud.point[name].numpy() for name in cloud.point}
    if "positions" not in attrs:  # Open3D reports read failures by returning an empty cloud
        raise ScanReadError(path, "Open3D found no point positions (unreadable or empty header)")
    points = attrs.pop("positions")
    n = len(points)
    label_names = (label_field,) if label_field else LABEL_ATTRIBUTES
    labels = None
    for name in label_names:
        if name in attrs:
            values = attrs.pop(name).reshape(n, -1)
            if values.shape[1] != 1:
                raise ScanReadError(path, f"label attribute {name!r} has {values.shape[1]} columns")
            labels = values[:, 0].astype(np.int32)
            break
    fields: dict[str, np.ndarray] = {}
    if "colors" in attrs:
        colors = attrs.pop("colors")
        if colors.dtype.kind == "f":
            colors = np.clip(np.rint(colors * 255.0), 0, 255)
        fields["rgb"] = colors.astype(np.uint8)
    if "normals" in attrs:
        fields["normal"] = attrs.pop("normals").astype(np.float32)
    for name, values in attrs.items():
        fields[name] = values[:, 0] if values.ndim == 2 and values.shape[1] == 1 else values
    if label_path is not None:
        labels = load_label_array(label_path, n)
    return Scan(points=points, fields=fields, labels=labels, source=str(path))


ReaderFn = Callable[..., Scan]

READERS: dict[str, ReaderFn] = {
    "kitti": read_kitti_bin,
    "ouster": read_ouster_bin,
    "nuscenes": read_nuscenes_bin,
    "semantickitti_npy": read_points_npy,
    "scannet": read_scannet_npy,
    "npy": read_generic_npy,
    "open3d": read_open3d,
}

# Files that hold labels for another file, never scans themselves.
LABEL_FILE_PATTERNS = (".label", ".labels.npy", "_sem_label_all.npy", "_ins_label_all.npy",
                       "_sem_label.npy", "_ins_label.npy", "_lidarseg.bin", "_panoptic.npz")


def detect_format(path: Path) -> str | None:
    """The reader name for a scan file, from its name; None for label files and other files."""
    name = path.name.lower()
    if name.endswith(LABEL_FILE_PATTERNS):
        return None
    if name.endswith(".pcd.bin"):
        return "nuscenes"
    if name.endswith(".xyzi.bin"):
        return "ouster"
    if name.endswith(".bin"):
        return "kitti"
    if name.endswith(".points.npy"):
        return "semantickitti_npy"
    if name.endswith(("_vert_all.npy", "_vert.npy")):
        return "scannet"
    if name.endswith(".npy"):
        return "npy"
    if name.endswith((".pcd", ".ply")):
        return "open3d"
    return None


def find_label_file(path: Path, fmt: str) -> Path | None:
    """The label file that belongs to scan ``path`` in its dataset's layout, if it exists."""
    name = path.name
    candidates: list[Path] = []
    if fmt in ("kitti", "ouster"):
        stem = name[: -len(".xyzi.bin")] if name.endswith(".xyzi.bin") else path.stem
        # beside the scan, or SemanticKITTI's sequences/NN/{velodyne,labels}/ layout
        candidates = [path.with_name(stem + ".label"), path.parent.parent / "labels" / (stem + ".label")]
    elif fmt == "semantickitti_npy":
        candidates = [path.with_name(name[: -len(".points.npy")] + ".labels.npy")]
    elif fmt == "scannet":
        candidates = [path.with_name(re.sub(r"_vert(_all)?\.npy$", r"_sem_label\1.npy", name))]
    return next((c for c in candidates if c.is_file()), None)


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class FileEntry:
    """One scan file, how to read it and its label file (resolved when the source is indexed)."""

    path: str
    fmt: str
    label_path: str | None = None


class FileSource:
    """Scans from a list of files, read one at a time on ``source[i]`` (picklable, no open handles)."""

    def __init__(self, entries: Sequence[FileEntry], *, label_field: str | None = None) -> None:
        for entry in entries:
            if entry.fmt not in READERS:
                raise ValueError(f"unknown scan format {entry.fmt!r} for {entry.path}; known: {sorted(READERS)}")
        self.entries = list(entries)
        self.label_field = label_field

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Scan:
        entry = self.entries[check_index(index, len(self.entries))]
        label_path = None if entry.label_path is None else Path(entry.label_path)
        if entry.fmt == "open3d":
            return read_open3d(Path(entry.path), label_path, label_field=self.label_field)
        return READERS[entry.fmt](Path(entry.path), label_path)

    def describe(self, index: int) -> str:
        return self.entries[check_index(index, len(self.entries))].path

    def __repr__(self) -> str:
        return f"FileSource({len(self.entries)} files)"


def file_entry(path: Path, fmt: str | None = None) -> FileEntry:
    """The entry for one scan file; ``fmt`` overrides name-based detection (e.g. ``"ouster"``)."""
    chosen = fmt or detect_format(path)
    if chosen is None:
        raise UnknownScanFileError(
            f"{path}: not a recognised scan file (known: .bin, .xyzi.bin, .pcd.bin, .npy, .pcd, .ply, "
            f"rosbag2 .mcap/.db3 or folder); pass fmt= one of {sorted(READERS)}"
        )
    if chosen not in READERS:
        raise ValueError(f"unknown scan format {chosen!r}; known: {sorted(READERS)}")
    label = find_label_file(path, chosen)
    return FileEntry(str(path), chosen, None if label is None else str(label))


def is_bag_folder(path: Path) -> bool:
    return path.is_dir() and (path / "metadata.yaml").is_file()


def open_source(
    path: str | os.PathLike,
    *,
    topics: Sequence[str] | None = None,
    fmt: str | None = None,
    label_field: str | None = None,
) -> ScanSource:
    """A lazy source for ``path``: a bag (folder or ``.mcap``/``.db3``), a scan file, or a folder.

    ``topics`` selects bag topics (default: every PointCloud2 topic); ``fmt`` forces a file reader
    (one of READERS; e.g. ``"ouster"`` for 0..255 reflectivity ``.bin`` files); ``label_field`` is
    the per-point field (bags) or attribute (.pcd/.ply) holding labels.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no such scan file or folder", str(path))
    if is_bag_folder(path) or (path.is_file() and path.suffix in BAG_FILE_SUFFIXES):
        from .rosbag import BagSource  # the bag module pulls in rosbags and the codec

        return BagSource(path, topics=topics, label_field=label_field)
    if path.is_file():
        return FileSource([file_entry(path, fmt)], label_field=label_field)

    sources: list[ScanSource] = []
    entries: list[FileEntry] = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        here = Path(root)
        if (here / "metadata.yaml").is_file():
            from .rosbag import BagSource

            if entries:
                sources.append(FileSource(entries, label_field=label_field))
                entries = []
            sources.append(BagSource(here, topics=topics, label_field=label_field))
            dirs.clear()  # the bag's storage files belong to it
            continue
        for name in sorted(files):
            file = here / name
            if file.suffix in BAG_FILE_SUFFIXES:  # a bare storage file without metadata.yaml
                from .rosbag import BagSource

                if entries:
                    sources.append(FileSource(entries, label_field=label_field))
                    entries = []
                sources.append(BagSource(file, topics=topics, label_field=label_field))
                continue
            detected = detect_format(file)
            if detected is None:
                continue
            entries.append(file_entry(file, fmt or detected))
    if entries:
        sources.append(FileSource(entries, label_field=label_field))
    if not sources:
        raise NoScansError(f"{path}: no scan files or rosbag2 folders found")
    return sources[0] if len(sources) == 1 else ConcatSource(sources)


def open_sources(
    paths: Sequence[str | os.PathLike],
    *,
    topics: Sequence[str] | None = None,
    fmt: str | None = None,
    label_field: str | None = None,
    on_error: Literal["skip", "raise"] = "raise",
    stats: SkipStats | None = None,
) -> ConcatSource:
    """One source over several paths, in the order given.

    With ``on_error="skip"`` a path that cannot be indexed at all (a bag whose storage will not
    open) is logged, counted in ``stats`` and left out; missing paths and bad options still raise.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    sources = []
    for path in paths:
        try:
            sources.append(open_source(path, topics=topics, fmt=fmt, label_field=label_field))
        except ScanReadError as error:
            if on_error == "raise":
                raise
            if stats is not None:
                stats.add(error)
            log.warning("skipping source %s: %s", path, error)
    return ConcatSource(sources)


__all__ = [
    "READERS", "FileEntry", "FileSource", "detect_format", "find_label_file", "file_entry",
    "open_source", "open_sources", "read_kitti_bin", "read_ouster_bin", "read_nuscenes_bin",
    "read_points_npy", "read_scannet_npy", "read_generic_npy", "read_open3d",
]
