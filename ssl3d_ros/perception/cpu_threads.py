"""How many torch CPU threads a frame gets on a CPU the node shares with the rest of the robot.

Torch's OpenMP splits every parallel region across its threads and waits at a barrier for the last
one. On a quiet 2-core machine two threads are fastest (HDL-64 frame: 83 ms vs 105 ms with one), but
as soon as another busy process takes a core, a descheduled team member stalls every region: the
same frame took 183 ms with two threads and 125 ms with one beside one spinning process (in-process,
KITTI 004139, 2-core VM). OMP_WAIT_POLICY=PASSIVE only halves the damage and costs 1.7x when quiet.
The load also comes from inside the node (its output thread encodes the previous frame while the
next one is inferred), so no load figure predicts the best count: measured frame time does.

:class:`ThreadGovernor` (``cpu_threads: 0``, the default) runs frames at one count, and now and then
runs a few frames at each neighbouring count (one fewer, one more, within 1..cores) and keeps the
count whose frames were cheapest per voxel. A probe starts every ``probe_every`` frames and at once
when the per-voxel cost drifts by ``drift`` from what it was when the count was chosen (another
process starts or stops). A probe costs a few slower frames at most; the choice is a median of
``probe_frames`` frames against the median of the frames just before, and a count must be better by
``margin`` to win, so noise does not make it flap. A fixed ``cpu_threads: N`` turns all this off.
"""
from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

PROBE_EVERY_FRAMES = 50  # 5 s at 10 Hz: how soon a load that went away is noticed
FIRST_PROBE_AFTER = 10  # frames after start-up before the first probe (the first frames are still warming)
PROBE_FRAMES = 3  # frames run at each candidate count per probe
MARGIN = 0.10  # a candidate must cost this share less per voxel than the current count to replace it
DRIFT = 0.15  # a change of the recent per-voxel cost by this share from the chosen count's starts a probe
_RECENT_FRAMES = 5  # frames whose median is "recent" (drift) and the reference a probe compares against
_SETTLE_FRAMES = 5  # frames after a choice whose median becomes the level drift is measured against


def cpu_quota_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The cgroup v2 CPU quota of this process in cores (``cpu.max``), None when unlimited or unknown."""
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(int(quota) / int(period), 0.0)
    except (ValueError, ZeroDivisionError):
        return None


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cpu_quota_cores()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


@dataclass
class _Probe:
    """A probe in progress: the candidates still to run and the per-voxel costs measured so far."""

    reference: float  # median cost of the current count's recent frames
    pending: list[int]
    costs: dict[int, list[float]] = field(default_factory=dict)


class ThreadGovernor:
    """Chooses the torch thread count of each frame from measured frame times.

    Call :meth:`threads_for_next_frame` on the thread that runs inference (it applies the count through
    ``apply``, by default ``torch.set_num_threads``) and :meth:`record` with what the frame cost.
    ``fixed`` > 0 pins the count (the node's ``cpu_threads: N``) and turns probing off.
    """

    def __init__(self, fixed: int = 0, max_threads: int | None = None, *, apply: Callable[[int], None] | None = None,
                 probe_every: int = PROBE_EVERY_FRAMES, first_probe_after: int = FIRST_PROBE_AFTER,
                 probe_frames: int = PROBE_FRAMES, margin: float = MARGIN, drift: float = DRIFT) -> None:
        if fixed < 0:
            raise ValueError(f"fixed thread count must be >= 0, got {fixed}")
        self.adaptive = fixed == 0
        self.max_threads = max(1, max_threads if max_threads is not None else usable_cores())
        self.threads = fixed if fixed > 0 else self.max_threads
        self._apply = apply if apply is not None else _set_torch_threads
        self.probe_every, self.probe_frames = probe_every, probe_frames
        self.margin, self.drift = margin, drift
        self.switches = self.probes = 0
        self._applied: int | None = None
        self._until_probe = first_probe_after
        self._recent: deque[float] = deque(maxlen=_RECENT_FRAMES)
        self._settled: float | None = None  # per-voxel cost of the chosen count, measured after choosing it
        self._settling: list[float] = []
        self._probe: _Probe | None = None
        self.cost_by_threads: dict[int, float] = {}  # last median per-voxel cost measured at each count

    @property
    def probing(self) -> bool:
        return self._probe is not None

    def threads_for_next_frame(self) -> int:
        """The count the next frame runs with (applied before returning)."""
        threads = self._probe.pending[0] if self._probe is not None else self.threads
        if threads != self._applied:
            self._apply(threads)
            self._applied = threads
        return threads

    def record(self, threads: int, ms: float, voxels: int) -> None:
        """What the frame run at ``threads`` cost: ``ms`` of the thread-dependent stages for ``voxels`` voxels."""
        if not self.adaptive or voxels <= 0 or not math.isfinite(ms):
            return
        cost = ms / voxels
        if self._probe is not None:
            self._probe_frame(threads, cost)
            return
        if threads != self.threads:
            return  # a frame that began before a switch
        self._recent.append(cost)
        self.cost_by_threads[threads] = float(np.median(self._recent))
        if self._settled is None:
            self._settling.append(cost)
            if len(self._settling) >= _SETTLE_FRAMES:
                self._settled = float(np.median(self._settling))
        self._until_probe -= 1
        drifted = (self._settled is not None and len(self._recent) == self._recent.maxlen
                   and abs(self.cost_by_threads[threads] / self._settled - 1.0) > self.drift)
        if self._until_probe <= 0 or drifted:
            self._start_probe()

    def _candidates(self) -> list[int]:
        return [n for n in (self.threads - 1, self.threads + 1) if 1 <= n <= self.max_threads]

    def _start_probe(self) -> None:
        self._until_probe = self.probe_every
        candidates = self._candidates()
        if not candidates or not self._recent:
            return
        self.probes += 1
        self._probe = _Probe(reference=float(np.median(self._recent)), pending=candidates)

    def _probe_frame(self, threads: int, cost: float) -> None:
        probe = self._probe
        if threads != probe.pending[0]:
            return
        costs = probe.costs.setdefault(threads, [])
        costs.append(cost)
        if len(costs) < self.probe_frames:
            return
        probe.pending.pop(0)
        self.cost_by_threads[threads] = float(np.median(costs))
        if probe.pending:
            return
        self._probe = None
        best = min(probe.costs, key=lambda n: float(np.median(probe.costs[n])))
        if float(np.median(probe.costs[best])) < probe.reference * (1.0 - self.margin):
            self.threads = best
            self.switches += 1
            self._recent.clear()
            self._settled, self._settling = None, []
        else:  # the current count stays; its level is measured afresh (the probe may have been a drift)
            self._settled, self._settling = None, list(self._recent)

    def values(self) -> dict[str, str]:
        """Diagnostic key/values: the mode, the count in use, probes and switches, the costs measured."""
        return {
            "cpu_threads_mode": "adaptive" if self.adaptive else "fixed",
            "cpu_threads_in_use": str(self.threads),
            "cpu_threads_max": str(self.max_threads),
            "cpu_threads_probes": str(self.probes),
            "cpu_threads_switches": str(self.switches),
            **{f"cpu_threads_{n}_us_per_voxel": f"{1e3 * c:.3f}"
               for n, c in sorted(dict(self.cost_by_threads).items())},  # copied: the worker thread writes it
        }


# The pipeline's stages that run torch's parallel regions (what the thread count changes).
THREAD_DEPENDENT_STAGES = ("preprocess", "inference")


def thread_dependent_ms(timings_ms: dict[str, float]) -> float:
    """A frame's ms in the stages the thread count changes (``FrameResult.timings_ms``)."""
    return float(sum(timings_ms.get(stage, 0.0) for stage in THREAD_DEPENDENT_STAGES))


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


__all__ = ["ThreadGovernor", "usable_cores", "cpu_quota_cores", "thread_dependent_ms", "THREAD_DEPENDENT_STAGES",
           "PROBE_EVERY_FRAMES", "FIRST_PROBE_AFTER",
           "PROBE_FRAMES", "MARGIN", "DRIFT"]
