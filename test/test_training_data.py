"""Pretraining reads many rosbag2 bags (mcap and sqlite3, chosen PointCloud2 topics), KITTI-style
folders and simulated streams lazily, in DataLoader worker processes."""
from __future__ import annotations

import numpy as np

from ssl3d_ros.io.rosbag import BagWriter
from ssl3d_ros.sim import SimConfig, simulate_sequence, with_lidar
from ssl3d_ros.training.data import DataConfig, open_data
from ssl3d_ros.training.loop import train

from builders import tiny_config


def write_bags(root):
    scans = list(simulate_sequence(with_lidar(SimConfig(), beams=16, columns=256), 5, seed=2))
    paths = []
    for storage, chosen in (("mcap", scans[:3]), ("sqlite3", scans[3:])):
        path = root / f"bag_{storage}"
        with BagWriter(path, storage=storage) as writer:
            for scan in chosen:
                writer.write_scan("/lidar/points", scan)
                writer.write_scan("/lidar/ground_removed", scan.select(scan.points[:, 2] > -1.0))
        paths.append(str(path))
    return paths, scans


def test_sources_are_lazy_and_topics_selected(tmp_path):
    bags, scans = write_bags(tmp_path)
    kitti = tmp_path / "kitti" / "velodyne"
    kitti.mkdir(parents=True)
    for k, scan in enumerate(scans[:2]):
        np.c_[scan.points, scan.fields["intensity"]].astype(np.float32).tofile(kitti / f"{k:06d}.bin")
    source = open_data(DataConfig(sources=[*bags, str(tmp_path / "kitti"), "sim:indoor:3"], topics=["/lidar/points"]))
    assert len(source) == 5 + 2 + 3  # one topic of each bag, the .bin files, the simulated scans
    assert np.allclose(source[4].points, scans[4].points)  # second bag (sqlite3), its last message
    assert np.allclose(source[5].points, scans[0].points)  # KITTI .bin
    assert source.describe(9).startswith("sim:indoor")
    both = open_data(DataConfig(sources=bags))  # no topics: every PointCloud2 topic
    assert len(both) == 10


def test_pretrain_on_bags_in_worker_processes(tmp_path):
    bags, _ = write_bags(tmp_path)
    cfg = tiny_config("jepa", tmp_path / "run", steps=3, sources=bags, workers=2)
    cfg.data.topics = ["/lidar/points"]
    result = train(cfg, progress=False)
    assert result.completed and result.scans_skipped == 0
    assert (tmp_path / "run" / "encoder.safetensors").is_file()
