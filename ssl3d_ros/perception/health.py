"""The node's statistics and its diagnostics policy, without ROS.

:class:`NodeStats` is what the executor and worker threads count; :class:`NoveltyMonitor` keeps the
recent frames' novelty scores; :class:`DiagnosticsPolicy` turns a snapshot of both into the level,
message and key/values of the node's ``/diagnostics`` status;
:class:`WarningThrottle` decides which warnings reach the log; :func:`frame_warnings` and
:class:`OverloadMonitor` say what a frame and a sustained overload should log; :func:`route_python_warnings`
turns Python's ``warnings`` into throttled log lines; :func:`frame_timings` splits one frame's time into
the stages the debug topics publish. The node only converts these to messages and log calls.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .headers import HEADER_PROBLEM_KINDS, loggable_frame_id
from .params import DiagnosticsConfig, NoveltyConfig

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels
STAGES = ("pre", "inference", "post", "total")  # order of ~/debug/processing_time_ms
# order of ~/debug/stage_time_ms: the finer split (pre = decode + preprocess, post = the rest)
FINE_STAGES = ("decode", "preprocess", "inference", "postprocess", "encode", "publish")
WARN_PERIOD_S = 10.0  # rate limit of warnings about bad frames, per kind of problem
RATE_WINDOW_S = 5.0  # input rate over the receptions of the last few seconds
# A cloud that declares is_bigendian and loses at least this share of its points to preprocessing is
# most likely little-endian data with a wrong flag: byte-swapped floats are mostly NaN, huge or tiny
# (measured: 99 % of a KITTI scan's points invalid read the wrong way; the cloud lost 88 %).
BIG_ENDIAN_SUSPECT_SHARE = 0.5
# Sustained overload: judged over windows of this many seconds, at most one warning per window, when
# at least OVERLOAD_MIN_DROPS frames and OVERLOAD_DROP_SHARE of those received were dropped in it
# (a frame now and then replaced in the mailbox is jitter, not overload).
OVERLOAD_WINDOW_S = 5.0
OVERLOAD_MIN_DROPS = 3
OVERLOAD_DROP_SHARE = 0.25


@dataclass
class NodeStats:
    """Counters and recent timings; everything guarded by ``lock``."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    received: int = 0
    processed: int = 0
    dropped: int = 0  # replaced in the slot before the worker took them
    rejected: int = 0  # malformed clouds (CloudFormatError)
    errors: int = 0  # any other failure while processing a frame
    skipped: int = 0  # no subscriber on any output
    out_of_memory: int = 0  # frames skipped because the device ran out of memory (also in ``errors``)
    without_transform: int = 0  # frames skipped: no /tf_static transform to the base frame yet (frame.tf_static)
    no_valid_points: int = 0  # processed frames in which no point survived (empty, all NaN, out of range)
    without_intensity: int = 0  # processed frames whose intensity was fed as zeros (input.missing_intensity)
    points_invalid: int = 0  # points marked invalid (class_id 255) over all processed frames
    points_subsampled: int = 0  # valid points left out by the per-frame voxel budget (preprocessing.max_points)
    big_endian: int = 0  # processed frames that declared is_bigendian (decoded as declared)
    big_endian_mostly_invalid: int = 0  # ... of which at least BIG_ENDIAN_SUSPECT_SHARE of the points were invalid
    header_problems: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # kind -> frames
    last_error: str = ""
    last_receive_mono: float | None = None
    receive_times: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=200))
    totals_ms: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=100))
    latency_ms: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=100))
    stage_ms: dict = dataclasses.field(default_factory=dict)  # stage -> deque

    def count(self, counter: str, message: str | None = None) -> None:
        with self.lock:
            setattr(self, counter, getattr(self, counter) + 1)
            if message is not None:
                self.last_error = message

    def received_at(self, now: float) -> None:
        with self.lock:
            self.received += 1
            self.last_receive_mono = now
            self.receive_times.append(now)

    def count_header_problems(self, kinds: list[str]) -> None:
        with self.lock:
            self.header_problems.update(kinds)

    def add_frame(self, stages: dict[str, float], total_ms: float, latency_ms: float | None) -> None:
        """``latency_ms`` None: the frame's stamp is no time (zero, negative, ...), kept out of the latency figures."""
        with self.lock:
            self.processed += 1
            self.totals_ms.append(total_ms)
            if latency_ms is not None:
                self.latency_ms.append(latency_ms)
            for k, v in stages.items():
                self.stage_ms.setdefault(k, collections.deque(maxlen=100)).append(v)

    def add_points(self, invalid: int, total: int, subsampled: int = 0, without_intensity: bool = False,
                   is_bigendian: bool = False) -> None:
        with self.lock:
            self.points_invalid += invalid
            self.points_subsampled += subsampled
            self.without_intensity += int(without_intensity)
            self.big_endian += int(is_bigendian)
            self.big_endian_mostly_invalid += int(big_endian_suspect(is_bigendian, invalid, total))
            if invalid == total:
                self.no_valid_points += 1


def frame_timings(decode_ms: float, pipeline_ms: dict[str, float], encode_ms: float, publish_ms: float,
                  total_ms: float) -> tuple[dict[str, float], list[float]]:
    """The fine stages (``FINE_STAGES``) and the coarse ``STAGES`` split of one frame's time."""
    stages = {
        "decode": decode_ms,
        "preprocess": pipeline_ms.get("preprocess", 0.0),
        "inference": pipeline_ms.get("inference", 0.0),
        "postprocess": pipeline_ms.get("postprocess", 0.0),
        "encode": encode_ms,
        "publish": publish_ms,
    }
    pre = stages["decode"] + stages["preprocess"]
    post = max(total_ms - pre - stages["inference"], 0.0)
    return stages, [pre, stages["inference"], post, total_ms]


def why_no_valid_point(xyz: np.ndarray) -> str:
    """Why preprocessing kept no point of a cloud, for the log line."""
    if xyz.size == 0:
        return "it is empty"
    if np.isnan(xyz).any(axis=1).all():
        return "every point has a NaN coordinate"
    if not np.isfinite(xyz).all(axis=1).any():
        return "every point has a NaN or Inf coordinate"
    return "every point is outside the range limits or has non-finite features"


def big_endian_suspect(is_bigendian: bool, invalid: int, total: int) -> bool:
    """Whether a cloud's ``is_bigendian`` flag looks wrong: declared big-endian and most points unusable."""
    return bool(is_bigendian) and total > 0 and invalid >= BIG_ENDIAN_SUSPECT_SHARE * total


def frame_warnings(frame_id: str, xyz: np.ndarray, invalid: int, over_budget: int, budget: int | None,
                   intensity_missing: bool, intensity_field: str, is_bigendian: bool = False) -> list[tuple[str, str]]:
    """(kind, message) of what a processed frame's log should say (throttled per kind by the node)."""
    out = []
    frame = loggable_frame_id(frame_id)
    if intensity_missing:
        out.append(("no_intensity", f"cloud in frame {frame} has no field {intensity_field!r}: the model's "
                    "intensity is fed as zeros (parameters input.intensity_field, input.missing_intensity)"))
    if over_budget:
        out.append(("over_budget", f"cloud in frame {frame}: {over_budget} of {len(xyz)} points left out by "
                    f"the voxel budget preprocessing.max_points = {budget} (marked invalid)"))
    if big_endian_suspect(is_bigendian, invalid, len(xyz)):
        out.append(("big_endian_mostly_invalid", (
            f"cloud in frame {frame} declares is_bigendian=true and {100.0 * invalid / len(xyz):.0f} % of its "
            f"{len(xyz)} points ({invalid}) came out invalid read big-endian: if its sender writes little-endian "
            "data (as x86 and ARM drivers do), its is_bigendian flag is wrong; processed as declared")))
    if invalid == len(xyz):  # processed and published anyway (all class_id 255)
        why = why_no_valid_point(xyz)
        out.append((f"no_valid_points:{why}", f"cloud in frame {frame} has no usable point ({len(xyz)} points; "
                    f"{why}); published with every point invalid (class_id 255)"))
    return out


class WarningThrottle:
    """At most one log line per ``period_s`` per kind of problem.

    The kind is the message with its numbers blanked out, so a burst of the same bad cloud logs one
    line per period while a different problem is still reported at once. The first line after a
    quiet period says how many were suppressed. Bounded: at most ``max_kinds`` kinds are remembered.
    """

    def __init__(self, period_s: float = WARN_PERIOD_S, max_kinds: int = 128, clock=time.monotonic) -> None:
        self.period_s, self.max_kinds, self._clock = period_s, max_kinds, clock
        self._seen: collections.OrderedDict[str, list] = collections.OrderedDict()
        self._lock = threading.Lock()

    def admit(self, kind: str, message: str) -> str | None:
        """The line to log for ``message`` now, or None when it is suppressed."""
        key = re.sub(r"\d+", "#", kind)[:200]
        now = self._clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.period_s:
                entry[1] += 1
                return None
            suppressed = entry[1] if entry is not None else 0
            self._seen[key] = [now, 0]
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_kinds:
                self._seen.popitem(last=False)
        more = f" [{suppressed} more like this in the last {self.period_s:.0f} s]" if suppressed else ""
        return message + more


class NoveltyMonitor:
    """The last ``novelty.window`` frames' novelty scores and the WARN rule on them: WARN while at
    least ``novelty.warn_share`` of the window scores over ``novelty.threshold``. Frames not seen yet
    count as not novel, so a node that just started does not warn on its first frame. Thread-safe
    (the inference thread adds, the executor reports)."""

    def __init__(self, cfg: NoveltyConfig) -> None:
        self.cfg = cfg
        self._scores: collections.deque = collections.deque(maxlen=cfg.window)
        self._lock = threading.Lock()

    def add(self, score: float) -> float:
        """Record a frame's score; returns the share of the window now over the threshold."""
        with self._lock:
            self._scores.append(float(score))
            return self._share()

    def _share(self) -> float:
        return sum(s > self.cfg.threshold for s in self._scores) / self.cfg.window

    def status(self) -> tuple[int, str | None, dict[str, str]]:
        """(level, message or None, key/values) for the node's diagnostics."""
        with self._lock:
            scores = list(self._scores)
            share = self._share()
        over = sum(s > self.cfg.threshold for s in scores)
        values = {
            "novelty_last": f"{scores[-1]:.3f}" if scores else "",
            "novelty_median": f"{float(np.median(scores)):.3f}" if scores else "",
            "novelty_share_over_threshold": f"{share:.2f}",
            "novelty_threshold": f"{self.cfg.threshold:g}",
            "novelty_window": str(self.cfg.window),
        }
        if scores and share >= self.cfg.warn_share:
            return WARN, (f"novel input: {over} of the last {self.cfg.window} frames score over novelty.threshold "
                          f"{self.cfg.threshold:g} (last {scores[-1]:.2f})"), values
        return OK, None, values


@dataclass
class DiagnosticReport:
    level: int
    message: str
    values: dict[str, str]


class DiagnosticsPolicy:
    """The node's health from its statistics: stale input, processing time against the budgets,
    rejected and failed frames, header problems and suspect byte orders since the previous report, and
    (with a ``novelty`` monitor) recent frames unlike the model's reference data."""

    def __init__(self, cfg: DiagnosticsConfig, start_mono: float, novelty: NoveltyMonitor | None = None) -> None:
        self.cfg, self.start_mono, self.novelty = cfg, start_mono, novelty
        self._last_rejected = self._last_errors = self._last_suspect_byte_order = 0
        self._last_header: collections.Counter = collections.Counter()

    def report(self, stats: NodeStats, now: float, context: dict[str, str],
               device_memory: dict[str, int] | None = None) -> DiagnosticReport:
        """``context``: constant key/values appended (device, precision, checkpoint); ``device_memory``:
        the accelerator's allocator figures in bytes (empty on CPU)."""
        cfg = self.cfg
        with stats.lock:
            recent = [t for t in stats.receive_times if now - t <= RATE_WINDOW_S]
            totals = np.asarray(stats.totals_ms, float)
            latency = np.asarray(stats.latency_ms, float)
            stage_means = {k: float(np.mean(v)) for k, v in stats.stage_ms.items() if v}
            counts = dict(received=stats.received, processed=stats.processed, dropped=stats.dropped,
                          rejected=stats.rejected, errors=stats.errors, skipped_no_subscribers=stats.skipped,
                          out_of_memory=stats.out_of_memory, without_valid_points=stats.no_valid_points,
                          without_intensity=stats.without_intensity, without_transform=stats.without_transform,
                          big_endian=stats.big_endian, big_endian_mostly_invalid=stats.big_endian_mostly_invalid,
                          **{f"header_{k}": stats.header_problems[k] for k in HEADER_PROBLEM_KINDS})
            points_invalid, points_subsampled = stats.points_invalid, stats.points_subsampled
            last_receive, last_error = stats.last_receive_mono, stats.last_error
        rate = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) >= 2 and recent[-1] > recent[0] else 0.0
        level, messages = OK, []

        def raise_to(new_level: int, text: str) -> None:
            nonlocal level
            level = max(level, new_level)
            messages.append(text)

        if last_receive is None:
            waited = now - self.start_mono
            if waited > cfg.stale_after_s:
                raise_to(WARN, f"waiting for first scan ({waited:.0f} s)")
            else:
                messages.append("waiting for first scan")
        elif now - last_receive > cfg.stale_after_s:
            raise_to(WARN, f"no scan for {now - last_receive:.1f} s")
        median = float(np.median(totals)) if totals.size else 0.0
        if totals.size:
            if median > cfg.error_budget_ms:
                raise_to(ERROR, f"processing {median:.0f} ms over the error budget {cfg.error_budget_ms:.0f} ms")
            elif median > cfg.budget_ms:
                raise_to(WARN, f"processing {median:.0f} ms over the budget {cfg.budget_ms:.0f} ms")
        if counts["rejected"] > self._last_rejected:
            raise_to(WARN, f"{counts['rejected'] - self._last_rejected} malformed cloud(s) rejected")
        if counts["errors"] > self._last_errors:
            raise_to(WARN, f"{counts['errors'] - self._last_errors} frame(s) failed")
        header = collections.Counter({k: counts[f"header_{k}"] for k in HEADER_PROBLEM_KINDS})
        new_header = header - self._last_header
        if new_header:
            raise_to(WARN, "header problems: " + ", ".join(f"{k} in {new_header[k]} frame(s)"
                                                           for k in HEADER_PROBLEM_KINDS if new_header[k]))
        if counts["big_endian_mostly_invalid"] > self._last_suspect_byte_order:
            raise_to(WARN, f"{counts['big_endian_mostly_invalid'] - self._last_suspect_byte_order} big-endian "
                     "cloud(s) mostly invalid (is_bigendian wrong?)")
        self._last_rejected, self._last_errors = counts["rejected"], counts["errors"]
        self._last_header, self._last_suspect_byte_order = header, counts["big_endian_mostly_invalid"]
        novelty_values = {"novelty_enabled": "false"}
        if self.novelty is not None:
            novelty_level, novelty_message, novelty_values = self.novelty.status()
            novelty_values = {"novelty_enabled": "true", **novelty_values}
            if novelty_message:
                raise_to(novelty_level, novelty_message)
        if not messages:
            messages.append("ok")
        values = {
            "input_rate_hz": f"{rate:.2f}",
            "processing_time_ms_median": f"{median:.2f}",
            "processing_time_ms_max": f"{float(totals.max()) if totals.size else 0.0:.2f}",
            "pipeline_latency_ms_median": f"{float(np.median(latency)) if latency.size else 0.0:.2f}",
            "budget_ms": f"{cfg.budget_ms:.1f}",
            "error_budget_ms": f"{cfg.error_budget_ms:.1f}",
            **{f"frames_{k}": str(v) for k, v in counts.items()},
            "points_invalid_total": str(points_invalid),
            "points_subsampled_total": str(points_subsampled),
            **{f"stage_{k}_ms_mean": f"{v:.2f}" for k, v in stage_means.items()},
            **novelty_values,
            "last_error": last_error,
            **context,
            "memory_rss_mb": f"{rss_bytes() / 2**20:.1f}",
            **{f"memory_{k}_mb": f"{v / 2**20:.1f}" for k, v in (device_memory or {}).items()},
        }
        return DiagnosticReport(level, "; ".join(messages), values)


class OverloadMonitor:
    """Sustained overload as a log line, beside the ``/diagnostics`` level the processing time sets.

    Every :meth:`check` (the node calls it with each diagnostics report) looks at the window since the
    previous verdict; once it is ``window_s`` long, it is judged and a new one starts. A window in which
    at least :data:`OVERLOAD_MIN_DROPS` frames and :data:`OVERLOAD_DROP_SHARE` of the received ones were
    dropped (replaced in the one-slot mailbox before inference took them) gives one line: at most one
    per window, however long the overload lasts."""

    def __init__(self, start_mono: float, window_s: float = OVERLOAD_WINDOW_S) -> None:
        self.window_s = window_s
        self._start = start_mono
        self._counts = (0, 0, 0)  # received, dropped, processed at the window's start

    def check(self, stats: NodeStats, now: float) -> str | None:
        """The warning for the window just ended, or None (window still open, or no overload in it)."""
        elapsed = now - self._start
        if elapsed < self.window_s:
            return None
        with stats.lock:
            counts = (stats.received, stats.dropped, stats.processed)
            totals = np.asarray(stats.totals_ms, float)
        received, dropped, processed = (a - b for a, b in zip(counts, self._counts))
        self._start, self._counts = now, counts
        if dropped < OVERLOAD_MIN_DROPS or dropped < OVERLOAD_DROP_SHARE * received:
            return None
        median = f", median {float(np.median(totals)):.0f} ms a frame" if totals.size else ""
        return (f"overloaded: dropped {dropped} of {received} frames in the last {elapsed:.0f} s: the input rate "
                f"{received / elapsed:.1f} Hz exceeds the processing rate {processed / elapsed:.1f} Hz{median}. "
                "The newest frame is always the one processed (latency stays bounded); to keep up, unsubscribe "
                "outputs you do not need, lower preprocessing.max_points or raise preprocessing.voxel_size, "
                "run on CUDA (parameter device), or lower the sensor's rate")


def python_warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int) -> tuple[str, str]:
    """(throttle kind, log line) for one Python ``warnings`` warning: where it came from and what it says,
    on one line (no raw ``file:line: Category: text`` block on stderr)."""
    parts = Path(filename).parts
    where = "/".join(parts[parts.index("ssl3d_ros"):]) if "ssl3d_ros" in parts else Path(filename).name
    text = " ".join(str(message).split())
    # the kind is the place and the text: WarningThrottle blanks numbers, so line numbers cannot tell places apart
    return f"python:{category.__name__}:{where}:{text}", f"Python {category.__name__} at {where}:{lineno}: {text}"


def route_python_warnings(log: Callable[[str], None], throttle: WarningThrottle) -> Callable[[], None]:
    """Send every Python warning shown from now on to ``log`` as one line, throttled per place of origin
    (``throttle``), instead of Python's raw block on stderr. Python's filters still decide which warnings
    are shown at all. Returns a function that restores the previous hook."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001 - the hook's signature
        kind, text = python_warning_line(message, category, filename, lineno)
        admitted = throttle.admit(kind, text)
        if admitted is not None:
            log(admitted)

    warnings.showwarning = show

    def restore() -> None:
        warnings.showwarning = previous

    return restore


def rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


__all__ = [
    "OK", "WARN", "ERROR", "STAGES", "FINE_STAGES", "WARN_PERIOD_S", "RATE_WINDOW_S", "BIG_ENDIAN_SUSPECT_SHARE",
    "OVERLOAD_WINDOW_S", "OVERLOAD_MIN_DROPS", "OVERLOAD_DROP_SHARE", "NodeStats", "frame_timings",
    "why_no_valid_point", "big_endian_suspect", "frame_warnings", "WarningThrottle", "NoveltyMonitor",
    "DiagnosticReport", "DiagnosticsPolicy", "OverloadMonitor", "python_warning_line", "route_python_warnings",
    "rss_bytes",
]
