"""Labelled 3D point clouds from a registered depth image (ROS-free).

Flow per color frame: :class:`DepthPairer` finds the depth frame of nearest stamp,
:func:`decode_depth` reads it (:func:`decode_compressed_depth` a compressedDepth one),
:class:`CameraModel` validates the latest camera_info, and
:func:`build_cloud` back-projects it with the cached :func:`ray_table` into
:class:`PointCloudData` (PointCloud2 fields and bytes) that the node and replay publish.
"""

from ovseg_ros.points.camera import (
    MAX_DISTORTION_COEFFICIENTS,
    CameraModel,
    ray_table,
    scale_camera_info,
)
from ovseg_ros.points.cloud import (
    POINT_DTYPE,
    POINT_FIELDS,
    POINT_STEP,
    PointCloudData,
    pack_rgb,
    read_cloud,
    unpack_rgb,
)
from ovseg_ros.points.compressed_depth import compressed_depth_size, decode_compressed_depth
from ovseg_ros.points.depth import DepthImage, decode_depth
from ovseg_ros.points.errors import PointsError
from ovseg_ros.points.pairing import DepthPairer, PairingStats
from ovseg_ros.points.project import PointsOptions, build_cloud, class_ids, resize_indices

__all__ = [
    "MAX_DISTORTION_COEFFICIENTS",
    "POINT_DTYPE",
    "POINT_FIELDS",
    "POINT_STEP",
    "CameraModel",
    "DepthPairer",
    "DepthImage",
    "PairingStats",
    "PointCloudData",
    "PointsError",
    "PointsOptions",
    "build_cloud",
    "class_ids",
    "compressed_depth_size",
    "decode_compressed_depth",
    "decode_depth",
    "pack_rgb",
    "ray_table",
    "read_cloud",
    "resize_indices",
    "scale_camera_info",
    "unpack_rgb",
]
