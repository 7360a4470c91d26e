"""Real test inputs and helpers shared by several test modules: checkpoints written to disk, simulated
scans, tiny training configs, and the node's test parameters and command line. Test modules import
from here (or get fixtures from conftest.py), never from each other."""
from __future__ import annotations

import contextlib
import csv
import functools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ssl3d_ros.models.encoder import EncoderConfig, SparseEncoder
from ssl3d_ros.preprocessing import PreprocessConfig, feature_channels
from ssl3d_ros.scan import Scan

if TYPE_CHECKING:
    from ssl3d_ros.training.config import PretrainConfig

# The simulator's outdoor label space (ssl3d_ros.sim.scenes.OUTDOOR_CLASSES), spelled out so a
# change there does not silently change what these tests check.
CLASS_NAMES = ("unlabeled", "road", "sidewalk", "terrain", "building", "vegetation", "trunk", "car", "pole",
               "traffic-sign", "person", "fence")


def make_checkpoint(path, *, with_head: bool = True, with_pca: bool = True, seed: int = 0):
    """A real checkpoint file: randomly initialised nano encoder (+ linear head, + PCA basis)."""
    from ssl3d_ros.checkpoint import save_checkpoint
    from ssl3d_ros.models.encoder import EncoderConfig, SparseEncoder
    from ssl3d_ros.models.heads import LinearSegHead, PCAProjection
    from ssl3d_ros.preprocessing import PreprocessConfig

    torch.manual_seed(seed)
    # 0.5 m voxels keep a real 30k-point scan to a few thousand voxels: fast on a busy 2-core CPU.
    pre = PreprocessConfig(voxel_size=0.5, min_range=0.5, max_range=60.0, features=("xyz", "intensity"),
                           coord_scale=20.0)
    encoder = SparseEncoder(EncoderConfig(size="nano", in_channels=4))
    channels = encoder.hypercolumn_channels
    head = LinearSegHead(channels, len(CLASS_NAMES)) if with_head else None
    pca = PCAProjection.fit(torch.randn(400, channels), 8) if with_pca else None
    colors = [(i * 20, 255 - i * 20, (i * 67) % 256) for i in range(len(CLASS_NAMES))]
    return save_checkpoint(
        path, encoder, preprocessing=pre, classes={"names": list(CLASS_NAMES), "colors": colors},
        seg_head=head, pca=pca, recipe={"name": "random-init (tests)"},
    )


def sim_scan(seed: int = 0, index: int = 0, beams: int = 16, columns: int = 512) -> Scan:
    """A small simulated LiDAR scan (intensity 0..1, ring, time), frame 'lidar'."""
    from ssl3d_ros.sim import SimConfig, simulate_sequence, with_lidar

    cfg = with_lidar(SimConfig(), beams=beams, columns=columns)
    return list(simulate_sequence(cfg, index + 1, seed=seed))[index]


# A depth camera 1.5 m up on base_link, looking along base x: its optical frame (x right, y down, z
# forward) in base_link. Right angles: the rotation is an exact signed permutation, so the camera's
# cloud moved into base_link equals, bit for bit, the same cloud given in z-up (DEPTH_MOUNT_ROTATION).
DEPTH_MOUNT = {"base_frame": "base_link", "sensor_xyz": [0.0, 0.0, 1.5], "sensor_rpy": [-np.pi / 2, 0.0, -np.pi / 2]}
DEPTH_MOUNT_ROTATION = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # base <- optical
DEPTH_FRAME = "depth_optical_frame"


@functools.lru_cache(maxsize=1)
def depth_camera_clouds(seed: int = 0, index: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A simulated 480x640 depth image of the outdoor street, level, 1.5 m up (``DEPTH_MOUNT``):
    ``(optical, zup, labels)``, the organized (480*640, 3) float32 cloud in the optical frame (NaN
    where no return), the same cloud in base_link (z up) and the simulator's labels (0 = none)."""
    from ssl3d_ros.sim import DepthCamera, SimConfig, build_world

    camera = DepthCamera(width=640, height=480, max_range=15.0, mount_height=1.5, tilt_deg=0.0,
                         frame_id=DEPTH_FRAME)
    frame = build_world(SimConfig(scene="outdoor", depth_camera=camera), seed=seed, duration_s=1.0).depth_frame(index)
    optical = frame.points.reshape(-1, 3)
    zup = (optical.astype(np.float64) @ DEPTH_MOUNT_ROTATION.T + np.asarray(DEPTH_MOUNT["sensor_xyz"])).astype(np.float32)
    return optical, zup, frame.labels.reshape(-1)


def ground_and_boxes(n: int = 3000, seed: int = 0) -> Scan:
    """A small LiDAR-like scene: ground plane plus two boxes, with ring and intensity fields."""
    rng = np.random.default_rng(seed)
    ground = np.c_[rng.uniform(-10, 10, (n // 2, 2)), rng.normal(-1.7, 0.01, n // 2)]
    box = rng.uniform([2, 2, -1.7], [4, 3, 0.5], (n - n // 2, 3))
    pts = np.concatenate([ground, box]).astype(np.float32)
    ring = (np.arange(n) % 16).astype(np.uint16)
    return Scan(pts, {"intensity": rng.uniform(0, 1, n).astype(np.float32), "ring": ring}, intensity_scale=1.0, source=f"synthetic#{seed}")


@contextlib.contextmanager
def single_thread():
    """spconv 2.3.8's CPU kernels race when torch runs several threads (outputs change from run to run,
    see traveller59/spconv#679); comparisons against spconv run single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# ------------------------------------------------------------------------------- small checkpoints

PRE = PreprocessConfig(voxel_size=0.4, features=("xyz", "intensity"), coord_scale=5.0, intensity_scale=255.0)


def tiny_encoder(seed: int = 0) -> SparseEncoder:
    torch.manual_seed(seed)
    cfg = EncoderConfig.preset(
        "nano", in_channels=feature_channels(PRE), stem_channels=8, stage_channels=(8, 16), stage_depths=(1, 1),
        attention_stages=(1,), decoder_channels=(8, 16), patch_size=32,
    )
    return SparseEncoder(cfg).eval()


def rewrite(src: Path, dst: Path, *, tensors=None, document=None) -> Path:
    """Re-save a checkpoint as plain safetensors with edited tensors or JSON (the 'tampered file')."""
    from safetensors.torch import load_file, save_file

    from ssl3d_ros.checkpoint import METADATA_KEY, read_metadata

    tensors = dict(load_file(src)) if tensors is None else tensors
    document = read_metadata(src) if document is None else document
    save_file(tensors, dst, metadata={METADATA_KEY: json.dumps(document)})
    return dst


# ------------------------------------------------------------------------------- tiny training runs

SCENE = {"scene": {"count": 1, "crop_points": 1500, "center_jitter": 0.5}}
TINY_VIEWS: dict[str, dict[str, Any]] = {
    "sonata": {"global": {"count": 2, "crop_points": 1500, "center_jitter": 0.5},
               "local": {"count": 1, "crop_points": 500, "center_jitter": 2.0}},
    "msm": {"student": {"count": 1, "crop_points": 1500, "center_jitter": 0.5},
            "teacher": {"count": 1, "crop_points": 1500, "center_jitter": 0.5}},
    "jepa": SCENE,
    "mae": SCENE,
}


def tiny_config(recipe: str, out_dir: Path, steps: int = 6, sources=("sim:outdoor:4",), **run: Any) -> PretrainConfig:
    """Tiny sizes (16-beam sim LiDAR, 0.2 m voxels, nano encoder): each run takes seconds on a CPU."""
    from ssl3d_ros.training.config import config_from_dict

    if recipe == "acl":
        rec = {"name": "acl", "base": "mae", "base_config": {"views": SCENE}, "contrast_warmup": 2, "contrast_ramp": 2}
    else:
        rec = {"name": recipe, "views": TINY_VIEWS[recipe]}
    return config_from_dict({
        "data": {"sources": list(sources), "sim_lidar": {"beams": 16, "columns": 256}},
        "preprocessing": {"voxel_size": 0.2, "features": ["xyz", "height", "intensity"], "coord_scale": 20.0},
        "encoder": {"size": "nano", "backend": "torch"},
        "recipe": rec,
        "optim": {"lr": 2e-3, "warmup_steps": 3, "ema_momentum": 0.996},
        "run": {"steps": steps, "batch_size": 2, "workers": 0, "checkpoint_every": 3, "out_dir": str(out_dir),
                "threads": 1, "tensorboard": False, **run},
    })


def read_metrics(out_dir: Path) -> list[dict[str, float]]:
    with open(out_dir / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


# ------------------------------------------------------------------------------- the node over DDS

INPUT_TOPIC = "/ssl3d_test/points"
OUT = "/ssl3d_perception/output/"
DEBUG = "/ssl3d_perception/debug/"
STAMPED = [OUT + "segmentation", OUT + "embeddings", OUT + "visualization", OUT + "occupancy", OUT + "obstacles"]
# The node's parameters in the DDS tests: small grid, generous budgets (the machine is busy).
NODE_TEST_PARAMS = {
    "device": "cpu",
    "input": {"qos": {"reliability": "best_effort"}},
    "embeddings": {"per_voxel": False},  # per-point embeddings: every input point's row is compared with offline
    "occupancy": {"resolution": 1.0, "size_x": 80.0, "size_y": 80.0, "origin_x": -40.0, "origin_y": -40.0},
    "diagnostics": {"period_s": 0.5, "budget_ms": 5000.0, "error_budget_ms": 10000.0, "stale_after_s": 60.0},
}
# The node helpers import ssl3d_ros.evaluation.node_harness when used, not when this module is
# imported: scripts run in subprocesses import builders for checkpoints alone.


def __getattr__(name: str):
    if name == "PARAMS":  # NODE_TEST_PARAMS as a parameter file's text
        from ssl3d_ros.evaluation.node_harness import params_yaml

        return params_yaml(NODE_TEST_PARAMS)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def ros_env() -> dict[str, str]:
    """Localhost-only discovery, the large-data profile and a domain of this test process's own."""
    from ssl3d_ros.evaluation.node_harness import ros_environment

    return ros_environment(private_domain=True)


def node_command(params_file: Path, checkpoint: Path, *extra: str) -> list[str]:
    """The node's command line on the tests' input topic with this checkpoint."""
    from ssl3d_ros.evaluation.node_harness import node_command as harness_node_command

    return harness_node_command([params_file], INPUT_TOPIC, "-p", f"checkpoint:={checkpoint}", *extra)


class StartedTogether:
    """Independent commands started at once and read back one at a time, so that start-ups which each
    import torch and rclpy run side by side on the machine's cores instead of one after another (a
    module fixture starts them; each parametrized test reads its own). ``result(key)`` waits for that
    command, bounded by ``timeout`` (a hang guard, not a speed check); ``close()`` kills any left."""

    def __init__(self, commands: dict[Any, list[str]], env: dict[str, str] | None = None, timeout: float = 240.0):
        self.timeout = timeout
        self._procs = {key: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                       for key, cmd in commands.items()}
        self._results: dict[Any, subprocess.CompletedProcess] = {}

    def result(self, key) -> subprocess.CompletedProcess:
        if key not in self._results:
            proc = self._procs[key]
            stdout, stderr = proc.communicate(timeout=self.timeout)
            self._results[key] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        return self._results[key]

    def close(self) -> None:
        for key, proc in self._procs.items():
            if key not in self._results:
                proc.kill()
                proc.communicate()


WRITE_PAUSE_GUARD_S = 240.0  # only stops a hung test: a paused writer is released by the test


def wait_for_pause(marker: Path, alive=lambda: True) -> Path:
    """Wait until a writer paused by the test hook created ``marker``; returns its temporary's path.
    ``alive()`` false (the writer died) fails at once instead of waiting for the hang guard."""
    deadline = time.monotonic() + WRITE_PAUSE_GUARD_S
    while not marker.exists():
        assert alive(), "the writer ended before it paused"
        assert time.monotonic() < deadline, f"no write paused within {WRITE_PAUSE_GUARD_S} s: the writer hangs"
        time.sleep(0.005)
    while True:  # created empty, then written: wait for the path
        text = marker.read_text()
        if text:
            return Path(text)
        time.sleep(0.005)


# What ../shared/data holds besides scans (its README): label files, label maps, poses, transforms.
NOT_SCANS = (".yaml", ".txt", ".csv", ".tsv", ".label", ".labels.npy", "_sem_label_all.npy", "_ins_label_all.npy")


def scan_files_in(folder: Path) -> list[Path]:
    """Every scan file under ``folder``, counted from the names rather than known in advance: the
    shared data grows."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(NOT_SCANS))


def simulated_sequences(root: Path, seeds: dict[str, int], scans: int) -> dict[str, str]:
    """Labelled sequence folders of .npy scans written by ssl3d-simulate (16 beams), one per name, the
    simulations side by side on both cores; returns name -> folder."""
    runs = {name: subprocess.Popen([sys.executable, "-m", "ssl3d_ros.sim.cli", "--scans", str(scans), "--seed", str(seed),
                                    "--beams", "16", "--columns", "256", "--npy-dir", str(root / name), "--quiet"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for name, seed in seeds.items()}
    for name, proc in runs.items():
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"ssl3d-simulate of sequence {name} failed: {output[-3000:]}"
    return {name: str(root / name) for name in runs}
