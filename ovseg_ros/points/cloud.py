"""Labelled point clouds: depth + labels + confidence + color -> PointCloud2 bytes, no ROS.

One point is 24 bytes, every field 4-aligned (``sensor_msgs_py.point_cloud2`` derives the same
point step, 24, from these offsets); ``x y z rgb label`` have the names and datatypes of PCL's
``pcl::PointXYZRGBL`` (PCL matches datatypes exactly: a UINT16 label would be dropped)::

    offset  0 x           FLOAT32  metres, optical frame (x right, y down, z forward)
    offset  4 y           FLOAT32
    offset  8 z           FLOAT32
    offset 12 rgb         FLOAT32  0x00RRGGBB bits read as a float (PCL / RViz convention)
    offset 16 label       UINT32   index into the vocabulary of the labels; the unlabeled value
                                   (255 or 65535, as in the label image) below prob_threshold
    offset 20 confidence  FLOAT32  probability of the winning class

Data is little-endian (``is_bigendian`` False). :mod:`ovseg_ros.points.project` fills it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ovseg_ros.points.errors import PointsError

# sensor_msgs/PointField datatype constants.
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)
_FIELD_DTYPES = {
    INT8: "i1",
    UINT8: "u1",
    INT16: "i2",
    UINT16: "u2",
    INT32: "i4",
    UINT32: "u4",
    FLOAT32: "f4",
    FLOAT64: "f8",
}
# (name, offset, datatype, count), as sensor_msgs/PointField.
POINT_FIELDS: tuple[tuple[str, int, int, int], ...] = (
    ("x", 0, FLOAT32, 1),
    ("y", 4, FLOAT32, 1),
    ("z", 8, FLOAT32, 1),
    ("rgb", 12, FLOAT32, 1),
    ("label", 16, UINT32, 1),
    ("confidence", 20, FLOAT32, 1),
)
POINT_STEP = 24
POINT_DTYPE = np.dtype(
    {
        "names": [f[0] for f in POINT_FIELDS],
        "formats": ["<" + _FIELD_DTYPES[f[2]] for f in POINT_FIELDS],
        "offsets": [f[1] for f in POINT_FIELDS],
        "itemsize": POINT_STEP,
    }
)


@dataclass(frozen=True)
class PointCloudData:
    """A PointCloud2 without ROS: what the node and replay turn into a message.

    ``fields``: ``(name, offset, datatype, count)`` per field; ``data``: flat ``uint8`` array of
    ``row_step * height`` bytes (``bytes(data)`` or ``data.tobytes()`` where bytes are needed);
    ``num_valid``: points with a valid depth that passed the filters (all of an unorganized
    cloud, the non-NaN ones of an organized cloud).
    """

    fields: tuple[tuple[str, int, int, int], ...]
    height: int
    width: int
    point_step: int
    row_step: int
    is_dense: bool
    is_bigendian: bool
    data: np.ndarray
    num_valid: int

    @property
    def points(self) -> np.ndarray:
        """Structured ``[height * width]`` view of ``data`` with :data:`POINT_DTYPE`."""
        return self.data.view(POINT_DTYPE)


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """``uint8 [..., 3]`` RGB -> ``float32 [...]`` holding the bits 0x00RRGGBB (PCL convention)."""
    rgb = np.asarray(rgb, dtype=np.uint32)
    bits = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return bits.astype("<u4").view("<f4")


def unpack_rgb(rgb: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_rgb`: ``float32 [...]`` -> ``uint8 [..., 3]``."""
    bits = np.ascontiguousarray(rgb, dtype="<f4").view("<u4")
    return np.stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255], axis=-1).astype(np.uint8)


def read_cloud(
    fields: Iterable[Any],
    data: Any,
    point_step: int,
    width: int,
    height: int = 1,
    is_bigendian: bool = False,
) -> dict[str, np.ndarray]:
    """Field-by-field reader: ``{name: [height * width] array}`` straight from the bytes.

    ``fields``: ``(name, offset, datatype, count)`` tuples or PointField-like objects; fields
    with ``count > 1`` give ``[N, count]``. Independent of :data:`POINT_DTYPE`, so tests read
    back what a subscriber would.
    """
    buffer = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    n = int(width) * int(height)
    if buffer.size < n * int(point_step):
        raise PointsError(f"cloud data has {buffer.size} bytes, expected {n} * {point_step}")
    out: dict[str, np.ndarray] = {}
    for field in fields:
        if isinstance(field, tuple):
            name, offset, datatype, count = field
        else:
            name, offset, datatype, count = field.name, field.offset, field.datatype, field.count
        if datatype not in _FIELD_DTYPES:
            raise PointsError(f"field {name!r} has unknown datatype {datatype}")
        dtype = np.dtype((">" if is_bigendian else "<") + _FIELD_DTYPES[datatype])
        shape, strides = (n,), (int(point_step),)
        if count > 1:
            shape, strides = (n, int(count)), (int(point_step), dtype.itemsize)
        view = np.ndarray(shape, dtype=dtype, buffer=buffer, offset=int(offset), strides=strides)
        out[name] = view.astype(dtype.newbyteorder("="))
    return out
