"""ROS messages from a frame's typed outputs (:mod:`ovseg_ros.outputs`).

Images: every frame publishes images of the same size on the same topics, so each topic keeps
one message and one payload buffer (:class:`OutputMessages`): the output array's bytes are
copied once, straight into the buffer (no ``bytes`` object, no new buffer while the size stays
the same). rclpy serialises the message inside ``publish``, so the buffer is free again when
``publish`` returns. The payload is an ``array.array('B')``: rclpy takes it as it is, whereas a
numpy array or a list is checked element by element on assignment (~150 ms for a 640x480
32FC1 image).

Objects: ``visualization_msgs/MarkerArray`` always (a PyPI wheel exists), and
``vision_msgs/Detection3DArray`` where vision_msgs imports, both from the records of
:class:`~ovseg_ros.outputs.ObjectsOutput` (replay writes the same through rosbags).

Clouds: with ``sensor_msgs_py.point_cloud2.create_cloud`` where it imports (every ROS install);
the pip-only ROS has no ``sensor_msgs_py``, so the same message is filled from the same bytes
there. Either way the point data is copied once, with no Python loop over points.
"""

from __future__ import annotations

import array
import sys
from typing import Any

import numpy as np
from geometry_msgs.msg import Point, Pose, Vector3
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField, RegionOfInterest
from std_msgs.msg import ColorRGBA, Header, String
from visualization_msgs.msg import Marker, MarkerArray

from ovseg_ros.image_conversion import image_fields_and_array
from ovseg_ros.outputs import CameraInfoOutput, LabelInfoOutput, ObjectsOutput
from ovseg_ros.points import PointCloudData


class OutputMessages:
    """One reusable Image message per output (``suffix``); not thread-safe (the worker's)."""

    def __init__(self) -> None:
        self._messages: dict[str, tuple[Image, array.array]] = {}

    def message(self, suffix: str, header: Header, data: np.ndarray, encoding: str) -> Image:
        """The message of ``suffix`` holding ``data`` ([H, W] or [H, W, 3]) in ``encoding``.

        Valid until the next call for the same ``suffix``: publish it before then.
        """
        fields, contiguous = image_fields_and_array(data, encoding)
        source = memoryview(contiguous).cast("B")  # [H * step] bytes, no copy
        msg, payload = self._messages.get(suffix, (None, None))
        if msg is None or len(payload) != source.nbytes:
            msg = Image()
            msg.data = array.array("B", [0]) * source.nbytes
            payload = msg.data  # the message's own array (the setter may have copied ours)
            self._messages[suffix] = (msg, payload)
        memoryview(payload)[:] = source  # the one copy
        msg.header = header
        msg.height, msg.width, msg.step = fields["height"], fields["width"], fields["step"]
        msg.encoding, msg.is_bigendian = fields["encoding"], fields["is_bigendian"]
        return msg

    def forget(self, suffix: str) -> None:
        """Drop the buffer of an output that is no longer published."""
        self._messages.pop(suffix, None)


def camera_info_message(header: Header, info: CameraInfoOutput) -> CameraInfo:
    """A ``sensor_msgs/CameraInfo`` with ``header`` and the fields of ``info``."""
    x_offset, y_offset, height, width, do_rectify = info.roi
    return CameraInfo(
        header=header,
        height=info.height,
        width=info.width,
        distortion_model=info.distortion_model,
        d=list(info.d),
        k=list(info.k),
        r=list(info.r),
        p=list(info.p),
        binning_x=info.binning_x,
        binning_y=info.binning_y,
        roi=RegionOfInterest(
            x_offset=x_offset, y_offset=y_offset, height=height, width=width, do_rectify=do_rectify
        ),
    )


def cloud_message(cloud: PointCloudData, header: Header, use_sensor_msgs_py: bool = True) -> Any:
    """A ``sensor_msgs/PointCloud2`` with ``header`` (stamp of the color frame, frame_id of the
    depth image) and the fields, layout and bytes of ``cloud``.

    ``use_sensor_msgs_py=False`` forces the fallback (tests compare both).
    """
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


def publish_text(publisher: Any, text: str) -> None:
    """Publish ``text`` as a ``std_msgs/String`` on ``publisher`` (``~/vocabulary``)."""
    publisher.publish(String(data=text))


def label_info_types() -> tuple[type, type] | None:
    """``(vision_msgs.msg.LabelInfo, VisionClass)`` where vision_msgs imports (a ROS install
    with ``ros-<distro>-vision-msgs``), else None (it has no PyPI wheel)."""
    try:
        from vision_msgs.msg import LabelInfo, VisionClass
    except ImportError:
        return None
    return LabelInfo, VisionClass


def label_info_message(types: tuple[type, type], header: Header, info: LabelInfoOutput) -> Any:
    """A ``vision_msgs/LabelInfo`` of ``info`` with ``header``; ``types``: from
    :func:`label_info_types` (or any classes with the same fields)."""
    label_info, vision_class = types
    msg = label_info()
    msg.header = header
    msg.class_map = [vision_class(class_id=i, class_name=name) for i, name in info.class_map]
    msg.threshold = info.threshold
    return msg


def marker_array_message(header: Header, objects: ObjectsOutput) -> MarkerArray:
    """``~/objects/markers``: DELETEALL, then a CUBE and a TEXT_VIEW_FACING per object
    (:meth:`~ovseg_ros.outputs.ObjectsOutput.markers`), each with ``header``."""
    markers = []
    for spec in objects.markers():
        marker = Marker(header=header, ns=spec.ns, id=spec.id, type=spec.type, action=spec.action)
        marker.pose = Pose(
            position=Point(x=spec.position[0], y=spec.position[1], z=spec.position[2])
        )
        marker.scale = Vector3(x=spec.scale[0], y=spec.scale[1], z=spec.scale[2])
        r, g, b, a = spec.color
        marker.color = ColorRGBA(r=r, g=g, b=b, a=a)
        marker.text = spec.text
        markers.append(marker)
    return MarkerArray(markers=markers)


def detection_types() -> Any:
    """The ``vision_msgs.msg`` module where vision_msgs imports (a ROS install with
    ``ros-<distro>-vision-msgs``), else None (it has no PyPI wheel)."""
    try:
        from vision_msgs import msg
    except ImportError:
        return None
    return msg


def detection_array_message(types: Any, header: Header, objects: ObjectsOutput) -> Any:
    """``~/objects``: a ``vision_msgs/Detection3DArray`` of
    :meth:`~ovseg_ros.outputs.ObjectsOutput.detections`; ``types``: from
    :func:`detection_types` (or any module with the same classes)."""
    detections = []
    for spec in objects.detections():
        hypothesis = types.ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = spec.class_id, spec.score
        hypothesis.pose.pose.position = Point(
            x=spec.centroid[0], y=spec.centroid[1], z=spec.centroid[2]
        )
        detection = types.Detection3D(header=header, results=[hypothesis], id=spec.id)
        detection.bbox.center.position = Point(x=spec.center[0], y=spec.center[1], z=spec.center[2])
        detection.bbox.size = Vector3(x=spec.size[0], y=spec.size[1], z=spec.size[2])
        detections.append(detection)
    return types.Detection3DArray(header=header, detections=detections)
