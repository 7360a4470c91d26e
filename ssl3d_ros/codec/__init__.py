"""sensor_msgs/PointCloud2 <-> numpy, without rclpy.

- :mod:`.layout`: the point layout both directions share (PointField datatypes, ``FieldSpec``,
  ``CloudFormatError``, the field checks, the structured dtype of one point);
- :mod:`.decode`: a message as a zero-copy view (``decode_cloud``, ``xyz``), as a :class:`~ssl3d_ros.scan.Scan`
  (``scan_from_cloud``), and packed ``rgb`` unpacked (``unpack_rgb``);
- :mod:`.encode`: arrays into a PointCloud2 layout (``encode_cloud``, ``fill_cloud_message``, ``pack_rgb``).

Importers outside the codec use ``from ssl3d_ros.codec import …``.
"""
from .decode import DecodedCloud, decode_cloud, scan_from_cloud, unpack_rgb, xyz
from .encode import EncodedCloud, encode_cloud, fill_cloud_message, pack_rgb
from .layout import (
    DATATYPE_NAMES, DATATYPE_TO_NUMPY, FLOAT32, FLOAT64, INT8, INT16, INT32, NUMPY_TO_DATATYPE, UINT8, UINT16, UINT32,
    UNNAMED_FIELD_PREFIX, XYZ, CloudFormatError, FieldSpec, check_fields, check_no_overlap, cloud_dtype, column_names,
    datatype_of, field_specs, structured_dtype,
)

__all__ = [
    # layout
    "INT8", "UINT8", "INT16", "UINT16", "INT32", "UINT32", "FLOAT32", "FLOAT64", "DATATYPE_NAMES",
    "DATATYPE_TO_NUMPY", "NUMPY_TO_DATATYPE", "UNNAMED_FIELD_PREFIX", "XYZ", "CloudFormatError", "FieldSpec",
    "datatype_of", "field_specs", "check_fields", "check_no_overlap", "column_names", "cloud_dtype",
    "structured_dtype",
    # decode
    "DecodedCloud", "decode_cloud", "xyz", "unpack_rgb", "scan_from_cloud",
    # encode
    "pack_rgb", "EncodedCloud", "encode_cloud", "fill_cloud_message",
]
