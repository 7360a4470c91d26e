"""Real test inputs shared by several test modules: checkpoints written to disk and simulated scans."""
from __future__ import annotations

import contextlib

import torch

from ssl3d_ros.scan import Scan

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
