"""``ssl3d-replay``: replay a rosbag2 through the real perception node over DDS and report.

The player publishes the bag's PointCloud2 messages (the recorded bytes, unchanged) on the node's
input topic, with ``/clock`` for ``use_sim_time``, either at the recorded rate (``--mode recorded``,
``--rate`` scales it) or as fast as the node keeps up (``--mode keep-up``: the next frame goes out
when the previous one's segmentation came back, was rejected, or timed out). Subscriptions record
the node's segmentation (matched to inputs by header stamp), its ``~/debug/processing_time_ms``
stage timings and ``~/debug/pipeline_latency_ms`` (matched by order: the node publishes them right
after each frame's outputs) and its ``/diagnostics`` counters (rejected inputs, mailbox drops).

Report: per-frame end-to-end latency (p50/p90/p99) and per stage, throughput, frames sent /
answered / dropped / rejected, and, when the bag carries a label field and a class map is given,
mIoU per frame and overall. Files: ``replay.json``, ``replay.md``, ``latency_histogram.png``,
``latency_timeline.png``; ``--record-out BAG`` also writes inputs and outputs into a new bag.

``--offline`` runs the same frames through :class:`PerceptionPipeline` in-process (no ROS), for
quick checks; its latency is the pipeline call (decode included).

Examples::

    scripts/netns-run ssl3d-replay BAG --checkpoint model.safetensors --mode keep-up --out replay_out
    ssl3d-replay BAG --checkpoint model.safetensors --offline --label-field label --class-map sim-outdoor
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from ..cli import EXIT_CODES_EPILOG, console_script
from .class_maps import ClassMap, load_class_map
from .metrics import IGNORE, ScoreAccumulator
from .replay_stats import STAGES, FrameRecord, summarise, write_replay_report

log = logging.getLogger(__name__)

CLOCK_TOPIC = "/clock"
INVALID_CLASS = 255


@dataclass
class ReplayConfig:
    mode: Literal["keep-up", "recorded"] = "keep-up"
    rate: float = 1.0  # recorded mode: playback speed factor
    clock: bool = True  # publish /clock and start the node with use_sim_time
    input_topic: str = "/ssl3d_replay/points"
    node_name: str = "ssl3d_perception"
    launch_node: bool = True  # False: attach to a node already running (remapped to input_topic)
    checkpoint: str = ""
    params_file: str | None = None
    node_params: tuple[str, ...] = ()  # extra "name:=value" node parameters (e.g. input.qos.reliability:=reliable)
    device: str = "cpu"
    embeddings: bool = False  # also subscribe to ~/output/embeddings (the node then computes them)
    frame_timeout_s: float = 10.0  # keep-up: give up on a frame's output after this
    settle_s: float = 3.0  # after the last frame: wait this long for late outputs
    startup_timeout_s: float = 180.0


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
    record.valid_points = int((class_id != INVALID_CLASS).sum())
    if scores is None or frame.truth is None:
        return
    pred = np.where(class_id == INVALID_CLASS, IGNORE, class_id.astype(np.int64))
    if len(pred) != len(frame.truth):
        log.warning("frame %d: %d outputs for %d input points; not scored", frame.index, len(pred), len(frame.truth))
        return
    s = scores.add(frame.truth, pred)
    record.miou = None if not np.isfinite(s.miou) else s.miou
    record.accuracy = None if not np.isfinite(s.accuracy) else s.accuracy


def check_classes(checkpoint: str, class_map: ClassMap | None) -> None:
    """The node's class ids must mean the class map's classes for the scores to mean anything."""
    if class_map is None or not checkpoint:
        return
    from ..checkpoint import load_checkpoint

    names = load_checkpoint(checkpoint).class_names
    if names and list(names) != list(class_map.class_names):
        raise SystemExit(f"checkpoint classes {names} differ from class map {class_map.name!r} classes "
                         f"{class_map.class_names}: scores would compare different classes")


# --------------------------------------------------------------------------- DDS replay


class NodeProcess:
    """The perception node as a child process (its log goes to ``log_path``)."""

    def __init__(self, cfg: ReplayConfig, log_path: Path) -> None:
        args = [sys.executable, "-m", "ssl3d_ros.node", "--ros-args", "-r", f"__node:={cfg.node_name}",
                "-r", f"~/input/points:={cfg.input_topic}", "-p", f"device:={cfg.device}"]
        if cfg.checkpoint:
            args += ["-p", f"checkpoint:={cfg.checkpoint}"]
        if cfg.params_file:
            args += ["--params-file", cfg.params_file]
        if cfg.clock:
            args += ["-p", "use_sim_time:=true"]
        for param in cfg.node_params:
            args += ["-p", param]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> int | None:
        if self.alive():
            self.proc.send_signal(2)  # SIGINT: rclpy shuts down cleanly
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Recorder:
    """Subscriptions to the node's outputs, filled from the executor thread."""

    def __init__(self, node: Any, node_name: str, keep_raw: bool, embeddings: bool = False) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import PointCloud2
        from std_msgs.msg import Float64, Float64MultiArray

        self.lock = threading.RLock()  # re-entrant: counters are read inside `with arrived:` blocks
        self.arrived = threading.Condition(self.lock)
        self.outputs: dict[int, tuple[float, np.ndarray, bytes | None]] = {}  # stamp -> (time, class_id, raw)
        self.output_order: list[int] = []
        self.timings: list[list[float]] = []
        self.latencies: list[float] = []
        self.node_counts: dict[str, int] = {}
        self.diagnostics_seen = 0
        self.keep_raw = keep_raw
        base = f"/{node_name}"
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.seg_topic = f"{base}/output/segmentation"
        self.subs = [
            node.create_subscription(PointCloud2, self.seg_topic, self._on_segmentation, qos, raw=True),
            node.create_subscription(Float64MultiArray, f"{base}/debug/processing_time_ms", self._on_timing, qos),
            node.create_subscription(Float64, f"{base}/debug/pipeline_latency_ms", self._on_latency, qos),
            node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10),
        ]
        if embeddings:  # the node computes only outputs with subscribers: this makes it embed too
            self.subs.append(node.create_subscription(PointCloud2, f"{base}/output/embeddings",
                                                      self._on_embeddings, qos, raw=True))
        self.embedding_messages = 0
        self._cloud_type = PointCloud2

    def _on_embeddings(self, raw: bytes) -> None:
        with self.lock:
            self.embedding_messages += 1

    def _on_segmentation(self, raw: bytes) -> None:
        from rclpy.serialization import deserialize_message

        from ..codec import decode_cloud

        now = time.monotonic()
        msg = deserialize_message(raw, self._cloud_type)
        class_id = np.array(decode_cloud(msg).field_values("class_id"), dtype=np.uint8)
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.arrived:
            self.outputs[stamp] = (now, class_id, bytes(raw) if self.keep_raw else None)
            self.output_order.append(stamp)
            self.arrived.notify_all()

    def _on_timing(self, msg: Any) -> None:
        with self.lock:
            self.timings.append(list(msg.data))

    def _on_latency(self, msg: Any) -> None:
        with self.lock:
            self.latencies.append(float(msg.data))

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if not status.name.endswith(": pipeline"):
                continue
            counts = {kv.key.removeprefix("frames_"): int(kv.value) for kv in status.values
                      if kv.key.startswith("frames_")}
            with self.arrived:
                self.node_counts = counts
                self.diagnostics_seen += 1
                self.arrived.notify_all()

    def node_failures(self) -> int:
        with self.lock:
            return self.node_counts.get("rejected", 0) + self.node_counts.get("errors", 0)


class SimClock:
    """``/clock`` for a node on ``use_sim_time``: bag time that runs at ``rate`` x wall time and jumps
    forward (never back) to each frame's bag time when it is sent. It keeps running while the player
    waits, so the node's timers (diagnostics) fire between frames and after the last one."""

    def __init__(self, publish, start_ns: int, rate: float, period_s: float = 0.01) -> None:
        self._publish = publish
        self._rate = rate
        self._period = period_s
        self._lock = threading.Lock()
        self._anchor_sim, self._anchor_wall = int(start_ns), time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ssl3d_replay_clock", daemon=True)

    def now_ns(self) -> int:
        with self._lock:
            return self._anchor_sim + int((time.monotonic() - self._anchor_wall) * self._rate * 1e9)

    def advance_to(self, ns: int) -> None:
        """Make sim time at least ``ns`` now, and publish it before the caller sends its frame."""
        with self._lock:
            now = self._anchor_sim + int((time.monotonic() - self._anchor_wall) * self._rate * 1e9)
            if ns > now:
                self._anchor_sim, self._anchor_wall = int(ns), time.monotonic()
        self._publish(self.now_ns())

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self._publish(self.now_ns())

    def start(self) -> "SimClock":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)


def replay_dds(frames: Sequence[BagFrame], cfg: ReplayConfig, out_dir: Path, scores: ScoreAccumulator | None,
               record_out: str | None = None, topic: str = "") -> tuple[list[FrameRecord], dict, int]:
    """Publish the frames to the node and record what comes back; returns records, the node's final
    counters and the number of outputs that matched no sent frame."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import PointCloud2

    node_proc = NodeProcess(cfg, out_dir / "node.log") if cfg.launch_node else None
    context = rclpy.Context()
    rclpy.init(context=context, args=[])
    node = rclpy.create_node("ssl3d_replay", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    records = [FrameRecord(f.index, f.stamp_ns, f.points) for f in frames]
    clock: SimClock | None = None
    try:
        recorder = Recorder(node, cfg.node_name, keep_raw=record_out is not None, embeddings=cfg.embeddings)
        pub_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        pub = node.create_publisher(PointCloud2, cfg.input_topic, pub_qos)
        clock_pub = node.create_publisher(Clock, CLOCK_TOPIC, 10) if cfg.clock else None
        spinner.start()

        def publish_clock(ns: int) -> None:
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = divmod(int(ns), 1_000_000_000)
            clock_pub.publish(msg)

        # Ready when the node (after its warm-up) publishes segmentation and subscribes to the input.
        deadline = time.monotonic() + cfg.startup_timeout_s
        while not (pub.get_subscription_count() > 0 and node.count_publishers(recorder.seg_topic) > 0):
            if node_proc is not None and not node_proc.alive():
                raise RuntimeError(f"the node exited with code {node_proc.proc.returncode}:\n{node_proc.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node did not come up within {cfg.startup_timeout_s} s"
                                   + (f":\n{node_proc.log_tail()}" if node_proc else ""))
            time.sleep(0.1)
        time.sleep(1.0)  # let the node's side of the matching finish too

        if clock_pub is not None and frames:
            # Sim time starts at the first frame once the node is up (it needs no clock to start).
            clock = SimClock(publish_clock, frames[0].bag_ns, cfg.rate if cfg.mode == "recorded" else 1.0).start()
        t0 = time.monotonic()
        for rec, frame in zip(records, frames):
            if cfg.mode == "recorded":
                due = t0 + (frame.bag_ns - frames[0].bag_ns) / 1e9 / cfg.rate
                while (wait := due - time.monotonic()) > 0:
                    time.sleep(min(wait, 0.005))
            if clock is not None:
                clock.advance_to(frame.bag_ns)
            failures_before = recorder.node_failures()
            rec.sent_s = time.monotonic()
            pub.publish(frame.raw)  # the recorded CDR bytes as they are
            if cfg.mode == "keep-up":
                with recorder.arrived:
                    recorder.arrived.wait_for(
                        lambda: frame.stamp_ns in recorder.outputs or recorder.node_failures() > failures_before,
                        timeout=cfg.frame_timeout_s)
                    if frame.stamp_ns not in recorder.outputs and recorder.node_failures() > failures_before:
                        rec.status = "rejected"  # alone in flight, so the failure the node counted is this frame
        # Late outputs: wait until every frame is answered or nothing new arrives for settle_s.
        last_count, last_change = -1, time.monotonic()
        while True:
            with recorder.lock:
                count = len(recorder.outputs)
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            if count >= len(frames) or time.monotonic() - last_change > cfg.settle_s:
                break
            time.sleep(0.05)
        # Final node counters: the first /diagnostics published after everything settled.
        with recorder.arrived:
            seen = recorder.diagnostics_seen
            recorder.arrived.wait_for(lambda: recorder.diagnostics_seen > seen + 1, timeout=5.0)
            node_counts = dict(recorder.node_counts)
            if cfg.embeddings:
                node_counts["embedding_messages_received"] = recorder.embedding_messages
            outputs = dict(recorder.outputs)
            order = list(recorder.output_order)
            timings, latencies = list(recorder.timings), list(recorder.latencies)
    finally:
        if clock is not None:
            clock.stop()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        if node_proc is not None:
            node_proc.stop()

    by_stamp = {f.stamp_ns: (r, f) for r, f in zip(records, frames)}
    # Timings are published once per processed frame, right after its outputs, in processing order.
    timing_of = {stamp: t for stamp, t in zip(order, timings)}
    latency_of = {stamp: v for stamp, v in zip(order, latencies)}
    unmatched = 0
    for stamp, (t_recv, class_id, _) in outputs.items():
        if stamp not in by_stamp:
            unmatched += 1
            continue
        rec, frame = by_stamp[stamp]
        rec.received_s, rec.status = t_recv, "ok"
        if stamp in timing_of:
            rec.stages_ms = dict(zip(STAGES, timing_of[stamp]))
        rec.node_latency_ms = latency_of.get(stamp)
        score_frame(rec, frame, class_id, scores)
    # Unanswered frames: rejected ones were told apart in keep-up mode (one frame in flight). At the
    # recorded rate several frames are in flight and the node's counter does not say which it refused,
    # so the remaining count is assigned to the earliest unanswered frames (totals exact, identities not).
    node_rejected = node_counts.get("rejected", 0) + node_counts.get("errors", 0)
    still = node_rejected - sum(r.status == "rejected" for r in records)
    for rec in records:
        if rec.sent_s is not None and rec.status == "pending":
            rec.status = "rejected" if still > 0 else "dropped"
            still -= rec.status == "rejected"
    if record_out:
        write_recording(record_out, frames, records, outputs, topic, recorder.seg_topic)
    return records, node_counts, unmatched


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


# --------------------------------------------------------------------------- offline replay


def replay_offline(frames: Sequence[BagFrame], checkpoint: str, scores: ScoreAccumulator | None,
                   device: str = "cpu") -> list[FrameRecord]:
    """The same frames through PerceptionPipeline.process_cloud in this process (the node's code path
    minus DDS): same decode, preprocessing, heads; malformed clouds count as rejected."""
    from ..codec import CloudFormatError
    from ..io.rosbag import POINTCLOUD2, default_typestore
    from ..pipeline import PerceptionPipeline

    pipeline = PerceptionPipeline.from_checkpoint(checkpoint or None, device=device)
    pipeline.warm_up()
    store = default_typestore()
    records = []
    for frame in frames:
        rec = FrameRecord(frame.index, frame.stamp_ns, frame.points)
        msg = store.deserialize_cdr(frame.raw, POINTCLOUD2)
        rec.sent_s = time.monotonic()
        try:
            cloud = pipeline.process_cloud(msg, segmentation=True, embeddings=False)
        except CloudFormatError as exc:
            rec.status = "rejected"
            log.warning("frame %d rejected: %s", frame.index, exc)
            records.append(rec)
            continue
        rec.received_s = time.monotonic()
        rec.status = "ok"
        t = cloud.result.timings_ms
        pre = cloud.decode_ms + t.get("preprocess", 0.0)
        rec.stages_ms = {"pre": pre, "inference": t.get("inference", 0.0), "post": t.get("postprocess", 0.0),
                         "total": rec.latency_ms}
        score_frame(rec, frame, cloud.result.class_id, scores)
        records.append(rec)
    return records


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl3d-replay", description=__doc__.split("\n\n")[0], epilog=EXIT_CODES_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bag", help="rosbag2 folder or .mcap/.db3 file")
    parser.add_argument("--topic", help="PointCloud2 topic of the bag (default: its only one)")
    parser.add_argument("--checkpoint", default="", help="checkpoint for the node (default: the packaged one)")
    parser.add_argument("--params-file", help="node parameter file (e.g. config/perception.yaml)")
    parser.add_argument("--mode", choices=["keep-up", "recorded"], default="keep-up")
    parser.add_argument("--rate", type=float, default=1.0, help="recorded mode: speed factor")
    parser.add_argument("--no-clock", action="store_true", help="do not publish /clock (node on wall time)")
    parser.add_argument("--offline", action="store_true", help="no ROS: run the pipeline in-process")
    parser.add_argument("--attach", metavar="NODE_NAME",
                        help="use a running node with this name (its input remapped to --input-topic)")
    parser.add_argument("--input-topic", default="/ssl3d_replay/points")
    parser.add_argument("--node-param", action="append", default=[], metavar="NAME:=VALUE",
                        help="extra parameter for the launched node, repeatable; e.g. "
                             "input.qos.reliability:=reliable (best-effort loses large clouds under load)")
    parser.add_argument("--with-embeddings", action="store_true",
                        help="also subscribe to the node's embeddings (it computes only subscribed outputs)")
    parser.add_argument("--label-field", help="PointCloud2 field with labels (enables mIoU)")
    parser.add_argument("--class-map", help="class map of the labels (name or YAML); must match the node's classes")
    parser.add_argument("--max-frames", type=int)
    parser.add_argument("--frame-timeout", type=float, default=10.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--record-out", metavar="BAG", help="also write inputs + segmentation outputs to this new bag")
    parser.add_argument("--out", default="replay_report")
    return parser


@console_script("ssl3d-replay")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    class_map = load_class_map(args.class_map) if args.class_map else None
    if args.label_field and class_map is None:
        raise SystemExit("--label-field needs --class-map (the label ids' class map)")
    check_classes(args.checkpoint, class_map)
    from ..io.errors import ScanReadError, TopicSelectionError

    unreadable: list[tuple[int, int, str]] = []
    try:
        frames, topic, total = load_bag_frames(args.bag, args.topic, args.label_field, class_map, args.max_frames,
                                               unreadable)
    except (ScanReadError, TopicSelectionError) as exc:
        raise SystemExit(f"ssl3d-replay: {exc}") from None
    scores = ScoreAccumulator(class_map.num_classes) if class_map is not None else None
    out = Path(args.out)
    node_counts, unmatched = {}, 0
    if args.offline:
        if args.record_out:
            raise SystemExit("--record-out needs the DDS replay (drop --offline)")
        records = replay_offline(frames, args.checkpoint, scores, args.device)
        mode = "offline"
    else:
        cfg = ReplayConfig(mode=args.mode, rate=args.rate, clock=not args.no_clock, input_topic=args.input_topic,
                           node_name=args.attach or "ssl3d_perception", launch_node=args.attach is None,
                           checkpoint=os.path.abspath(args.checkpoint) if args.checkpoint else "",
                           params_file=args.params_file, device=args.device, frame_timeout_s=args.frame_timeout,
                           node_params=tuple(args.node_param), embeddings=args.with_embeddings)
        records, node_counts, unmatched = replay_dds(frames, cfg, out, scores, args.record_out, topic)
        mode = f"dds/{args.mode}" + (f" x{args.rate:g}" if args.mode == "recorded" else "")
    if unreadable:  # in the report as frames that were never sent
        records = sorted([*records, *(FrameRecord(i, stamp, 0, status="unreadable") for i, stamp, _ in unreadable)],
                         key=lambda r: r.index)
    summary = summarise(records, mode=mode, source=str(args.bag), topic=topic, checkpoint=args.checkpoint,
                        frames_in_bag=total, unmatched_outputs=unmatched, node_counts=node_counts, scores=scores,
                        class_names=class_map.class_names if class_map else None)
    try:
        written = write_replay_report(summary, records, out)
    except OSError as exc:
        print(f"ssl3d-replay: cannot write the report to {out}: {exc.strerror or exc}; "
              "files written there earlier are unchanged", file=sys.stderr)
        return 1
    print(f"sent {summary.sent}, outputs {summary.outputs}, dropped {summary.dropped}, rejected {summary.rejected}, "
          f"unreadable {summary.unreadable}; latency p50 {summary.latency_ms['p50']} ms")
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
