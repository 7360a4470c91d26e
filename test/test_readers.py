"""File readers on the real scans of ../shared/data, label files, .pcd/.ply round trips, corrupt input."""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from ssl3d_ros.io import (
    FileSource,
    ScanReadError,
    SkipStats,
    detect_format,
    iter_scans,
    open_source,
    open_sources,
)

from builders import scan_files_in  # noqa: E402


def kitti_files(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "lidar" / "kitti").glob("*.bin"))


# ----------------------------------------------------------------------------- real files


def test_kitti_bin_points_and_intensity_0_to_1(shared_data):
    source = open_source(shared_data / "lidar" / "kitti")
    assert len(source) == 2
    counts = []
    for scan in iter_scans(source, on_error="raise"):
        counts.append(len(scan))
        raw = np.fromfile(scan.source, dtype=np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(scan.points, raw[:, :3])
        assert scan.intensity_scale == 1.0
        assert scan.frame_id == "velodyne"
        assert scan.labels is None
        assert 0.0 <= scan.fields["intensity"].min() and scan.fields["intensity"].max() <= 1.0
    assert counts == [123266, 123488]


def test_nuscenes_pcd_bin_has_32_rings_and_stamp_from_name(shared_data):
    path = shared_data / "lidar" / "nuscenes" / "lidar_top_1532402927647951.pcd.bin"
    scan = open_source(path)[0]
    assert len(scan) == 34688
    ring = scan.fields["ring"]
    assert ring.dtype == np.uint16
    np.testing.assert_array_equal(np.unique(ring), np.arange(32))
    assert scan.intensity_scale == 255.0
    assert scan.fields["intensity"].max() <= 255.0 and scan.fields["intensity"].max() > 1.0
    assert scan.stamp_ns == 1532402927647951 * 1000


def test_ouster_folder_ten_scans_reflectivity_0_to_255(shared_data):
    source = open_source(shared_data / "lidar" / "ouster")
    assert len(source) == 10
    assert all(e.fmt == "ouster" for e in source.entries)
    for scan in iter_scans(source, on_error="raise"):
        assert 16_000 <= len(scan) <= 120_000
        assert scan.intensity_scale == 255.0
        assert scan.frame_id == "os_sensor"
        assert scan.fields["intensity"].max() <= 255.0
    # reflectivity clearly uses the 0..255 scale, unlike KITTI's 0..1
    assert max(float(s.fields["intensity"].max()) for s in iter_scans(source)) > 100


def test_semantickitti_npy_points_with_learning_labels(shared_data):
    path = shared_data / "lidar" / "semantickitti" / "000700.points.npy"
    source = open_source(path)
    assert source.entries[0].label_path.endswith("000700.labels.npy")
    scan = source[0]
    assert len(scan) == 85962
    assert scan.labels.dtype == np.int32
    assert scan.labels.min() >= 0 and scan.labels.max() <= 19
    assert len(np.unique(scan.labels)) > 5
    assert scan.frame_id == "" and scan.fields == {}  # the file does not say (it is world-frame)


def test_points_npy_with_intensity_and_meta_json(tmp_path):
    points = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    labels = np.arange(50, dtype=np.int32)[:, None] % 5
    np.save(tmp_path / "000000.points.npy", points)
    np.save(tmp_path / "000000.labels.npy", labels)
    scan = open_source(tmp_path)[0]
    np.testing.assert_array_equal(scan.fields["intensity"], points[:, 3])
    np.testing.assert_array_equal(scan.labels, labels[:, 0])
    assert scan.intensity_scale is None and scan.frame_id == ""

    other = tmp_path / "sim"
    other.mkdir()
    np.save(other / "000001.points.npy", points)
    (other / "meta.json").write_text('{"frame_id": "lidar", "intensity_scale": 1.0}')
    scan = open_source(other)[0]
    assert (scan.frame_id, scan.intensity_scale, scan.labels) == ("lidar", 1.0, None)


def test_scannet_vertices_rgb_and_nyu40_labels(shared_data):
    folder = shared_data / "indoor" / "scannet"
    source = open_source(folder)
    assert len(source) == 1  # label files and the .tsv are not scans
    scan = source[0]
    assert len(scan) == 81369
    rgb = scan.fields["rgb"]
    assert rgb.dtype == np.uint8 and rgb.shape == (81369, 3)
    vert = np.load(folder / "scene0000_00_vert_all.npy")
    np.testing.assert_array_equal(rgb, vert[:, 3:6].astype(np.uint8))
    expected = np.load(folder / "scene0000_00_sem_label_all.npy").astype(np.int32)
    np.testing.assert_array_equal(scan.labels, expected)
    assert scan.labels.min() >= 0 and scan.labels.max() <= 40


def test_lidar_folder_indexes_every_file_lazily(shared_data):
    source = open_source(shared_data / "lidar")
    expected = scan_files_in(shared_data / "lidar")
    assert len(expected) >= 2 + 1 + 10 + 1  # the scans the README listed first
    assert sorted(Path(e.path) for e in source.entries) == expected  # each once, no label file
    formats = {e.fmt for e in source.entries}
    assert {"kitti", "nuscenes", "ouster", "semantickitti_npy"} <= formats
    # the source is a picklable index: a DataLoader worker reads the same scan from its copy
    copy = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(copy[5].points, source[5].points)
    assert copy.describe(5) == source.describe(5)
    both = open_sources([shared_data / "lidar" / "kitti", shared_data / "indoor" / "scannet"])
    assert len(both) == 3 and both.describe(-1).endswith("_vert_all.npy")
    assert len(both[2]) == 81369


def test_explicit_format_overrides_name(shared_data):
    path = kitti_files(shared_data)[0]
    assert detect_format(path) == "kitti"
    scan = open_source(path, fmt="ouster")[0]
    assert scan.intensity_scale == 255.0


# ----------------------------------------------------------------------------- label files


def test_semantickitti_label_file_lower_16_bits(shared_data, tmp_path):
    scan_file = kitti_files(shared_data)[0]
    velodyne = tmp_path / "sequences" / "00" / "velodyne"
    labels_dir = tmp_path / "sequences" / "00" / "labels"
    velodyne.mkdir(parents=True)
    labels_dir.mkdir()
    (velodyne / "000000.bin").symlink_to(scan_file)
    n = os.path.getsize(scan_file) // 16
    semantic = np.arange(n, dtype=np.uint32) % 260
    instance = np.arange(n, dtype=np.uint32) % 7
    (semantic | (instance << 16)).astype("<u4").tofile(labels_dir / "000000.label")

    scan = open_source(tmp_path)[0]
    np.testing.assert_array_equal(scan.labels, semantic.astype(np.int32))

    (semantic[:-1]).astype("<u4").tofile(labels_dir / "000000.label")  # one label short
    with pytest.raises(ScanReadError, match="labels for"):
        open_source(tmp_path)[0]


# ----------------------------------------------------------------------------- .pcd / .ply


@pytest.mark.parametrize("suffix", [".pcd", ".ply"])
def test_open3d_round_trip_keeps_attributes(tmp_path, suffix):
    o3d = pytest.importorskip("open3d")
    rng = np.random.default_rng(0)
    n = 500
    xyz = rng.normal(size=(n, 3)).astype(np.float32)
    intensity = rng.uniform(0, 255, size=n).astype(np.float32)
    rgb = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    normals = rng.normal(size=(n, 3)).astype(np.float32)
    labels = rng.integers(0, 20, size=n).astype(np.int32)
    cloud = o3d.t.geometry.PointCloud()
    cloud.point.positions = o3d.core.Tensor(xyz)
    cloud.point.intensity = o3d.core.Tensor(intensity[:, None])
    cloud.point.colors = o3d.core.Tensor(rgb)
    cloud.point.normals = o3d.core.Tensor(normals)
    cloud.point.label = o3d.core.Tensor(labels[:, None])
    path = tmp_path / f"cloud{suffix}"
    assert o3d.t.io.write_point_cloud(str(path), cloud)

    scan = open_source(path)[0]
    np.testing.assert_array_equal(scan.points, xyz)
    np.testing.assert_array_equal(scan.fields["intensity"], intensity)
    np.testing.assert_array_equal(scan.fields["rgb"], rgb)
    np.testing.assert_allclose(scan.fields["normal"], normals, rtol=1e-6)
    np.testing.assert_array_equal(scan.labels, labels)
    assert set(scan.fields) == {"intensity", "rgb", "normal"}


def test_unreadable_pcd_is_a_scan_read_error(tmp_path):
    pytest.importorskip("open3d")
    path = tmp_path / "broken.pcd"
    path.write_bytes(b"this is not a point cloud\x00\x01\x02")
    with pytest.raises(ScanReadError, match="broken.pcd"):
        open_source(path)[0]


# ----------------------------------------------------------------------------- corrupt input


def test_truncated_bin_is_skipped_and_counted(shared_data, tmp_path, caplog):
    good = kitti_files(shared_data)[0]
    (tmp_path / "000000.bin").symlink_to(good)
    data = good.read_bytes()
    (tmp_path / "000001.bin").write_bytes(data[: len(data) // 2 + 6])  # cut mid-record
    source = open_source(tmp_path)
    assert len(source) == 2

    with pytest.raises(ScanReadError, match="not a multiple of the 16-byte record") as info:
        source[1]
    assert info.value.path.endswith("000001.bin")
    # the error survives pickling (DataLoader workers send exceptions back to the main process)
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.path, again.reason) == (info.value.path, info.value.reason)

    stats = SkipStats()
    with caplog.at_level(logging.WARNING, logger="ssl3d_ros.io.source"):
        scans = list(iter_scans(source, on_error="skip", stats=stats))
    assert [len(s) for s in scans] == [123266]
    assert stats.skipped == 1 and stats.reasons[0][0].endswith("000001.bin")
    assert "000001.bin" in caplog.text
    with pytest.raises(ScanReadError):
        list(iter_scans(source, on_error="raise"))


def test_truncated_npy_and_wrong_shapes(tmp_path):
    points = np.arange(30, dtype=np.float32).reshape(10, 3)
    np.save(tmp_path / "whole.npy", points)
    raw = (tmp_path / "whole.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:-7])
    np.save(tmp_path / "flat.npy", np.arange(10, dtype=np.float32))
    np.save(tmp_path / "xyzi.npy", np.ones((4, 4), dtype=np.float64))

    scan = open_source(tmp_path / "whole.npy")[0]
    np.testing.assert_array_equal(scan.points, points)
    with pytest.raises(ScanReadError, match="cut.npy"):
        open_source(tmp_path / "cut.npy")[0]
    with pytest.raises(ScanReadError, match=r"shape \(N, >=3\)"):
        open_source(tmp_path / "flat.npy")[0]
    xyzi = open_source(tmp_path / "xyzi.npy")[0]
    assert xyzi.fields["intensity"].dtype == np.float32 and xyzi.intensity_scale is None

    stats = SkipStats()
    assert len(list(iter_scans(open_source(tmp_path), stats=stats))) == 2
    assert stats.skipped == 2


def test_bad_paths_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_source(tmp_path / "missing.bin")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a recognised scan file"):
        open_source(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="no scan files"):
        open_source(tmp_path)
    with pytest.raises(IndexError):
        FileSource([])[0]


def test_nuscenes_lidarseg_labels_by_explicit_entry(shared_data, tmp_path):
    from ssl3d_ros.io import FileEntry

    path = shared_data / "lidar" / "nuscenes" / "lidar_top_1532402927647951.pcd.bin"
    labels = (np.arange(34688) % 32).astype(np.uint8)
    label_file = tmp_path / "token_lidarseg.bin"
    labels.tofile(label_file)
    assert detect_format(label_file) is None  # a label file is never taken for a KITTI scan
    scan = FileSource([FileEntry(str(path), "nuscenes", str(label_file))])[0]
    np.testing.assert_array_equal(scan.labels, labels.astype(np.int32))
    labels[:-1].tofile(label_file)
    with pytest.raises(ScanReadError, match="34687 labels for 34688 points"):
        FileSource([FileEntry(str(path), "nuscenes", str(label_file))])[0]
