"""Per-field PointCloud2 reference codec, following sensor_msgs_py.point_cloud2's documented semantics.

sensor_msgs_py is not installable from PyPI, so this re-implements what its documentation promises,
as the rclpy-free oracle test/test_codec.py compares ssl3d_ros.codec against (on duck-typed messages,
which upstream refuses). Only tests use it (``import per_field_codec``), so it lives beside them. The
real upstream module (../shared/ros2_launch/site) is the baseline of benchmarks/bench_codec.py and the
oracle of the parity test in test/test_codec_ros.py.

- ``dtype_from_fields``: a structured dtype; a field with ``count > 1`` becomes sub-fields
  ``name_0 … name_{count-1}``, an unnamed field ``unnamed_field_<i>``; duplicate names are an error.
- ``read_points(cloud, field_names=None, skip_nans=False, uvs=None, reshape_organized_cloud=False)``:
  a structured array of ``width*height`` points in native byte order. ``skip_nans`` (ignored when the
  cloud says ``is_dense``) drops points where ANY selected field is NaN (``np.isnan``: ±Inf is kept).
  Like the original it assumes ``row_step == width*point_step``. Unlike the original it does not
  byte-swap the message buffer in place for big-endian clouds; it returns swapped copies instead.
- ``create_cloud(header, fields, points, point_step=None)``: packs a structured array (or an
  iterable of tuples) field by field, then copies the bytes into an ``array.array('B')`` and assigns
  it to ``cloud.data`` — the per-field, copy-twice path this project's codec is measured against.
"""
from __future__ import annotations

import array
import sys
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Sequence

import numpy as np

DUMMY_FIELD_PREFIX = "unnamed_field"

_DATATYPES = {
    1: np.dtype(np.int8), 2: np.dtype(np.uint8), 3: np.dtype(np.int16), 4: np.dtype(np.uint16),
    5: np.dtype(np.int32), 6: np.dtype(np.uint32), 7: np.dtype(np.float32), 8: np.dtype(np.float64),
}


def dtype_from_fields(fields: Sequence[Any], point_step: int | None = None, byteorder: str = "=") -> np.dtype:
    names, offsets, formats = [], [], []
    for i, field in enumerate(fields):
        datatype = _DATATYPES[field.datatype].newbyteorder(byteorder)
        name = field.name if field.name != "" else f"{DUMMY_FIELD_PREFIX}_{i}"
        assert field.count > 0, "Can't process fields with count = 0."
        for a in range(field.count):
            sub = f"{name}_{a}" if field.count > 1 else name
            assert sub not in names, "Duplicate field names are not allowed!"
            names.append(sub)
            offsets.append(field.offset + a * datatype.itemsize)
            formats.append(datatype.str)
    spec = {"names": names, "formats": formats, "offsets": offsets}
    if point_step is not None:
        spec["itemsize"] = point_step
    return np.dtype(spec)


def read_points(
    cloud: Any,
    field_names: Sequence[str] | None = None,
    skip_nans: bool = False,
    uvs: Iterable[int] | np.ndarray | None = None,
    reshape_organized_cloud: bool = False,
) -> np.ndarray:
    byteorder = ">" if cloud.is_bigendian else "<"
    points = np.ndarray(
        shape=(cloud.width * cloud.height,),
        dtype=dtype_from_fields(cloud.fields, point_step=cloud.point_step, byteorder=byteorder),
        buffer=np.frombuffer(cloud.data, dtype=np.uint8) if not isinstance(cloud.data, np.ndarray) else cloud.data,
    )
    if field_names is not None:
        assert all(name in points.dtype.names for name in field_names), \
            "Requests field is not in the fields of the PointCloud!"
        points = points[list(field_names)]
    if (byteorder == ">") != (sys.byteorder == "big"):
        # values in native order, as the original's in-place swap gives, but without touching cloud.data
        points = points.astype(points.dtype.newbyteorder("="))
    if skip_nans and not cloud.is_dense:
        keep = np.ones(len(points), dtype=bool)
        for name in points.dtype.names:
            keep &= ~np.isnan(points[name])
        points = points[keep]
    if uvs is not None:
        points = points[uvs if isinstance(uvs, np.ndarray) else np.fromiter(uvs, int)]
    if reshape_organized_cloud and cloud.height > 1:
        points = points.reshape(cloud.height, cloud.width)
    return points


def read_points_numpy(cloud: Any, field_names: Sequence[str] | None = None, skip_nans: bool = False) -> np.ndarray:
    """read_points as an unstructured (N, F) array, field by field (all fields of one type)."""
    points = read_points(cloud, field_names, skip_nans)
    return np.stack([points[name] for name in points.dtype.names], axis=-1)


def _simple_cloud(**kwargs: Any) -> SimpleNamespace:
    return SimpleNamespace(**kwargs)


def create_cloud(
    header: Any,
    fields: Sequence[Any],
    points: np.ndarray | Iterable[tuple],
    point_step: int | None = None,
    cloud_factory: Callable[..., Any] = _simple_cloud,
) -> Any:
    """Pack ``points`` field by field into a new cloud made by ``cloud_factory`` (rclpy PointCloud2
    or a SimpleNamespace), data as array.array('B')."""
    dtype = dtype_from_fields(fields, point_step)
    if isinstance(points, np.ndarray) and points.dtype == dtype:
        packed = points  # already laid out: the original passes it straight to memoryview
    elif isinstance(points, np.ndarray) and points.dtype.names is not None:
        packed = np.zeros(points.shape, dtype=dtype)
        for name in dtype.names:  # one strided write per field
            packed[name] = points[name]
    elif isinstance(points, np.ndarray):
        packed = np.zeros(points.shape[:-1], dtype=dtype)
        for column, name in enumerate(dtype.names):
            packed[name] = points[..., column]
    else:
        packed = np.array([tuple(p) for p in points], dtype=dtype)
    assert packed.ndim <= 2, "Too many dimensions for organized cloud! Points can only be organized in max. two dimensional space"
    height, width = (1, packed.shape[0]) if packed.ndim == 1 else packed.shape
    data = array.array("B")
    if packed.size:  # memoryview refuses to cast an empty array
        data.frombytes(memoryview(packed).cast("B"))  # copy 1: numpy -> array.array
    cloud = cloud_factory(
        header=header, height=height, width=width, is_dense=False, is_bigendian=sys.byteorder != "little",
        fields=list(fields), point_step=dtype.itemsize, row_step=dtype.itemsize * width,
    )
    cloud.data = data  # copy 2 for rclpy messages built without check_fields
    return cloud


__all__ = ["dtype_from_fields", "read_points", "read_points_numpy", "create_cloud", "DUMMY_FIELD_PREFIX"]
