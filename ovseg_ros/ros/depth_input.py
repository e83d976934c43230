"""One camera's depth side: ``depth`` + ``camera_info`` subscriptions, ``~/points`` and
``~/camera_info`` lifecycle publishers, around the ROS-free :class:`PointsStage`.

Camera key ``""``: inputs ``depth``, ``camera_info``; outputs ``~/points``, ``~/camera_info``.
Key ``k``: ``k/depth``, ``k/camera_info``; ``~/k/points``, ``~/k/camera_info``. Both inputs are
remappable like ``image``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.callback_groups import CallbackGroup
from rclpy.lifecycle import LifecycleNode
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, RegionOfInterest
from std_msgs.msg import Header

from ovseg_ros.pipeline import CAMERA_INFO, POINTS, Output
from ovseg_ros.points_stage import PointsSettings, PointsStage
from ovseg_ros.ros import parameters
from ovseg_ros.ros.diagnostics import points_status
from ovseg_ros.ros.inputs import Factory, factory
from ovseg_ros.ros.pointcloud import to_pointcloud2
from ovseg_ros.ros.qos import OUTPUT_QOS


class DepthInput:
    """Depth and camera_info inputs of camera ``key`` and its cloud / camera_info outputs."""

    def __init__(
        self,
        node: LifecycleNode,
        key: str,
        tolerance: float,
        settings: PointsSettings,
        warn_interval: float = 5.0,
    ) -> None:
        self.node, self.key = node, key
        self.stage = PointsStage(tolerance, settings, warn_interval)
        self.depth_topic = f"{key}/depth" if key else "depth"
        self.info_topic = f"{key}/camera_info" if key else "camera_info"
        prefix = f"~/{key}" if key else "~"
        self._publishers = {
            POINTS: node.create_lifecycle_publisher(PointCloud2, f"{prefix}/{POINTS}", OUTPUT_QOS),
            CAMERA_INFO: node.create_lifecycle_publisher(
                CameraInfo, f"{prefix}/{CAMERA_INFO}", OUTPUT_QOS
            ),
        }
        self._last_counters: dict[str, int] = {}

    def factories(self, reliability: str, group: CallbackGroup) -> list[Factory]:
        """The ``depth`` and ``camera_info`` inputs, for the camera's :class:`~.inputs.Inputs`
        (``reliability`` as for the image, ``auto`` included: the QoS follower re-chooses it
        for these subscriptions too)."""
        return [
            factory(self.node, Image, self.depth_topic, self.stage.push_depth, reliability, group),
            factory(
                self.node,
                CameraInfo,
                self.info_topic,
                self.stage.push_camera_info,
                reliability,
                group,
            ),
        ]

    def outputs(self, header: Header, rgb: Any, result: Any, device: torch.device) -> list[Output]:
        """The ``points`` / ``camera_info`` outputs of a segmented frame; warnings logged."""
        outputs, warnings = self.stage.outputs(header, rgb, result, device)
        for warning in warnings:
            where = f"camera {self.key!r}: " if self.key else ""
            self.node.get_logger().warning(where + warning)
        return outputs

    def publish(self, header: Header, output: Output) -> None:
        """Publish a ``points`` or ``camera_info`` output with ``header`` (the color frame's)."""
        publisher = self._publishers.get(output.kind)
        if publisher is None:
            return
        if output.frame_id is not None:
            header = Header(stamp=header.stamp, frame_id=output.frame_id)
        if output.kind == POINTS:
            publisher.publish(to_pointcloud2(output.payload, header))
        else:
            publisher.publish(camera_info_msg(header, output.payload))

    def status(self, node_name: str, active: bool) -> DiagnosticStatus:
        """This camera's points status, compared with the previous call's counters."""
        counters = self.stage.counters()
        name = f"{node_name}: points" + (f" {self.key}" if self.key else "")
        status = points_status(name, counters, self._last_counters, active)
        self._last_counters = counters
        return status

    def destroy(self) -> None:
        for publisher in self._publishers.values():
            self.node.destroy_lifecycle_publisher(publisher)
        self._publishers = {}


def camera_info_msg(header: Header, fields: dict[str, Any]) -> CameraInfo:
    """A ``sensor_msgs/CameraInfo`` from :func:`ovseg_ros.points_stage.camera_info_fields`."""
    x_offset, y_offset, height, width, do_rectify = fields["roi"]
    return CameraInfo(
        header=header,
        height=fields["height"],
        width=fields["width"],
        distortion_model=fields["distortion_model"],
        d=fields["d"],
        k=fields["k"],
        r=fields["r"],
        p=fields["p"],
        binning_x=fields["binning_x"],
        binning_y=fields["binning_y"],
        roi=RegionOfInterest(
            x_offset=x_offset,
            y_offset=y_offset,
            height=height,
            width=width,
            do_rectify=do_rectify,
        ),
    )


# -- node glue (kept here so the node stays lifecycle glue) ---------------------------------------


def attach_depth(node: LifecycleNode, cameras: Sequence[Any]) -> None:
    """Give every camera its :class:`DepthInput` when the ``depth`` parameter is true.

    Parameters were checked at configure (``parameters.check_node_values``).
    """
    if not parameters.value(node, "depth"):
        return
    tolerance = float(parameters.value(node, "depth_sync_tolerance"))
    settings = parameters.points_settings(node)
    for camera in cameras:
        camera.depth = DepthInput(node, camera.key, tolerance, settings)


def points_outputs(camera: Any, header: Header, frame: Any, segmenter: Any) -> list[Output]:
    """The depth outputs of a segmented frame (``frame``: a ``FrameResult``); [] without depth."""
    if camera.depth is None or segmenter is None:
        return []
    return camera.depth.outputs(header, frame.rgb, frame.result, segmenter.device)


def set_points_settings(cameras: Sequence[Any], settings: PointsSettings | None) -> None:
    """Accepted runtime change of the cloud parameters: from the next frame on."""
    if settings is None:
        return
    for camera in cameras:
        if camera.depth is not None:
            camera.depth.stage.set_settings(settings)


def points_statuses(node_name: str, cameras: Sequence[Any], active: bool) -> list[DiagnosticStatus]:
    """One points status per camera with depth."""
    return [c.depth.status(node_name, active) for c in cameras if c.depth is not None]
