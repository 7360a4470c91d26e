"""rosbag2 (mcap, sqlite3) scan source for PointCloud2 topics, and a rosbag2 scan writer.

``BagSource`` indexes a bag once (topic, timestamp, rank among equal timestamps per message) and
reads one message per ``source[i]``. Sources hold no open files: rosbags Readers (file handles,
sqlite connections) must never be shared across DataLoader workers, so each process opens the bags
it reads into its own small LRU cache (``open_reader``), and a forked child drops the parent's.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from ..codec import encode_cloud, fill_cloud_message, scan_from_cloud
from ..scan import Scan
from .errors import ScanReadError, TopicSelectionError
from .source import check_index

log = logging.getLogger(__name__)

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


# ------------------------------------------------------------------ per-process reader cache

MAX_OPEN_READERS = 8  # per process; pretraining may index thousands of bags
_open_readers: "OrderedDict[str, Reader]" = OrderedDict()
_open_readers_pid: int | None = None
_open_readers_lock = threading.Lock()


def open_reader(path: Path) -> Reader:
    """This process's open Reader for ``path`` (least recently used ones beyond the limit are closed).

    Raises ScanReadError when the bag cannot be opened. After a fork the parent's readers are
    forgotten, not closed: their handles belong to the parent.
    """
    global _open_readers, _open_readers_pid
    key = str(path)
    with _open_readers_lock:
        if _open_readers_pid != os.getpid():
            _open_readers, _open_readers_pid = OrderedDict(), os.getpid()
        reader = _open_readers.get(key)
        if reader is not None:
            _open_readers.move_to_end(key)
            return reader
        try:
            reader = Reader(path)
            reader.open()
        except Exception as exc:  # noqa: BLE001 - missing files, bad metadata, bad storage
            raise ScanReadError(path, f"cannot open rosbag2: {type(exc).__name__}: {exc}") from None
        _open_readers[key] = reader
        while len(_open_readers) > MAX_OPEN_READERS:
            _, oldest = _open_readers.popitem(last=False)
            oldest.close()
        return reader


def close_reader(path: Path) -> None:
    """Close this process's reader for ``path``, if open (a later read reopens it)."""
    with _open_readers_lock:
        if _open_readers_pid == os.getpid():
            reader = _open_readers.pop(str(path), None)
            if reader is not None:
                reader.close()


def open_reader_count() -> int:
    """How many bags this process has open."""
    return len(_open_readers) if _open_readers_pid == os.getpid() else 0


def topic_connections(reader: Reader, topics: Sequence[str]) -> list[Any]:
    """The reader's PointCloud2 connections on ``topics`` (a topic may have other-typed connections)."""
    wanted = set(topics)
    return [c for c in reader.connections if c.topic in wanted and c.msgtype == POINTCLOUD2]


class BagSource:
    """The PointCloud2 messages of a rosbag2 folder or ``.mcap``/``.db3`` file, read lazily.

    Index ``i`` follows the bag's timestamp order over the chosen topics. ``label_field`` names the
    per-point field holding labels (None: no labels). A message that does not deserialize or decode
    raises ScanReadError on ``source[i]``. A header stamp of 0 is replaced by the bag timestamp.
    ``intensity_scale`` sets ``Scan.intensity_scale`` (e.g. 255 for Ouster reflectivity); by default
    it is the one BagWriter recorded in metadata.yaml for the topic, else None.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        topics: Sequence[str] | None = None,
        label_field: str | None = None,
        intensity_scale: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.label_field = label_field
        self.truncated: str | None = None  # why indexing stopped early, for a damaged bag

        reader = open_reader(self.path)
        available: dict[str, str] = {}
        for conn in reader.connections:  # a topic counts as PointCloud2 if any connection carries it
            if available.get(conn.topic) != POINTCLOUD2:
                available[conn.topic] = conn.msgtype
        self.topics = select_topics(available, topics, str(self.path))
        recorded = recorded_intensity_scales(reader)
        self.intensity_scales = {
            t: intensity_scale if intensity_scale is not None else recorded.get(t) for t in self.topics
        }
        topic_ids = {t: k for k, t in enumerate(self.topics)}

        topic_of: list[int] = []
        stamps: list[int] = []
        ranks: list[int] = []
        seqs: list[int] = []
        per_topic = [0] * len(self.topics)
        last: dict[tuple[int, int], int] = {}
        try:
            # One pass reading the chosen topics only; data is dropped at once (nothing kept in memory).
            for conn, stamp, _ in reader.messages(topic_connections(reader, self.topics)):
                tid = topic_ids[conn.topic]
                key = (tid, stamp)
                rank = last.get(key, -1) + 1
                last[key] = rank
                topic_of.append(tid)
                stamps.append(stamp)
                ranks.append(rank)
                seqs.append(per_topic[tid])
                per_topic[tid] += 1
        except Exception as exc:  # noqa: BLE001 - rosbags raises many types for damaged storage
            self.truncated = f"{type(exc).__name__}: {exc}"
            log.warning("%s: bag unreadable after %d messages, using those: %s", self.path, len(stamps), exc)
        self.topic_index = np.asarray(topic_of, dtype=np.int32)
        self.stamps_ns = np.asarray(stamps, dtype=np.int64)
        self._ranks = np.asarray(ranks, dtype=np.int32)
        self._seqs = np.asarray(seqs, dtype=np.int64)
        self.message_counts = {t: per_topic[k] for k, t in enumerate(self.topics)}

    def close(self) -> None:
        """Close this process's reader of the bag (a later ``source[i]`` reopens it)."""
        close_reader(self.path)

    def __enter__(self) -> "BagSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- ScanSource

    def __len__(self) -> int:
        return len(self.stamps_ns)

    def describe(self, index: int) -> str:
        index = check_index(index, len(self))
        return f"{self.path}:{self.topics[self.topic_index[index]]}#{self._seqs[index]}"

    def topic(self, index: int) -> str:
        return self.topics[self.topic_index[check_index(index, len(self))]]

    def raw_message(self, index: int) -> bytes:
        """The serialized CDR bytes of message ``index``."""
        index = check_index(index, len(self))
        topic = self.topics[self.topic_index[index]]
        stamp = int(self.stamps_ns[index])
        reader = open_reader(self.path)
        try:
            # Timestamp-bounded query: mcap reads only the chunks spanning it, sqlite3 filters by timestamp.
            for rank, (_, _, raw) in enumerate(reader.messages(topic_connections(reader, [topic]), stamp, stamp + 1)):
                if rank == self._ranks[index]:
                    return raw
        except Exception as exc:  # noqa: BLE001
            raise ScanReadError(self.describe(index), f"storage read failed: {type(exc).__name__}: {exc}") from None
        raise ScanReadError(self.describe(index), "message no longer in the bag (bag changed since indexing?)")

    def message(self, index: int) -> Any:
        """Message ``index`` deserialized with the Humble typestore."""
        raw = self.raw_message(index)
        try:
            return default_typestore().deserialize_cdr(raw, POINTCLOUD2)
        except Exception as exc:  # noqa: BLE001 - the CDR decoder raises struct/index/value errors
            raise ScanReadError(self.describe(index), f"cannot deserialize {POINTCLOUD2}: {type(exc).__name__}: {exc}") from None

    def __getitem__(self, index: int) -> Scan:
        index = check_index(index, len(self))
        msg = self.message(index)
        try:
            scan, _ = scan_from_cloud(msg, label_field=self.label_field)
        except (ValueError, KeyError, TypeError) as exc:  # CloudFormatError is a ValueError
            raise ScanReadError(self.describe(index), f"bad PointCloud2: {exc}") from None
        if scan.stamp_ns == 0:
            scan.stamp_ns = int(self.stamps_ns[index])
        scan.intensity_scale = self.intensity_scales[self.topics[self.topic_index[index]]]
        scan.source = self.describe(index)
        return scan

    def __repr__(self) -> str:
        return f"BagSource({self.path}, {len(self)} messages on {self.topics})"


def recorded_intensity_scales(reader: Reader) -> dict[str, float]:
    """Per-topic intensity scales from metadata.yaml custom_data (only bag folders have it)."""
    custom = getattr(getattr(reader.storage, "metadata", None), "custom", None) or {}
    scales = {}
    for key, value in custom.items():
        if isinstance(key, str) and key.startswith(INTENSITY_SCALE_KEY):
            try:
                scales[key[len(INTENSITY_SCALE_KEY):]] = float(value)
            except (TypeError, ValueError):
                log.warning("ignoring custom_data %s=%r: not a number", key, value)
    return scales


# ------------------------------------------------------------------------------------ writer

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


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


class BagWriter:
    """Writes scans (as PointCloud2) and other messages into a new rosbag2 folder.

    ``storage`` is ``"mcap"`` (default) or ``"sqlite3"``; ``version`` the metadata.yaml version
    rosbags writes (8, like the shared data's bag, or 9). Use as a context manager: metadata.yaml
    is written on a clean exit; on an exception the bag is aborted. The path must not exist yet.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        storage: str = "mcap",
        typestore: Any = None,
        version: int = 8,
    ) -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {sorted(STORAGES)}, got {storage!r}")
        self.path = Path(path)
        self.typestore = typestore if typestore is not None else default_typestore()
        self._writer = Writer(self.path, version=version, storage_plugin=STORAGES[storage])
        self._connections: dict[str, Any] = {}
        self._intensity_scales: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def open(self) -> "BagWriter":
        self._writer.open()
        close_reader(self.path)  # a reader cached for an earlier bag at this path is stale now
        return self

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> "BagWriter":
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        self._writer.__exit__(exc_type, exc, tb)

    def _connection(self, topic: str, msgtype: str) -> Any:
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
            self._connections[topic] = conn
            self.counts[topic] = 0
        elif conn.msgtype != msgtype:
            raise ValueError(f"topic {topic!r} already carries {conn.msgtype}, cannot write {msgtype}")
        return conn

    def write_serialized(self, topic: str, msgtype: str, data: bytes | memoryview, stamp_ns: int) -> None:
        """Write already-serialized CDR bytes (copying messages between bags)."""
        self._writer.write(self._connection(topic, msgtype), int(stamp_ns), data)
        self.counts[topic] += 1

    def write_message(self, topic: str, msgtype: str, msg: Any, stamp_ns: int) -> None:
        """Serialize ``msg`` (a message of this writer's typestore) and write it at ``stamp_ns``."""
        self._connection(topic, msgtype)  # checks the type before serializing
        self.write_serialized(topic, msgtype, self.typestore.serialize_cdr(msg, msgtype), stamp_ns)

    def write_scan(
        self, topic: str, scan: Scan, *, label_field: str | None = "label", label_dtype: Any = np.int32
    ) -> None:
        """Write ``scan`` as a PointCloud2 stamped ``scan.stamp_ns`` in ``scan.frame_id``.

        Labels go into the integer field ``label_field`` (``label_dtype``, int32 by default, or
        uint16); ``scan.intensity_scale`` is recorded per topic in metadata.yaml custom_data.
        """
        msg = scan_to_cloud_message(scan, self.typestore, label_field=label_field, label_dtype=label_dtype)
        self.write_message(topic, POINTCLOUD2, msg, scan.stamp_ns)
        scale = scan.intensity_scale
        if scale is not None and self._intensity_scales.get(topic) != scale:
            if topic in self._intensity_scales:
                log.warning("%s: intensity scale changes %s -> %s; the bag records the last",
                            topic, self._intensity_scales[topic], scale)
            self._intensity_scales[topic] = scale
            self._writer.set_custom_data(INTENSITY_SCALE_KEY + topic, repr(float(scale)))


__all__ = [
    "POINTCLOUD2", "BagSource", "BagWriter", "default_typestore", "select_topics", "scan_to_cloud_message",
    "open_reader", "close_reader", "open_reader_count",
]
