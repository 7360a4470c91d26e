"""What a rosbag2 holds and how a scan becomes one of its messages, without opening a bag.

The PointCloud2 type name and the Humble typestore, topic selection, the metadata.yaml conventions
(per-topic intensity scales in custom_data, storage files and per-message compression read without
rosbags, for damaged bags) and the scan -> PointCloud2 message conversion. Nothing here holds a file
or a reader: the per-process reader cache, ``BagSource`` and ``BagWriter`` are in ``rosbag``, which
re-exports every name of this module that importers use.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path, PurePath
from typing import Any, Sequence

import numpy as np
import yaml
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from ..codec import encode_cloud, fill_cloud_message
from ..scan import Scan
from .errors import TopicSelectionError

# The logger of the rosbag module these functions came from, so existing log filters still apply.
log = logging.getLogger("ssl3d_ros.io.rosbag")

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
# metadata.yaml custom_data key (+ topic) recording a topic's intensity full scale, which
# PointCloud2 itself cannot carry; written by BagWriter, read by BagSource.
INTENSITY_SCALE_KEY = "ssl3d_ros.intensity_scale:"


@functools.lru_cache(maxsize=1)
def default_typestore():
    """ROS 2 Humble message definitions (PointCloud2 is identical in every ROS 2 distro)."""
    return get_typestore(Stores.ROS2_HUMBLE)


def select_topics(available: dict[str, str], requested: Sequence[str] | None, bag: str) -> list[str]:
    """PointCloud2 topics to read: the requested ones (each checked), or all PointCloud2 topics."""
    if requested is None:
        chosen = sorted(t for t, msgtype in available.items() if msgtype == POINTCLOUD2)
        skipped = sorted(set(available) - set(chosen))
        if skipped:
            log.debug("%s: not PointCloud2, skipped: %s", bag, skipped)
        if not chosen:
            raise TopicSelectionError(f"{bag}: no {POINTCLOUD2} topics; topics: {available}")
        return chosen
    if isinstance(requested, str):
        requested = [requested]
    if not requested:  # an empty connection list would make rosbags read every topic
        raise TopicSelectionError(f"{bag}: empty topic list; pass None to read every {POINTCLOUD2} topic")
    for topic in requested:
        if topic not in available:
            raise TopicSelectionError(f"{bag}: no topic {topic!r}; topics: {sorted(available)}")
        if available[topic] != POINTCLOUD2:
            raise TopicSelectionError(
                f"{bag}: topic {topic!r} carries {available[topic]}, not {POINTCLOUD2}"
            )
    return list(dict.fromkeys(requested))


def topic_connections(reader: Reader, topics: Sequence[str]) -> list[Any]:
    """The reader's PointCloud2 connections on ``topics`` (a topic may have other-typed connections)."""
    wanted = set(topics)
    return [c for c in reader.connections if c.topic in wanted and c.msgtype == POINTCLOUD2]


# ------------------------------------------------------------------ metadata.yaml, storage files

def recorded_intensity_scales(reader: Reader) -> dict[str, float]:
    """Per-topic intensity scales from metadata.yaml custom_data (only bag folders have it)."""
    return intensity_scales_from(getattr(getattr(reader.storage, "metadata", None), "custom", None))


def intensity_scales_from(custom: dict | None) -> dict[str, float]:
    """Per-topic intensity scales in a metadata.yaml custom_data dict."""
    custom = custom if isinstance(custom, dict) else {}
    scales = {}
    for key, value in custom.items():
        if isinstance(key, str) and key.startswith(INTENSITY_SCALE_KEY):
            try:
                scales[key[len(INTENSITY_SCALE_KEY):]] = float(value)
            except (TypeError, ValueError):
                log.warning("ignoring custom_data %s=%r: not a number", key, value)
    return scales


def storage_files(path: Path) -> tuple[list[Path], str | None, dict | None]:
    """A bag's storage files, per-message compression and custom_data, read without rosbags.

    For a folder: the files metadata.yaml lists (those present), else every ``.mcap``/``.db3`` in it.
    """
    if path.is_file():
        return ([path] if path.suffix in (".mcap", ".db3") else []), None, None
    if not path.is_dir():
        return [], None, None
    info: dict = {}
    try:
        loaded = yaml.safe_load((path / "metadata.yaml").read_text())
        if isinstance(loaded, dict) and isinstance(loaded.get("rosbag2_bagfile_information"), dict):
            info = loaded["rosbag2_bagfile_information"]
    except (OSError, yaml.YAMLError):
        pass
    listed = info.get("relative_file_paths")
    files = [path / PurePath(str(x)).name for x in listed] if isinstance(listed, list) else []
    files = [f for f in files if f.is_file() and f.suffix in (".mcap", ".db3")]
    if not files:
        files = sorted(path.glob("*.mcap")) + sorted(path.glob("*.db3"))
    mode = str(info.get("compression_mode") or "").lower()
    compression = "zstd" if mode == "message" and info.get("compression_format") == "zstd" else None
    custom = info.get("custom_data")
    return files, compression, custom if isinstance(custom, dict) else None


def decompress_message(data: bytes) -> bytes:
    """One zstd-compressed message (rosbag2 compression_mode: message)."""
    try:
        from backports import zstd
    except ImportError:  # Python >= 3.14
        from compression import zstd  # type: ignore[no-redef]
    return zstd.decompress(data)



# ------------------------------------------------------------------ scans as PointCloud2 messages

def split_stamp(stamp_ns: int) -> tuple[int, int]:
    """(sec, nanosec) of a builtin_interfaces/Time."""
    if stamp_ns < 0:
        raise ValueError(f"negative stamp {stamp_ns} ns")
    return divmod(int(stamp_ns), 1_000_000_000)


def cloud_fields(scan: Scan, label_field: str | None, label_dtype: Any) -> dict[str, np.ndarray]:
    """The per-point fields to encode: the scan's fields plus labels under ``label_field``."""
    fields = dict(scan.fields)
    for name in fields:
        if name in ("x", "y", "z"):
            raise ValueError(f"scan field {name!r} collides with the x/y/z point fields ({scan.source})")
    if scan.labels is not None and label_field:
        if label_field in fields:
            raise ValueError(f"scan already has a field named {label_field!r}; choose another label_field")
        dtype = np.dtype(label_dtype)
        labels = scan.labels
        info = np.iinfo(dtype)
        if len(labels) and (labels.min() < info.min or labels.max() > info.max):
            raise ValueError(f"labels {labels.min()}..{labels.max()} do not fit {dtype} ({scan.source})")
        fields[label_field] = labels.astype(dtype)
    return fields


def scan_to_cloud_message(
    scan: Scan, typestore: Any, *, label_field: str | None = "label", label_dtype: Any = np.int32
) -> Any:
    """A rosbags ``sensor_msgs/msg/PointCloud2`` for ``scan`` (labels as an integer field)."""
    types = typestore.types
    sec, nanosec = split_stamp(scan.stamp_ns)
    header = types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=scan.frame_id
    )
    encoded = encode_cloud(scan.points, cloud_fields(scan, label_field, label_dtype))
    msg = types[POINTCLOUD2](
        header=header, height=0, width=0, fields=[], is_bigendian=False, point_step=0, row_step=0,
        data=np.zeros(0, dtype=np.uint8), is_dense=True,
    )
    field_type = types["sensor_msgs/msg/PointField"]
    msg = fill_cloud_message(msg, encoded, field_type)
    if not isinstance(msg.data, np.ndarray):  # rosbags serializes uint8[] from numpy arrays
        msg.data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    return msg
