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


def test_scans_lacking_a_feature_field_are_skipped_once_then_passed_over():
    """Mixed data, features asking for intensity: the xyz-only scans are skipped and counted the first
    time each is met, then passed over without a new skip event (a user saw 170 skip events and 19 log
    lines for a handful of xyz-only scans). The samples are those the retry rule always gave: the same
    next scan, the same random stream."""
    from ssl3d_ros.preprocessing import PreprocessConfig
    from ssl3d_ros.scan import Scan
    from ssl3d_ros.training.data import PretrainDataset
    from ssl3d_ros.training.views import ViewGroupConfig, ViewMaker

    def scan(i: int, intensity: bool) -> Scan:
        rng = np.random.default_rng(i)
        pts = np.c_[rng.uniform(-8, 8, (1500, 2)), rng.normal(-1.7, 0.05, 1500)].astype(np.float32)
        fields = {"intensity": rng.uniform(0, 1, 1500).astype(np.float32)} if intensity else {}
        return Scan(pts, fields, intensity_scale=1.0 if intensity else None, source=f"s{i}")

    class Mixed:
        def __init__(self):
            self.scans = [scan(i, intensity=i % 3 != 0) for i in range(9)]  # 0, 3, 6: xyz only
            self.reads = 0

        def __len__(self):
            return len(self.scans)

        def __getitem__(self, i):
            self.reads += 1
            return self.scans[i]

        def describe(self, i):
            return f"s{i}"

    maker = ViewMaker({"a": ViewGroupConfig(count=1, crop_points=600)},
                      PreprocessConfig(voxel_size=0.2, features=("xyz", "intensity")))
    source = Mixed()
    ds = PretrainDataset(source, maker, DataConfig(min_voxels=16), seed=1)
    samples = [ds[p] for p in range(4 * len(source))]  # four epochs
    skipped = [name for s in samples for name, _ in s.skipped]
    assert sorted(skipped) == ["s0", "s3", "s6"]  # once each
    assert set(ds.unusable) == {0, 3, 6} and "needs field 'intensity'" in ds.unusable[0]
    assert source.reads == len(samples) + 3  # one read per sample, and each xyz-only scan read once
    # the same samples as a dataset that has to find out again at every position
    for p in (5, 13, 30):
        fresh = PretrainDataset(Mixed(), maker, DataConfig(min_voxels=16), seed=1)[p]
        assert np.array_equal(fresh.views["a"][0].coord.numpy(), samples[p].views["a"][0].coord.numpy())
