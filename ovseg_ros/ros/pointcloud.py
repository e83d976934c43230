""":class:`~ovseg_ros.points.PointCloudData` -> ``sensor_msgs/PointCloud2``.

With ``sensor_msgs_py.point_cloud2.create_cloud`` where it imports (every ROS install); the
pip-only ROS has no ``sensor_msgs_py``, so the same message is filled from the same bytes there.
Either way the point data is copied once, with no Python loop over points.
"""

from __future__ import annotations

import array
import sys
from typing import Any

from ovseg_ros.points import PointCloudData


def to_pointcloud2(cloud: PointCloudData, header: Any, use_sensor_msgs_py: bool = True) -> Any:
    """A ``sensor_msgs.msg.PointCloud2`` with ``header`` (stamp of the color frame, frame_id of
    the depth image) and the fields, layout and bytes of ``cloud``.

    ``use_sensor_msgs_py=False`` forces the fallback (tests compare both).
    """
    from sensor_msgs.msg import PointCloud2, PointField

    fields = [
        PointField(name=name, offset=offset, datatype=datatype, count=count)
        for name, offset, datatype, count in cloud.fields
    ]
    point_cloud2 = _point_cloud2() if use_sensor_msgs_py else None
    # create_cloud marks its data with the host's byte order; ours is little-endian.
    if point_cloud2 is not None and sys.byteorder == "little" and not cloud.is_bigendian:
        msg = point_cloud2.create_cloud(header, fields, cloud.points)
        # Given the flat array, create_cloud makes height 1 (for a 2-D array it takes height
        # from the second axis, i.e. transposed): set the organized grid here.
        msg.height, msg.width, msg.row_step = cloud.height, cloud.width, cloud.row_step
        msg.is_dense = cloud.is_dense
        return msg
    msg = PointCloud2(
        header=header,
        height=cloud.height,
        width=cloud.width,
        fields=fields,
        is_bigendian=cloud.is_bigendian,
        point_step=cloud.point_step,
        row_step=cloud.row_step,
        is_dense=cloud.is_dense,
    )
    data = array.array("B")
    data.frombytes(cloud.data)  # one memcpy; assigning an array.array skips rclpy's checks
    msg.data = data
    return msg


def _point_cloud2() -> Any:
    try:
        from sensor_msgs_py import point_cloud2
    except ImportError:
        return None
    return point_cloud2
