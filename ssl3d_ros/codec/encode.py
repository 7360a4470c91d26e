"""numpy -> sensor_msgs/PointCloud2, without rclpy: ``encode_cloud``, ``fill_cloud_message``, packed ``rgb``.

Encoding allocates the output once as the ``array.array('B')`` a ROS message stores, views it with the
structured dtype and writes every field straight into it, so the only full pass over the output is
that write. ``pack_rgb``'s inverse ``unpack_rgb`` is decoding's (``codec.decode``).
Importers outside the codec use ``ssl3d_ros.codec``, whose ``__init__`` lists every public name here.
"""
from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from .layout import (
    DATATYPE_TO_NUMPY, NUMPY_TO_DATATYPE, FLOAT32, XYZ, CloudFormatError, FieldSpec, datatype_of,
)

# ---------------------------------------------------------------------------------------------- rgb

def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 r, g, b -> (N,) float32 holding 0x00RRGGBB like PCL's packed ``rgb`` field."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 2 or rgb.shape[1] != 3 or rgb.dtype != np.uint8:
        raise CloudFormatError(f"rgb must be (N, 3) uint8, got {rgb.shape} {rgb.dtype}")
    packed = np.zeros((len(rgb), 4), dtype=np.uint8)
    # little-endian bytes of 0x00RRGGBB are b, g, r, 0 (one column at a time: numpy's fast 1-D loops)
    packed[:, 0] = rgb[:, 2]
    packed[:, 1] = rgb[:, 1]
    packed[:, 2] = rgb[:, 0]
    return packed.view("<f4").reshape(len(rgb))


# --------------------------------------------------------------------------------------------- encode

@dataclass
class EncodedCloud:
    """The PointCloud2 attributes of an encoded cloud (no header: the caller owns frame and stamp)."""

    height: int
    width: int
    fields: list[FieldSpec]
    point_step: int
    row_step: int
    data: array.array
    is_dense: bool
    is_bigendian: bool = False


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _target_dtype(name: str, values: np.ndarray, field_types: Mapping[str, Any]) -> np.dtype:
    """The PointField element type a column is stored as."""
    if name in field_types:
        wanted = field_types[name]
        if isinstance(wanted, (int, np.integer)) and not isinstance(wanted, bool):
            if int(wanted) not in DATATYPE_TO_NUMPY:
                raise CloudFormatError(f"field_types[{name!r}] = {wanted} is not a PointField datatype (1..8)")
            return DATATYPE_TO_NUMPY[int(wanted)]
        return np.dtype(DATATYPE_TO_NUMPY[datatype_of(wanted)])
    dt = values.dtype
    if dt == np.bool_:
        return np.dtype("u1")
    if dt.kind == "f" and dt.itemsize < 4:
        return np.dtype("f4")
    if dt.kind in "iu" and dt.itemsize == 8:
        return np.dtype("i4" if dt.kind == "i" else "u4")  # range-checked in _check_range
    if (dt.kind, dt.itemsize) not in NUMPY_TO_DATATYPE:
        raise CloudFormatError(
            f"field {name!r} has dtype {dt}, which PointCloud2 cannot hold; pass field_types={{{name!r}: ...}}"
        )
    return np.dtype(dt.str.lstrip("<>=|"))


def _check_range(name: str, values: np.ndarray, target: np.dtype) -> None:
    """Refuse integer narrowing that would wrap values around."""
    if target.kind not in "iu" or values.size == 0:
        return
    source = values.dtype
    if source.kind in "iu" and np.can_cast(source, target, casting="safe"):
        return
    if source.kind not in "iub":
        return  # floats to ints: the caller asked for it explicitly with field_types
    info = np.iinfo(target)
    low, high = values.min(), values.max()
    if low < info.min or high > info.max:
        raise CloudFormatError(
            f"field {name!r} holds values {low}..{high} outside {target} ({info.min}..{info.max})"
        )


def _write_rows(data: array.array, offset: int, point_step: int, values: np.ndarray, element: np.dtype) -> None:
    """Write (N,) or (N, count) ``values`` as little-endian ``element`` at ``offset`` of every point.

    Each point's bytes go as one opaque item (numpy void of the row's size), which numpy copies with a
    single strided inner loop instead of one short loop per point; casting, if any, happens on the
    small contiguous source first.
    """
    n = len(values)
    rows = np.ascontiguousarray(values.reshape(n, -1), dtype=element.newbyteorder("<"))
    item = np.dtype(f"V{rows.shape[1] * rows.itemsize}")
    target = np.ndarray((n,), item, buffer=data, offset=offset, strides=(point_step,))
    target[...] = rows.view(item).reshape(n)


def encode_cloud(
    xyz: np.ndarray,
    fields: Mapping[str, np.ndarray] | None = None,
    *,
    field_types: Mapping[str, Any] | None = None,
    height: int = 1,
    align: bool = False,
) -> EncodedCloud:
    """Encode (N, 3) coordinates and extra per-point arrays into a little-endian PointCloud2 layout.

    x, y, z are float32 at offsets 0, 4, 8; extra fields follow in ``fields`` order. A 1-D array becomes
    one field of its dtype, an (N, D) array one field with ``count=D``; ``rgb`` given as (N, 3) uint8 is
    packed into one float32 like PCL. ``field_types`` maps a field name to a PointField datatype (or a
    numpy dtype) to store it as, e.g. ``{"class_id": UINT8}``; 64-bit integers are stored as 32-bit
    when their values fit. ``height`` > 1 makes an organized cloud of ``N / height`` columns.
    ``align=True`` aligns every field to its element size and rounds point_step up to the largest one,
    like a C struct (Autoware's x, y, z, class_id, probability, entropy -> point_step 24).
    """
    points = np.asarray(xyz)
    if points.ndim != 2 or points.shape[1] != 3:
        raise CloudFormatError(f"xyz must have shape (N, 3), got {points.shape}")
    n = len(points)
    fields = dict(fields or {})
    field_types = dict(field_types or {})
    for name in XYZ:
        if name in fields:
            raise CloudFormatError(f"field {name!r} is given both in xyz and in fields")
    if height < 1 or n % height:
        raise CloudFormatError(f"{n} points cannot form an organized cloud of height {height}")
    width = n // height

    # (name, values, stored element type, count) of every field after x, y, z
    columns: list[tuple[str, np.ndarray, np.dtype, int]] = []
    for name, values in fields.items():
        values = np.asarray(values)
        if values.ndim == 0 or len(values) != n:
            raise CloudFormatError(f"field {name!r} has shape {values.shape}, expected ({n}, ...)")
        if name == "rgb" and values.ndim == 2:
            if values.shape[1] != 3 or values.dtype != np.uint8:
                raise CloudFormatError(
                    f"rgb must be (N, 3) uint8 or packed (N,) float32/uint32, got {values.shape} {values.dtype}"
                )
            columns.append((name, pack_rgb(values), np.dtype("f4"), 1))
            continue
        if values.ndim > 2:
            raise CloudFormatError(f"field {name!r} has shape {values.shape}; only (N,) or (N, D) are encodable")
        count = 1 if values.ndim == 1 else values.shape[1]
        if count < 1:
            raise CloudFormatError(f"field {name!r} has no columns (shape {values.shape})")
        target = _target_dtype(name, values, field_types)
        _check_range(name, values, target)
        columns.append((name, values, target, count))

    specs = [FieldSpec(name, 4 * i, FLOAT32, 1) for i, name in enumerate(XYZ)]
    offset, largest = 12, 4
    for name, _, target, count in columns:
        if align:
            offset = _round_up(offset, target.itemsize)
            largest = max(largest, target.itemsize)
        specs.append(FieldSpec(name, offset, datatype_of(target), count))
        offset += target.itemsize * count
    point_step = _round_up(offset, largest) if align else offset

    # One allocation in the type a ROS message stores, zeroed so padding bytes never leak memory.
    data = array.array("B", b"\0") * (n * point_step)
    if n:
        _write_rows(data, 0, point_step, points, np.dtype("f4"))  # x, y, z side by side in one pass
        for spec, (_, values, target, _) in zip(specs[3:], columns):
            _write_rows(data, spec.offset, point_step, values, target)
    is_dense = bool(np.isfinite(points).all()) if points.dtype.kind == "f" else True
    return EncodedCloud(
        height=height, width=width, fields=specs, point_step=point_step,
        row_step=width * point_step, data=data, is_dense=is_dense,
    )


def fill_cloud_message(msg: Any, encoded: EncodedCloud, field_factory: Callable[..., Any]) -> Any:
    """Copy an EncodedCloud onto a PointCloud2 instance (rclpy or rosbags); the header is left alone.

    The data buffer is shared, not copied: rosbags messages get a numpy uint8 view of it, rclpy messages
    get the ``array.array('B')`` itself.
    """
    msg.height = encoded.height
    msg.width = encoded.width
    msg.fields = [
        field_factory(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in encoded.fields
    ]
    msg.is_bigendian = encoded.is_bigendian
    msg.point_step = encoded.point_step
    msg.row_step = encoded.row_step
    msg.is_dense = encoded.is_dense
    current = getattr(msg, "data", None)
    if isinstance(current, np.ndarray):
        msg.data = np.frombuffer(encoded.data, dtype=np.uint8)
    elif _stores_array_as_is(msg):
        # rclpy's generated setter keeps an array.array('B') as-is only when the message was built with
        # check_fields=True; otherwise it re-wraps it (array.array('B', value)), a second full copy of a
        # cloud that can be tens of MB. Store it exactly as the checked setter would.
        msg._data = encoded.data
    else:
        msg.data = encoded.data
    return msg


def _stores_array_as_is(msg: Any) -> bool:
    cls = type(msg)
    return (
        isinstance(getattr(cls, "data", None), property)
        and "_data" in getattr(cls, "__slots__", ())
        and isinstance(getattr(msg, "_data", None), array.array)
    )


__all__ = ["pack_rgb", "EncodedCloud", "encode_cloud", "fill_cloud_message"]
