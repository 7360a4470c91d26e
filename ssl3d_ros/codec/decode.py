"""sensor_msgs/PointCloud2 -> numpy, without rclpy: ``decode_cloud``, ``xyz``, ``scan_from_cloud``, ``unpack_rgb``.

Duck-typed on purpose: the same functions serve rclpy messages (``data`` is an ``array.array('B')``),
rosbags messages (``data`` is a numpy uint8 array, fields are dataclasses) and the ``EncodedCloud``
made by ``codec.encode``. Only ``ssl3d_ros/node.py`` imports rclpy.

Decoding is a zero-copy structured view of the message buffer plus, when asked, one pass over x, y, z
to find non-finite points. Field names and values follow ``sensor_msgs_py.point_cloud2.read_points``:
a field with ``count > 1`` appears as ``name_0 … name_{count-1}``, an unnamed field as
``unnamed_field_<i>``. Consumers that want a field as one array use ``field_values`` (``(N,)`` or
``(N, count)``), which gathers straight from the buffer.

The point layout both directions share (datatypes, ``FieldSpec``, ``CloudFormatError``, ``cloud_dtype``)
is ``codec.layout``; encoding is ``codec.encode``. Importers outside the codec use ``ssl3d_ros.codec``,
whose ``__init__`` lists every public name of the three.
"""
from __future__ import annotations

import sys
from functools import cached_property
from typing import Any

import numpy as np

from ..scan import Scan
from .layout import (
    FLOAT32, UINT32, UNNAMED_FIELD_PREFIX, XYZ, CloudFormatError, FieldSpec, check_fields, check_no_overlap,
    column_names, field_specs, structured_dtype,
)

_UINT32_MAX = 0xFFFFFFFF
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _as_uint8_buffer(data: Any) -> np.ndarray:
    """The message bytes as a 1-D uint8 array sharing memory whenever the container allows it."""
    if isinstance(data, np.ndarray):
        flat = data.reshape(-1)  # a view for the contiguous arrays rosbags gives
        return flat if flat.dtype == np.uint8 else flat.view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)  # bytes, bytearray, array.array('B'), memoryview
    except TypeError:  # a plain list of ints: copying is unavoidable
        return np.asarray(data, dtype=np.uint8)


class DecodedCloud:
    """A PointCloud2 seen through numpy, with the points kept by ``decode_cloud``.

    ``cloud`` is the structured view of every point, ``(height*width,)`` or, when rows are padded
    (``row_step > width*point_step``), ``(height, width)``; it shares memory with the message.
    ``index`` (int64) holds the row-major position of each kept point. ``points`` is the structured
    ``(N,)`` array of the kept points: the view itself when nothing was dropped and rows are not
    padded, otherwise built on first access (the only copy decoding can make, and only if asked for).
    ``dtype`` and, while every point is kept, ``index`` are built on first use: a caller that only
    wants a few fields pays for neither (numpy builds a structured dtype of many columns slowly, and
    an index of a large cloud is megabytes).
    """

    def __init__(self, *, buffer: np.ndarray, dtype: np.dtype | None, fields: tuple[FieldSpec, ...],
                 height: int, width: int, point_step: int, row_step: int, is_bigendian: bool,
                 index: np.ndarray | None, all_kept: bool) -> None:
        self.buffer = buffer
        if dtype is not None:
            self.dtype = dtype
        self._index = index
        self.fields = fields
        self.height = height
        self.width = width
        self.point_step = point_step
        self.row_step = row_step
        self.is_bigendian = is_bigendian
        self.all_kept = all_kept
        self.rows_padded = height > 1 and row_step != width * point_step
        self._by_name = {(f.name or f"{UNNAMED_FIELD_PREFIX}_{i}"): f for i, f in enumerate(fields)}

    def __len__(self) -> int:
        return self.height * self.width if self._index is None else len(self._index)

    @property
    def index(self) -> np.ndarray:
        if self._index is None:
            self._index = np.arange(self.height * self.width, dtype=np.int64)
        return self._index

    @index.setter
    def index(self, value: np.ndarray) -> None:
        self._index = value

    @cached_property
    def dtype(self) -> np.dtype:
        return structured_dtype(self.fields, column_names(self.fields), self.point_step, self.is_bigendian)

    @property
    def field_names(self) -> list[str]:
        """PointField names (unnamed fields as ``unnamed_field_<i>``), in message order."""
        return list(self._by_name)

    def spec(self, name: str) -> FieldSpec:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"cloud has no field {name!r}; fields: {self.field_names}") from None

    @cached_property
    def cloud(self) -> np.ndarray:
        return self._view(0, self.dtype)

    @cached_property
    def points(self) -> np.ndarray:
        flat = self.cloud if not self.rows_padded else self.cloud.reshape(-1)
        return flat if self.all_kept else flat[self.index]

    def _view(self, offset: int, dtype: np.dtype, count: int = 1) -> np.ndarray:
        """Strided view over all height*width points of ``count`` elements of ``dtype`` at ``offset``."""
        inner_shape, inner_strides = ((count,), (dtype.itemsize,)) if count > 1 else ((), ())
        if self.rows_padded:
            shape, strides = (self.height, self.width), (self.row_step, self.point_step)
        else:
            shape, strides = (self.height * self.width,), (self.point_step,)
        if self.height * self.width == 0:  # numpy refuses offsets into an empty buffer
            return np.empty(shape + inner_shape, dtype=dtype)
        return np.ndarray(shape + inner_shape, dtype=dtype, buffer=self.buffer, offset=offset,
                          strides=strides + inner_strides)

    def field_view(self, name: str) -> np.ndarray:
        """Zero-copy view of PointField ``name`` over ALL points (not only the kept ones).

        Shape ``(height*width,)`` / ``(height*width, count)``, or with a leading ``(height, width)`` when
        rows are padded; byte order as in the message.
        """
        spec = self.spec(name)
        element = spec.element.newbyteorder(">" if self.is_bigendian else "<")
        return self._view(spec.offset, element, spec.count)

    def field_values(self, name: str, *, copy: bool = False) -> np.ndarray:
        """PointField ``name`` for the kept points: ``(N,)`` or ``(N, count)``, message byte order.

        Without ``copy``, a view of the message when nothing was dropped and rows are not padded.
        Otherwise one gather into a new contiguous array, moving each point's bytes of the field as
        one opaque item (a single memcpy-like loop, not one short loop per point).
        """
        if self.all_kept and not self.rows_padded and not copy:
            return self.field_view(name)
        spec = self.spec(name)
        element = spec.element.newbyteorder(">" if self.is_bigendian else "<")
        return _gather_items(self, spec.offset, spec.size).view(element).reshape(
            (-1, spec.count) if spec.count > 1 else (-1,)
        )


def _gather_items(decoded: DecodedCloud, offset: int, size: int) -> np.ndarray:
    """The ``size`` bytes at ``offset`` of every kept point, as a contiguous (N,) void array."""
    items = decoded._view(offset, np.dtype(f"V{size}"))
    if decoded.rows_padded:  # (height, width): rows are not evenly spaced in memory
        if decoded.all_kept:
            return np.ascontiguousarray(items).reshape(-1)
        return items[np.divmod(decoded.index, decoded.width)]
    return items.copy() if decoded.all_kept else items[decoded.index]


def _cloud_geometry(msg: Any) -> tuple[int, int, int, int]:
    try:
        height, width = int(msg.height), int(msg.width)
        point_step, row_step = int(msg.point_step), int(msg.row_step)
    except AttributeError as exc:
        raise CloudFormatError(f"not a PointCloud2: {exc}") from None
    for name, value in (("height", height), ("width", width), ("point_step", point_step), ("row_step", row_step)):
        if not 0 <= value <= _UINT32_MAX:
            raise CloudFormatError(f"{name} is {value}; PointCloud2 stores it as uint32")
    if height == 0 and width != 0:
        raise CloudFormatError(f"height is 0 but width is {width}; an empty cloud has width 0")
    if width * height > _UINT32_MAX:
        raise CloudFormatError(f"width*height = {width}*{height} = {width * height} overflows uint32")
    return height, width, point_step, row_step


def _finite_mask(decoded: DecodedCloud) -> np.ndarray:
    """(height*width,) bool, True where x, y and z are all finite (as the float32 coordinates they become).

    Column by column: numpy's 1-D strided loops beat one isfinite over an (N, 3) block, whose inner
    loop of length 3 costs a call per point.
    """
    mask = None
    for name in XYZ:
        view = decoded.field_view(name)
        if view.dtype.kind != "f":
            continue  # integer coordinates are always finite
        if view.dtype.itemsize > 4:  # float64 beyond float32's range becomes +-Inf in the Scan: not finite
            with np.errstate(invalid="ignore"):
                finite = np.abs(view) <= _FLOAT32_MAX
        else:
            finite = np.isfinite(view)
        mask = finite if mask is None else np.logical_and(mask, finite, out=mask)
    if mask is None:
        return np.ones(decoded.height * decoded.width, dtype=bool)
    return mask.reshape(decoded.height * decoded.width)


def decode_cloud(msg: Any, skip_nans: bool = False, *, require_xyz: bool = True) -> DecodedCloud:
    """Decode a PointCloud2-like message without copying its data buffer.

    ``skip_nans`` drops points whose x, y or z is NaN or ±Inf (one pass over x, y, z); ``index`` keeps
    the row-major positions of the remaining points. ``require_xyz`` (default) rejects clouds without
    float-or-integer x, y and z fields. Raises CloudFormatError naming the problem for malformed clouds.
    """
    height, width, point_step, row_step = _cloud_geometry(msg)
    specs = field_specs(msg.fields)
    is_bigendian = bool(msg.is_bigendian)
    check_fields(specs, point_step)
    column_names(specs)  # refuses duplicate column names now; the structured dtype is built when used
    names = {s.name for s in specs}
    if require_xyz:
        missing = [n for n in XYZ if n not in names]
        if missing:
            raise CloudFormatError(
                f"cloud has no {'/'.join(missing)} field(s); fields: {[s.name for s in specs]}"
            )
        for n in XYZ:
            spec = next(s for s in specs if s.name == n)
            if spec.count != 1:
                raise CloudFormatError(f"field {n!r} has count {spec.count}; coordinates need count 1")
    check_no_overlap(specs)  # after the checks that name a more specific problem
    if row_step < width * point_step:
        raise CloudFormatError(
            f"row_step {row_step} is smaller than width*point_step = {width}*{point_step} = {width * point_step}"
        )
    buffer = _as_uint8_buffer(msg.data)
    needed = row_step * height if width else 0
    if len(buffer) < needed:
        raise CloudFormatError(
            f"data holds {len(buffer)} bytes but row_step*height = {row_step}*{height} = {needed} are needed "
            f"(width={width}, point_step={point_step})"
        )
    count = height * width
    decoded = DecodedCloud(
        buffer=buffer, dtype=None, fields=specs, height=height, width=width, point_step=point_step,
        row_step=row_step, is_bigendian=is_bigendian, index=None, all_kept=True,
    )
    if skip_nans and count:
        if not require_xyz and not all(n in names for n in XYZ):
            raise CloudFormatError("skip_nans needs x, y and z fields")
        mask = _finite_mask(decoded)
        if not mask.all():
            decoded.index = np.flatnonzero(mask).astype(np.int64, copy=False)
            decoded.all_kept = False
    return decoded


def xyz(decoded: DecodedCloud) -> np.ndarray:
    """(N, 3) float32 coordinates of the kept points (any numeric x/y/z type, any byte order).

    For the usual layout (little-endian float32 x, y, z side by side) with every point kept and rows
    not padded, a read-only strided view of the message (as sensor_msgs_py's read_points_numpy
    returns); otherwise a new array. Copy it to keep it beyond the message or to write into it.
    """
    x, y, z = (decoded.spec(n) for n in XYZ)
    if (x.datatype == y.datatype == z.datatype == FLOAT32 and y.offset == x.offset + 4
            and z.offset == x.offset + 8 and not decoded.is_bigendian and sys.byteorder == "little"):
        if decoded.all_kept and not decoded.rows_padded:
            view = decoded._view(x.offset, np.dtype("<f4"), 3)
            view.flags.writeable = False
            return view
        # move 12 bytes per point in one gather, already the output type
        return _gather_items(decoded, x.offset, 12).view(np.float32).reshape(-1, 3)
    out = np.empty((len(decoded), 3), dtype=np.float32)
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes +-Inf: an invalid point
        for i, name in enumerate(XYZ):
            out[:, i] = decoded.field_values(name)
    return out


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """(N,) packed float32/uint32 ``rgb`` (0x00RRGGBB, any byte order) -> (N, 3) uint8 r, g, b."""
    packed = np.asarray(packed)
    if packed.ndim != 1 or packed.dtype.itemsize != 4 or packed.dtype.kind not in "fu":
        raise CloudFormatError(f"packed rgb must be (N,) float32 or uint32, got {packed.shape} {packed.dtype}")
    # the float's bits read as an unsigned int of the same byte order ('<f4' -> '<u4')
    bits = packed.view(packed.dtype.str.replace("f", "u")) if packed.dtype.kind == "f" else packed
    value = bits.astype("=u4")
    out = np.empty((len(value), 3), dtype=np.uint8)
    out[:, 0] = (value >> 16) & 0xFF
    out[:, 1] = (value >> 8) & 0xFF
    out[:, 2] = value & 0xFF
    return out


# ----------------------------------------------------------------------------------------------- scan

def _header_frame_and_stamp(msg: Any) -> tuple[str | None, int | None]:
    header = getattr(msg, "header", None)
    if header is None:
        return None, None
    frame = getattr(header, "frame_id", None)
    stamp = getattr(header, "stamp", None)
    stamp_ns = None
    if stamp is not None and hasattr(stamp, "sec"):
        stamp_ns = int(stamp.sec) * 1_000_000_000 + int(getattr(stamp, "nanosec", 0))
    return frame, stamp_ns


def _native(values: np.ndarray) -> np.ndarray:
    """``values`` (an owned, contiguous gather) in native byte order."""
    return values if values.dtype.isnative else values.astype(values.dtype.newbyteorder("="))


def scan_from_cloud(
    msg: Any,
    *,
    frame_id: str | None = None,
    stamp_ns: int | None = None,
    label_field: str | None = None,
    source: str = "",
    keep_invalid: bool = False,
) -> tuple[Scan, np.ndarray]:
    """A Scan from a PointCloud2, and the row-major index of each of its points in the message.

    Points with a non-finite x, y or z are dropped, unless ``keep_invalid``: then every one of the
    ``height*width`` points is kept in message order (the index is ``arange``), non-finite and
    float64 coordinates beyond float32's range (which become ±Inf) included, for a caller whose
    preprocessing decides validity (the inference pipeline). ``is_dense`` is not trusted either way:
    the coordinates are checked. Every field other than x, y, z and ``label_field``
    goes into ``Scan.fields`` in native byte order (``count > 1`` fields as (N, count)); a packed ``rgb``
    float32/uint32 field is unpacked to (N, 3) uint8. ``frame_id``/``stamp_ns`` override the header's.
    """
    decoded = decode_cloud(msg, skip_nans=not keep_invalid)
    header_frame, header_stamp = _header_frame_and_stamp(msg)
    labels = None
    if label_field is not None:
        spec = decoded.spec(label_field) if label_field in decoded.field_names else None
        if spec is None:
            raise CloudFormatError(f"label field {label_field!r} not in cloud fields {decoded.field_names}")
        if spec.count != 1:
            raise CloudFormatError(f"label field {label_field!r} has count {spec.count}; labels need count 1")
        labels = decoded.field_values(label_field).astype(np.int32)
    extra: dict[str, np.ndarray] = {}
    for name in decoded.field_names:
        if name in XYZ or name == label_field:
            continue
        spec = decoded.spec(name)
        if name == "rgb" and spec.count == 1 and spec.datatype in (FLOAT32, UINT32):
            extra[name] = unpack_rgb(decoded.field_values(name))
        else:
            # owned copies: a Scan must not alias message memory, which rclpy and rosbags may reuse,
            # and contiguous arrays keep every later pass fast
            extra[name] = _native(decoded.field_values(name, copy=True))
    points = xyz(decoded)
    if np.may_share_memory(points, decoded.buffer):  # a Scan owns its arrays (see above)
        points = np.array(points)
    scan = Scan(
        points=points,
        fields=extra,
        frame_id=frame_id if frame_id is not None else (header_frame or ""),
        stamp_ns=stamp_ns if stamp_ns is not None else (header_stamp or 0),
        labels=labels,
        source=source,
    )
    return scan, decoded.index


__all__ = ["DecodedCloud", "decode_cloud", "xyz", "unpack_rgb", "scan_from_cloud"]
