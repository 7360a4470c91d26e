"""sensor_msgs/PointCloud2 <-> numpy, without rclpy.

Duck-typed on purpose: the same functions serve rclpy messages (``data`` is an ``array.array('B')``),
rosbags messages (``data`` is a numpy uint8 array, fields are dataclasses) and the ``EncodedCloud``
made here. Only ``ssl3d_ros/node.py`` imports rclpy.

Decoding is a zero-copy structured view of the message buffer plus, when asked, one pass over x, y, z
to find non-finite points. Field names and values follow ``sensor_msgs_py.point_cloud2.read_points``:
a field with ``count > 1`` appears as ``name_0 … name_{count-1}``, an unnamed field as
``unnamed_field_<i>``. Consumers that want a field as one array use ``field_values`` (``(N,)`` or
``(N, count)``), which gathers straight from the buffer.

Encoding allocates the output once as the ``array.array('B')`` a ROS message stores, views it with the
structured dtype and writes every field straight into it, so the only full pass over the output is
that write.
"""
from __future__ import annotations

import array
import sys
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ssl3d_ros.scan import Scan

# sensor_msgs/PointField datatype constants.
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)

DATATYPE_NAMES = {
    INT8: "INT8", UINT8: "UINT8", INT16: "INT16", UINT16: "UINT16",
    INT32: "INT32", UINT32: "UINT32", FLOAT32: "FLOAT32", FLOAT64: "FLOAT64",
}
# Element types without byte order; the order is applied per cloud.
_DATATYPE_TO_NUMPY = {
    INT8: np.dtype("i1"), UINT8: np.dtype("u1"), INT16: np.dtype("i2"), UINT16: np.dtype("u2"),
    INT32: np.dtype("i4"), UINT32: np.dtype("u4"), FLOAT32: np.dtype("f4"), FLOAT64: np.dtype("f8"),
}
_NUMPY_TO_DATATYPE = {(dt.kind, dt.itemsize): code for code, dt in _DATATYPE_TO_NUMPY.items()}

UNNAMED_FIELD_PREFIX = "unnamed_field"  # sensor_msgs_py's name for fields whose name is ''
_UINT32_MAX = 0xFFFFFFFF
_FLOAT32_MAX = float(np.finfo(np.float32).max)
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
            return _DATATYPE_TO_NUMPY[self.datatype]
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
        return _NUMPY_TO_DATATYPE[(dt.kind, dt.itemsize)]
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


def _check_fields(specs: Sequence[FieldSpec], point_step: int) -> None:
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


def _check_no_overlap(specs: Sequence[FieldSpec]) -> None:
    """Two fields sharing bytes would decode one of them as garbage (e.g. intensity inside x)."""
    ordered = sorted(specs, key=lambda s: s.offset)
    for before, after in zip(ordered, ordered[1:]):
        if after.offset < before.offset + before.size:
            raise CloudFormatError(
                f"fields {before.name!r} (bytes {before.offset}..{before.offset + before.size - 1}) and "
                f"{after.name!r} (from byte {after.offset}) overlap"
            )


def _column_names(specs: Sequence[FieldSpec]) -> list[tuple[str, int, FieldSpec, int]]:
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
    _check_fields(specs, int(point_step))
    return _structured_dtype(specs, _column_names(specs), int(point_step), is_bigendian)


def _structured_dtype(specs: Sequence[FieldSpec], columns: list[tuple[str, int, FieldSpec, int]], point_step: int,
                      is_bigendian: bool) -> np.dtype:
    order = ">" if is_bigendian else "<"
    return np.dtype({
        "names": [c[0] for c in columns],
        "formats": [c[2].element.newbyteorder(order) for c in columns],
        "offsets": [c[1] for c in columns],
        "itemsize": int(point_step),
    })


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
        return _structured_dtype(self.fields, _column_names(self.fields), self.point_step, self.is_bigendian)

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
    _check_fields(specs, point_step)
    _column_names(specs)  # refuses duplicate column names now; the structured dtype is built when used
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
    _check_no_overlap(specs)  # after the checks that name a more specific problem
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
            if int(wanted) not in _DATATYPE_TO_NUMPY:
                raise CloudFormatError(f"field_types[{name!r}] = {wanted} is not a PointField datatype (1..8)")
            return _DATATYPE_TO_NUMPY[int(wanted)]
        return np.dtype(_DATATYPE_TO_NUMPY[datatype_of(wanted)])
    dt = values.dtype
    if dt == np.bool_:
        return np.dtype("u1")
    if dt.kind == "f" and dt.itemsize < 4:
        return np.dtype("f4")
    if dt.kind in "iu" and dt.itemsize == 8:
        return np.dtype("i4" if dt.kind == "i" else "u4")  # range-checked in _check_range
    if (dt.kind, dt.itemsize) not in _NUMPY_TO_DATATYPE:
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


__all__ = [
    "INT8", "UINT8", "INT16", "UINT16", "INT32", "UINT32", "FLOAT32", "FLOAT64", "DATATYPE_NAMES",
    "CloudFormatError", "FieldSpec", "DecodedCloud", "EncodedCloud", "cloud_dtype", "datatype_of",
    "field_specs", "decode_cloud", "xyz", "encode_cloud", "fill_cloud_message", "scan_from_cloud",
    "pack_rgb", "unpack_rgb",
]
