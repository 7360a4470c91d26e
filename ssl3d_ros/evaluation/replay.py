"""``ssl3d-replay``: replay a rosbag2 through the real perception node over DDS and report.

The player publishes the bag's PointCloud2 messages (the recorded bytes, unchanged) on the node's
input topic, with ``/clock`` for ``use_sim_time``, either at the recorded rate (``--mode recorded``,
``--rate`` scales it) or as fast as the node keeps up (``--mode keep-up``: the next frame goes out
when the previous one's segmentation came back, the node counted it rejected or failed, or it timed
out). The node runs as a child process (``ssl3d_ros.evaluation.node_harness``); subscriptions record
its segmentation (matched to inputs by header stamp), its ``~/debug/processing_time_ms`` stage
timings and ``~/debug/pipeline_latency_ms`` (matched by order: the node publishes them right after
each frame's outputs) and its ``/diagnostics`` counters (rejected inputs, failed frames, drops).

Report: per-frame end-to-end latency (p50/p90/p99) and per stage, throughput, frames sent /
answered / dropped / rejected (malformed input) / errors (the node failed on the frame), and, when
the bag carries a label field and a class map is given, mIoU per frame and overall. Files:
``replay.json``, ``replay.md``, ``latency_histogram.png``, ``latency_timeline.png``, and the node's
``node.log`` and ``node_params.yaml``; ``--record-out BAG`` also writes inputs and outputs into a bag.

Latencies: *end to end* is publishing the input to receiving its segmentation, on this process's
monotonic clock. *Node latency* is the node's own: its ``pipeline_latency_ms`` (its clock at the end
of the frame - the header stamp) less the stamp's age on that clock when the frame was sent, i.e.
send -> done on the node's clock (input transport, mailbox wait, processing). In keep-up mode the
simulated clock runs on while the player waits for each answer, so the raw figure would include that
wait; it is kept in ``replay.json`` as ``node_reported_latency_ms``. With ``/clock`` the node's time
advances in 10 ms steps, so node latency reads up to about 10 ms low.

``--offline`` runs the same frames through :class:`PerceptionPipeline` in-process (no ROS), for
quick checks; its latency is the pipeline call (decode included).

Reading the bag's frames, scoring them, the statuses of unanswered frames and the ``--record-out``
bag: :mod:`ssl3d_ros.evaluation.replay_frames`; records, statistics and report files:
:mod:`ssl3d_ros.evaluation.replay_stats`.

Examples::

    scripts/netns-run ssl3d-replay BAG --checkpoint model.safetensors --mode keep-up --out replay_out
    ssl3d-replay BAG --checkpoint model.safetensors --offline --label-field label --class-map sim-outdoor
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from ..cli import EXIT_CODES_EPILOG, console_script
from ..labels import ClassMap, ScoreAccumulator, load_class_map
from .replay_frames import (BagFrame, assign_unanswered, failure_status, load_bag_frames, score_frame,
                            write_recording)
from .replay_stats import STAGES, FrameRecord, summarise, write_replay_report

log = logging.getLogger(__name__)

CLOCK_TOPIC = "/clock"


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


class ReplayInputError(ValueError):
    """Inputs that cannot give a meaningful replay; the message names what is wrong."""


def check_classes(checkpoint: str, class_map: ClassMap | None) -> None:
    """The node's class ids must mean the class map's classes for the scores to mean anything; without
    ``checkpoint`` the node runs the packaged default, which is checked the same way."""
    if class_map is None:
        return
    from ..checkpoint import CheckpointError, load_checkpoint, packaged_checkpoint
    from ..config import ConfigError

    try:
        path = checkpoint or str(packaged_checkpoint())
        names = load_checkpoint(path).class_names
    except (CheckpointError, ConfigError) as exc:
        raise ReplayInputError(str(exc)) from None
    if names and list(names) != list(class_map.class_names):
        which = f"checkpoint {path}" if checkpoint else f"the packaged default checkpoint {path}"
        raise ReplayInputError(f"{which} has classes {list(names)}, class map {class_map.name!r} has "
                               f"{list(class_map.class_names)}: scores would compare different classes")


def parse_node_params(assignments: Sequence[str]) -> dict[str, Any]:
    """``["input.qos.reliability:=reliable", ...]`` -> parameters (values read as YAML, as ROS reads -p)."""
    import yaml

    params: dict[str, Any] = {}
    for text in assignments:
        name, sep, value = text.partition(":=")
        if not sep or not name.strip():
            raise ReplayInputError(f"--node-param {text!r}: expected NAME:=VALUE")
        try:
            params[name.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ReplayInputError(f"--node-param {text!r}: value is not valid YAML: {exc}") from None
    return params


# --------------------------------------------------------------------------- DDS replay


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


def node_params(cfg: ReplayConfig) -> dict[str, Any]:
    """The launched node's parameters (read after ``cfg.params_file``, so these override it)."""
    params: dict[str, Any] = {"device": cfg.device}
    if cfg.checkpoint:
        params["checkpoint"] = cfg.checkpoint
    if cfg.clock:
        params["use_sim_time"] = True
    params.update(parse_node_params(cfg.node_params))
    return params


def decode_class_id(msg: Any) -> np.ndarray:
    from ..codec import decode_cloud

    return np.array(decode_cloud(msg).field_values("class_id"), dtype=np.uint8)


def replay_dds(frames: Sequence[BagFrame], cfg: ReplayConfig, out_dir: Path, scores: ScoreAccumulator | None,
               record_out: str | None = None, topic: str = "") -> tuple[list[FrameRecord], dict, int]:
    """Publish the frames to the node and record what comes back; returns records, the node's final
    counters and the number of outputs that matched no sent frame. NodeError if the launched node
    exits or does not come up."""
    from rosgraph_msgs.msg import Clock

    from .node_harness import Harness, NodeProcess, numbers

    node_proc = (NodeProcess(out_dir, node_params(cfg), cfg.input_topic, node_name=cfg.node_name,
                             params_files=[cfg.params_file] if cfg.params_file else [])
                 if cfg.launch_node else None)
    seg = f"/{cfg.node_name}/output/segmentation"
    records = [FrameRecord(f.index, f.stamp_ns, f.points) for f in frames]
    clock: SimClock | None = None
    harness = None
    try:
        # the node computes only outputs with subscribers: embeddings only when asked for
        harness = Harness(cfg.input_topic, node_name=cfg.node_name,
                          outputs=("segmentation", "embeddings") if cfg.embeddings else ("segmentation",),
                          keep_messages=False, convert={seg: decode_class_id,
                                                        f"/{cfg.node_name}/debug/processing_time_ms": numbers,
                                                        f"/{cfg.node_name}/debug/pipeline_latency_ms": numbers},
                          raw=[seg] if record_out is not None else [], depth=100, name="ssl3d_replay",
                          best_effort_input=False)  # the recorded bytes go out on the reliable publisher
        clock_pub = harness.node.create_publisher(Clock, CLOCK_TOPIC, 10) if cfg.clock else None

        def publish_clock(ns: int) -> None:
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = divmod(int(ns), 1_000_000_000)
            clock_pub.publish(msg)

        # Ready when the node (after its warm-up) subscribes to the input and publishes every topic.
        harness.wait_for_node(node_proc, cfg.startup_timeout_s, diagnostics=False)
        time.sleep(1.0)  # let the node's side of the matching finish too

        if clock_pub is not None and frames:
            # Sim time starts at the first frame once the node is up (it needs no clock to start).
            clock = SimClock(publish_clock, frames[0].bag_ns, cfg.rate if cfg.mode == "recorded" else 1.0).start()
        answered = harness.by_stamp[seg]
        t0 = time.monotonic()
        for rec, frame in zip(records, frames):
            if cfg.mode == "recorded":
                due = t0 + (frame.bag_ns - frames[0].bag_ns) / 1e9 / cfg.rate
                while (wait := due - time.monotonic()) > 0:
                    time.sleep(min(wait, 0.005))
            if clock is not None:
                clock.advance_to(frame.bag_ns)
            before = harness.counts()
            rec.sent_s = time.monotonic()
            # how old the stamp is on the node's clock as the frame leaves: subtracted from its latency
            rec.stamp_age_ms = ((clock.now_ns() if clock is not None else time.time_ns()) - frame.stamp_ns) / 1e6
            harness.publish(frame.raw, reliable=True)  # the recorded CDR bytes as they are
            if cfg.mode == "keep-up":
                with harness.cond:
                    harness.cond.wait_for(lambda: frame.stamp_ns in answered
                                          or failure_status(before, harness.counts()) is not None,
                                          timeout=cfg.frame_timeout_s)
                    if frame.stamp_ns not in answered:  # alone in flight: what the node counted is this frame
                        rec.status = failure_status(before, harness.counts()) or rec.status
        # Late outputs: wait until every frame is answered or nothing new arrives for settle_s.
        last_count, last_change = -1, time.monotonic()
        while True:
            with harness.cond:
                count = len(answered)
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            if count >= len(frames) or time.monotonic() - last_change > cfg.settle_s:
                break
            time.sleep(0.05)
        # Final node counters: the second /diagnostics published after everything settled.
        with harness.cond:
            seen = len(harness.diagnostics)
            harness.cond.wait_for(lambda: len(harness.diagnostics) > seen + 1, timeout=5.0)
            node_counts = harness.counts()
            if cfg.embeddings:
                node_counts["embedding_messages_received"] = len(harness.arrivals[f"/{cfg.node_name}/output/embeddings"])
            outputs = {stamp: (a.mono_s, a.value, a.raw) for stamp, a in answered.items()}
            order = [a.stamp_ns for a in harness.arrivals[seg]]
            timings = [a.value for a in harness.arrivals[f"/{cfg.node_name}/debug/processing_time_ms"]]
            latencies = [a.value[0] for a in harness.arrivals[f"/{cfg.node_name}/debug/pipeline_latency_ms"]]
    finally:
        if clock is not None:
            clock.stop()
        if harness is not None:
            harness.close()
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
        rec.node_reported_latency_ms = latency_of.get(stamp)
        if rec.node_reported_latency_ms is not None and rec.stamp_age_ms is not None:
            rec.node_latency_ms = rec.node_reported_latency_ms - rec.stamp_age_ms
        score_frame(rec, frame, class_id, scores)
    assign_unanswered(records, node_counts)
    if record_out:
        write_recording(record_out, frames, records, outputs, topic, seg)
    return records, node_counts, unmatched



# --------------------------------------------------------------------------- offline replay


def replay_offline(frames: Sequence[BagFrame], checkpoint: str, scores: ScoreAccumulator | None,
                   device: str = "cpu", params_file: str | None = None) -> list[FrameRecord]:
    """The same frames through PerceptionPipeline.process_cloud in this process (the node's code path
    minus DDS): same decode, preprocessing (with the node's parameter file, its sensor mount too),
    heads; malformed clouds count as rejected."""
    from ..codec import CloudFormatError
    from ..io.rosbag import POINTCLOUD2, default_typestore
    from ..perception import PerceptionPipeline, load_node_config

    overrides = load_node_config(params_file) if params_file else None
    pipeline = PerceptionPipeline.from_checkpoint(checkpoint or None, device=device, overrides=overrides)
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
    paragraphs = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(prog="ssl3d-replay", description=paragraphs[0],
                                     epilog="\n\n".join([p for p in paragraphs if p.startswith(("Report:", "Latencies:"))] + [EXIT_CODES_EPILOG]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bag", help="rosbag2 folder or .mcap/.db3 file")
    parser.add_argument("--topic", help="PointCloud2 topic of the bag (default: its only one)")
    parser.add_argument("--checkpoint", default="",
                        help="checkpoint for the node (default: the packaged one); with --attach, the running "
                             "node's, for the class check of --class-map")
    parser.add_argument("--params-file", help="node parameter file (e.g. config/perception.yaml); --offline runs "
                                              "the pipeline with it too (preprocessing, sensor mount)")
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
    parser.add_argument("--class-map", help="class map of the labels (name or YAML); must match the classes of the "
                                             "node's checkpoint (the packaged one without --checkpoint), else exit 2")
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
    try:
        check_classes(args.checkpoint, class_map)
        parse_node_params(args.node_param)
    except ReplayInputError as exc:
        print(f"ssl3d-replay: {exc}", file=sys.stderr)
        return 2
    from ..io.errors import ScanReadError, TopicSelectionError
    from .node_harness import NodeError

    unreadable: list[tuple[int, int, str]] = []
    try:
        frames, topic, total = load_bag_frames(args.bag, args.topic, args.label_field, class_map, args.max_frames,
                                               unreadable)
    except (ScanReadError, TopicSelectionError) as exc:
        raise SystemExit(f"ssl3d-replay: {exc}") from None
    scores = ScoreAccumulator(class_map.num_classes) if class_map is not None else None
    out = Path(args.out)
    node_counts, unmatched, node_files = {}, 0, {}
    if args.offline:
        if args.record_out:
            raise SystemExit("--record-out needs the DDS replay (drop --offline)")
        records = replay_offline(frames, args.checkpoint, scores, args.device, args.params_file)
        mode = "offline"
    else:
        cfg = ReplayConfig(mode=args.mode, rate=args.rate, clock=not args.no_clock, input_topic=args.input_topic,
                           node_name=args.attach or "ssl3d_perception", launch_node=args.attach is None,
                           checkpoint=os.path.abspath(args.checkpoint) if args.checkpoint else "",
                           params_file=args.params_file, device=args.device, frame_timeout_s=args.frame_timeout,
                           node_params=tuple(args.node_param), embeddings=args.with_embeddings)
        try:
            records, node_counts, unmatched = replay_dds(frames, cfg, out, scores, args.record_out, topic)
        except NodeError as exc:
            print(f"ssl3d-replay: {exc}", file=sys.stderr)
            return 1
        mode = f"dds/{args.mode}" + (f" x{args.rate:g}" if args.mode == "recorded" else "")
        if cfg.launch_node:
            node_files = {"node_log": str(out / "node.log"), "node_params": str(out / "node_params.yaml")}
    if unreadable:  # in the report as frames that were never sent
        records = sorted([*records, *(FrameRecord(i, stamp, 0, status="unreadable") for i, stamp, _ in unreadable)],
                         key=lambda r: r.index)
    summary = summarise(records, mode=mode, source=str(args.bag), topic=topic, checkpoint=args.checkpoint,
                        frames_in_bag=total, unmatched_outputs=unmatched, node_counts=node_counts, scores=scores,
                        class_names=class_map.class_names if class_map else None, node_files=node_files)
    try:
        written = write_replay_report(summary, records, out)
    except OSError as exc:
        print(f"ssl3d-replay: cannot write the report to {out}: {exc.strerror or exc}; "
              "files written there earlier are unchanged", file=sys.stderr)
        return 1
    print(f"sent {summary.sent}, outputs {summary.outputs}, dropped {summary.dropped}, rejected {summary.rejected}, "
          f"errors {summary.errors}, unreadable {summary.unreadable}; latency p50 {summary.latency_ms['p50']} ms")
    for name, path in {**written, **node_files}.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
