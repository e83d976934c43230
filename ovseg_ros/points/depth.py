"""Depth images (``sensor_msgs/Image`` fields) to numpy, without ROS.

Two encodings are accepted, as ``depth_image_proc`` does: ``16UC1`` (unsigned millimetres,
0 = no measurement) and ``32FC1`` (float metres, 0 / NaN / inf = no measurement).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ovseg_ros.image_conversion import ImageConversionError, as_byte_array
from ovseg_ros.points.errors import PointsError

MAX_DEPTH_SIDE = 16384  # larger is a corrupt header, not a camera

# encoding -> (numpy type without byte order, units per metre)
DEPTH_ENCODINGS: dict[str, tuple[str, float]] = {
    "16UC1": ("u2", 1000.0),
    "32FC1": ("f4", 1.0),
}


@dataclass(frozen=True)
class DepthImage:
    """A decoded depth image.

    ``values``: ``[H, W]`` in the message's unit (``uint16`` mm or ``float32`` m), native byte
    order, possibly a view into the message buffer (read-only). ``units_per_metre``: 1000 for
    millimetres; metres are ``values / units_per_metre`` (a division, so 3000 mm is exactly
    the float32 nearest 3.0 and range limits hold at their decimal value).
    """

    values: np.ndarray
    units_per_metre: float

    @property
    def height(self) -> int:
        return int(self.values.shape[0])

    @property
    def width(self) -> int:
        return int(self.values.shape[1])

    def metres(self) -> np.ndarray:
        """``float32 [H, W]`` depth in metres (invalid pixels keep 0 / NaN / inf)."""
        if self.units_per_metre == 1.0:
            return self.values.astype(np.float32, copy=False)
        return self.values.astype(np.float32) / np.float32(self.units_per_metre)


def decode_depth(
    encoding: str,
    height: int,
    width: int,
    step: int,
    data: Any,
    is_bigendian: int | bool = 0,
) -> DepthImage:
    """Decode the fields of a depth ``sensor_msgs/Image`` (no copy where the layout allows).

    Row padding (``step > width * bytes per pixel``) is skipped, trailing bytes ignored. ``data``
    may be ``bytes``, ``array.array('B')`` (what rclpy delivers), a ``memoryview`` or a numpy
    array. Raises :class:`PointsError` for another encoding, bad sizes or too little data.
    """
    if encoding not in DEPTH_ENCODINGS:
        raise PointsError(
            f"unsupported depth encoding {encoding!r}; supported: 16UC1 (millimetres),"
            " 32FC1 (metres)"
        )
    kind, units_per_metre = DEPTH_ENCODINGS[encoding]
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0 or height > MAX_DEPTH_SIDE or width > MAX_DEPTH_SIDE:
        raise PointsError(f"depth image has an invalid size {width}x{height}")
    itemsize = int(kind[1])
    row_bytes = width * itemsize
    if step < row_bytes or step % itemsize:
        raise PointsError(
            f"depth step {step} is invalid for a {width} px wide {encoding} image (needs"
            f" >= {row_bytes} and a multiple of {itemsize})"
        )
    try:
        buffer = as_byte_array(data)
    except ImageConversionError as exc:
        raise PointsError(f"depth {exc}") from exc
    if buffer.size < step * height:
        raise PointsError(
            f"depth data has {buffer.size} bytes, expected step * height = {step} * {height}"
            f" = {step * height}"
        )
    dtype = np.dtype((">" if is_bigendian else "<") + kind)
    rows = buffer[: step * height].view(dtype).reshape(height, step // itemsize)[:, :width]
    if not dtype.isnative:
        rows = rows.astype(dtype.newbyteorder("="))
    return DepthImage(values=rows, units_per_metre=units_per_metre)
