"""The sensor_msgs/PointCloud2 point layout, which decoding (``codec.decode``) and encoding (``codec.encode``) share.

PointField datatype constants and their numpy element types, ``FieldSpec``, ``CloudFormatError`` (the one
exception type for malformed clouds), the checks of a field list against ``point_step``, and the
structured dtype of one point with the column names of ``sensor_msgs_py.point_cloud2.read_points``.
Importers outside the codec use ``ssl3d_ros.codec``, whose ``__init__`` lists every public name here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

# sensor_msgs/PointField datatype constants.
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)

DATATYPE_NAMES = {
    INT8: "INT8", UINT8: "UINT8", INT16: "INT16", UINT16: "UINT16",
    INT32: "INT32", UINT32: "UINT32", FLOAT32: "FLOAT32", FLOAT64: "FLOAT64",
}
# Element types without byte order; the order is applied per cloud.
DATATYPE_TO_NUMPY = {
    INT8: np.dtype("i1"), UINT8: np.dtype("u1"), INT16: np.dtype("i2"), UINT16: np.dtype("u2"),
    INT32: np.dtype("i4"), UINT32: np.dtype("u4"), FLOAT32: np.dtype("f4"), FLOAT64: np.dtype("f8"),
}
NUMPY_TO_DATATYPE = {(dt.kind, dt.itemsize): code for code, dt in DATATYPE_TO_NUMPY.items()}

UNNAMED_FIELD_PREFIX = "unnamed_field"  # sensor_msgs_py's name for fields whose name is ''
XYZ = ("x", "y", "z")


class CloudFormatError(ValueError):
    """A PointCloud2 (or the arrays to encode into one) is malformed; the message names the problem."""


@dataclass(frozen=True)
class FieldSpec:
    """One sensor_msgs/PointField: ``count`` elements of ``datatype`` at byte ``offset`` of a point."""

    name: str
    offset: int
    datatype: int
    count: int = 1

    @property
    def element(self) -> np.dtype:
        """Element dtype without byte order (raises CloudFormatError for an unknown datatype)."""
        try:
            return DATATYPE_TO_NUMPY[self.datatype]
        except KeyError:
            raise CloudFormatError(
                f"field {self.name!r} has unknown datatype {self.datatype!r} "
                f"(PointField datatypes are 1=INT8 … 8=FLOAT64)"
            ) from None

    @property
    def size(self) -> int:
        """Bytes the field occupies in a point."""
        return self.element.itemsize * self.count


def datatype_of(dtype: Any) -> int:
    """PointField datatype constant of a numpy dtype (CloudFormatError if PointCloud2 has none)."""
    dt = np.dtype(dtype)
    try:
        return NUMPY_TO_DATATYPE[(dt.kind, dt.itemsize)]
    except KeyError:
        raise CloudFormatError(f"numpy dtype {dt} has no PointField datatype") from None


def field_specs(fields: Sequence[Any]) -> tuple[FieldSpec, ...]:
    """FieldSpecs from PointField-like objects (rclpy, rosbags or FieldSpec)."""
    specs = []
    for i, f in enumerate(fields):
        try:
            specs.append(FieldSpec(str(f.name), int(f.offset), int(f.datatype), int(f.count)))
        except AttributeError as exc:
            raise CloudFormatError(f"field #{i} is not a PointField: {exc}") from None
    return tuple(specs)


def check_fields(specs: Sequence[FieldSpec], point_step: int) -> None:
    """Refuse fields with a bad count, offset or datatype, or that end past ``point_step``."""
    if point_step <= 0:
        raise CloudFormatError(f"point_step is {point_step}; it must be positive")
    for spec in specs:
        if spec.count <= 0:
            raise CloudFormatError(f"field {spec.name!r} has count {spec.count}; it must be at least 1")
        if spec.offset < 0:
            raise CloudFormatError(f"field {spec.name!r} has negative offset {spec.offset}")
        end = spec.offset + spec.size  # also validates the datatype
        if end > point_step:
            raise CloudFormatError(
                f"field {spec.name!r} ({DATATYPE_NAMES[spec.datatype]} x{spec.count} at offset "
                f"{spec.offset}) ends at byte {end}, past point_step {point_step}"
            )


def check_no_overlap(specs: Sequence[FieldSpec]) -> None:
    """Two fields sharing bytes would decode one of them as garbage (e.g. intensity inside x)."""
    ordered = sorted(specs, key=lambda s: s.offset)
    for before, after in zip(ordered, ordered[1:]):
        if after.offset < before.offset + before.size:
            raise CloudFormatError(
                f"fields {before.name!r} (bytes {before.offset}..{before.offset + before.size - 1}) and "
                f"{after.name!r} (from byte {after.offset}) overlap"
            )


def column_names(specs: Sequence[FieldSpec]) -> list[tuple[str, int, FieldSpec, int]]:
    """(column name, byte offset, spec, element index) per column, named like read_points."""
    columns, seen = [], {}
    for i, spec in enumerate(specs):
        base = spec.name if spec.name else f"{UNNAMED_FIELD_PREFIX}_{i}"
        for k in range(spec.count):
            name = f"{base}_{k}" if spec.count > 1 else base
            if name in seen:
                raise CloudFormatError(
                    f"duplicate field name {name!r} (fields #{seen[name]} and #{i})"
                )
            seen[name] = i
            columns.append((name, spec.offset + k * spec.element.itemsize, spec, k))
    return columns


def cloud_dtype(fields: Sequence[Any], point_step: int, is_bigendian: bool = False) -> np.dtype:
    """Structured dtype of one point: read_points' column names, the given offsets, itemsize point_step."""
    specs = field_specs(fields)
    check_fields(specs, int(point_step))
    return structured_dtype(specs, column_names(specs), int(point_step), is_bigendian)


def structured_dtype(specs: Sequence[FieldSpec], columns: list[tuple[str, int, FieldSpec, int]], point_step: int,
                     is_bigendian: bool) -> np.dtype:
    """Structured dtype of one point from ``column_names(specs)`` (unchecked: see ``cloud_dtype``)."""
    order = ">" if is_bigendian else "<"
    return np.dtype({
        "names": [c[0] for c in columns],
        "formats": [c[2].element.newbyteorder(order) for c in columns],
        "offsets": [c[1] for c in columns],
        "itemsize": int(point_step),
    })


__all__ = [
    "INT8", "UINT8", "INT16", "UINT16", "INT32", "UINT32", "FLOAT32", "FLOAT64", "DATATYPE_NAMES",
    "DATATYPE_TO_NUMPY", "NUMPY_TO_DATATYPE", "UNNAMED_FIELD_PREFIX", "XYZ", "CloudFormatError", "FieldSpec",
    "datatype_of", "field_specs", "check_fields", "check_no_overlap", "column_names", "cloud_dtype",
    "structured_dtype",
]
