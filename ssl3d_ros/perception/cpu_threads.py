"""How many torch CPU threads a frame gets on a CPU the node shares with the rest of the robot.

Torch's OpenMP splits every parallel region across its threads and waits at a barrier for the last
one. On a quiet 2-core machine two threads are fastest (HDL-64 frame: 83 ms vs 105 ms with one), but
as soon as another busy process takes a core, a descheduled team member stalls every region: the
same frame took 183 ms with two threads and 125 ms with one beside one spinning process (in-process,
KITTI 004139, 2-core VM), and inside the node, whose executor, output and DDS threads compete too,
frames at two threads took 4-5 s beside one spinning process. OMP_WAIT_POLICY=PASSIVE only halves the
damage and costs 1.7x when quiet. The load also comes from inside the node (its output thread encodes
the previous frame while the next one is inferred), so no load figure predicts the best count: measured
frame time does.

:class:`ThreadGovernor` (``cpu_threads: 0``, the default) runs frames at one count and now and then
probes: it runs a few frames at a neighbouring count (one fewer or one more, within 1..cores) and then
at the current count again, and keeps the count whose frames were cheapest per voxel, if it beats the
current one by ``margin`` (one more) or ``margin_fewer`` (one fewer), so noise does not make it flap.
A probe starts

- at once after a frame that cost ``spike`` times the chosen count's level or more (another process
  just started: at the wrong count a frame can be 40x slower, so one such frame is enough; in the few
  frames after a probe, before the level is measured again, the probe's own measure of the count), and when
  the recent per-voxel cost rises by ``drift``: both try one thread fewer (more threads cannot help
  against a new load);
- when the recent cost falls by ``drift`` (a load went away): one thread more;
- every ``probe_every`` frames otherwise, both neighbours, an interval that doubles after every probe
  that changed nothing (up to ``MAX_PROBE_BACKOFF`` times) and resets when one does.

One thread more is tried only while the other processes leave a core for it (their CPU use, from
``/proc/stat`` less this process's own, at most ``cores - threads - 1 + FREE_CORE_SLACK`` cores): a frame
at a count the CPU cannot give took 30-40x longer in the node, seconds that no probe should cost. A
probe frame that costs ``reject`` times the best cost seen ends that count's turn at once. A fixed
``cpu_threads: N`` turns all this off.
"""
from __future__ import annotations

import math
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

PROBE_EVERY_FRAMES = 50  # 5 s at 10 Hz: the first interval between periodic probes
MAX_PROBE_BACKOFF = 16  # periodic probes that change nothing stretch the interval up to 16x (800 frames)
FIRST_PROBE_AFTER = 10  # frames after start-up before the first probe (the first frames are still warming)
PROBE_FRAMES = 3  # frames run at each count per probe
MARGIN = 0.10  # one thread more must cost this share less per voxel than the current count to replace it
# One thread fewer must win by more: wrongly dropping a thread costs 1.3x on a quiet CPU, while a busy
# neighbour makes the right drop win by 1.5x to 40x. (Measured: with every output at an input rate above
# what the node sustains, its own output thread made two threads look 1.3x dearer than one for a few
# frames, and the node then ran its 2 Hz frames 1.4x slower at one thread.)
MARGIN_FEWER = 0.25
DRIFT = 0.15  # a change of the recent per-voxel cost by this share from the chosen count's level starts a probe
SPIKE = 2.0  # one frame costing this many times the chosen count's level starts a probe at once
REJECT = 1.5  # a probe frame costing this many times the best count measured in the probe ends its turn
FREE_CORE_SLACK = 0.5  # one thread more is tried while the others leave at least half a core beyond those in use
LOAD_WINDOW_S = 2.0  # the other processes' CPU use is measured over about this many seconds
_RECENT_FRAMES = 5  # frames whose median is "recent" (drift)
_SETTLE_FRAMES = 5  # frames after a choice whose median becomes the level drift and spikes are measured against


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


class OtherProcessLoad:
    """Cores the other processes used recently: busy time of this process's CPUs (``/proc/stat``, only
    those in its affinity) less this process's own CPU time (``/proc/self/stat``), over about
    ``window_s`` seconds. ``None`` where /proc is not readable (not Linux) or before two readings."""

    def __init__(self, window_s: float = LOAD_WINDOW_S, proc: Path = Path("/proc"),
                 clock: Callable[[], float] | None = None) -> None:
        self.window_s, self.proc = window_s, proc
        self._clock = clock if clock is not None else time.monotonic
        try:
            self._cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        except (AttributeError, OSError):
            self._cpus = None
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._samples: deque[tuple[float, int, int]] = deque()

    def _read(self) -> tuple[int, int] | None:
        try:
            busy = 0
            for line in (self.proc / "stat").read_text().splitlines():
                name, *values = line.split()
                if not name.startswith("cpu") or name == "cpu" or (self._cpus is not None and name not in self._cpus):
                    continue
                v = [int(x) for x in values[:8]]
                busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal
            own = (self.proc / "self" / "stat").read_text().rsplit(")", 1)[1].split()
            return busy, int(own[11]) + int(own[12])  # utime + stime of every thread of this process
        except (OSError, ValueError, IndexError):
            return None

    def sample(self) -> float | None:
        """Read the counters now; the other processes' cores over the last ``window_s`` (None: unknown)."""
        reading = self._read()
        if reading is None:
            return None
        now = self._clock()
        self._samples.append((now, *reading))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()  # keep the oldest reading at least window_s old
        first, last = self._samples[0], self._samples[-1]
        elapsed = last[0] - first[0]
        if elapsed <= 0:
            return None
        return max(0.0, (last[1] - first[1]) - (last[2] - first[2])) / self._tick / elapsed


@dataclass
class _Probe:
    """A probe in progress: the counts still to run (the current count last) and their per-voxel costs."""

    pending: list[int]
    before: float  # median cost of the current count's frames just before the probe
    costs: dict[int, list[float]] = field(default_factory=dict)

    def best(self) -> float:
        """The lowest median cost seen: the frames before the probe, and the counts measured in it so far."""
        return min([self.before] + [float(np.median(c)) for c in self.costs.values() if c])


class ThreadGovernor:
    """Chooses the torch thread count of each frame from measured frame times.

    Call :meth:`threads_for_next_frame` on the thread that runs inference (it applies the count through
    ``apply``, by default ``torch.set_num_threads``) and :meth:`record` with what the frame cost.
    ``fixed`` > 0 pins the count (the node's ``cpu_threads: N``) and turns probing off.
    """

    def __init__(self, fixed: int = 0, max_threads: int | None = None, *, apply: Callable[[int], None] | None = None,
                 probe_every: int = PROBE_EVERY_FRAMES, first_probe_after: int = FIRST_PROBE_AFTER,
                 probe_frames: int = PROBE_FRAMES, margin: float = MARGIN, margin_fewer: float = MARGIN_FEWER,
                 drift: float = DRIFT,
                 spike: float = SPIKE, reject: float = REJECT,
                 other_load: Callable[[], float | None] | None = None) -> None:
        if fixed < 0:
            raise ValueError(f"fixed thread count must be >= 0, got {fixed}")
        self.adaptive = fixed == 0
        self.max_threads = max(1, max_threads if max_threads is not None else usable_cores())
        self.threads = fixed if fixed > 0 else self.max_threads
        self._apply = apply if apply is not None else _set_torch_threads
        # the other processes' cores, read every frame (None: unknown, then one thread more is tried anyway)
        self._other_load = other_load if other_load is not None else OtherProcessLoad().sample
        self.other_load: float | None = None
        self.probe_every, self.probe_frames = probe_every, probe_frames
        self.margin, self.margin_fewer = margin, margin_fewer
        self.drift, self.spike, self.reject = drift, spike, reject
        self.switches = self.probes = 0
        self._applied: int | None = None
        self._backoff = 1
        self._until_probe = first_probe_after
        self._recent: deque[float] = deque(maxlen=_RECENT_FRAMES)
        # per-voxel cost of the chosen count: the median of its first frames after choosing it, and until
        # those are in, what the probe that chose (or kept) it measured, so that spikes are caught while it
        # settles (a load that began just after a probe would otherwise become the level: two threads at
        # 40x cost kept for a whole probe interval, minutes)
        self._level: float | None = None
        self._settling: list[float] = []  # the chosen count's first frames; settled once _SETTLE_FRAMES are in
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
        self.other_load = self._other_load()
        if self._probe is not None:
            self._probe_frame(threads, cost)
            return
        if threads != self.threads:
            return  # a frame that began before a switch
        self._recent.append(cost)
        self.cost_by_threads[threads] = float(np.median(self._recent))
        if len(self._settling) < _SETTLE_FRAMES:
            self._settling.append(cost)
            if len(self._settling) == _SETTLE_FRAMES:
                self._level = float(np.median(self._settling))
        self._until_probe -= 1
        level = self._level
        spiked = level is not None and cost >= self.spike * level
        full = level is not None and len(self._recent) == self._recent.maxlen
        rose = full and self.cost_by_threads[threads] > level * (1.0 + self.drift)
        fell = full and self.cost_by_threads[threads] < level * (1.0 - self.drift)
        if spiked or rose or fell:
            self._backoff = 1  # the load changed: periodic probes at the first interval again
            self._start_probe(fewer=spiked or rose, more=fell)
        elif self._until_probe <= 0:
            self._start_probe(fewer=True, more=True)

    def _core_free_for_one_more(self) -> bool:
        load = self.other_load
        return load is None or load <= self.max_threads - self.threads - 1 + FREE_CORE_SLACK

    def _start_probe(self, fewer: bool, more: bool) -> None:
        self._until_probe = self.probe_every * self._backoff
        candidates = [n for n, wanted in ((self.threads - 1, fewer), (self.threads + 1, more and self._core_free_for_one_more()))
                      if wanted and 1 <= n <= self.max_threads]
        if not candidates or not self._recent:
            return
        self.probes += 1
        self._probe = _Probe(pending=candidates + [self.threads], before=float(np.median(self._recent)))

    def _probe_frame(self, threads: int, cost: float) -> None:
        probe = self._probe
        if threads != probe.pending[0]:
            return
        best = probe.best()
        costs = probe.costs.setdefault(threads, [])
        costs.append(cost)
        rejected = cost >= self.reject * best
        if len(costs) < self.probe_frames and not rejected:
            return
        probe.pending.pop(0)
        self.cost_by_threads[threads] = float(np.median(costs))
        if probe.pending:
            return
        self._probe = None
        current = float(np.median(probe.costs[self.threads]))
        winner = min(probe.costs, key=lambda n: float(np.median(probe.costs[n])))
        margin = self.margin if winner > self.threads else self.margin_fewer
        if winner != self.threads and float(np.median(probe.costs[winner])) < current * (1.0 - margin):
            self.threads = winner
            self.switches += 1
            self._backoff = 1
            self._until_probe = self.probe_every
        else:  # the current count stays: its level is measured afresh, the next periodic probe comes later
            self._backoff = min(self._backoff * 2, MAX_PROBE_BACKOFF)
            self._until_probe = self.probe_every * self._backoff
        self._recent.clear()
        self._level, self._settling = float(np.median(probe.costs[self.threads])), []

    def values(self) -> dict[str, str]:
        """Diagnostic key/values: the mode, the count in use, probes and switches, the costs measured."""
        return {
            "cpu_threads_mode": "adaptive" if self.adaptive else "fixed",
            "cpu_threads_in_use": str(self.threads),
            "cpu_threads_max": str(self.max_threads),
            "cpu_threads_probes": str(self.probes),
            "cpu_threads_switches": str(self.switches),
            "cpu_other_processes_cores": "unknown" if self.other_load is None else f"{self.other_load:.2f}",
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
           "OtherProcessLoad", "FREE_CORE_SLACK", "LOAD_WINDOW_S",
           "PROBE_EVERY_FRAMES", "MAX_PROBE_BACKOFF", "FIRST_PROBE_AFTER", "PROBE_FRAMES", "MARGIN", "MARGIN_FEWER", "DRIFT", "SPIKE",
           "REJECT"]
