"""Pretraining data (ssl3d_ros.training.data): many rosbag2 bags (mcap and sqlite3, chosen PointCloud2
topics), KITTI-style folders and simulated streams read lazily, in DataLoader worker processes; the
resumable sample order, bad-scan skipping and sharding over ranks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl3d_ros.io.rosbag import BagWriter
from ssl3d_ros.preprocessing import PreprocessConfig
from ssl3d_ros.scan import Scan
from ssl3d_ros.sim import SimConfig, simulate_sequence, with_lidar
from ssl3d_ros.training.data import DataConfig, PretrainDataset, StepSampler, collate_samples, open_data
from ssl3d_ros.training.loop import train
from ssl3d_ros.training.views import ViewGroupConfig, ViewMaker

from builders import ground_and_boxes, tiny_config


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


# ------------------------------------------------------- sample order, bad scans, ranks


class FlakySource:
    """Scans 3 and 5 are unreadable (as a corrupt file would be); scan 6 has too few points."""

    def __init__(self, n=8):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        from ssl3d_ros.io import ScanReadError

        if i in (3, 5):
            raise ScanReadError(f"flaky#{i}", "corrupt")
        if i == 6:
            return Scan(np.zeros((5, 3), np.float32), {"intensity": np.zeros(5, np.float32)}, source="tiny")
        return ground_and_boxes(1200, seed=i)

    def describe(self, i):
        return f"flaky#{i}"


def test_dataset_order_is_deterministic_skips_bad_scans_and_shards():
    maker = ViewMaker({"a": ViewGroupConfig(count=1, crop_points=800)}, PreprocessConfig(voxel_size=0.2))
    ds = PretrainDataset(FlakySource(), maker, DataConfig(min_voxels=16), seed=3)
    # a permutation per epoch, every scan once
    first_epoch = [ds.scan_index(p) for p in range(8)]
    assert sorted(first_epoch) == list(range(8))
    assert [ds.scan_index(p) for p in range(8, 16)] != first_epoch
    samples = [ds[p] for p in range(8)]
    skipped = [s for sample in samples for s in sample.skipped]
    assert {d for d, _ in skipped} >= {"flaky#3", "flaky#5"} and len(skipped) >= 3
    assert all(len(s.views["a"][0].coord) >= 16 for s in samples)
    # same position, same views: resuming replays identical data
    again = ds[2]
    assert torch.equal(again.views["a"][0].coord, samples[2].views["a"][0].coord)
    batch = collate_samples(samples[:3])
    assert batch.views["a"][0].batch_size == 3 and batch.views["a"][0].coords[:, 0].max() == 2
    # two ranks see disjoint positions, together the single-rank stream
    r0, r1 = StepSampler(2, 4, 0, 0, 2), StepSampler(2, 4, 0, 1, 2)
    single = StepSampler(4, 4)
    for s in range(4):
        assert sorted(r0.positions(s) + r1.positions(s)) == single.positions(s)
    assert list(StepSampler(2, 5, start_step=3)) == [[6, 7], [8, 9]]


def test_dataset_gives_up_on_all_bad_sources():
    class Broken(FlakySource):
        def __getitem__(self, i):
            from ssl3d_ros.io import ScanReadError

            raise ScanReadError(f"b#{i}", "corrupt")

    maker = ViewMaker({"a": ViewGroupConfig()}, PreprocessConfig(voxel_size=0.2))
    ds = PretrainDataset(Broken(), maker, DataConfig(max_retries=3), seed=0)
    with pytest.raises(RuntimeError, match="4 consecutive scans were unusable"):
        ds[0]
