#!/usr/bin/env python3
"""End-to-end speed of the perception node: stamp -> segmentation received by another process.

The node runs as its own process (the ``ssl3d-perception`` console script); this process publishes
real scans at a fixed rate, each stamped with the wall clock just before publishing, and subscribes
to ``~/output/segmentation``. Per scan type it reports:

- latency p50/p90/p99/max (ms): receive time in this process minus the header stamp, measured at a low
  input rate (``--latency-rate``, default 2 Hz) so no scan waits behind another;
- sustained output rate (Hz) at ``--rate`` (default 10 Hz), with the latency at that rate (which
  includes waiting in the node's latest-frame slot) and the frames the node dropped;
- the node's own per-frame cost split (decode, preprocess, inference, postprocess, encode, publish;
  medians of ``~/debug/stage_time_ms``);
- resident memory of the node at the start and end of the run and its peak (memory flat = no growth).

Scans: ``hdl64`` (KITTI 004139, ~123k points), ``os2-128`` (Ouster OS-2-128 from the real bag, ~120k),
``os2-32`` (Ouster OS-2-32, real scan), ``hdl32`` (nuScenes LIDAR_TOP, ~35k). Without ../shared/data the simulator makes equivalents.
Targets (issue 30; 2-core CPU, packaged nano checkpoint, every output): hdl64 and os2-128 sustained at
10 Hz with the node busy <= 75 ms per frame and p50 <= 80 ms; hdl32 and os2-32 at 20 Hz; memory flat;
beside one CPU-bound process >= 0.7x the quiet rate, one per core >= 0.4x, a training job >= 0.4x.

A robot's CPU is shared: ``--contention`` runs every measurement beside other CPU-bound processes that
the benchmark starts and stops itself (``quiet``: none; ``one``: one spinning process; ``per-core``: one
per core; ``training``: a 1-thread ``ssl3d-pretrain`` job on simulated scans), after ``--settle`` seconds
of input at ``--rate`` so the node has adapted. ``--cpu-threads 0 2`` runs the whole set once per value
of the node's ``cpu_threads`` (0 = adaptive, 2 = two fixed threads, the old default on 2 cores): the
baseline measured in the same run.

Run inside the private network namespace (DDS must not leave the machine)::

    scripts/netns-run .venv/bin/python benchmarks/bench_node.py --scans hdl64 hdl32 --duration 20
    scripts/netns-run .venv/bin/python benchmarks/bench_node.py --checkpoint model.safetensors --json out.json
    scripts/netns-run .venv/bin/python benchmarks/bench_node.py --scans hdl64 --all-outputs \
        --contention quiet one per-core training --cpu-threads 0 2 --duration 10 --json shared.json

Timings taken on a shared or busy machine are not meaningful; the JSON records the load average.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ssl3d_ros.evaluation.node_harness import (DEBUG_TOPICS, NODE_NAME, OUTPUTS, Harness, NodeError, NodeProcess,
                                               numbers, status_values)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SSL3D_SHARED_DATA", REPO.parent / "shared" / "data"))
INPUT_TOPIC = "/ssl3d_bench/points"
SEGMENTATION = f"/{NODE_NAME}/output/segmentation"
STAGE_TIME = f"/{NODE_NAME}/debug/stage_time_ms"
PROCESSING_TIME = f"/{NODE_NAME}/debug/processing_time_ms"
NODE_LATENCY = f"/{NODE_NAME}/debug/pipeline_latency_ms"
STAGES = ("decode", "preprocess", "inference", "postprocess", "encode", "publish")
#: how long a run waits, after publishing, for the answer to its last frame (a busy machine's node may
#: take seconds per frame; a frame the best-effort transport lost must not hang the run)
LAST_FRAME_TIMEOUT_S = 60.0
# The harness sets the package's large-data Fast DDS profile (a 2-4 MB scan does not fit the default
# 512 kB shared-memory segment, and lost best-effort UDP fragments would lose the scan).

# ------------------------------------------------------------------------------------------ scans


def _from_xyzi(points: np.ndarray, intensity: np.ndarray, frame: str, **extra):
    from sensor_msgs.msg import PointCloud2, PointField

    from ssl3d_ros.codec import encode_cloud, fill_cloud_message

    fields = {"intensity": intensity.astype(np.float32), **extra}
    msg = fill_cloud_message(PointCloud2(), encode_cloud(points.astype(np.float32), fields), PointField)
    msg.header.frame_id = frame
    return msg


def _simulated(beams: int, columns: int):
    from ssl3d_ros.sim import SimConfig, simulate_sequence, with_lidar

    cfg = with_lidar(SimConfig(), beams=beams, columns=columns, max_range=120.0)
    scan = next(iter(simulate_sequence(cfg, 1, seed=0)))
    return _from_xyzi(scan.points, scan.fields["intensity"], scan.frame_id, ring=scan.fields["ring"])


def load_scan(name: str):
    """(PointCloud2, description) of one benchmark scan."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import PointCloud2

    if name == "hdl64":
        path = SHARED_DATA / "lidar" / "kitti" / "004139.bin"
        if path.exists():
            raw = np.fromfile(path, dtype=np.float32).reshape(-1, 4)
            return _from_xyzi(raw[:, :3], raw[:, 3], "velodyne"), f"KITTI HDL-64E {path.name}"
        return _simulated(64, 2048), "simulated 64-beam x 2048"
    if name == "os2-128":
        bag = SHARED_DATA / "bags" / "ouster_real_pointcloud2_mcap"
        if bag.exists():
            from ssl3d_ros.io.rosbag import BagSource

            source = BagSource(bag, topics=["/ouster/os_2_128_u1_v2_3_0_1024x10/points"])
            return deserialize_message(source.raw_message(0), PointCloud2), "Ouster OS-2-128 (real bag)"
        return _simulated(128, 1024), "simulated 128-beam x 1024"
    if name == "os2-32":
        path = SHARED_DATA / "lidar" / "ouster" / "OS-2-32-U0_v2.0.0_1024x10_frame00.xyzi.bin"
        if path.exists():
            raw = np.fromfile(path, dtype=np.float32).reshape(-1, 4)
            return _from_xyzi(raw[:, :3], raw[:, 3], "os_sensor"), "Ouster OS-2-32 (real scan)"
        return _simulated(32, 1024), "simulated 32-beam x 1024"
    if name == "hdl32":
        path = SHARED_DATA / "lidar" / "nuscenes" / "lidar_top_1532402927647951.pcd.bin"
        if path.exists():
            raw = np.fromfile(path, dtype=np.float32).reshape(-1, 5)
            return (_from_xyzi(raw[:, :3], raw[:, 3], "lidar_top", ring=raw[:, 4].astype(np.uint16)),
                    "nuScenes HDL-32E LIDAR_TOP")
        return _simulated(32, 1024), "simulated 32-beam x 1024"
    raise SystemExit(f"unknown scan {name!r}; choose hdl64, os2-128, os2-32, hdl32")


# ------------------------------------------------------------------------------------- checkpoint


def benchmark_checkpoint(path: str | None, workdir: Path) -> Path:
    """The given checkpoint, else the packaged default, else a random-init nano at 0.15 m voxels
    (same cost as a trained one: timing does not depend on the weights)."""
    if path:
        return Path(path)
    from ssl3d_ros.checkpoint import packaged_checkpoint

    try:
        return packaged_checkpoint()
    except Exception:
        pass
    import torch

    from ssl3d_ros.checkpoint import save_checkpoint
    from ssl3d_ros.models.encoder import EncoderConfig, SparseEncoder
    from ssl3d_ros.models.heads import LinearSegHead
    from ssl3d_ros.preprocessing import PreprocessConfig

    torch.manual_seed(0)
    encoder = SparseEncoder(EncoderConfig(size="nano", in_channels=4))
    names = [f"class_{i}" for i in range(12)]
    pre = PreprocessConfig(voxel_size=0.15, max_range=80.0, features=("xyz", "intensity"), coord_scale=20.0)
    out = workdir / "bench_nano_random.safetensors"
    save_checkpoint(out, encoder, preprocessing=pre, classes=names,
                    seg_head=LinearSegHead(encoder.hypercolumn_channels, len(names)),
                    recipe={"name": "random-init (benchmark)"})
    print(f"no packaged checkpoint: timing a random-init nano encoder ({out})", file=sys.stderr)
    return out


# --------------------------------------------------------------------------------------- baseline


def in_process_ms(checkpoint: Path, msg, frames: int, device: str = "cpu") -> float:
    """Median wall time of the same pipeline on the same message in this process, without ROS (the
    in-run baseline: node latency / this = what topics, the worker thread and DDS add)."""
    from ssl3d_ros.perception import NodeConfig, PerceptionPipeline

    pipeline = PerceptionPipeline.from_config(NodeConfig(checkpoint=str(checkpoint), device=device))
    pipeline.warm_up()
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        pipeline.process_cloud(msg, segmentation=True, embeddings=False)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


# ------------------------------------------------------------------------------------- contention

CONTENTION = ("quiet", "one", "per-core", "training")
SPIN = "while True: pass"


@contextlib.contextmanager
def contention(kind: str, workdir: Path):
    """Start the CPU-bound processes of ``kind`` beside the node, stop them on exit."""
    cores = len(os.sched_getaffinity(0))
    if kind == "quiet":
        commands = []
    elif kind in ("one", "per-core"):
        commands = [[sys.executable, "-c", SPIN]] * (1 if kind == "one" else cores)
    elif kind == "training":  # a real 1-thread training job, as on a robot that fine-tunes beside perception
        out = Path(tempfile.mkdtemp(prefix="contention_training_", dir=workdir))  # fresh: never a finished run
        commands = [[sys.executable, "-m", "ssl3d_ros.training.pretrain", "--config", str(REPO / "config" / "pretrain" / "sonata.yaml"),
                     "--data", "sim:outdoor:16", "--steps", "100000", "--workers", "0", "--no-progress",
                     "--out", str(out), "--set", "run.threads=1", "--set", "run.tensorboard=false"]]
    else:
        raise SystemExit(f"unknown contention {kind!r}; choose from {', '.join(CONTENTION)}")
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, start_new_session=True)
             for cmd in commands]
    try:
        if kind == "training":  # wait until it trains (its start-up reads and voxelises the scans)
            deadline = time.monotonic() + 120.0
            while not (out / "metrics.csv").exists() and time.monotonic() < deadline:
                if procs[0].poll() is not None:
                    raise SystemExit(f"bench_node: the training job beside the node exited ({procs[0].returncode})")
                time.sleep(0.5)
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ------------------------------------------------------------------------------------------ bench


def open_harness(all_outputs: bool, decode_outputs: bool = False) -> Harness:
    """Segmentation (and with ``all_outputs`` every other output) subscribed; arrival times kept, and of
    the debug topics only their numbers. Outputs are received serialized and only their header stamp
    is read, unless ``decode_outputs``: on a 2-core machine a Python subscriber deserializing four
    multi-MB messages per frame takes CPU from the node it measures (``client_cpu_percent`` says how much)."""
    convert = {f"/{NODE_NAME}/debug/{t}": numbers for t in DEBUG_TOPICS}
    outputs = OUTPUTS if all_outputs else ("segmentation",)
    stamp_only = () if decode_outputs else [f"/{NODE_NAME}/output/{o}" for o in outputs]
    return Harness(INPUT_TOPIC, outputs=outputs, keep_messages=False, convert=convert, stamp_only=stamp_only,
                   depth=5, name="ssl3d_bench")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc; its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(harness: Harness, msg, rate_hz: float, duration_s: float, node_pid: int) -> dict:
    """Publish ``msg`` freshly stamped at ``rate_hz`` for ``duration_s`` from the best-effort publisher."""
    harness.clear()
    cpu_start = time.process_time(), process_cpu_s(node_pid), time.monotonic()
    with harness.cond:
        diag_start = len(harness.diagnostics)
    period = 1.0 / rate_hz
    sent = 0
    start = time.monotonic()
    next_time = start
    last_stamp = None
    while time.monotonic() - start < duration_s:
        last_stamp = harness.publish(msg, stamp_now=True)
        sent += 1
        next_time += period
        time.sleep(max(0.0, next_time - time.monotonic()))
    elapsed = time.monotonic() - start
    # The node keeps the newest frame, so the last one sent is answered unless the transport lost it:
    # wait for it, however slow the machine is today (bounded: a lost frame must not hang the run),
    # then a little longer for one more diagnostics message.
    try:
        harness.wait(lambda: any(a.stamp_ns == last_stamp for a in harness.arrivals[SEGMENTATION]),
                     LAST_FRAME_TIMEOUT_S, "the answer to the last frame sent")
    except TimeoutError:
        pass  # lost (best effort) or the node is stuck: the counts below say which frames came back
    time.sleep(min(5.0, 2.0 + 2 * period))
    wall = time.monotonic() - cpu_start[2]
    client_cpu = 100 * (time.process_time() - cpu_start[0]) / wall
    node_cpu = 100 * (process_cpu_s(node_pid) - cpu_start[1]) / wall
    harness.check()
    with harness.cond:
        seg = harness.arrivals[SEGMENTATION]
        lat = np.asarray([(a.wall_ns - a.stamp_ns) / 1e6 for a in seg])
        received = len({a.stamp_ns for a in seg})
        diags = [status_values(s) for s in harness.diagnostics[diag_start:]]
        stage_times = np.asarray([a.value for a in harness.arrivals[STAGE_TIME]], float).reshape(-1, len(STAGES))
        totals = [a.value[-1] for a in harness.arrivals[PROCESSING_TIME]]
        latencies = [a.value[0] for a in harness.arrivals[NODE_LATENCY]]
    node_total = float(np.median(totals)) if totals else None
    node_latency = float(np.median(latencies)) if latencies else None
    last = diags[-1] if diags else {}
    rss = [float(d["memory_rss_mb"]) for d in diags if "memory_rss_mb" in d]
    return {
        "points": int(msg.width * msg.height),
        "input_rate_hz": round(sent / elapsed, 2),
        "output_rate_hz": round(received / elapsed, 2),
        "sent": sent,
        "received": received,
        "latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
            "p90": round(float(np.percentile(lat, 90)), 1) if lat.size else None,
            "p99": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
            "max": round(float(lat.max()), 1) if lat.size else None,
        },
        "node_stage_ms_median": {
            s: round(float(np.median(stage_times[:, i])), 2) if len(stage_times) else None
            for i, s in enumerate(STAGES)
        },
        # where the latency goes: stamp -> the node starts a frame (input transport and waiting),
        # the node's own processing, and the node's publish -> received here (output transport)
        "latency_split_ms_median": {
            "before_node": round(node_latency - node_total, 1) if node_total is not None and node_latency else None,
            "node_total": round(node_total, 1) if node_total is not None else None,
            "after_node": round(float(np.median(lat)) - node_latency, 1) if lat.size and node_latency else None,
        },
        "node_frames_dropped_total": int(last.get("frames_dropped", 0)),
        # what cpu_threads did (adaptive: the count in use at the end, its probes and switches so far)
        "node_cpu_threads": {k.removeprefix("cpu_threads_"): v for k, v in last.items() if k.startswith("cpu_threads_")},
        # CPU used over the run (publishing and the drain after it), % of one core: the node, and this
        # process (the publisher of the scans and the receiver of the outputs)
        "node_cpu_percent": round(node_cpu, 1),
        "client_cpu_percent": round(client_cpu, 1),
        "node_rss_mb": {"start": rss[0] if rss else None, "end": rss[-1] if rss else None,
                        "max": max(rss) if rss else None},
    }


def settle(harness: Harness, msg, rate_hz: float, seconds: float) -> None:
    """Input at ``rate_hz`` for ``seconds``, not measured: the node adapts to a new load first."""
    start = next_time = time.monotonic()
    while time.monotonic() - start < seconds:
        harness.publish(msg, stamp_now=True)
        next_time += 1.0 / rate_hz
        time.sleep(max(0.0, next_time - time.monotonic()))
    time.sleep(1.0)


def print_line(label: str, latency: dict, sustained: dict, baseline: float) -> None:
    lat, stages = latency["latency_ms"], latency["node_stage_ms_median"]
    threads = sustained["node_cpu_threads"].get("in_use", "?")
    print(f"{label:28s} {latency['points']:7d} pts  latency p50 {lat['p50']} ms p90 {lat['p90']} ms "
          f"(at {latency['input_rate_hz']} Hz)  sustained {sustained['output_rate_hz']}/"
          f"{sustained['input_rate_hz']} Hz p50 {sustained['latency_ms']['p50']} ms  "
          + " ".join(f"{s} {v}" for s, v in stages.items())
          + f"  threads {threads}  cpu node {sustained['node_cpu_percent']}% client {sustained['client_cpu_percent']}%"
          + f"  rss {latency['node_rss_mb']['start']}->{sustained['node_rss_mb']['end']} MB"
          + f"  in-process baseline {baseline:.1f} ms", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", nargs="+", default=["hdl64", "os2-128", "hdl32"])
    parser.add_argument("--checkpoint", default=None, help="default: the packaged checkpoint (else random-init nano)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--rate", type=float, default=10.0, help="input rate of the sustained run, Hz")
    parser.add_argument("--latency-rate", type=float, default=2.0, help="input rate of the latency run, Hz")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per run (two runs per scan type)")
    parser.add_argument("--all-outputs", action="store_true",
                        help="also subscribe to embeddings, visualization and occupancy (default: segmentation only)")
    parser.add_argument("--decode-outputs", action="store_true",
                        help="deserialize every output received, as a Python consumer would (default: read "
                             "only the header stamp from the serialized message)")
    parser.add_argument("--contention", nargs="+", default=["quiet"], choices=CONTENTION,
                        help="CPU-bound processes beside the node, one measurement set each: quiet (none), one "
                             "(one spinning process), per-core (one per core), training (a 1-thread ssl3d-pretrain "
                             "job); default quiet")
    parser.add_argument("--cpu-threads", nargs="+", type=int, default=[0],
                        help="the node's cpu_threads, one node and one set of runs per value (0 = adaptive, "
                             "the default; e.g. 0 2 to measure fixed two threads in the same run)")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds of unmeasured input at --rate before each contention's runs (default 5)")
    parser.add_argument("--baseline-frames", type=int, default=20,
                        help="frames of the in-process baseline (same pipeline, no ROS) per scan")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="ssl3d_bench_"))
    checkpoint = benchmark_checkpoint(args.checkpoint, workdir)
    results: dict = {
        "checkpoint": str(checkpoint), "device": args.device, "rate_hz": args.rate,
        "latency_rate_hz": args.latency_rate, "duration_s": args.duration, "settle_s": args.settle,
        "all_outputs": args.all_outputs, "decode_outputs": args.decode_outputs, "load_average": os.getloadavg(),
        "cpus": os.cpu_count(), "contention": args.contention, "cpu_threads": args.cpu_threads, "scans": {},
    }
    messages = {name: load_scan(name) for name in args.scans}
    for name, (msg, description) in messages.items():  # quiet, before any node: the in-process baseline
        results["scans"][name] = {"description": description, "points": int(msg.width * msg.height),
                                  "in_process_ms_median": round(in_process_ms(checkpoint, msg, args.baseline_frames), 1),
                                  "runs": {}}
    logs = {}
    for threads in args.cpu_threads:
        node = NodeProcess(workdir, {"device": args.device, "checkpoint": str(checkpoint), "cpu_threads": threads,
                                     "diagnostics": {"period_s": 1.0, "stale_after_s": 30.0}}, INPUT_TOPIC)
        harness = open_harness(args.all_outputs, args.decode_outputs)
        try:
            harness.wait_for_node(node, 180.0)
            for kind in args.contention:
                with contention(kind, workdir) as beside:
                    for name, (msg, _) in messages.items():
                        settle(harness, msg, args.rate, args.settle)
                        latency = run(harness, msg, args.latency_rate, args.duration, node.pid)
                        sustained = run(harness, msg, args.rate, args.duration, node.pid)
                        scan = results["scans"][name]
                        baseline = scan["in_process_ms_median"]
                        scan["runs"][f"cpu_threads={threads} {kind}"] = {
                            "cpu_threads": threads, "contention": kind, "processes_beside": len(beside),
                            # every process beside the node still running when the runs ended
                            "beside_alive_at_end": all(proc.poll() is None for proc in beside),
                            "latency_run": latency, "sustained_run": sustained,
                            "latency_p50_over_in_process": round(latency["latency_ms"]["p50"] / baseline, 2)
                            if latency["latency_ms"]["p50"] else None}
                        print_line(f"{name} threads={threads} {kind}", latency, sustained, baseline)
        except NodeError as exc:
            print(f"bench_node: {exc}", file=sys.stderr)
            return 1
        finally:
            harness.close()
            node.stop()
        logs[str(threads)] = node.log_text()[-2000:]
    results["node_log_tail"] = logs
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    else:
        print(json.dumps({k: v for k, v in results.items() if k != "node_log_tail"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
