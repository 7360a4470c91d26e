"""One DDS harness for the perception node, shared by the replay, the benchmarks and the tests.

- :func:`write_params` writes a ROS 2 parameter file from a nested and/or dotted dict;
- :class:`NodeProcess` runs the node (``ssl3d-perception``) as a child process with its log in a file;
- :class:`Harness` is this process's own participant: publishers onto the node's input, subscriptions
  to its outputs, debug topics and ``/diagnostics``, everything received kept per topic and per
  header stamp, and wait-for-condition helpers.

The harness knows the node only by its process, its parameters and its topics, never its internals.
This module imports without rclpy; :class:`Harness` needs it (``pip install '.[ros]'``).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

log = logging.getLogger(__name__)

NODE_NAME = "ssl3d_perception"
# Outputs under ~/output/ (the node computes only those with subscribers) and its debug topics.
# ``novelty`` (geometry_msgs/Vector3Stamped) is published only with a checkpoint that has a novelty
# reference: a harness subscribes to it when asked (``outputs=(*OUTPUTS, "novelty")``).
OUTPUTS = ("segmentation", "embeddings", "visualization", "occupancy", "obstacles")
DEBUG_TOPICS = ("processing_time_ms", "pipeline_latency_ms", "stage_time_ms")
DIAGNOSTICS_TOPIC = "/diagnostics"
# Fast DDS's default 512 kB shared-memory segment cannot carry a real scan, and best-effort samples
# that fall back to UDP fragments get lost: the node would never see them.
LARGE_DATA_PROFILE = "fastdds_large_data.xml"


class NodeError(RuntimeError):
    """The node process exited or never came up; the message carries its exit status and log tail."""


# ------------------------------------------------------------------------------------ parameters


def nested_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``{"input.qos.depth": 2, "input": {"max_points": 9}}`` -> ``{"input": {"qos": {"depth": 2}, "max_points": 9}}``."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        parts = str(key).split(".")
        group = out
        for part in parts[:-1]:
            group = group.setdefault(part, {})
            if not isinstance(group, dict):
                raise ValueError(f"parameter '{key}': '{part}' is both a value and a group")
        if isinstance(value, Mapping):
            value = nested_params(value)
            if isinstance(group.get(parts[-1]), dict):
                group[parts[-1]].update(value)
                continue
        group[parts[-1]] = value
    return out


def params_yaml(params: Mapping[str, Any], node: str = "/**") -> str:
    """The text of a ROS 2 parameter file setting ``params`` for ``node`` (default: every node)."""
    return yaml.safe_dump({node: {"ros__parameters": nested_params(params)}}, sort_keys=False)


def write_params(path: str | Path, params: Mapping[str, Any], node: str = "/**") -> Path:
    """Write ``params`` (nested and/or dotted keys) as a ROS 2 parameter file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(params_yaml(params, node), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ environment


def large_data_profile() -> Path | None:
    """config/fastdds_large_data.xml of the source tree, else of the installed package's share folder."""
    for folder in (Path(__file__).resolve().parents[2] / "config", Path(sys.prefix) / "share" / "ssl3d_ros" / "config"):
        if (folder / LARGE_DATA_PROFILE).is_file():
            return folder / LARGE_DATA_PROFILE
    return None


def ros_environment(private_domain: bool = False) -> dict[str, str]:
    """Set (as defaults, in ``os.environ``) what a DDS run here needs, and return the environment.

    Localhost-only discovery (scripts/netns-run sets it too); the large-data Fast DDS profile unless
    one is named (it must be set before this process's first participant exists, and the node inherits
    it); with ``private_domain`` a domain id of this process's own, so parallel runs do not meet."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    profile = large_data_profile()
    if profile and not (os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE") or os.environ.get("FASTRTPS_DEFAULT_PROFILES_FILE")):
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    if private_domain:
        os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    return dict(os.environ)


# ------------------------------------------------------------------------------------ the node process


def node_command(params_files: Sequence[str | Path], input_topic: str, *extra: str,
                 node_name: str | None = None) -> list[str]:
    """The node's command line: its console script beside this interpreter (else ``python -m``), the
    parameter files in order (a later one overrides an earlier one), the input remapped to ``input_topic``."""
    executable = Path(sys.executable).with_name("ssl3d-perception")
    program = [str(executable)] if executable.exists() else [sys.executable, "-m", "ssl3d_ros.node_entry"]
    args = [*program, "--ros-args"]
    if node_name:
        args += ["-r", f"__node:={node_name}"]
    for path in params_files:
        args += ["--params-file", str(path)]
    return [*args, "-r", f"~/input/points:={input_topic}", *extra]


# The node gets SIGTERM (a clean rclpy shutdown) when the process that started it dies, even by SIGKILL
# or a test's timeout: a node left running would answer the next run's frames on the same topics, and
# one killed later leaves Fast DDS shared-memory segments behind. setpriv (util-linux) sets the signal
# before exec, so no code runs in the forked child (a preexec_fn is unsafe beside threads). The signal
# follows the thread that started the child: start nodes from a thread that outlives them.
_SETPRIV = shutil.which("setpriv")
PARENT_DEATH_PREFIX: tuple[str, ...] = (_SETPRIV, "--pdeathsig", "TERM", "--") if _SETPRIV else ()


class NodeProcess:
    """The perception node as a child process: parameters from a dict (written to
    ``workdir/node_params.yaml``, read after any ``params_files``, so it overrides them), stdout and
    stderr in ``workdir/node.log``; ``extra_args`` are more ROS arguments (``-p name:=value``); ``env``
    entries override the node's environment (another Fast DDS profile than this process's)."""

    def __init__(self, workdir: str | Path, params: Mapping[str, Any] | None, input_topic: str, *,
                 node_name: str | None = None, params_files: Sequence[str | Path] = (), extra_args: Sequence[str] = (),
                 private_domain: bool = False, env: Mapping[str, str] | None = None) -> None:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.params_path = write_params(workdir / "node_params.yaml", params) if params else None
        self.log_path = workdir / "node.log"
        files = [*params_files, *([self.params_path] if self.params_path else [])]
        self.command = node_command(files, input_topic, *extra_args, node_name=node_name)
        node_env = {**ros_environment(private_domain), **(env or {})}
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen([*PARENT_DEATH_PREFIX, *self.command], stdout=log_file,
                                         stderr=subprocess.STDOUT, env=node_env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def check_alive(self, doing: str = "") -> None:
        """Raise :class:`NodeError` (exit status and log tail) when the node has exited."""
        if not self.alive():
            raise NodeError(f"the node exited with code {self.proc.returncode}{' ' + doing if doing else ''}; "
                            f"its log ({self.log_path}) ends:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGINT (rclpy shuts down cleanly), SIGKILL after ``timeout``; the exit status."""
        if self.alive():
            self.proc.send_signal(2)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> "NodeProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------ this process's side


@dataclass
class Arrival:
    """One message received by the harness."""

    stamp_ns: int | None  # header stamp (None for messages without a header)
    wall_ns: int  # time.time_ns() at arrival: comparable with stamps set from the wall clock
    mono_s: float  # time.monotonic() at arrival
    msg: Any = None  # the message itself, when the harness keeps messages
    value: Any = None  # what the topic's ``convert`` made of the message
    raw: bytes | None = None  # the serialized message, for topics subscribed raw


def stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def cdr_header_stamp_ns(serialized: bytes) -> int:
    """The header stamp of a serialized message whose first field is a std_msgs/Header
    (PointCloud2, OccupancyGrid, ...), read from its CDR bytes without deserializing the message:
    a 4-byte encapsulation (its second byte 1 = little endian), then int32 sec, uint32 nanosec."""
    if len(serialized) < 12:
        raise ValueError(f"{len(serialized)} bytes cannot hold a CDR header stamp")
    order = "little" if serialized[1] & 1 else "big"
    sec = int.from_bytes(serialized[4:8], order, signed=True)
    return sec * 1_000_000_000 + int.from_bytes(serialized[8:12], order)


def set_stamp(msg: Any, ns: int) -> Any:
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(ns), 1_000_000_000)
    return msg


def numbers(msg: Any) -> list[float]:
    """A Float64's or Float64MultiArray's numbers, as a list (a ``convert`` for the debug topics)."""
    data = msg.data
    return [float(data)] if isinstance(data, (int, float)) else [float(v) for v in data]


def status_values(status: Any) -> dict[str, str]:
    """A DiagnosticStatus's key/values, with its message and level as ``_message`` and ``_level``."""
    values = {kv.key: kv.value for kv in status.values}
    values["_message"], values["_level"] = status.message, status.level
    return values


class Harness:
    """This process's ROS participant facing the node: a best-effort (like a driver; unless
    ``best_effort_input`` is False) and a reliable publisher on ``input_topic``; reliable subscriptions
    to ``outputs`` (names under the node's ``~/output/``), to every debug topic and to /diagnostics,
    spun on a thread of their own.

    Per topic (full name) ``arrivals`` lists what came, in order, and ``by_stamp`` the last arrival per
    header stamp; arrivals hold the messages themselves when ``keep_messages`` (tests; a long run keeps
    only stamps and times). ``convert[topic](msg)`` is stored as the arrival's ``value``; topics in ``raw``
    are subscribed serialized and keep their bytes. Topics in ``stamp_only`` are subscribed serialized
    too, but only their header stamp is read (no message, no bytes kept): a benchmark's receiver that
    does not spend the CPU the node it measures needs. ``diagnostics`` keeps the node's statuses.
    Every store changes under ``cond``, which is notified on each arrival.
    """

    def __init__(self, input_topic: str, *, node_name: str = NODE_NAME, outputs: Iterable[str] = OUTPUTS,
                 keep_messages: bool = True, convert: Mapping[str, Callable[[Any], Any]] | None = None,
                 raw: Iterable[str] = (), stamp_only: Iterable[str] = (), depth: int = 10,
                 name: str = "ssl3d_harness", best_effort_input: bool = True) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import Vector3Stamped
        from nav_msgs.msg import OccupancyGrid
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import PointCloud2
        from std_msgs.msg import Float64, Float64MultiArray

        ros_environment()
        self._rclpy = rclpy
        self.node_name = node_name
        self.base = f"/{node_name}"
        self.context = rclpy.Context()
        rclpy.init(context=self.context, args=[])
        self.node = rclpy.create_node(name, context=self.context)
        self.cond = threading.Condition(threading.RLock())  # re-entrant: predicates may call helpers
        self.keep_messages = keep_messages
        self.convert = dict(convert or {})
        self.raw = set(raw)
        self.stamp_only = set(stamp_only)
        output_types = {"occupancy": OccupancyGrid, "novelty": Vector3Stamped}
        types = {**{f"output/{o}": output_types.get(o, PointCloud2) for o in outputs},
                 "debug/processing_time_ms": Float64MultiArray, "debug/pipeline_latency_ms": Float64,
                 "debug/stage_time_ms": Float64MultiArray}
        self.topic_types = {f"{self.base}/{t}": msg_type for t, msg_type in types.items()}
        self.arrivals: dict[str, list[Arrival]] = {t: [] for t in self.topic_types}
        self.by_stamp: dict[str, dict[int, Arrival]] = {t: {} for t in self.topic_types}
        self.diagnostics: list = []
        self.failure: Exception | None = None  # the first exception in a receive callback
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE)
        self.subscriptions = [  # outputs first, in the order given
            self.node.create_subscription(msg_type, topic, self._receiver(topic, msg_type), reliable,
                                          raw=topic in self.raw or topic in self.stamp_only)
            for topic, msg_type in self.topic_types.items()
        ]
        self.subscriptions.append(self.node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, self._on_diagnostics, 50))
        # A best-effort publisher facing a node whose input is reliable makes both sides log an
        # "incompatible QoS" warning: a harness for such a node goes without it.
        self.best_effort = (self.node.create_publisher(PointCloud2, input_topic, qos_profile_sensor_data)
                            if best_effort_input else None)
        self.reliable = self.node.create_publisher(PointCloud2, input_topic, reliable)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spinner = threading.Thread(target=self.executor.spin, name=f"{name}_spin", daemon=True)
        self._spinner.start()
        self._closed = False

    def topic(self, name: str) -> str:
        """Full name of one of the node's topics: ``topic("output/segmentation")``."""
        return f"{self.base}/{name}"

    # -- executor thread -----------------------------------------------------------------------------

    def _receiver(self, topic: str, msg_type: type) -> Callable[[Any], None]:
        from rclpy.serialization import deserialize_message

        is_raw, convert = topic in self.raw, self.convert.get(topic)
        only_stamp = topic in self.stamp_only and not is_raw

        def callback(received: Any) -> None:
            wall, mono = time.time_ns(), time.monotonic()
            try:
                if only_stamp:
                    arrival = Arrival(cdr_header_stamp_ns(received), wall, mono)
                else:
                    msg = deserialize_message(received, msg_type) if is_raw else received
                    arrival = Arrival(stamp_ns(msg.header) if hasattr(msg, "header") else None, wall, mono,
                                      msg if self.keep_messages else None, convert(msg) if convert else None,
                                      bytes(received) if is_raw else None)
                stamp = arrival.stamp_ns
            except Exception as exc:  # an exception would end the spin thread: every wait() raises it instead
                with self.cond:
                    self.failure = self.failure or exc
                    self.cond.notify_all()
                return
            with self.cond:
                self.arrivals[topic].append(arrival)
                if stamp is not None:
                    self.by_stamp[topic][stamp] = arrival
                self.cond.notify_all()
        return callback

    def _on_diagnostics(self, msg: Any) -> None:
        ours = [s for s in msg.status if s.name.startswith(self.node_name)]
        if ours:
            with self.cond:
                self.diagnostics += ours
                self.cond.notify_all()

    # -- the calling thread ------------------------------------------------------------------------------

    def publish(self, msg: Any, *, reliable: bool = False, stamp_now: bool = False) -> int | None:
        """Publish a message (or its serialized bytes); with ``stamp_now`` stamped with the wall clock
        just before, and that stamp returned."""
        stamp = None
        if stamp_now:
            stamp = time.time_ns()
            set_stamp(msg, stamp)
        (self.reliable if reliable else self.best_effort).publish(msg)
        return stamp

    def received(self, topic: str) -> list:
        """The messages received on ``topic`` so far (needs ``keep_messages``)."""
        with self.cond:
            return [a.msg for a in self.arrivals[topic]]

    def check(self) -> None:
        """Raise the first exception a receive callback met (the spin thread itself goes on)."""
        if self.failure is not None:
            raise RuntimeError(f"the harness failed on a received message: {self.failure!r}") from self.failure

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """The first true value of ``predicate()`` (called under ``cond``); TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (value := predicate()):
                self.check()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
                self.cond.wait(min(left, 0.2))
            return value

    def wait_for_node(self, process: NodeProcess | None, timeout: float, diagnostics: bool = True) -> None:
        """Until the node subscribes to the input, publishes on every subscribed topic and (with
        ``diagnostics``) has sent diagnostics; NodeError at once if ``process`` exits, or with its log
        tail on timeout. The node sends its first diagnostics at start-up, then on a timer of its clock:
        a node on ``use_sim_time`` sends no more until a /clock arrives, so a harness created after it
        waits with ``diagnostics=False``."""
        def ready() -> bool:
            if process is not None:
                process.check_alive("before it was ready")
            return self.node_ready(diagnostics)
        try:
            self.wait(ready, timeout, "the node to start and match every topic")
        except TimeoutError as exc:
            tail = f"; its log ({process.log_path}) ends:\n{process.log_tail()}" if process is not None else ""
            raise NodeError(f"{exc}{tail}") from None

    def node_ready(self, diagnostics: bool = True) -> bool:
        """The node subscribes to the input, publishes on every subscribed topic and (with ``diagnostics``)
        reports in its newest diagnostics that it has matched this harness's output subscriptions itself.

        DDS matches each side separately: this side may see the node's publishers before the node sees
        this side's subscriptions, and the node computes only outputs it has matched subscribers for, so
        a scan sent in between came back without some outputs (issue: the first frame's OccupancyGrid
        missing in 2 of 7 launches). Call under ``cond`` or through :meth:`wait`."""
        if not (self.reliable.get_subscription_count() >= 1
                and all(s.get_publisher_count() >= 1 for s in self.subscriptions)):
            return False
        if not diagnostics:
            return True
        if not self.diagnostics:
            return False
        values = status_values(self.diagnostics[-1])
        outputs = [t.rsplit("/", 1)[1] for t in self.topic_types if t.startswith(f"{self.base}/output/")]
        return all(int(values.get(f"subscribers_{o}", "1")) >= 1 for o in outputs)

    def outputs_for(self, stamp: int | Any, topics: Sequence[str], timeout: float) -> dict[str, Arrival]:
        """The arrival per topic for one header stamp (ns, or a header), waiting for all of them."""
        key = stamp if isinstance(stamp, int) else stamp_ns(stamp)

        def found():
            got = {t: self.by_stamp[t].get(key) for t in topics}
            return got if all(got.values()) else None

        try:
            return self.wait(found, timeout, f"outputs stamped {divmod(key, 1_000_000_000)}")
        except TimeoutError as exc:
            with self.cond:
                got = {t: key in self.by_stamp[t] for t in topics}
                last = status_values(self.diagnostics[-1]) if self.diagnostics else {}
            raise TimeoutError(f"{exc}; received per topic: {got}; node diagnostics: {last}") from None

    def latest_diagnostics(self, predicate: Callable[[dict], bool], timeout: float, what: str) -> dict[str, str]:
        """Values of the newest status for which ``predicate(values)`` holds (see :func:`status_values`)."""
        def found():
            for status in reversed(self.diagnostics):
                values = status_values(status)
                if predicate(values):
                    return values
            return None
        return self.wait(found, timeout, what)

    def fresh_diagnostics(self, timeout: float = 10.0) -> dict[str, str]:
        """Values of the first status published after this call (counts every frame finished before it)."""
        with self.cond:
            seen = len(self.diagnostics)
        self.wait(lambda: len(self.diagnostics) > seen, timeout, "fresh diagnostics")
        with self.cond:
            return status_values(self.diagnostics[seen])

    def counts(self) -> dict[str, int]:
        """The node's ``frames_*`` counters from its latest status (empty before the first)."""
        with self.cond:
            if not self.diagnostics:
                return {}
            return {kv.key.removeprefix("frames_"): int(kv.value) for kv in self.diagnostics[-1].values
                    if kv.key.startswith("frames_")}

    def clear(self) -> None:
        """Forget every arrival (diagnostics stay)."""
        with self.cond:
            for store in (*self.arrivals.values(), *self.by_stamp.values()):
                store.clear()

    def close(self, timeout_s: float = 10.0) -> None:
        """End the spin thread, then destroy the node and its context (once; a second call does nothing).
        Every wait is bounded: a receive callback that never returns leaves its daemon thread behind
        rather than holding the caller, whose own deadline (a replay's, a test's) is what counts."""
        if self._closed:
            return
        self._closed = True
        finished = self.executor.shutdown(timeout_sec=timeout_s)
        self._spinner.join(timeout=timeout_s)
        if not finished or self._spinner.is_alive():
            log.warning("harness %s: the spin thread did not end within %.0f s; closing without it",
                        self.node.get_name(), timeout_s)
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)

    def __enter__(self) -> "Harness":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["NODE_NAME", "OUTPUTS", "DEBUG_TOPICS", "NodeError", "nested_params", "params_yaml", "write_params",
           "large_data_profile", "ros_environment", "node_command", "NodeProcess", "Arrival", "stamp_ns",
           "set_stamp", "numbers", "status_values", "Harness"]
