"""PointCloud2 codec: hand-built and encoded clouds decode to the values put in, like read_points."""
from __future__ import annotations

import array
import struct
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssl3d_ros import codec
from ssl3d_ros.codec import (
    FLOAT32, FLOAT64, INT8, INT16, INT32, UINT8, UINT16, UINT32,
    CloudFormatError, FieldSpec, cloud_dtype, decode_cloud, encode_cloud, fill_cloud_message,
    pack_rgb, scan_from_cloud, unpack_rgb, xyz,
)

import per_field_codec as reference  # test/per_field_codec.py: the oracle, sensor_msgs_py's documented semantics


STRUCT_CODE = {INT8: "b", UINT8: "B", INT16: "h", UINT16: "H", INT32: "i", UINT32: "I", FLOAT32: "f", FLOAT64: "d"}
NUMPY_TYPE = {INT8: "i1", UINT8: "u1", INT16: "i2", UINT16: "u2", INT32: "i4", UINT32: "u4", FLOAT32: "f4", FLOAT64: "f8"}
SIZE = {k: np.dtype(v).itemsize for k, v in NUMPY_TYPE.items()}
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def as_container(raw: bytes, kind: str):
    """The message data the three kinds of producer hand us."""
    if kind == "bytes":
        return raw
    if kind == "array":  # rclpy
        return array.array("B", raw)
    return np.frombuffer(raw, dtype=np.uint8)  # rosbags (read-only view)


def cloud_msg(fields, *, height, width, point_step, row_step, data, is_bigendian=False, is_dense=False):
    return SimpleNamespace(
        height=height, width=width, point_step=point_step, row_step=row_step, is_bigendian=is_bigendian,
        is_dense=is_dense, data=data,
        fields=[SimpleNamespace(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in fields],
    )


def random_values(rng, datatype, shape, special):
    """Values spanning the type's range; floats may include NaN/Inf when ``special``."""
    dt = np.dtype(NUMPY_TYPE[datatype])
    if dt.kind == "f":
        values = rng.normal(0, 1e3, size=shape).astype(dt)
        if special and values.size:
            pick = rng.random(shape)
            values[pick < 0.15] = np.nan
            values[(pick >= 0.15) & (pick < 0.22)] = np.inf
            values[(pick >= 0.22) & (pick < 0.27)] = -np.inf
        return values
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dt)


@st.composite
def hand_built_clouds(draw):
    """A PointCloud2 packed point by point with struct (independent of numpy's structured dtypes):
    random field types/counts/order, gaps, tail padding, row padding, byte order and container."""
    specs_wanted = [("x", draw(st.sampled_from([FLOAT32, FLOAT32, FLOAT64, INT16, INT32])), 1),
                    ("y", None, 1), ("z", None, 1)]
    xyz_type = specs_wanted[0][1]
    specs_wanted = [(n, xyz_type, 1) for n, _, _ in specs_wanted]
    for i in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from([f"f{i}", "intensity_%d" % i, ""]))
        specs_wanted.append((name, draw(st.integers(1, 8)), draw(st.sampled_from([1, 1, 2, 3]))))
    order = draw(st.permutations(range(len(specs_wanted))))
    common = draw(st.booleans())
    if common:  # the usual x, y, z first and side by side
        order = [0, 1, 2] + [i for i in order if i > 2]
    fields, offset = [], 0
    for i in order:
        name, datatype, count = specs_wanted[i]
        offset += 0 if common and i < 3 else draw(st.integers(0, 3))
        fields.append(FieldSpec(name, offset, datatype, count))
        offset += SIZE[datatype] * count
    point_step = offset + draw(st.integers(0, 5))
    height = draw(st.integers(1, 3))
    width = draw(st.integers(0, 5))
    row_step = width * point_step + draw(st.sampled_from([0, 0, 1, 7]))
    bigendian = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = height * width
    values = {}
    for i, f in enumerate(fields):
        key = f.name or f"unnamed_field_{fields.index(f)}"
        shape = (n,) if f.count == 1 else (n, f.count)
        values[key] = random_values(rng, f.datatype, shape, special=f.name in "xyz" and f.name != "")
    raw = bytearray(rng.integers(0, 256, size=row_step * height + draw(st.integers(0, 4)), dtype=np.uint8).tobytes())
    endian = ">" if bigendian else "<"
    for p in range(n):
        base = (p // width) * row_step + (p % width) * point_step
        for f in fields:
            key = f.name or f"unnamed_field_{fields.index(f)}"
            elements = np.atleast_1d(values[key][p])
            for k, v in enumerate(elements):
                struct.pack_into(endian + STRUCT_CODE[f.datatype], raw, base + f.offset + k * SIZE[f.datatype], v.item())
    msg = cloud_msg(fields, height=height, width=width, point_step=point_step, row_step=row_step,
                    data=as_container(bytes(raw), draw(st.sampled_from(["bytes", "array", "numpy"]))),
                    is_bigendian=bigendian)
    return msg, fields, values


@FAST
@given(hand_built_clouds())
def test_hand_built_cloud_decodes_to_the_packed_values(case):
    msg, fields, values = case
    decoded = decode_cloud(msg)
    n = msg.height * msg.width
    assert len(decoded) == n and decoded.height == msg.height and decoded.width == msg.width
    for name, expected in values.items():
        got = decoded.field_values(name)
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)

    # same column names (count>1 split as name_k) and values as read_points, for all rows
    ref_names = reference.dtype_from_fields(msg.fields, msg.point_step).names
    assert decoded.points.dtype.names == ref_names
    if msg.height == 1 or msg.row_step == msg.width * msg.point_step:  # read_points ignores row_step
        ref = reference.read_points(msg)
        for name in ref_names:
            np.testing.assert_array_equal(decoded.points[name], ref[name])

    # skip_nans drops non-finite x/y/z and reports the original row-major positions
    finite = np.isfinite(np.stack([values[c].astype(np.float64) for c in "xyz"], axis=1)).all(axis=1)
    kept = decode_cloud(msg, skip_nans=True)
    np.testing.assert_array_equal(kept.index, np.flatnonzero(finite))
    assert kept.index.dtype == np.int64
    expected_xyz = np.stack([values[c] for c in "xyz"], axis=1).astype(np.float32)[finite]
    np.testing.assert_array_equal(xyz(kept), expected_xyz)
    for name, expected in values.items():
        np.testing.assert_array_equal(kept.field_values(name), expected[finite])
    for name in ref_names:
        assert len(kept.points[name]) == finite.sum()

    has_inf = any(np.isinf(values[c].astype(np.float64)).any() for c in "xyz")
    unpadded = msg.height == 1 or msg.row_step == msg.width * msg.point_step
    if unpadded and not has_inf:  # then read_points(skip_nans) keeps exactly the same points
        ref = reference.read_points(msg, skip_nans=True)
        for name in ref_names:
            np.testing.assert_array_equal(kept.points[name], ref[name])


def test_decoding_shares_the_message_buffer():
    enc = encode_cloud(np.arange(12, dtype=np.float32).reshape(4, 3), {"intensity": np.ones(4, np.float32)})
    msg = cloud_msg(enc.fields, height=1, width=4, point_step=enc.point_step, row_step=enc.row_step, data=enc.data)
    decoded = decode_cloud(msg, skip_nans=True)
    buffer = np.frombuffer(msg.data, np.uint8)
    assert np.shares_memory(decoded.points, buffer)
    assert np.shares_memory(decoded.field_values("intensity"), buffer)
    decoded.field_values("intensity")[2] = 7.0  # writes through to the message: it is a view
    assert decode_cloud(msg).field_values("intensity")[2] == 7.0
    owned = decoded.field_values("intensity", copy=True)
    assert not np.shares_memory(owned, buffer) and owned.flags.c_contiguous and owned[2] == 7.0
    coords = xyz(decoded)  # every point kept: a read-only strided view, like read_points_numpy's
    assert np.shares_memory(coords, buffer) and not coords.flags.writeable
    np.testing.assert_array_equal(coords, np.arange(12, dtype=np.float32).reshape(4, 3))
    scan, _ = scan_from_cloud(msg)
    assert not np.shares_memory(scan.points, buffer) and not np.shares_memory(scan.fields["intensity"], buffer)
    assert scan.points.flags.writeable and scan.points.flags.c_contiguous


def test_row_padded_organized_cloud_keeps_row_major_index():
    # 2 rows x 3 columns, 5 bytes of padding after each row, NaN at (0, 1) and (1, 2)
    fields = [FieldSpec("x", 0, FLOAT32, 1), FieldSpec("y", 4, FLOAT32, 1), FieldSpec("z", 8, FLOAT32, 1)]
    point_step, width, height = 12, 3, 2
    row_step = width * point_step + 5
    raw = bytearray(row_step * height)
    coords = np.arange(18, dtype=np.float32).reshape(6, 3)
    coords[1, 0] = np.nan
    coords[5, 2] = np.inf
    for p in range(6):
        struct.pack_into("<3f", raw, (p // width) * row_step + (p % width) * point_step, *coords[p])
    msg = cloud_msg(fields, height=height, width=width, point_step=point_step, row_step=row_step, data=bytes(raw))
    decoded = decode_cloud(msg, skip_nans=True)
    np.testing.assert_array_equal(decoded.index, [0, 2, 3, 4])
    np.testing.assert_array_equal(xyz(decoded), coords[[0, 2, 3, 4]])
    assert decoded.cloud.shape == (2, 3)  # the zero-copy view keeps rows apart
    np.testing.assert_array_equal(decoded.points["y"], coords[[0, 2, 3, 4], 1])


# ---------------------------------------------------------------------------------------- encoding

EXTRA_DTYPES = ["i1", "u1", "i2", "u2", "i4", "u4", "f4", "f8", "bool", "int64"]


@st.composite
def encodable_inputs(draw):
    height = draw(st.integers(1, 3))
    width = draw(st.integers(0, 6))
    n = height * width
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    coords = rng.normal(0, 50, size=(n, 3)).astype(draw(st.sampled_from(["f4", "f8"])))
    if n and draw(st.booleans()):
        coords[rng.integers(0, n, size=max(1, n // 3)), rng.integers(0, 3)] = np.nan
    extras = {}
    for i in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(EXTRA_DTYPES))
        count = draw(st.sampled_from([1, 1, 2, 5]))
        shape = (n,) if count == 1 and draw(st.booleans()) else (n, count)
        if kind == "bool":
            values = rng.random(shape) > 0.5
        elif kind == "int64":
            values = rng.integers(-(2**31), 2**31 - 1, size=shape, dtype=np.int64)  # fits int32
        elif np.dtype(kind).kind == "f":
            values = rng.normal(size=shape).astype(kind)
        else:
            info = np.iinfo(kind)
            values = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=kind)
        extras[f"e{i}"] = values
    if draw(st.booleans()):
        extras["rgb"] = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    return coords, extras, height, draw(st.booleans())


@FAST
@given(encodable_inputs())
def test_encode_then_decode_round_trips(case):
    coords, extras, height, align = case
    enc = encode_cloud(coords, extras, height=height, align=align)
    n = len(coords)
    assert isinstance(enc.data, array.array) and enc.data.typecode == "B"
    assert len(enc.data) == enc.row_step * enc.height == n * enc.point_step
    assert (enc.height, enc.width) == (height, n // height)
    assert [f.name for f in enc.fields] == ["x", "y", "z", *extras]
    assert enc.is_dense == bool(np.isfinite(coords).all())
    if align:
        largest = max(np.dtype(codec.DATATYPE_TO_NUMPY[f.datatype]).itemsize for f in enc.fields)
        assert all(f.offset % f.element.itemsize == 0 for f in enc.fields)
        assert enc.point_step % largest == 0
    else:  # packed: no gaps
        assert enc.point_step == sum(f.size for f in enc.fields)

    decoded = decode_cloud(enc)
    np.testing.assert_array_equal(xyz(decoded), coords.astype(np.float32))
    for name, values in extras.items():
        got = decoded.field_values(name)
        if name == "rgb":
            np.testing.assert_array_equal(unpack_rgb(got), values)
            continue
        np.testing.assert_array_equal(got, values.reshape(got.shape).astype(got.dtype))
        assert got.dtype.newbyteorder("=") == (np.dtype("i4") if values.dtype == np.int64
                                              else np.dtype("u1") if values.dtype == np.bool_
                                              else values.dtype)

    # the documented read_points view of an encoded cloud agrees column by column
    ref = reference.read_points(enc)
    assert decoded.points.dtype.names == ref.dtype.names
    for name in ref.dtype.names:
        np.testing.assert_array_equal(decoded.points[name], ref[name])

    scan, index = scan_from_cloud(enc)
    finite = np.isfinite(coords).all(axis=1)
    np.testing.assert_array_equal(index, np.flatnonzero(finite))
    np.testing.assert_array_equal(scan.points, coords.astype(np.float32)[finite])
    for name, values in extras.items():
        got = scan.fields[name]
        assert got.flags.c_contiguous and got.dtype.isnative
        if name == "rgb":
            np.testing.assert_array_equal(got, values[finite])
        else:
            np.testing.assert_array_equal(got, values[finite].reshape(got.shape).astype(got.dtype))


@FAST
@given(encodable_inputs())
def test_encoded_bytes_equal_per_field_create_cloud(case):
    """Packing field by field with the reference create_cloud gives the very same bytes."""
    coords, extras, height, align = case
    enc = encode_cloud(coords, extras, height=height, align=align)
    dtype = reference.dtype_from_fields(enc.fields, enc.point_step, byteorder="<")
    columns = np.zeros(len(coords), dtype=dtype)
    for i, name in enumerate("xyz"):
        columns[name] = coords[:, i]
    for spec, (name, values) in zip(enc.fields[3:], extras.items()):
        if name == "rgb":
            r, g, b = (values[:, k].astype(np.uint32) for k in range(3))
            columns[name] = ((r << 16) | (g << 8) | b).view(np.float32)
        elif spec.count > 1:
            for k in range(spec.count):
                columns[f"{name}_{k}"] = values[:, k]
        else:
            columns[name] = values.reshape(len(coords))
    cloud = reference.create_cloud(None, enc.fields, columns.reshape(height, -1), point_step=enc.point_step)
    assert (cloud.height, cloud.width, cloud.point_step, cloud.row_step) == (enc.height, enc.width, enc.point_step, enc.row_step)
    assert cloud.data == enc.data


def test_autoware_segmentation_layout_with_align():
    n = 7
    extras = {
        "class_id": np.arange(n, dtype=np.int64),
        "probability": np.linspace(0, 1, n, dtype=np.float32),
        "entropy": np.full(n, 0.5, dtype=np.float32),
    }
    aligned = encode_cloud(np.zeros((n, 3), np.float32), extras, field_types={"class_id": UINT8}, align=True)
    assert [(f.name, f.offset, f.datatype, f.count) for f in aligned.fields] == [
        ("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1),
        ("class_id", 12, UINT8, 1), ("probability", 16, FLOAT32, 1), ("entropy", 20, FLOAT32, 1),
    ]
    assert aligned.point_step == 24 and aligned.row_step == 24 * n
    raw = np.frombuffer(aligned.data, np.uint8).reshape(n, 24)
    assert not raw[:, 13:16].any()  # alignment padding is zeroed, never leftover memory
    packed = encode_cloud(np.zeros((n, 3), np.float32), extras, field_types={"class_id": UINT8})
    assert [f.offset for f in packed.fields] == [0, 4, 8, 12, 13, 17] and packed.point_step == 21
    np.testing.assert_array_equal(decode_cloud(aligned).field_values("class_id"), np.arange(n))


def test_embedding_is_one_field_with_count_and_read_points_splits_it():
    emb = np.random.default_rng(0).normal(size=(10, 64)).astype(np.float32)
    enc = encode_cloud(np.ones((10, 3)), {"embedding": emb})
    assert enc.fields[3] == FieldSpec("embedding", 12, FLOAT32, 64)
    decoded = decode_cloud(enc)
    np.testing.assert_array_equal(decoded.field_values("embedding"), emb)
    assert decoded.points.dtype.names[3:5] == ("embedding_0", "embedding_1")
    np.testing.assert_array_equal(decoded.points["embedding_63"], emb[:, 63])


def test_rgb_is_packed_like_pcl():
    rgb = np.array([[0x12, 0x34, 0x56], [255, 0, 1]], dtype=np.uint8)
    packed = pack_rgb(rgb)
    assert packed.dtype == np.float32
    np.testing.assert_array_equal(packed.view(np.uint32), [0x00123456, 0x00FF0001])
    np.testing.assert_array_equal(unpack_rgb(packed), rgb)
    np.testing.assert_array_equal(unpack_rgb(packed.view(np.uint32).astype(">u4")), rgb)  # big-endian uint32
    enc = encode_cloud(np.zeros((2, 3)), {"rgb": rgb})
    assert enc.fields[3] == FieldSpec("rgb", 12, FLOAT32, 1)
    np.testing.assert_array_equal(decode_cloud(enc).field_values("rgb"), packed)


def test_scan_from_cloud_labels_header_and_overrides():
    n = 6
    coords = np.arange(18, dtype=np.float64).reshape(n, 3)
    coords[4, 1] = np.nan
    enc = encode_cloud(coords, {"label": np.arange(n, dtype=np.uint16), "ring": np.arange(n, dtype=np.uint16) % 2,
                                "normal": np.ones((n, 3), np.float32)})
    msg = SimpleNamespace(**vars(enc), header=SimpleNamespace(frame_id="lidar", stamp=SimpleNamespace(sec=3, nanosec=25)))
    scan, index = scan_from_cloud(msg, label_field="label", source="t#0")
    np.testing.assert_array_equal(index, [0, 1, 2, 3, 5])
    np.testing.assert_array_equal(scan.labels, [0, 1, 2, 3, 5])
    assert scan.labels.dtype == np.int32 and set(scan.fields) == {"ring", "normal"}
    assert scan.fields["normal"].shape == (5, 3) and scan.fields["ring"].dtype == np.uint16
    assert (scan.frame_id, scan.stamp_ns, scan.source) == ("lidar", 3_000_000_025, "t#0")
    scan2, _ = scan_from_cloud(msg, frame_id="map", stamp_ns=5)
    assert (scan2.frame_id, scan2.stamp_ns) == ("map", 5)
    assert scan2.labels is None and "label" in scan2.fields
    with pytest.raises(CloudFormatError, match="label field 'cls'"):
        scan_from_cloud(msg, label_field="cls")


def test_big_endian_cloud_to_native_scan():
    fields = [FieldSpec("x", 0, FLOAT64, 1), FieldSpec("y", 8, FLOAT64, 1), FieldSpec("z", 16, FLOAT64, 1),
              FieldSpec("t", 24, UINT32, 1)]
    rows = [(1.5, -2.0, 3.25, 7), (4.0, 5.0, 6.0, 0xDEADBEEF)]
    raw = b"".join(struct.pack(">3dI", *r) for r in rows)
    msg = cloud_msg(fields, height=1, width=2, point_step=28, row_step=56, data=raw, is_bigendian=True)
    scan, _ = scan_from_cloud(msg)
    np.testing.assert_array_equal(scan.points, np.array([r[:3] for r in rows], np.float32))
    assert scan.fields["t"].dtype.isnative
    np.testing.assert_array_equal(scan.fields["t"], [7, 0xDEADBEEF])


# ---------------------------------------------------------------------------------- real messages

def test_fill_rclpy_message_shares_buffer_and_survives_serialization():
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import PointCloud2, PointField

    rng = np.random.default_rng(1)
    coords = rng.normal(size=(50, 3)).astype(np.float32)
    emb = rng.normal(size=(50, 64)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(50, 3), dtype=np.uint8)
    enc = encode_cloud(coords, {"embedding": emb, "rgb": rgb, "class_id": np.arange(50, dtype=np.uint8)}, height=5)
    for msg in (PointCloud2(), PointCloud2(check_fields=True)):
        fill_cloud_message(msg, enc, PointField)
        assert msg.data is enc.data  # no second copy of the buffer
        assert isinstance(msg.fields[0], PointField) and msg.height == 5 and msg.width == 10
        received = deserialize_message(serialize_message(msg), PointCloud2)
        decoded = decode_cloud(received)
        np.testing.assert_array_equal(xyz(decoded), coords)
        np.testing.assert_array_equal(decoded.field_values("embedding"), emb)
        np.testing.assert_array_equal(unpack_rgb(decoded.field_values("rgb")), rgb)


def test_fill_rosbags_message_and_cdr_round_trip():
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    PointCloud2 = store.types["sensor_msgs/msg/PointCloud2"]
    PointField = store.types["sensor_msgs/msg/PointField"]
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    coords = np.random.default_rng(2).normal(size=(20, 3))
    enc = encode_cloud(coords, {"probability": np.full(20, 0.25, np.float32)})
    msg = PointCloud2(header=Header(stamp=Time(sec=1, nanosec=2), frame_id="base"), height=0, width=0, fields=[],
                      is_bigendian=False, point_step=0, row_step=0, data=np.zeros(0, np.uint8), is_dense=False)
    fill_cloud_message(msg, enc, PointField)
    assert isinstance(msg.data, np.ndarray) and np.shares_memory(msg.data, np.frombuffer(enc.data, np.uint8))
    back = store.deserialize_cdr(store.serialize_cdr(msg, PointCloud2.__msgtype__), PointCloud2.__msgtype__)
    scan, _ = scan_from_cloud(back)
    np.testing.assert_array_equal(scan.points, coords.astype(np.float32))
    assert (scan.frame_id, scan.stamp_ns) == ("base", 1_000_000_002)
    np.testing.assert_array_equal(scan.fields["probability"], 0.25)


def test_real_ouster_bag_decodes_plausibly(shared_data):
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    bag = shared_data / "bags" / "ouster_real_pointcloud2_mcap"
    if not bag.is_dir():
        pytest.skip(f"{bag} is absent")
    store = get_typestore(Stores.ROS2_HUMBLE)
    seen = 0
    with Reader(bag) as reader:
        for connection, _, raw in reader.messages():
            msg = store.deserialize_cdr(raw, connection.msgtype)
            decoded = decode_cloud(msg, skip_nans=True)
            assert decoded.field_names == ["x", "y", "z", "intensity", "ring", "range"]
            assert np.shares_memory(decoded.cloud, msg.data)
            points = xyz(decoded)
            assert len(points) > 10_000 and np.isfinite(points).all()
            ring = decoded.field_values("ring")
            rng_mm = decoded.field_values("range").astype(np.float64)
            intensity = decoded.field_values("intensity")
            assert ring.dtype == np.dtype("<u2") and ring.max() < 128 and len(np.unique(ring)) >= 16
            assert intensity.dtype == np.dtype("<f4") and intensity.min() >= 0 and intensity.max() <= 65535
            hit = rng_mm > 0
            assert hit.mean() > 0.3
            # range (mm, from the lidar origin) matches |xyz| up to the few-cm sensor-frame offset
            distance_mm = np.linalg.norm(points[hit].astype(np.float64), axis=1) * 1000
            assert np.median(np.abs(distance_mm - rng_mm[hit])) < 100
            assert np.percentile(distance_mm, 99) < 400_000
            scan, index = scan_from_cloud(msg, source=connection.topic)
            assert scan.frame_id == "os_sensor" and scan.stamp_ns >= 1_700_000_000 * 10**9
            assert set(scan.fields) == {"intensity", "ring", "range"} and len(index) == len(scan)
            seen += 1
    assert seen == 10


# ----------------------------------------------------------------------------------- malformed input

def _good():
    return dict(
        fields=[FieldSpec("x", 0, FLOAT32, 1), FieldSpec("y", 4, FLOAT32, 1), FieldSpec("z", 8, FLOAT32, 1)],
        height=2, width=3, point_step=12, row_step=36, data=bytes(72),
    )


def _with(**changes):
    args = _good()
    args.update(changes)
    return cloud_msg(args.pop("fields"), **args)


XYZ_FIELDS = _good()["fields"]
MALFORMED = {
    "short data": (_with(data=bytes(71)), r"data holds 71 bytes .* 72 are needed"),
    "short data for row_step": (_with(row_step=40, data=bytes(76)), r"row_step\*height = 40\*2 = 80"),
    "field past point_step": (_with(fields=XYZ_FIELDS + [FieldSpec("i", 10, FLOAT32, 1)]), r"'i'.*ends at byte 14, past point_step 12"),
    "count past point_step": (_with(fields=XYZ_FIELDS[:2] + [FieldSpec("z", 8, FLOAT32, 2)]), r"'z'.*x2.*past point_step"),
    "unknown datatype": (_with(fields=XYZ_FIELDS + [FieldSpec("q", 0, 9, 1)]), r"'q' has unknown datatype 9"),
    "missing z": (_with(fields=XYZ_FIELDS[:2]), r"no z field"),
    "duplicate name": (_with(fields=XYZ_FIELDS + [FieldSpec("y", 0, UINT8, 1)]), r"duplicate field name 'y'"),
    "duplicate split name": (_with(fields=XYZ_FIELDS + [FieldSpec("e", 0, UINT8, 2), FieldSpec("e_1", 0, UINT8, 1)]),
                             r"duplicate field name 'e_1'"),
    "point_step 0": (_with(point_step=0, row_step=0), r"point_step is 0"),
    "point_step smaller than fields": (_with(point_step=10, row_step=30), r"'z'.*past point_step 10"),
    "row_step smaller than a row": (_with(row_step=30), r"row_step 30 is smaller than width\*point_step"),
    "count 0": (_with(fields=XYZ_FIELDS + [FieldSpec("c", 0, UINT8, 0)]), r"'c' has count 0"),
    "width*height overflow": (_with(width=2**31, height=4, row_step=0), r"width\*height .* overflows uint32"),
    "negative width": (_with(width=-1), r"width is -1"),
    "xyz with count": (_with(fields=[FieldSpec("x", 0, FLOAT32, 1), FieldSpec("y", 4, FLOAT32, 1), FieldSpec("z", 8, UINT8, 4)]),
                       r"'z' has count 4"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_cloud_raises_naming_the_problem(case):
    msg, pattern = MALFORMED[case]
    with pytest.raises(CloudFormatError, match=pattern):
        decode_cloud(msg)
    with pytest.raises(CloudFormatError):
        scan_from_cloud(msg)


def test_cloud_dtype_validates_and_matches_reference():
    fields = [FieldSpec("x", 4, FLOAT32, 1), FieldSpec("", 0, UINT8, 2), FieldSpec("v", 8, INT16, 3)]
    dt = cloud_dtype(fields, 16, is_bigendian=True)
    assert dt.itemsize == 16
    assert dt.names == ("x", "unnamed_field_1_0", "unnamed_field_1_1", "v_0", "v_1", "v_2")
    assert dt.names == reference.dtype_from_fields(fields, 16).names
    assert dt["v_2"] == np.dtype(">i2") and dt.fields["v_2"][1] == 12
    with pytest.raises(CloudFormatError, match="past point_step 13"):
        cloud_dtype(fields, 13)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(xyz=np.zeros((4, 2))), r"xyz must have shape \(N, 3\)"),
        (dict(xyz=np.zeros((4, 3)), fields={"a": np.zeros(3)}), r"'a' has shape \(3,\)"),
        (dict(xyz=np.zeros((4, 3)), fields={"x": np.zeros(4)}), r"'x' is given both"),
        (dict(xyz=np.zeros((4, 3)), fields={"a": np.zeros(4, np.complex64)}), r"'a' has dtype complex64"),
        (dict(xyz=np.zeros((4, 3)), fields={"a": np.full(4, 2**40)}), r"'a' holds values .* outside int32"),
        (dict(xyz=np.zeros((4, 3)), fields={"c": np.arange(4) * 100}, field_types={"c": UINT8}), r"'c' holds values 0..300"),
        (dict(xyz=np.zeros((4, 3)), fields={"rgb": np.zeros((4, 3), np.float32)}), r"rgb must be \(N, 3\) uint8"),
        (dict(xyz=np.zeros((4, 3)), height=3), r"4 points cannot form an organized cloud of height 3"),
        (dict(xyz=np.zeros((4, 3)), fields={"a": np.zeros((4, 2, 2))}), r"only \(N,\) or \(N, D\)"),
    ],
)
def test_encode_rejects_what_pointcloud2_cannot_hold(kwargs, pattern):
    with pytest.raises(CloudFormatError, match=pattern):
        encode_cloud(**kwargs)
