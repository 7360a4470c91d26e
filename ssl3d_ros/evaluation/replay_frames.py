"""The replayed frames, without ROS: what ``ssl3d-replay`` reads from the bag and writes back to one.

- :func:`load_bag_frames`: a bag's PointCloud2 messages as :class:`BagFrame` (the recorded bytes,
  the header stamp outputs are matched by, the labels as class indices), read before the replay starts.
- :func:`score_frame`: one frame's output against its labels (valid points, mIoU, accuracy).
- :func:`failure_status`, :func:`assign_unanswered`: what the node's counters say about frames it
  did not answer (rejected, error, dropped).
- :func:`write_recording`: inputs and outputs into a new bag (``--record-out``).

The DDS and the offline replay (:mod:`ssl3d_ros.evaluation.replay`) both load and score frames; the
statuses and the recording are the DDS replay's. Per-frame records and the report are in
:mod:`ssl3d_ros.evaluation.replay_stats`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..labels import IGNORE, NO_CLASS, ClassMap, ScoreAccumulator
from .replay_stats import FrameRecord

# ssl3d-replay's logger, as before these functions left replay.py: its warnings keep their name on stderr
log = logging.getLogger("ssl3d_ros.evaluation.replay")


@dataclass
class BagFrame:
    """One input message, read before the replay starts so reading never delays sending."""

    index: int
    bag_ns: int
    stamp_ns: int
    raw: bytes
    points: int
    truth: np.ndarray | None  # (height*width,) class indices in message order, IGNORE where unlabelled


def load_bag_frames(path: str | Path, topic: str | None, label_field: str | None, class_map: ClassMap | None,
                    max_frames: int | None = None,
                    unreadable: list[tuple[int, int, str]] | None = None) -> tuple[list[BagFrame], str, int]:
    """The frames of one PointCloud2 topic (the only one, or ``topic``), the topic, and its message count.

    A message that cannot be read or deserialized is skipped with a warning (never sent) and, when
    ``unreadable`` is given, appended to it as ``(index, bag time ns, reason)``.
    """
    from ..codec import scan_from_cloud
    from ..io.errors import ScanReadError
    from ..io.rosbag import BagSource

    source = BagSource(path, topics=[topic] if topic else None)
    if len(source.topics) != 1:
        raise SystemExit(f"{path} has PointCloud2 topics {source.topics}; choose one with --topic")
    topic = source.topics[0]
    total = len(source)
    frames = []
    for i in range(total if max_frames is None else min(total, max_frames)):
        try:
            raw = bytes(source.raw_message(i))
            msg = source.message(i)
        except ScanReadError as exc:  # a corrupt record: the rest of the bag is still replayed
            log.warning("frame %d unreadable, not sent: %s", i, exc)
            if unreadable is not None:
                unreadable.append((i, int(source.stamps_ns[i]), exc.reason))
            continue
        n = int(msg.height) * int(msg.width)
        truth = None
        if label_field and class_map is not None:
            try:
                scan, index = scan_from_cloud(msg, label_field=label_field)
                truth = np.full(n, IGNORE, dtype=np.int64)
                truth[index] = class_map.apply(scan.labels)
            except ValueError as exc:  # no label field in this message: no score for it
                log.warning("frame %d: no labels (%s)", i, exc)
        stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
        frames.append(BagFrame(i, int(source.stamps_ns[i]), stamp or int(source.stamps_ns[i]), raw, n, truth))
    source.close()
    return frames, topic, total


def score_frame(record: FrameRecord, frame: BagFrame, class_id: np.ndarray, scores: ScoreAccumulator | None) -> None:
    """Per-frame mIoU against the bag's labels; invalid outputs (255) count as misses."""
    record.valid_points = int((class_id != NO_CLASS).sum())
    if scores is None or frame.truth is None:
        return
    pred = np.where(class_id == NO_CLASS, IGNORE, class_id.astype(np.int64))
    if len(pred) != len(frame.truth):
        log.warning("frame %d: %d outputs for %d input points; not scored", frame.index, len(pred), len(frame.truth))
        return
    s = scores.add(frame.truth, pred)
    record.miou = None if not np.isfinite(s.miou) else s.miou
    record.accuracy = None if not np.isfinite(s.accuracy) else s.accuracy



def failure_status(before: dict[str, int], after: dict[str, int]) -> str | None:
    """What the node's counters say happened to the one frame in flight: "error" when it counted a failed
    frame (frames_errors), "rejected" when it refused a malformed input (frames_rejected), else None."""
    if after.get("errors", 0) > before.get("errors", 0):
        return "error"
    if after.get("rejected", 0) > before.get("rejected", 0):
        return "rejected"
    return None


def assign_unanswered(records: Sequence[FrameRecord], node_counts: dict[str, int]) -> None:
    """Statuses for sent frames still "pending" after the replay. In keep-up mode (one frame in flight)
    rejected and failed frames were told apart as they happened. At the recorded rate several frames
    are in flight and the node's counters do not say which frame they were, so what is left of each
    count goes to the earliest unanswered frames (totals exact, identities not), rejections first; the
    rest were dropped (replaced in the node's mailbox, or lost)."""
    left = {"rejected": node_counts.get("rejected", 0) - sum(r.status == "rejected" for r in records),
            "error": node_counts.get("errors", 0) - sum(r.status == "error" for r in records)}
    for rec in records:
        if rec.sent_s is not None and rec.status == "pending":
            rec.status = next((k for k, n in left.items() if n > 0), "dropped")
            if rec.status in left:
                left[rec.status] -= 1


def write_recording(path: str, frames: Sequence[BagFrame], records: Sequence[FrameRecord],
                    outputs: dict, input_topic: str, output_topic: str) -> None:
    """Inputs at their bag time, outputs at bag time + measured end-to-end latency.

    The node answers frames one at a time and in order, so outputs keep the order of their inputs: an
    output's time is raised to just after the previous output's where a long latency (a loaded CPU, a
    keep-up replay whose frames were sent faster than the bag's clock) would otherwise put it
    before an output of a later frame."""
    from ..io.rosbag import POINTCLOUD2, BagWriter

    last_output_ns = None
    with BagWriter(path) as writer:
        for frame, rec in zip(frames, records):
            writer.write_serialized(input_topic or "/points", POINTCLOUD2, frame.raw, frame.bag_ns)
            out = outputs.get(frame.stamp_ns)
            if out is not None and out[2] is not None and rec.latency_ms is not None:
                output_ns = frame.bag_ns + int(rec.latency_ms * 1e6)
                if last_output_ns is not None and output_ns <= last_output_ns:
                    output_ns = last_output_ns + 1
                writer.write_serialized(output_topic, POINTCLOUD2, out[2], output_ns)
                last_output_ns = output_ns
