"""Temporal views: a sample's second view cut from another frame of the same sequence, aligned.

A sequence is what a source records in time order: one bag topic, the simulator's trajectory, or
the scan files of one folder numbered frame by frame (``000001.bin``, ``000002.bin`` ...; names
that differ only in one number, at most ``MAX_FRAME_GAP`` frames apart, and where the numbers are
nanosecond stamps, stamps at most ``MAX_STAMP_GAP_NS`` apart). A larger gap ends a sequence; a scan
in none is single.

For the scan at a sample position, ``PartnerFinder`` draws (from the sample's generator, so resuming
replays it) a frame 1..``max_offset`` frames away in the same sequence and the rigid transform that
takes the partner's points into the anchor scan's frame: from poses when the source has them (the
simulator's trajectory, for snapshot scans without motion distortion; a KITTI-style ``poses.txt``
in the scan folder or its parent, line ``n`` the 3x4 world-from-scan pose of frame number ``n``; KITTI
camera poses only with calib.txt's ``Tr``: see ``folder_poses``),
else from point-to-plane ICP (``registration.py``), cached per pair in the run folder. A pair ICP rejects is counted, and the
sample falls back to single-scan views.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ssl3d_ros.config import ConfigError
from ssl3d_ros.io import ConcatSource, FileSource, ScanReadError, ScanSource
from ssl3d_ros.scan import Scan

from .registration import PairCache, RegistrationConfig, cached_register

log = logging.getLogger(__name__)

MAX_STAMP_GAP_NS = 200_000_000  # two periods of a 10 Hz sensor
MAX_FRAME_GAP = 2  # frame numbers likewise: every other frame is how subsampled sequences are kept (SemanticKITTI's here)
STAMP_DIGITS = 16  # numbers this long in file names are nanosecond stamps, not frame numbers
NUMBERED = re.compile(r"^(.*?)(\d+)(\D*)$")


@dataclass
class TemporalConfig:
    """``data.temporal``: second views from neighbouring frames (off by default)."""

    enabled: bool = False
    max_offset: int = 1  # the partner frame is 1..max_offset frames away (either direction)
    probability: float = 1.0  # fraction of samples of sequence scans that get a temporal pair
    align: Literal["auto", "poses", "icp"] = "auto"  # auto: poses where the source has them, else ICP
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)

    def validate(self) -> None:
        if self.max_offset < 1:
            raise ConfigError(f"data.temporal.max_offset must be >= 1, got {self.max_offset}")
        if not 0.0 <= self.probability <= 1.0:
            raise ConfigError(f"data.temporal.probability must be in 0..1, got {self.probability}")
        self.registration.validate("data.temporal.registration")


@dataclass
class Partner:
    """The partner frame and ``transform`` (4x4) taking its points into the anchor scan's frame."""

    scan: Scan
    index: int
    transform: np.ndarray
    by: Literal["poses", "icp"]

    def aligned_points(self) -> np.ndarray:
        t = self.transform
        return (self.scan.points.astype(np.float64) @ t[:3, :3].T + t[:3, 3]).astype(np.float32)


@dataclass
class Sequences:
    """Per global scan index: its sequence (-1: single) and, where known, its world-from-scan pose."""

    sequence: np.ndarray  # (N,) int64
    members: list[np.ndarray]  # sequence id -> global indices in time order
    poses: dict[int, np.ndarray]  # global index -> 4x4 pose (file poses), absent: none
    sim_ranges: list[tuple[int, int, object]]  # (start, end, SimSource): poses from the trajectory

    def neighbours(self, index: int, max_offset: int) -> np.ndarray:
        seq = self.sequence[index]
        if seq < 0:
            return np.empty(0, dtype=np.int64)
        members = self.members[seq]
        at = int(np.flatnonzero(members == index)[0])
        lo, hi = max(at - max_offset, 0), min(at + max_offset + 1, len(members))
        return np.concatenate([members[lo:at], members[at + 1:hi]])

    def has_pose(self, index: int) -> bool:
        return index in self.poses or any(start <= index < end for start, end, _ in self.sim_ranges)

    def pose(self, index: int) -> np.ndarray | None:
        if index in self.poses:
            return self.poses[index]
        for start, end, sim in self.sim_ranges:
            if start <= index < end:
                return sim.world.lidar_pose(index - start)
        return None

    @property
    def num_in_sequences(self) -> int:
        return int((self.sequence >= 0).sum())


def numbered_runs(paths: list[str]) -> list[list[int]]:
    """Index lists (into ``paths``) of the frame-numbered runs of length >= 2, each in frame order."""
    groups: dict[tuple[str, str, str], list[tuple[int, int]]] = {}
    for i, path in enumerate(paths):
        p = Path(path)
        match = NUMBERED.match(p.name)  # the last number of the name: cloud.00001.xyz.npy -> 00001
        if match:
            groups.setdefault((str(p.parent), match.group(1), match.group(3)), []).append((int(match.group(2)), i))
    runs = []
    for items in groups.values():
        items.sort()
        run = [items[0]]
        for prev, cur in zip(items, items[1:]):
            gap = cur[0] - prev[0]
            stamps = len(str(cur[0])) >= STAMP_DIGITS
            if 0 < gap <= (MAX_STAMP_GAP_NS if stamps else MAX_FRAME_GAP):
                run.append(cur)
            else:
                runs.append(run)
                run = [cur]
        runs.append(run)
    return [[i for _, i in run] for run in runs if len(run) >= 2]


def frame_number(path: str) -> int | None:
    match = NUMBERED.match(Path(path).name)
    return int(match.group(2)) if match else None


def folder_poses(folder: Path) -> np.ndarray | None:
    """(M, 4, 4) world-from-scan poses from ``poses.txt`` in ``folder`` or its parent (12 numbers a line),
    or None when there are none, or none that are the scans' own.

    Without a ``calib.txt`` beside it, a pose file holds the scans' own poses. With one, it is KITTI
    odometry's: the poses are the left camera's, and ``Tr`` (velodyne-to-camera) of calib.txt makes each
    the LiDAR's (``pose @ Tr``, as semantic-kitti-api does). A calib.txt without ``Tr`` leaves the
    camera-to-LiDAR transform unknown: camera poses used as they are would turn the motion into the
    camera's axes (measured on SemanticKITTI 00-08, frames 0 and 4: 2.0-5.0 m median misalignment, worse than
    no alignment at all), so those poses are not used (logged once; align: auto falls back to ICP)."""
    for candidate in (folder / "poses.txt", folder.parent / "poses.txt"):
        if candidate.is_file():
            try:
                rows = np.loadtxt(candidate, dtype=np.float64, ndmin=2)
            except ValueError as exc:
                raise ConfigError(f"{candidate}: not a KITTI pose file (12 numbers a line): {exc}") from None
            if rows.shape[1] != 12 or not np.all(np.isfinite(rows)):
                raise ConfigError(f"{candidate}: expected 12 finite numbers a line (a 3x4 pose), got {rows.shape[1]}")
            poses = np.tile(np.eye(4), (len(rows), 1, 1))
            poses[:, :3, :4] = rows.reshape(-1, 3, 4)
            calib = candidate.parent / "calib.txt"
            if not calib.is_file():
                return poses
            velodyne_to_camera = kitti_velodyne_to_camera(calib)
            if velodyne_to_camera is None:
                log.warning("%s: camera poses, and %s has no Tr (velodyne-to-camera): these scans are not aligned "
                            "by their poses", candidate, calib)
                return None
            return poses @ velodyne_to_camera
    return None


def kitti_velodyne_to_camera(calib: Path) -> np.ndarray | None:
    """The 4x4 ``Tr`` (velodyne-to-left-camera) of a KITTI odometry ``calib.txt``, or None when it has none."""
    for line in calib.read_text(errors="replace").splitlines():
        key, _, values = line.partition(":")
        if key.strip() == "Tr":
            try:
                numbers = np.array(values.split(), dtype=np.float64)
            except ValueError:
                numbers = np.empty(0)
            if numbers.shape != (12,) or not np.all(np.isfinite(numbers)):
                raise ConfigError(f"{calib}: Tr must be 12 finite numbers (a 3x4 velodyne-to-camera transform)")
            transform = np.eye(4)
            transform[:3, :4] = numbers.reshape(3, 4)
            return transform
    return None


def find_sequences(source: ScanSource) -> Sequences:
    """The sequences of a (possibly concatenated) source, from its index only (nothing is read)."""
    from ssl3d_ros.sim import SimSource, default_lidar

    n = len(source)
    sequence = np.full(n, -1, dtype=np.int64)
    members: list[np.ndarray] = []
    poses: dict[int, np.ndarray] = {}
    sim_ranges: list[tuple[int, int, object]] = []

    def add(indices) -> None:
        indices = np.asarray(indices, dtype=np.int64)
        sequence[indices] = len(members)
        members.append(indices)

    def walk(src, offset: int) -> None:
        if isinstance(src, ConcatSource):
            start = offset
            for part in src.sources:
                walk(part, start)
                start += len(part)
        elif isinstance(src, SimSource):
            if len(src) >= 2:
                add(np.arange(offset, offset + len(src)))
            # One pose per scan is exact only for snapshot scans: with motion distortion each column is
            # in the sensor frame of its own firing time (0.5 m apart over a sweep at 5 m/s), so such
            # scans are aligned by ICP, like real sweeps.
            if not (src.cfg.lidar or default_lidar(src.cfg.scene)).motion_distortion:
                sim_ranges.append((offset, offset + len(src), src))
        elif isinstance(src, FileSource):
            paths = [e.path for e in src.entries]
            for run in numbered_runs(paths):
                add([offset + i for i in run])
            pose_tables: dict[Path, np.ndarray | None] = {}
            for i, path in enumerate(paths):
                folder = Path(path).parent
                if folder not in pose_tables:
                    pose_tables[folder] = folder_poses(folder)
                table, number = pose_tables[folder], frame_number(path)
                if table is not None and number is not None and number < len(table):
                    poses[offset + i] = table[number]
        elif hasattr(src, "topic_index") and hasattr(src, "stamps_ns"):  # a BagSource: a sequence per topic
            topic_index = np.asarray(src.topic_index)
            for topic in np.unique(topic_index):
                mine = np.flatnonzero(topic_index == topic)
                mine = mine[np.argsort(np.asarray(src.stamps_ns)[mine], kind="stable")]
                if len(mine) >= 2:
                    add(offset + mine)

    walk(source, 0)
    return Sequences(sequence, members, poses, sim_ranges)


class PartnerFinder:
    """Picks and aligns a sample's partner frame (lives in DataLoader workers; picklable)."""

    def __init__(self, source: ScanSource, cfg: TemporalConfig, cache_dir: str | Path | None) -> None:
        self.source = source
        self.cfg = cfg
        self.sequences = find_sequences(source)
        self.cache = PairCache(cache_dir)
        if cfg.align == "poses":
            missing = [i for i in range(len(source)) if self.sequences.sequence[i] >= 0 and not self.sequences.has_pose(i)]
            if missing:
                raise ConfigError(f"data.temporal.align=poses: no pose for {self.describe(missing[0])} "
                                  f"(and {len(missing) - 1} more); put a poses.txt beside the scans or use align: auto")

    def describe(self, index: int) -> str:
        describe = getattr(self.source, "describe", None)
        return describe(index) if describe else f"scan #{index}"

    def find(self, index: int, scan: Scan, rng: np.random.Generator, counts: dict[str, int]) -> Partner | None:
        """The aligned partner of scan ``index``, or None (single scan, not drawn, unreadable, rejected);
        ``counts`` gets ``pairs_rejected`` / ``pairs_unreadable`` added (the caller counts the pairs it uses)."""
        candidates = self.sequences.neighbours(index, self.cfg.max_offset)
        if len(candidates) == 0 or rng.random() >= self.cfg.probability:
            return None
        other = int(candidates[rng.integers(len(candidates))])
        try:
            partner_scan = self.source[other]
        except (ScanReadError, ValueError, OSError) as error:
            log.debug("temporal partner %s unreadable: %s", self.describe(other), error)
            counts["pairs_unreadable"] = counts.get("pairs_unreadable", 0) + 1
            return None
        transform, by = self.pose_transform(index, other), "poses"
        if transform is None:
            result = cached_register(self.cache, self.describe(other), self.describe(index), partner_scan.points,
                                     scan.points, self.cfg.registration)
            if not result.accepted:
                log.debug("temporal pair %s -> %s rejected: %s", self.describe(other), self.describe(index), result.reason)
                counts["pairs_rejected"] = counts.get("pairs_rejected", 0) + 1
                return None
            transform, by = result.transform, "icp"
        return Partner(partner_scan, other, transform, by)

    def pose_transform(self, anchor: int, other: int) -> np.ndarray | None:
        """anchor-from-other from poses, when both have one and the config allows poses."""
        if self.cfg.align == "icp":
            return None
        a, b = self.sequences.pose(anchor), self.sequences.pose(other)
        if a is None or b is None:
            return None
        return np.linalg.inv(a) @ b


__all__ = ["TemporalConfig", "Partner", "Sequences", "PartnerFinder", "find_sequences", "numbered_runs", "folder_poses",
           "kitti_velodyne_to_camera",
           "MAX_STAMP_GAP_NS", "MAX_FRAME_GAP"]
