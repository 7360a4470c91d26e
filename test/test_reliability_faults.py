"""Reliability against faults: processes killed with SIGKILL while writing checkpoints, a full disk
(a real ENOSPC on a 3 MB tmpfs in a private mount namespace), out-of-memory during a frame, bad
checkpoints at node start-up, a pickle that would run code, and paths full of shell syntax.

SIGKILL-and-resume of a training run is in test_training_resume.py; the safetensors-only loader's
refusal of pickles in test_checkpoint.py. This file adds what those do not cover.

Tests that start ROS 2 participants run only inside ``scripts/netns-run``.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl3d_ros.checkpoint import load_checkpoint
from ssl3d_ros.training import state as state_io

from builders import make_checkpoint, sim_scan

REPO = Path(__file__).resolve().parents[1]
IN_NETNS = os.environ.get("SSL3D_IN_NETNS") == "1"
needs_netns = pytest.mark.skipif(not IN_NETNS, reason="starts ROS 2 participants: run through scripts/netns-run")
HANG_GUARD_S = 240  # ends a test whose process hangs; no assertion depends on how fast the machine is
HOSTILE = "out dir;touch SHELL_RAN_1;$(touch SHELL_RAN_2)`touch SHELL_RAN_3`"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "test"))


class CreatesMarker:
    """Unpickling this object creates the marker file: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# ------------------------------------------------------------------ kill during checkpoint writes

WRITER = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from ssl3d_ros.checkpoint import save_checkpoint
    from ssl3d_ros.training import state as state_io
    from builders import PRE, tiny_encoder

    out, k = Path(sys.argv[1]), int(sys.argv[2])
    encoder = tiny_encoder()
    while True:  # rewrite both kinds of checkpoint for ever; the test hook pauses each write
        big = torch.full((1_000_000,), float(k))
        save_checkpoint(out / "model.safetensors", encoder, preprocessing=PRE, extra_tensors={"version": big})
        state_io.save_state(out / "checkpoints", k, {"w": big}, {"state": {}, "param_groups": []},
                            {"k": k}, keep=2)
        k += 1
""")


def test_sigkill_during_checkpoint_writes_never_corrupts_the_latest(tmp_path):
    """Kill a process that rewrites an inference checkpoint and a training state, each time exactly
    in the middle of a write (the temporary complete, not yet renamed: ssl3d_ros.atomic's test hook
    holds the writer there), alternately in the checkpoint's and the state's write: afterwards both
    load, whole and from the last completed write, and the next writer removes the dead one's
    temporaries."""
    from builders import PRE, tiny_encoder, wait_for_pause

    from ssl3d_ros.atomic import PAUSE_ENV
    from ssl3d_ros.checkpoint import save_checkpoint

    marker = tmp_path / "paused"
    env = dict(_env(), **{PAUSE_ENV: str(marker)})
    first_round = 1
    leftover: Path | None = None
    for kill_at in (2, 3, 4, 5):  # writes 0, 2, 4: the checkpoint of round 1, 2, 3; 1, 3, 5: the state
        with open(tmp_path / "writer.err", "w") as err:
            proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(first_round)],
                                    stdout=subprocess.DEVNULL, stderr=err, env=env)
        alive = lambda: proc.poll() is None  # noqa: E731
        for write in range(kill_at + 1):
            tmp = wait_for_pause(marker, alive)
            if write == 2:  # both folders written once since the last kill: its temporary is gone
                assert leftover is None or not leftover.exists(), leftover
            if write < kill_at:
                marker.unlink()  # let this write finish
        proc.kill()  # paused inside write number kill_at
        proc.wait()
        marker.unlink()
        assert tmp.exists(), "the kill did not land inside a write"  # left as a temporary name only
        assert tmp.name.startswith(".model.safetensors." if kill_at % 2 == 0 else ".state-"), tmp
        leftover = tmp

        rounds_with_checkpoint, rounds_with_state = (kill_at + 1) // 2, kill_at // 2
        ckpt = load_checkpoint(tmp_path / "model.safetensors")
        version = ckpt.extra_tensors["version"]
        assert version.shape == (1_000_000,) and bool((version == first_round + rounds_with_checkpoint - 1).all())
        newest = state_io.list_states(tmp_path / "checkpoints")[-1]
        state = state_io.load_state(newest)  # the newest itself, not a fallback to an older one
        assert state.step == first_round + rounds_with_state - 1
        assert bool((state.model["w"] == state.step).all()) and state.extra == {"k": state.step}
        first_round += rounds_with_checkpoint
    # the next write into each folder, here in-process, removes the last writer's temporary too
    save_checkpoint(tmp_path / "model.safetensors", tiny_encoder(), preprocessing=PRE)
    state_io.save_state(tmp_path / "checkpoints", first_round, {"w": torch.ones(3)},
                        {"state": {}, "param_groups": []}, {}, keep=2)
    assert not [p for p in [*tmp_path.iterdir(), *(tmp_path / "checkpoints").iterdir()] if p.name.endswith(".tmp")]


def test_a_pickle_posing_as_the_newest_training_state_is_skipped_without_running(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    state_io.save_state(ckpt_dir, 3, {"w": torch.ones(3)}, {"state": {}, "param_groups": []}, {"n": 3})
    marker = tmp_path / "pwned"
    (ckpt_dir / "state-00000099.safetensors").write_bytes(pickle.dumps(CreatesMarker(marker)))
    latest = state_io.load_latest(ckpt_dir)
    assert latest.step == 3 and not marker.exists()


# ---------------------------------------------------------------------------------------- disk full

DISK_FULL = textwrap.dedent("""
    import errno, json, os, sys
    from pathlib import Path
    import torch
    from ssl3d_ros.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from ssl3d_ros.evaluation import replay
    from ssl3d_ros.training import state as state_io
    from builders import PRE, tiny_encoder

    disk, bag, ckpt = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    result = {}
    # 1. inference checkpoint: a small one fits, a 4 MB one does not
    path = disk / "model.safetensors"
    save_checkpoint(path, tiny_encoder(), preprocessing=PRE)
    before = path.read_bytes()
    try:
        save_checkpoint(path, tiny_encoder(seed=3), preprocessing=PRE, extra_tensors={"big": torch.zeros(1_000_000)})
        result["checkpoint"] = "no error"
    except CheckpointError as exc:
        result["checkpoint"] = str(exc)
    result["checkpoint_intact"] = path.read_bytes() == before and load_checkpoint(path).encoder is not None
    # 2. training state: the same
    state_io.save_state(disk / "ckpts", 1, {"w": torch.ones(10)}, {"state": {}, "param_groups": []}, {})
    try:
        state_io.save_state(disk / "ckpts", 2, {"w": torch.ones(1_000_000)}, {"state": {}, "param_groups": []}, {})
        result["state"] = "no error"
    except OSError as exc:
        result["state"] = f"{type(exc).__name__}: errno {exc.errno}: {exc}"
    result["state_latest"] = state_io.load_latest(disk / "ckpts").step
    # 3. replay report: a first one is written, then the disk is filled and a second one fails
    out = disk / "report"
    result["replay_first_rc"] = replay.main([bag, "--checkpoint", ckpt, "--offline", "--out", str(out)])
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    result["replay_second_rc"] = replay.main([bag, "--checkpoint", ckpt, "--offline", "--out", str(out),
                                              "--max-frames", "1"])
    result["replay_intact"] = {p.name: p.read_bytes() for p in out.iterdir()} == first
    # 4. pretraining onto the full disk: a clear error, not a traceback
    import tempfile, yaml
    from ssl3d_ros.training import pretrain
    from builders import tiny_config
    config = Path(tempfile.mkdtemp()) / "mae.yaml"
    config.write_text(yaml.safe_dump(tiny_config("mae", disk / "run", steps=2).to_dict()))
    result["pretrain_rc"] = pretrain.main(["--config", str(config), "--no-progress"])
    result["report_files"] = sorted(first)
    result["leftovers"] = sorted(str(p) for p in disk.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp"))
    print("RESULT " + json.dumps(result))
""")


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "nano.safetensors", with_head=True, with_pca=False)


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory) -> Path:
    from ssl3d_ros.io.rosbag import BagWriter

    path = tmp_path_factory.mktemp("bag") / "three"
    with BagWriter(path) as writer:
        for k in range(3):
            scan = sim_scan(seed=k, beams=16, columns=128)
            scan.stamp_ns = 1_700_000_000_000_000_000 + k * 100_000_000
            writer.write_scan("/points", scan)
    return path


def test_disk_full_gives_a_clear_error_and_keeps_earlier_outputs(tmp_path, small_bag, small_checkpoint):
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "disk_full.py"
    script.write_text(DISK_FULL)
    command = (f'mount -t tmpfs -o size=3m tmpfs "$1" && exec "{sys.executable}" "$2" "$1" "$3" "$4"')
    try:
        result = subprocess.run(["unshare", "--mount", "--", "sh", "-c", command, "sh", str(disk), str(script),
                                 str(small_bag), str(small_checkpoint)],
                                capture_output=True, text=True, timeout=300, env=_env())
    except FileNotFoundError:
        pytest.skip("unshare (util-linux) is not installed")  # noqa
    if result.returncode != 0 and ("Operation not permitted" in result.stderr or "permission denied" in result.stderr.lower()):
        pytest.skip(f"no private mount namespace with a tmpfs here: {result.stderr.strip()[-300:]}")
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stdout[-3000:] + result.stderr[-3000:]
    got = json.loads(lines[-1][len("RESULT "):])
    assert "model.safetensors: could not write checkpoint (No space left on device)" in got["checkpoint"]
    assert "earlier file at this path is unchanged" in got["checkpoint"]
    assert got["checkpoint_intact"] is True
    assert got["state"].startswith("StateWriteError: errno 28"), got["state"]
    assert "state-00000002.safetensors: could not write training state (No space left on device)" in got["state"]
    assert got["state_latest"] == 1
    assert got["replay_first_rc"] == 0 and got["replay_second_rc"] == 1
    assert "cannot write the report" in result.stderr and "No space left on device" in result.stderr
    assert got["replay_intact"] is True
    assert got["pretrain_rc"] == 1 and "ssl3d-pretrain: " in result.stderr
    assert "Traceback" not in result.stderr
    assert {"replay.json", "replay.md", "latency_histogram.png", "latency_timeline.png"} <= set(got["report_files"])
    assert got["leftovers"] == []  # no temporary file or staging folder left on the full disk
    assert not disk.joinpath("model.safetensors").exists()  # the tmpfs lived only in the namespace


# --------------------------------------------------------------- damaged bag through ssl3d-replay


def test_replay_of_a_damaged_bag_at_hostile_paths(tmp_path, small_checkpoint):
    """A corrupt record, a cloud the node rejects and a topic of another type: the readable frames are
    processed and the bad ones counted; bag, checkpoint and output paths are used literally."""
    from ssl3d_ros.io.rosbag import POINTCLOUD2, BagWriter, default_typestore, scan_to_cloud_message

    root = tmp_path / HOSTILE
    root.mkdir()
    ckpt = root / "model $(id).safetensors"
    ckpt.write_bytes(small_checkpoint.read_bytes())
    bag = root / "bag;ls"
    store = default_typestore()
    scans = [sim_scan(seed=k, beams=16, columns=128) for k in range(3)]
    t0 = 1_700_000_000_000_000_000
    with BagWriter(bag) as writer:
        for k, scan in enumerate(scans):
            scan.stamp_ns = t0 + k * 100_000_000
            writer.write_scan("/points", scan)
        writer.write_serialized("/points", POINTCLOUD2, b"\x00\x01\x00\x00garbage-not-cdr", t0 + 50_000_000)
        short = scan_to_cloud_message(scans[0], store)
        short.data = short.data[: len(short.data) // 2]
        writer.write_message("/points", POINTCLOUD2, short, t0 + 150_000_000)
        writer.write_message("/status", "std_msgs/msg/String", store.types["std_msgs/msg/String"](data="x"), t0 + 1)
    out = root / "report `touch SHELL_RAN_4`"
    executable = Path(sys.executable).with_name("ssl3d-replay")
    program = [str(executable)] if executable.exists() else [sys.executable, "-m", "ssl3d_ros.evaluation.replay"]
    result = subprocess.run([*program, str(bag), "--checkpoint", str(ckpt), "--offline", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=root, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "replay.json").read_text())
    assert report["frames_in_bag"] == 5 and report["topic"] == "/points"  # /status is not a cloud: not read
    assert (report["outputs"], report["rejected"], report["unreadable"]) == (3, 1, 1)
    assert [f["status"] for f in report["frames"]] == ["ok", "unreadable", "ok", "rejected", "ok"]
    assert "unreadable 1" in result.stdout and "frame 1 unreadable" in result.stderr
    for where in (root, tmp_path, Path.cwd()):
        assert not list(where.glob("SHELL_RAN_*"))


def test_a_truncated_bag_keeps_its_readable_messages(small_bag, tmp_path):
    """A recorder killed mid-write: rosbags cannot open the .mcap (no summary/footer); the record scan
    of ssl3d_ros/io/bag_recovery.py keeps the messages before the cut and counts the cut one once."""
    import shutil

    from ssl3d_ros.io import SkipStats, iter_scans, open_source

    cut = tmp_path / "cut"
    shutil.copytree(small_bag, cut)
    (storage,) = cut.glob("*.mcap")
    storage.write_bytes(storage.read_bytes()[: storage.stat().st_size * 2 // 3])
    stats = SkipStats()
    source = open_source(cut)
    read = list(iter_scans(source, stats=stats))
    assert len(read) >= 1 and stats.skipped == 1 and "truncated mcap" in stats.reasons[0][1]
    assert source.truncated
    with open_source(small_bag) as full:
        for got, k in zip(read, range(len(full))):
            np.testing.assert_array_equal(got.points, full[k].points)


# ------------------------------------------------------------------------- node start-up refusals


@needs_netns
def test_the_node_refuses_bad_checkpoints_naming_file_and_problem(tmp_path, small_checkpoint):
    from builders import PARAMS, node_command as _node_command, ros_env as _ros_env

    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    good = small_checkpoint.read_bytes()
    marker = tmp_path / "pwned"
    cases = {
        "missing.safetensors": (None, "checkpoint file not found"),
        "truncated.safetensors": (good[: len(good) // 2], "truncated: tensor data needs"),
        "pickle.safetensors": (pickle.dumps({"w": CreatesMarker(marker)}, protocol=4),
                               "a Python pickle, not a safetensors checkpoint; refusing"),
    }
    from builders import rewrite

    from safetensors.torch import load_file

    tensors = dict(load_file(small_checkpoint))
    name = next(k for k in sorted(tensors) if k.startswith("encoder.") and tensors[k].ndim >= 2)
    tensors[name] = torch.zeros((tensors[name].shape[0] + 1, *tensors[name].shape[1:]))  # weights of another model
    mismatched = rewrite(small_checkpoint, tmp_path / "mismatched.safetensors", tensors=tensors)
    cases["mismatched.safetensors"] = (mismatched.read_bytes(), "encoder weights do not match the architecture "
                                       "in the metadata: shape mismatch")
    procs = {}
    for name, (content, _) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        procs[name] = subprocess.Popen(_node_command(params, path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, env=_ros_env())
    for name, (_, problem) in cases.items():
        stdout, stderr = procs[name].communicate(timeout=240)
        assert procs[name].returncode == 2, (name, stderr[-2000:])
        assert "invalid configuration, not starting" in stderr
        assert f"{tmp_path / name}: " in stderr and problem in stderr, (name, stderr[-2000:])
        assert "Traceback" not in stderr
    assert not marker.exists()


# ------------------------------------------------------------------------------- out of memory


@needs_netns
def test_out_of_memory_during_a_frame_is_skipped_counted_and_the_node_goes_on(small_checkpoint):
    """The real node class in this process, its model call made to raise torch.OutOfMemoryError once
    (CUDA OOM cannot happen on this machine): that frame is skipped and counted, the next is processed."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import PointCloud2, PointField

    from ssl3d_ros.codec import decode_cloud, encode_cloud, fill_cloud_message
    from ssl3d_ros.node import PerceptionNode
    from ssl3d_ros.perception import PerceptionPipeline
    from builders import ros_env as _ros_env

    _ros_env()
    context = rclpy.Context()
    rclpy.init(context=context)
    node = PerceptionNode(context=context, parameter_overrides=[
        Parameter("checkpoint", value=str(small_checkpoint)), Parameter("device", value="cpu")])
    listener = rclpy.create_node("oom_listener", context=context)
    received = []
    listener.create_subscription(PointCloud2, "/ssl3d_perception/output/segmentation", received.append, 10)
    executor = MultiThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(listener)
    import threading

    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while node.publishers_by_output["segmentation"].get_subscription_count() < 1:
            assert time.monotonic() < deadline, "listener never matched"
            time.sleep(0.05)
        calls = {"n": 0}
        real_forward = node.pipeline.encoder.forward

        def forward(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (fault injected)")
            return real_forward(*args, **kwargs)

        node.pipeline.encoder.forward = forward
        scan = sim_scan(seed=4, beams=16, columns=256)
        msgs = []
        for k in range(2):
            msg = fill_cloud_message(PointCloud2(), encode_cloud(scan.points, {"intensity": scan.fields["intensity"]}),
                                     PointField)
            msg.header.frame_id, msg.header.stamp.sec = "lidar", 100 + k
            msgs.append(msg)
        node._on_cloud(msgs[0])  # what the subscription calls with each received cloud
        deadline = time.monotonic() + HANG_GUARD_S
        while node.stats.errors < 1:
            assert time.monotonic() < deadline, "the out-of-memory frame was never counted"
            time.sleep(0.02)
        node._on_cloud(msgs[1])
        while not any(m.header.stamp.sec == 101 for m in received):
            assert time.monotonic() < deadline, "no output after the out-of-memory frame"
            time.sleep(0.05)
        assert node.stats.out_of_memory == 1 and node.stats.errors == 1 and node.stats.processed == 1
        assert "out of memory on cpu" in node.stats.last_error
        assert node._worker.is_alive()
        values = {kv.key: kv.value for kv in node.diagnostic_status().values}
        assert values["frames_out_of_memory"] == "1" and values["frames_errors"] == "1"
        out = next(m for m in received if m.header.stamp.sec == 101)
        offline = PerceptionPipeline.from_checkpoint(small_checkpoint, device="cpu")
        expected = offline.process_cloud(msgs[1]).result.class_id
        assert np.mean(np.asarray(decode_cloud(out).field_values("class_id")) == expected) >= 0.999
        assert not any(m.header.stamp.sec == 100 for m in received)
    finally:
        executor.shutdown()
        node.destroy_node()
        listener.destroy_node()
        rclpy.try_shutdown(context=context)
