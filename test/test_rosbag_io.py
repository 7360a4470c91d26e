"""rosbag2 scan source and writer: the real Ouster mcap bag, mcap/sqlite3 round trips, damaged bags."""
from __future__ import annotations

import multiprocessing
import shutil
import struct
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import Reader

from ssl3d_ros.io import (
    BagSource,
    BagWriter,
    ScanReadError,
    SkipStats,
    TopicSelectionError,
    iter_scans,
    open_source,
    open_sources,
)
from ssl3d_ros.io.rosbag import POINTCLOUD2, default_typestore, scan_to_cloud_message
from ssl3d_ros.scan import Scan

OUSTER_BAG = Path("bags") / "ouster_real_pointcloud2_mcap"


def real_bag(shared_data: Path) -> Path:
    return shared_data / OUSTER_BAG


def scans_with_labels(shared_data: Path) -> list[Scan]:
    """Real scans covering every field kind: intensity+ring, rgb, labels, a frame per sensor."""
    lidar, indoor = shared_data / "lidar", shared_data / "indoor"
    nuscenes = open_source(lidar / "nuscenes" / "lidar_top_1532402927647951.pcd.bin")[0]
    semantic = open_source(lidar / "semantickitti" / "000700.points.npy")[0]
    scannet = open_source(indoor / "scannet" / "scene0000_00_vert_all.npy")[0]
    # keep the bags small: every 4th point is plenty to compare values and dtypes
    scans = [s.select(np.arange(0, len(s), 4)) for s in (nuscenes, semantic, scannet)]
    scans[1].frame_id = "world"  # SemanticKITTI's demo scan has the pose applied (README)
    for k, scan in enumerate(scans):
        scan.stamp_ns = 1_700_000_000_000_000_000 + k * 100_000_000 + 7  # odd nanoseconds survive
    return scans


def assert_same_scan(read: Scan, written: Scan) -> None:
    np.testing.assert_array_equal(read.points, written.points)
    assert set(read.fields) == set(written.fields)
    for name, values in written.fields.items():
        assert read.fields[name].dtype == values.dtype, name
        np.testing.assert_array_equal(read.fields[name], values, err_msg=name)
    if written.labels is None:
        assert read.labels is None
    else:
        np.testing.assert_array_equal(read.labels, written.labels)
    assert (read.frame_id, read.stamp_ns, read.intensity_scale) == (
        written.frame_id, written.stamp_ns, written.intensity_scale)


# ----------------------------------------------------------------------------- the real bag


def test_real_mcap_bag_ten_scans_over_eight_topics(shared_data):
    source = open_source(real_bag(shared_data))
    assert isinstance(source, BagSource)
    assert len(source) == 10 and len(source.topics) == 8
    assert source.message_counts["/ouster/os_1_128_v2_3_0_1024x10_lb_n3/points"] == 3
    base = 1_700_000_000 * 10**9
    assert all((s - base) % 100_000_000 == 0 and 0 <= s - base <= 200_000_000 for s in source.stamps_ns)
    lb = [i for i in range(len(source)) if "lb_n3" in source.topic(i)]
    assert [int(source.stamps_ns[i]) - base for i in lb] == [0, 100_000_000, 200_000_000]
    for scan in iter_scans(source, on_error="raise"):
        assert scan.frame_id == "os_sensor"
        assert set(scan.fields) == {"intensity", "ring", "range"}
        assert scan.fields["ring"].dtype == np.uint16 and scan.fields["range"].dtype == np.uint32
        assert scan.stamp_ns >= base and "#" in scan.source


def test_real_bag_scans_equal_the_ouster_files(shared_data):
    """The bag holds the same real scans as lidar/ouster/*.xyzi.bin, frame k on message #k."""
    files = {}
    for path in (shared_data / "lidar" / "ouster").glob("*.xyzi.bin"):
        sensor, frame = path.name.split("_frame")
        files[(re.sub(r"[^a-z0-9]+", "_", sensor.lower()), int(frame[:2]))] = path
    source = open_source(real_bag(shared_data))
    for i in range(len(source)):
        sensor = source.topic(i).split("/")[2]
        frame = int(source.describe(i).rsplit("#", 1)[1])
        from_file = open_source(files[(sensor, frame)])[0]
        from_bag = source[i]
        np.testing.assert_array_equal(from_bag.points, from_file.points)
        np.testing.assert_array_equal(from_bag.fields["intensity"], from_file.fields["intensity"])


def test_topic_selection_and_explicit_scale(shared_data):
    topic = "/ouster/os_1_128_v2_3_0_1024x10_lb_n3/points"
    source = BagSource(real_bag(shared_data), topics=[topic], intensity_scale=255.0)
    assert len(source) == 3 and source.topics == [topic]
    assert source[2].intensity_scale == 255.0
    assert source.describe(-1).endswith(f"{topic}#2")
    with pytest.raises(TopicSelectionError, match="no topic '/nope'"):
        BagSource(real_bag(shared_data), topics=["/nope"])
    with pytest.raises(TopicSelectionError, match="empty topic list"):
        BagSource(real_bag(shared_data), topics=[])
    with pytest.raises(IndexError):
        source[3]


def test_shared_data_root_mixes_files_and_bags(shared_data):
    from builders import scan_files_in

    with Reader(real_bag(shared_data)) as reader:
        bag_messages = sum(c.msgcount for c in reader.connections if c.msgtype == POINTCLOUD2)
    source = open_source(shared_data)
    # lidar files, ScanNet, bag messages: counted, as the shared data grows
    expected = len(scan_files_in(shared_data / "lidar")) + len(scan_files_in(shared_data / "indoor")) + bag_messages
    assert bag_messages == 10 and len(source) == expected
    assert any(source.describe(i).endswith("lb_n3/points#2") for i in range(len(source)))


def _points_in_child(source: BagSource, index: int) -> tuple[int, float]:
    scan = source[index]
    return len(scan), float(scan.points.sum())


def test_bag_source_reopens_per_process(shared_data):
    source = open_source(real_bag(shared_data))
    expected = (len(source[4]), float(source[4].points.sum()))  # parent's reader is now open
    copy = pickle.loads(pickle.dumps(source))  # what a spawned DataLoader worker receives
    assert _points_in_child(copy, 4) == expected
    with multiprocessing.get_context("fork").Pool(1) as pool:  # inherits the parent's open reader
        assert pool.apply(_points_in_child, (source, 4)) == expected
    source.close()


# ----------------------------------------------------------------------------- writing


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_write_scans_with_labels_and_read_back(shared_data, tmp_path, storage):
    scans = scans_with_labels(shared_data)
    scans[0].intensity_scale = 255.0
    bag = tmp_path / f"out_{storage}"
    typestore = default_typestore()
    clock = typestore.types["rosgraph_msgs/msg/Clock"]
    stamp = typestore.types["builtin_interfaces/msg/Time"]
    with BagWriter(bag, storage=storage) as writer:
        for k, scan in enumerate(scans):
            sec, nsec = divmod(scan.stamp_ns, 10**9)
            writer.write_message("/clock", "rosgraph_msgs/msg/Clock", clock(clock=stamp(sec=sec, nanosec=nsec)),
                                 scan.stamp_ns)
            writer.write_scan("/lidar/points" if k == 0 else "/labelled/points", scan)
    assert writer.counts == {"/clock": 3, "/lidar/points": 1, "/labelled/points": 2}

    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 8 and meta["storage_identifier"] == storage and meta["message_count"] == 6
    assert {t["topic_metadata"]["type"] for t in meta["topics_with_message_count"]} == {
        POINTCLOUD2, "rosgraph_msgs/msg/Clock"}

    # plain rosbags reads it too, with the label field in the cloud
    with Reader(bag) as reader:
        conn = next(c for c in reader.connections if c.topic == "/labelled/points")
        _, _, raw = next(iter(reader.messages([conn])))
        msg = typestore.deserialize_cdr(raw, POINTCLOUD2)
        assert [(f.name, f.datatype) for f in msg.fields] == [("x", 7), ("y", 7), ("z", 7), ("label", 5)]
        assert msg.header.frame_id == "world" and msg.header.stamp.nanosec == 100_000_007

    source = open_source(bag, label_field="label")
    assert sorted(source.topics) == ["/labelled/points", "/lidar/points"]  # /clock skipped
    with pytest.raises(ScanReadError, match="label field 'label' not in cloud"):
        source[0]  # the nuScenes scan has no labels
    unlabelled = open_source(bag, topics=["/lidar/points"])
    assert_same_scan(unlabelled[0], scans[0])
    labelled = open_source(bag, topics=["/labelled/points"], label_field="label")
    for read, written in zip(iter_scans(labelled, on_error="raise"), scans[1:]):
        assert_same_scan(read, written)
    with pytest.raises(TopicSelectionError, match="carries rosgraph_msgs/msg/Clock"):
        open_source(bag, topics=["/clock"])


def test_uint16_labels_and_storage_file_path(shared_data, tmp_path):
    scan = scans_with_labels(shared_data)[1]
    bag = tmp_path / "u16"
    with BagWriter(bag) as writer:
        writer.write_scan("/points", scan, label_field="class_id", label_dtype=np.uint16)
    (storage_file,) = bag.glob("*.mcap")
    source = open_source(storage_file, label_field="class_id")  # a bare .mcap file works too
    msg = source.message(0)
    assert {f.name: f.datatype for f in msg.fields}["class_id"] == 4  # PointField.UINT16
    np.testing.assert_array_equal(source[0].labels, scan.labels)


def test_writer_refuses_bad_input(shared_data, tmp_path):
    scan = scans_with_labels(shared_data)[1]
    with BagWriter(tmp_path / "bag") as writer:
        writer.write_scan("/points", scan)
        with pytest.raises(ValueError, match="already carries"):
            writer.write_message("/points", "std_msgs/msg/String",
                                 writer.typestore.types["std_msgs/msg/String"](data="x"), 1)
        negative = Scan(points=scan.points[:3], labels=np.array([-1, 0, 1]))
        with pytest.raises(ValueError, match="do not fit uint16"):
            writer.write_scan("/other", negative, label_dtype=np.uint16)
    with pytest.raises(Exception, match="exists already"):
        BagWriter(tmp_path / "bag").open()
    with pytest.raises(ValueError, match="storage must be"):
        BagWriter(tmp_path / "x", storage="rosbag1")


# ----------------------------------------------------------------------------- damaged bags


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_corrupt_messages_are_skipped_and_counted(shared_data, tmp_path, storage):
    scans = scans_with_labels(shared_data)
    typestore = default_typestore()
    good = [scans[0], scans[1]]
    # a cloud that deserializes but whose data is half what width * point_step says
    short = scan_to_cloud_message(good[1], typestore, label_field=None)
    short.data = short.data[: len(short.data) // 2]
    bag = tmp_path / "damaged"
    with BagWriter(bag, storage=storage) as writer:
        writer.write_scan("/points", good[0], label_field=None)
        writer.write_serialized("/points", POINTCLOUD2, b"\x00\x01\x00\x00garbage-not-cdr", good[0].stamp_ns + 1)
        writer.write_message("/points", POINTCLOUD2, short, good[1].stamp_ns - 1)
        writer.write_scan("/points", good[1], label_field=None)

    source = open_source(bag)
    assert len(source) == 4
    with pytest.raises(ScanReadError, match="cannot deserialize"):
        source[1]
    with pytest.raises(ScanReadError, match="bad PointCloud2"):
        source[2]
    stats = SkipStats()
    read = list(iter_scans(source, on_error="skip", stats=stats))
    assert stats.skipped == 2 and [r.split(":")[0] for _, r in stats.reasons] == [
        "cannot deserialize sensor_msgs/msg/PointCloud2", "bad PointCloud2"]
    good[1].labels = None  # written without a label field
    good[1].intensity_scale = good[0].intensity_scale  # a bag records one intensity scale per topic
    for r, w in zip(read, good):
        assert_same_scan(r, w)


def test_unopenable_bag_is_a_scan_read_error(tmp_path):
    bag = tmp_path / "broken"
    bag.mkdir()
    (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 8}\n")
    with pytest.raises(ScanReadError, match="cannot open rosbag2"):
        open_source(bag)


def test_open_readers_per_process_are_bounded(shared_data, tmp_path, monkeypatch):
    from ssl3d_ros.io import rosbag

    monkeypatch.setattr(rosbag, "MAX_OPEN_READERS", 2)
    scan = scans_with_labels(shared_data)[0]
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"bag{k}")
        with BagWriter(paths[-1]) as writer:
            scan.stamp_ns += 1
            writer.write_scan("/points", scan)
    source = open_sources(paths)
    stamps = [s.stamp_ns for s in iter_scans(source, on_error="raise")]
    assert rosbag.open_reader_count() <= 2
    assert [s.stamp_ns for s in iter_scans(source, on_error="raise")] == stamps  # closed ones reopen
    assert len(set(stamps)) == 3
    source.close()


def test_open_sources_skips_a_bag_that_will_not_open(shared_data, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 8}\n")
    stats = SkipStats()
    source = open_sources([broken, real_bag(shared_data)], on_error="skip", stats=stats)
    assert len(source) == 10 and stats.skipped == 1 and "broken" in stats.reasons[0][0]


def test_dataloader_workers_read_bags_and_files(shared_data):
    """Pretraining's use: a torch Dataset over a mixed source, read in two worker processes."""
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, Dataset

    source = open_sources([real_bag(shared_data), shared_data / "lidar" / "kitti"])
    expected = [len(source[i]) for i in range(len(source))]

    class PointCounts(Dataset):
        def __len__(self):
            return len(source)

        def __getitem__(self, i):
            return torch.tensor([i, len(source[i])])

    loader = DataLoader(PointCounts(), batch_size=None, num_workers=2)
    got = sorted(tuple(t.tolist()) for t in loader)
    assert got == list(enumerate(expected)) and len(got) == 12


# ----------------------------------------------------------------------------- truncated bags
# A recorder killed mid-write leaves an .mcap without summary/footer (rosbags: "File end magic is
# invalid") or a .db3 shorter than its header says ("database disk image is malformed"). BagSource
# then indexes the readable messages itself (ssl3d_ros/io/bag_recovery.py); each unreadable stretch
# is one index entry that raises ScanReadError, so iter_scans / replay count it once.

T0 = 1_700_000_000_000_000_000


def synthetic_scans(count: int, points: int = 12_000) -> list[Scan]:
    """Scans of ~190 kB each, so rosbags' 1 MiB mcap chunks hold five or six of them."""
    rng = np.random.default_rng(8)
    return [
        Scan(points=rng.normal(size=(points, 3)).astype(np.float32),
             fields={"intensity": rng.random(points, dtype=np.float32)},
             frame_id="lidar", stamp_ns=T0 + k * 50_000_000 + 3)
        for k in range(count)
    ]


def write_cut_test_bag(path: Path, scans: list[Scan], storage: str = "mcap", compression=None) -> Path:
    """Scans on /a and /b with a /clock message (another type) before each; returns the storage file."""
    typestore = default_typestore()
    clock, stamp = typestore.types["rosgraph_msgs/msg/Clock"], typestore.types["builtin_interfaces/msg/Time"]
    writer = BagWriter(path, storage=storage)
    if compression is not None:
        from rosbags.rosbag2.enums import CompressionFormat

        writer._writer.set_compression(compression, CompressionFormat.ZSTD)
    with writer:
        for k, scan in enumerate(scans):
            sec, nsec = divmod(scan.stamp_ns, 10**9)
            writer.write_message("/clock", "rosgraph_msgs/msg/Clock", clock(clock=stamp(sec=sec, nanosec=nsec)),
                                 scan.stamp_ns - 1)
            writer.write_scan("/b" if k % 3 == 2 else "/a", scan, label_field=None)
    (storage_file,) = (f for f in path.iterdir() if f.suffix in (".mcap", ".db3"))
    return storage_file


def mcap_records(data: bytes) -> list[tuple[int, int, int]]:
    """(opcode, start, end) of the top-level records of a complete mcap file."""
    records, pos = [], 8
    while pos + 9 <= len(data):
        op, n = struct.unpack_from("<BQ", data, pos)
        records.append((op, pos, pos + 9 + n))
        if op == 0x02:
            break
        pos += 9 + n
    return records


def cut_copy(bag: Path, dest: Path, size: int) -> Path:
    shutil.copytree(bag, dest)
    (storage,) = (f for f in dest.iterdir() if f.suffix in (".mcap", ".db3"))
    storage.write_bytes(storage.read_bytes()[:size])
    return dest


def read_all(source) -> tuple[list[Scan], SkipStats]:
    stats = SkipStats()
    return list(iter_scans(source, stats=stats)), stats


@pytest.fixture(scope="module")
def mcap_bag(tmp_path_factory) -> tuple[Path, list[Scan], bytes]:
    scans = synthetic_scans(24)
    bag = tmp_path_factory.mktemp("cut") / "full"
    storage = write_cut_test_bag(bag, scans)
    return bag, scans, storage.read_bytes()


def test_truncated_mcap_keeps_every_message_before_the_cut(mcap_bag, tmp_path, caplog):
    bag, scans, data = mcap_bag
    typestore = default_typestore()
    # where each scan's serialized cloud lies in the (uncompressed-chunk) file
    ends = []
    for scan in scans:
        raw = bytes(typestore.serialize_cdr(scan_to_cloud_message(scan, typestore, label_field=None), POINTCLOUD2))
        start = data.find(raw)
        assert start > 0 and data.find(raw, start + 1) == -1
        ends.append(start + len(raw))
    records = mcap_records(data)
    chunks = [(s, e) for op, s, e in records if op == 0x06]
    data_end = next(s for op, s, e in records if op == 0x0F)
    assert len(chunks) >= 4 and records[-1][0] == 0x02
    cuts = {
        "mid second chunk": (chunks[1][0] + chunks[1][1]) // 2,
        "chunk header cut": chunks[2][0] + 20,
        "after two chunks": chunks[2][0],  # a record boundary: nothing partial to count
        "before the summary": data_end,
        "inside the summary": (data_end + len(data)) // 2,
        "two thirds": len(data) * 2 // 3,
    }
    for name, size in cuts.items():
        cut = cut_copy(bag, tmp_path / name.replace(" ", "_"), size)
        with pytest.raises(Exception, match="magic"):
            Reader(cut).open()  # what rosbags alone does with it
        caplog.clear()
        source = open_source(cut)
        expected = [k for k, end in enumerate(ends) if end <= size]
        read, stats = read_all(source)
        assert [s.stamp_ns for s in read] == [scans[k].stamp_ns for k in expected], name
        for got, k in zip(read, expected):
            assert_same_scan(got, scans[k])
        partial = any(s < size < e for _, s, e in records)
        assert stats.skipped == int(partial), (name, stats.reasons)
        if partial:
            assert "truncated mcap" in stats.reasons[0][1] and "<damaged data 0>" in stats.reasons[0][0]
        assert source.truncated and sorted(source.topics) == ["/a", "/b"]
        assert source.message_counts == {"/a": sum(k % 3 != 2 for k in expected),
                                         "/b": sum(k % 3 == 2 for k in expected)}
        assert f"recovered {len(expected)} messages" in caplog.text and str(cut) in caplog.text
        # topic selection, per-topic numbering and reading in another process work as usual
        only_b = open_source(cut, topics=["/b"])
        assert [only_b.describe(i).rsplit(":", 1)[1] for i in range(only_b.message_counts["/b"])] == [
            f"/b#{j}" for j in range(only_b.message_counts["/b"])]
        copy = pickle.loads(pickle.dumps(source))
        np.testing.assert_array_equal(copy[len(expected) - 1].points, scans[expected[-1]].points)
        with pytest.raises(TopicSelectionError, match="carries rosgraph_msgs/msg/Clock"):
            open_source(cut, topics=["/clock"])
        source.close()
        copy.close()


def test_mcap_cut_before_any_message_is_a_scan_read_error(mcap_bag, tmp_path):
    bag, _, _ = mcap_bag
    with pytest.raises(ScanReadError, match="cannot open rosbag2: .*recovery found nothing readable"):
        open_source(cut_copy(bag, tmp_path / "tiny", 5))
    stats = SkipStats()
    assert len(open_sources([tmp_path / "tiny"], on_error="skip", stats=stats)) == 0 and stats.skipped == 1


def _lz4_chunks_without_summary(data: bytes) -> bytes:
    """The same records with every chunk lz4-compressed and nothing after DataEnd (no summary/footer)."""
    import lz4.frame

    out = bytearray(data[:8])
    for op, start, end in mcap_records(data):
        if op == 0x0F:
            break
        if op != 0x06:
            out += data[start:end]
            continue
        body = data[start + 9:end]
        (clen,) = struct.unpack_from("<I", body, 28)
        records = body[28 + 4 + clen + 8:]
        packed = lz4.frame.compress(records)
        new = body[:24] + struct.pack("<I", 0) + struct.pack("<I", 3) + b"lz4" + struct.pack("<Q", len(packed)) + packed
        out += struct.pack("<BQ", 0x06, len(new)) + new
    return bytes(out)


def test_truncated_compressed_chunks_lz4_and_zstd(tmp_path):
    from rosbags.rosbag2.enums import CompressionMode

    scans = synthetic_scans(18)
    zstd_bag = tmp_path / "zstd"
    data = write_cut_test_bag(zstd_bag, scans, compression=CompressionMode.STORAGE).read_bytes()
    lz4_bag = tmp_path / "lz4"
    shutil.copytree(zstd_bag, lz4_bag)
    plain = write_cut_test_bag(tmp_path / "plain", scans).read_bytes()
    (lz4_file,) = lz4_bag.glob("*.mcap")
    lz4_file.write_bytes(_lz4_chunks_without_summary(plain))
    for bag, file_data in ((zstd_bag, data), (lz4_bag, lz4_file.read_bytes())):
        records = mcap_records(file_data)
        chunks = [(s, e) for op, s, e in records if op == 0x06]
        assert len(chunks) >= 3
        # all chunks, no footer (lz4: the writer's data section only): every message comes back
        source = open_source(bag) if bag == lz4_bag else open_source(cut_copy(bag, tmp_path / "nofooter", chunks[-1][1]))
        read, stats = read_all(source)
        assert len(read) == len(scans) and stats.skipped == 0 and source.truncated
        for got, want in zip(read, scans):
            assert_same_scan(got, want)
        # cut in the middle of the third chunk: the first two chunks in full, then what the partial
        # compressed stream gives (a prefix), then one unreadable entry
        cut = cut_copy(bag, tmp_path / f"{bag.name}_mid", (chunks[2][0] + chunks[2][1]) // 2)
        read, stats = read_all(open_source(cut))
        assert stats.skipped == 1 and "cut by the end of the file" in stats.reasons[0][1]
        assert len(read) >= 2 * 5 and [s.stamp_ns for s in read] == [s.stamp_ns for s in scans[:len(read)]]
        for got, want in zip(read, scans):
            assert_same_scan(got, want)


def test_corrupt_chunk_in_a_complete_mcap_is_skipped_and_counted(tmp_path):
    """rosbags opens the file but fails reading the bad chunk; the record scan reads the others."""
    from rosbags.rosbag2.enums import CompressionMode

    scans = synthetic_scans(18)
    bag = tmp_path / "bad_chunk"
    storage = write_cut_test_bag(bag, scans, compression=CompressionMode.STORAGE)
    data = bytearray(storage.read_bytes())
    chunks = [(s, e) for op, s, e in mcap_records(bytes(data)) if op == 0x06]
    start = chunks[1][0] + 9 + 28 + 4 + 4 + 8  # the second chunk's zstd frame
    data[start:start + 16] = bytes(16)
    storage.write_bytes(bytes(data))
    source = open_source(bag)
    read, stats = read_all(source)
    assert stats.skipped == 1 and "unreadable" in stats.reasons[0][1] and source.truncated
    stamps = {s.stamp_ns for s in read}
    assert len(read) >= len(scans) - 7 and stamps < {s.stamp_ns for s in scans}
    assert read[-1].stamp_ns == scans[-1].stamp_ns  # chunks after the bad one are read
    by_stamp = {s.stamp_ns: s for s in scans}
    for got in read:
        assert_same_scan(got, by_stamp[got.stamp_ns])


def test_truncated_message_compressed_bag_folder(tmp_path):
    from rosbags.rosbag2.enums import CompressionMode

    scans = synthetic_scans(8, points=3000)
    bag = tmp_path / "per_message"
    data = write_cut_test_bag(bag, scans, compression=CompressionMode.MESSAGE).read_bytes()
    data_end = next(s for op, s, e in mcap_records(data) if op == 0x0F)
    read, stats = read_all(open_source(cut_copy(bag, tmp_path / "cut", data_end)))
    assert len(read) == len(scans) and stats.skipped == 0
    for got, want in zip(read, scans):
        assert_same_scan(got, want)


def test_truncated_sqlite3_bag_keeps_its_readable_rows(tmp_path):
    """A .db3 cut anywhere: sqlite (read-only, writable_schema so the short file opens) gives the rows
    it can reach, a prefix in id order here; the rest is one unreadable entry. Cut before the topics
    table's page, the bag cannot be read at all: a ScanReadError naming both failures."""
    scans = synthetic_scans(24)
    bag = tmp_path / "db3"
    data = write_cut_test_bag(bag, scans, storage="sqlite3").read_bytes()
    page = 4096
    assert len(data) % page == 0
    counts = []
    for size in (len(data) - page, len(data) * 2 // 3 // page * page, len(data) // 2 + 1234):
        cut = cut_copy(bag, tmp_path / f"cut{size}", size)
        with pytest.raises(Exception, match="malformed"):
            with Reader(cut) as reader:
                list(reader.messages())
        source = open_source(cut)
        read, stats = read_all(source)
        assert source.truncated and stats.skipped == 1 and "sqlite3" in stats.reasons[0][1]
        assert [s.stamp_ns for s in read] == [s.stamp_ns for s in scans[:len(read)]]
        for got, want in zip(read, scans):
            assert_same_scan(got, want)
        counts.append(len(read))
    assert counts[0] >= counts[1] >= counts[2] >= 8 and counts[0] >= len(scans) - 2
    with pytest.raises(ScanReadError, match="cannot open rosbag2: .*topics table unreadable"):
        open_source(cut_copy(bag, tmp_path / "one_page", page))
