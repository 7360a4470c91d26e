"""Scan sources for pretraining, the deterministic resumable sample order, and batching.

The order of samples is a pure function of (seed, global position): position p of the run is scan
``perm_e[p mod N]`` of epoch ``e = p // N``, and its augmentations draw from a generator seeded with
(seed, p). A step s on rank r of W takes positions ``(s * W + r) * B ... + B - 1``. So resuming at step
s replays exactly the data an uninterrupted run would have seen, whatever the number of DataLoader
workers, and no data-order state beyond the step needs saving.

A view that comes out smaller than ``min_voxels`` is first cut again around another place
(``view_retries`` times); a scan that cannot be read (``ScanReadError``) or still gives an unusable
view is counted, logged at debug level (the loop logs a summary) and replaced by the next scan of
the permutation, so batches keep their size (which DDP needs: every rank must run the same steps)
and one corrupt file never ends a run. With ``temporal.enabled``, scans of a sequence get a second
view from a neighbouring frame (``temporal.py``); each sample counts what that cost in ``counts``.
"""
from __future__ import annotations

import fnmatch
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ssl3d_ros.config import ConfigError
from ssl3d_ros.io import ConcatSource, FileSource, NoScansError, ScanReadError, ScanSource, open_source
from ssl3d_ros.preprocessing import MissingFieldError
from ssl3d_ros.scan import Scan

from .temporal import PartnerFinder, TemporalConfig
from .views import ViewMaker
from .voxels import ViewVoxels, VoxelBatch, Views

log = logging.getLogger(__name__)

SIM_PREFIX = "sim:"
#: per-sample counters, summed over the run into metrics.csv (the same keys on every rank: all-reduced)
SAMPLE_COUNTERS = ("view_retries", "pairs_temporal", "pairs_rejected", "pairs_unreadable")


@dataclass
class DataConfig:
    """Where pretraining scans come from.

    sources: paths (rosbag2 folders or .mcap/.db3 files, KITTI-style folders, folders of
        .pcd/.ply/.npy, single files) and/or ``sim:outdoor`` / ``sim:indoor`` (optionally
        ``sim:outdoor:COUNT``), all concatenated.
    topics: PointCloud2 topics to read from bags (empty: every PointCloud2 topic).
    exclude: glob patterns (fnmatch, ``*`` crosses ``/``) of scan file paths to leave out, e.g.
        ``"*/semantickitti/*"`` keeps the labelled probe scans out of a ``lidar/`` folder.
    sim_count: scans per ``sim:`` source without an explicit count; sim_seed: their seed.
    min_voxels: a view with fewer voxels is unusable (the scan is skipped and counted).
    view_retries: times a too-small view is cut again around another place before its scan is skipped.
    max_retries: consecutive unusable scans tolerated for one sample before the run stops.
    temporal: second views from neighbouring frames of a sequence (``temporal.TemporalConfig``).
    """

    sources: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    sim_count: int = 32
    sim_seed: int = 0
    sim_lidar: dict[str, Any] = field(default_factory=dict)  # SpinningLidar overrides, e.g. {beams: 16, columns: 512}
    min_voxels: int = 32
    view_retries: int = 4
    max_retries: int = 16
    exclude: list[str] = field(default_factory=list)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)


def parse_sim_spec(spec: str, default_count: int) -> tuple[str, int]:
    parts = spec[len(SIM_PREFIX):].split(":")
    kind = parts[0]
    if kind not in ("outdoor", "indoor") or len(parts) > 2:
        raise ConfigError(f"data.sources: bad simulated source {spec!r}; use sim:outdoor, sim:indoor or sim:KIND:COUNT")
    try:
        count = int(parts[1]) if len(parts) == 2 else default_count
    except ValueError:
        raise ConfigError(f"data.sources: {spec!r}: the count must be an integer") from None
    if count < 1:
        raise ConfigError(f"data.sources: {spec!r}: count must be >= 1")
    return kind, count


def simulated_source(spec: str, cfg: DataConfig) -> ScanSource:
    """``sim:KIND[:COUNT]`` as a lazy source: scans are ray-cast on access, in each worker."""
    from ssl3d_ros.sim import SimConfig, SimSource, with_lidar

    kind, count = parse_sim_spec(spec, cfg.sim_count)
    sim = SimConfig(scene=kind)
    if cfg.sim_lidar:
        try:
            sim = with_lidar(sim, **cfg.sim_lidar)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"data.sim_lidar: {exc}") from None
    return SimSource(sim, count, cfg.sim_seed)


def open_data(cfg: DataConfig) -> ScanSource:
    """One lazy source over every configured input (simulated scans are rendered on access)."""
    if not cfg.sources:
        raise ConfigError("data.sources is empty: give scan paths (or sim:outdoor / sim:indoor) in the config or with --data")
    sources = []
    for spec in cfg.sources:
        if spec.startswith(SIM_PREFIX):
            sources.append(simulated_source(spec, cfg))
        else:
            source = open_source(spec, topics=cfg.topics or None)
            if cfg.exclude:
                source = without_excluded(source, cfg.exclude)
                if len(source) == 0:
                    raise ConfigError(f"data.exclude {cfg.exclude} leaves no scans of {spec}")
            sources.append(source)
    source = sources[0] if len(sources) == 1 else ConcatSource(sources)
    if len(source) == 0:  # e.g. a bag whose PointCloud2 topics have no messages
        raise NoScansError(f"{', '.join(cfg.sources)}: no scans to train on")
    return source


def without_excluded(source: ScanSource, patterns: Sequence[str]) -> ScanSource:
    """``source`` without the scan files whose path matches one of ``patterns`` (bags are kept whole:
    choose their topics instead)."""
    if isinstance(source, ConcatSource):
        parts = [without_excluded(part, patterns) for part in source.sources]
        return ConcatSource([part for part in parts if len(part)])
    if isinstance(source, FileSource):
        kept = [e for e in source.entries if not any(fnmatch.fnmatch(e.path, pattern) for pattern in patterns)]
        return FileSource(kept, label_field=source.label_field)
    return source


class UnusableScan(ValueError):
    """A scan was read but gave a view too small to train on."""


class UnusableDataError(RuntimeError):
    """More than ``data.max_retries`` scans in a row could not be read or trained on: the data, not
    one file, is unusable. The message names the last scans and why each was refused."""


@dataclass
class Sample:
    views: dict[str, list[ViewVoxels]]
    skipped: list[tuple[str, str]]  # (scan description, reason) of scans replaced by this one
    counts: dict[str, int] = field(default_factory=dict)  # SAMPLE_COUNTERS of this sample


class PretrainDataset(Dataset):
    """Map-style dataset indexed by global sample position (see the module docstring)."""

    def __init__(self, source: ScanSource, view_maker: ViewMaker, cfg: DataConfig, seed: int,
                 cache_dir: str | None = None) -> None:
        """``cache_dir``: where temporal pairs' registrations are cached (the run folder's ``registration/``)."""
        if len(source) == 0:
            raise NoScansError("the data sources hold no scans")
        self.source = source
        self.view_maker = view_maker
        self.cfg = cfg
        self.seed = seed
        self.partners: PartnerFinder | None = None
        if cfg.temporal.enabled:
            cfg.temporal.validate()
            self.partners = PartnerFinder(source, cfg.temporal, cache_dir)
            log.info("temporal views: %d of %d scans are in %d sequences", self.partners.sequences.num_in_sequences,
                     len(source), len(self.partners.sequences.members))
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None
        # scans that can give no view at all (they lack a field the features need), by index: each is
        # skipped and counted once, then passed over without reading it again. Per process (each
        # DataLoader worker learns its own), for the whole run: the workers live as long as the loader.
        self.unusable: dict[int, str] = {}

    def __len__(self) -> int:  # positions are unbounded; this is one epoch
        return len(self.source)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.source))
            self._perm_epoch = epoch
        return self._perm

    def scan_index(self, position: int, attempt: int = 0) -> int:
        n = len(self.source)
        return int((self.permutation(position // n)[position % n] + attempt) % n)

    def describe(self, index: int) -> str:
        describe = getattr(self.source, "describe", None)
        return describe(index) if describe else f"scan #{index}"

    def __getitem__(self, position: int) -> Sample:
        skipped: list[tuple[str, str]] = []
        counts = dict.fromkeys(SAMPLE_COUNTERS, 0)
        attempt, tries = 0, 0
        while tries <= self.cfg.max_retries and attempt < len(self.source) + self.cfg.max_retries:
            index = self.scan_index(position, attempt)
            rng = np.random.default_rng([self.seed, position, attempt])
            attempt += 1
            if index in self.unusable:
                continue  # skipped and counted when first met
            tries += 1
            try:
                scan = self.source[index]
                views = self.make_views(scan, rng, index, counts)
            except MissingFieldError as error:
                self.unusable[index] = str(error)
                log.debug("leaving out scan %s: %s", self.describe(index), error)
                skipped.append((self.describe(index), str(error)))
                continue
            except (ScanReadError, UnusableScan, ValueError) as error:
                reason = error.reason if isinstance(error, ScanReadError) else str(error)
                log.debug("skipping scan %s: %s", self.describe(index), reason)  # summarised by the loop
                skipped.append((self.describe(index), reason))
                continue
            return Sample(views, skipped, counts)
        reasons = skipped or [(self.describe(i), r) for i, r in self.unusable.items()]
        raise UnusableDataError(
            f"{max(len(skipped), tries)} consecutive scans were unusable at sample {position}"
            + (f" ({len(self.unusable)} of {len(self.source)} scans lack a field the features need)" if self.unusable else "")
            + "; last reasons: " + "; ".join(f"{d}: {r}" for d, r in reasons[-3:])
        )

    def make_views(self, scan: Scan, rng: np.random.Generator, index: int = -1,
                   counts: dict[str, int] | None = None) -> dict[str, list[ViewVoxels]]:
        """The views of scan ``index`` (its temporal partner's too, when it gets one); ``counts`` gets
        this attempt's SAMPLE_COUNTERS added."""
        counts = {} if counts is None else counts
        if len(scan) < self.cfg.min_voxels:
            raise UnusableScan(f"only {len(scan)} points")
        partner = None
        if self.partners is not None and index >= 0:
            partner = self.partners.find(index, scan, rng, counts)
        made = self.view_maker.make(scan, rng, partner, self.cfg.min_voxels, self.cfg.view_retries)
        counts["view_retries"] = counts.get("view_retries", 0) + made.retries
        if made.too_small is not None:
            raise UnusableScan(made.too_small)
        if partner is not None:
            counts["pairs_temporal"] = counts.get("pairs_temporal", 0) + 1
        return made.views


class StepSampler(Sampler[list[int]]):
    """Yields, for each step from ``start_step`` to ``total_steps``, this rank's sample positions."""

    def __init__(self, batch_size: int, total_steps: int, start_step: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.batch_size, self.total_steps, self.start_step = batch_size, total_steps, start_step
        self.rank, self.world_size = rank, world_size

    def positions(self, step: int) -> list[int]:
        first = (step * self.world_size + self.rank) * self.batch_size
        return list(range(first, first + self.batch_size))

    def __iter__(self):
        for step in range(self.start_step, self.total_steps):
            yield self.positions(step)

    def __len__(self) -> int:
        return max(self.total_steps - self.start_step, 0)


@dataclass
class Batch:
    views: Views
    skipped: list[tuple[str, str]]
    num_scans: int
    counts: dict[str, int] = field(default_factory=dict)  # SAMPLE_COUNTERS summed over the batch

    def pin_memory(self) -> "Batch":
        return Batch({k: [v.pin_memory() for v in g] for k, g in self.views.items()}, self.skipped, self.num_scans,
                     self.counts)


def collate_samples(samples: Sequence[Sample]) -> Batch:
    names = samples[0].views.keys()
    views = {
        name: [VoxelBatch.collate([s.views[name][i] for s in samples]) for i in range(len(samples[0].views[name]))]
        for name in names
    }
    counts = {key: sum(s.counts.get(key, 0) for s in samples) for key in SAMPLE_COUNTERS}
    return Batch(views, [item for s in samples for item in s.skipped], len(samples), counts)


def skip_kind(reason: str) -> str:
    """A skip reason with its numbers replaced, so that skips of one kind are counted together."""
    return re.sub(r"\d+(\.\d+)?", "N", reason)


def skip_summary(kinds: Counter, total: int) -> str:
    """One line: how many scans were skipped and the commonest reasons."""
    top = "; ".join(f"{n} x {kind}" for kind, n in kinds.most_common(3))
    more = f"; {len(kinds) - 3} more kinds" if len(kinds) > 3 else ""
    return f"{total} scans skipped ({top}{more}); each is listed in skipped_scans.tsv"


def make_loader(dataset: PretrainDataset, sampler: StepSampler, workers: int, pin_memory: bool,
                worker_init_fn=None, collate_fn=collate_samples) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers > 0 else None,
        worker_init_fn=worker_init_fn if workers > 0 else None,
    )


__all__ = [
    "DataConfig", "open_data", "parse_sim_spec", "simulated_source", "PretrainDataset", "StepSampler", "Batch", "Sample",
    "collate_samples", "make_loader", "UnusableScan", "UnusableDataError", "SAMPLE_COUNTERS", "without_excluded",
    "skip_kind", "skip_summary",
]
