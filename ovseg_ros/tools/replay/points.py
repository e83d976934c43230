"""``ovseg-replay --depth-topic T --camera-info-topic T``: labelled clouds into the output bag.

The same :class:`~ovseg_ros.points_stage.PointsStage` as the node pairs each color frame with
the depth frame of nearest stamp (a raw Image, or compressedDepth when the bag's depth topic is
a CompressedImage) and builds ``<namespace>/points`` (PointCloud2, header stamp
of the color frame, frame_id of the depth image) and ``<namespace>/camera_info`` (the latest
CameraInfo with the labels' header, scaled to their size), both written at the color frame's
bag timestamp; with ``--objects`` also ``<namespace>/objects/markers`` (MarkerArray) and
``<namespace>/objects`` (vision_msgs/Detection3DArray, registered from its definition), the
messages the node publishes for the same frame.

A bag is read in time order, and a driver may record a color frame before its depth partner:
color frames wait (:class:`DepthAligner`) until a depth frame stamped at or after them has
been read, at most :data:`MAX_WAITING` frames, or the end of the input.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np

from ovseg_ros.image_conversion import MAX_IMAGE_PIXELS
from ovseg_ros.outputs import (
    CAMERA_INFO,
    DETECTION3D_ARRAY_TYPE,
    OBJECT_MARKERS,
    OBJECTS,
    POINTS,
    CameraInfoOutput,
    ObjectsOutput,
)
from ovseg_ros.pipeline import FrameResult
from ovseg_ros.points_stage import PointsStage
from ovseg_ros.stamps import stamp_ns
from ovseg_ros.tools.replay.bag_io import RELIABLE_QOS
from ovseg_ros.tools.replay.plan import CAMERA_INFO_TYPE, COMPRESSED_TYPE, DepthOptions

POINTCLOUD2_TYPE = "sensor_msgs/msg/PointCloud2"
MARKER_ARRAY_TYPE = "visualization_msgs/msg/MarkerArray"
MAX_WAITING = 8  # color frames held back waiting for their depth partner


class DepthAligner:
    """Depth / camera_info messages into the stage; color frames held until pairable."""

    def __init__(
        self, options: DepthOptions, typestore: Any, max_pixels: int = MAX_IMAGE_PIXELS
    ) -> None:
        self.options, self.typestore = options, typestore
        # Depth images obey --max-image-pixels like the color frames (refused, counted).
        self.stage = PointsStage(options.tolerance, options.settings, max_pixels=max_pixels)
        self._waiting: deque[tuple[int, tuple]] = deque()  # (color stamp, frame args)
        self._latest_depth_ns: int | None = None

    def accepts(self, topic: str) -> bool:
        return topic in (self.options.depth_topic, self.options.camera_info_topic)

    def push(self, topic: str, raw: bytes | memoryview, msgtype: str) -> Iterator[tuple]:
        """Take a depth or camera_info message; yields the color frames now ready."""
        msg = self.typestore.deserialize_cdr(raw, msgtype)
        if topic == self.options.depth_topic:
            if msgtype == COMPRESSED_TYPE:  # compressedDepth (png or rvl)
                self.stage.push_compressed_depth(msg)
            else:
                self.stage.push_depth(msg)
            self._latest_depth_ns = stamp_ns(msg.header.stamp)
        else:
            self.stage.push_camera_info(msg)
        yield from self._ready()

    def defer(self, color_stamp_ns: int, frame: tuple) -> Iterator[tuple]:
        """Hold a color frame; yields the frames ready (possibly this one)."""
        self._waiting.append((color_stamp_ns, frame))
        yield from self._ready()

    def drain(self) -> Iterator[tuple]:
        """The frames still waiting (end of input)."""
        while self._waiting:
            yield self._waiting.popleft()[1]

    def _ready(self) -> Iterator[tuple]:
        latest = self._latest_depth_ns
        while self._waiting and (
            len(self._waiting) > MAX_WAITING
            or (latest is not None and latest >= self._waiting[0][0])
        ):
            yield self._waiting.popleft()[1]


class PointsWriter:
    """Serialises the ``points`` / ``camera_info`` outputs into the output bag.

    ``out``: the run's :class:`~ovseg_ros.tools.replay.core.OutputBag`.
    """

    def __init__(self, out: Any, prefix: str, objects: bool = False) -> None:
        self.out, self.typestore = out, out.typestore
        topics = {POINTS: POINTCLOUD2_TYPE, CAMERA_INFO: CAMERA_INFO_TYPE}
        if objects:
            topics.update({OBJECT_MARKERS: MARKER_ARRAY_TYPE, OBJECTS: DETECTION3D_ARRAY_TYPE})
        self.connections = {
            suffix: out.add(f"{prefix}/{suffix}", msgtype, RELIABLE_QOS)
            for suffix, msgtype in topics.items()
        }

    def write(self, timestamp: int, frame: FrameResult) -> None:
        """The frame's cloud (with the depth image's frame_id) and camera model, if any."""
        types, header = self.typestore.types, frame.header
        if frame.cloud is not None:
            cloud_header = types["std_msgs/msg/Header"](
                stamp=header.stamp, frame_id=frame.cloud.frame_id
            )
            msg = self._cloud(cloud_header, frame.cloud.cloud)
            self.out.write_message(self.connections[POINTS], timestamp, msg, POINTCLOUD2_TYPE)
        if frame.camera_info is not None:
            msg = self._camera_info(header, frame.camera_info)
            self.out.write_message(self.connections[CAMERA_INFO], timestamp, msg, CAMERA_INFO_TYPE)
        if frame.objects is not None and OBJECT_MARKERS in self.connections:
            objects_header = types["std_msgs/msg/Header"](
                stamp=header.stamp, frame_id=frame.objects.frame_id
            )
            for suffix, msgtype, message in (
                (OBJECT_MARKERS, MARKER_ARRAY_TYPE, self._markers),
                (OBJECTS, DETECTION3D_ARRAY_TYPE, self._detections),
            ):
                msg = message(objects_header, frame.objects)
                self.out.write_message(self.connections[suffix], timestamp, msg, msgtype)

    def _markers(self, header: Any, objects: ObjectsOutput) -> Any:
        """The node's ``~/objects/markers`` (ovseg_ros.ros.output_messages) in rosbags types:
        every field the node sets, the rest at their defaults."""
        types = self.typestore.types
        vector = types["geometry_msgs/msg/Vector3"]
        color = types["std_msgs/msg/ColorRGBA"]
        duration = types["builtin_interfaces/msg/Duration"]
        marker, mesh = (
            types["visualization_msgs/msg/Marker"],
            types["visualization_msgs/msg/MeshFile"],
        )
        image = types["sensor_msgs/msg/CompressedImage"]
        empty_header = types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id=""
        )
        markers = [
            marker(
                header=header,
                ns=spec.ns,
                id=spec.id,
                type=spec.type,
                action=spec.action,
                pose=self._pose(spec.position),
                scale=vector(*spec.scale),
                color=color(*spec.color),
                lifetime=duration(sec=0, nanosec=0),
                frame_locked=False,
                points=[],
                colors=[],
                texture_resource="",
                texture=image(header=empty_header, format="", data=np.zeros(0, np.uint8)),
                uv_coordinates=[],
                text=spec.text,
                mesh_resource="",
                mesh_file=mesh(filename="", data=np.zeros(0, np.uint8)),
                mesh_use_embedded_materials=False,
            )  # fmt: skip
            for spec in objects.markers()
        ]
        return types[MARKER_ARRAY_TYPE](markers=markers)

    def _detections(self, header: Any, objects: ObjectsOutput) -> Any:
        """The node's ``~/objects`` (where vision_msgs imports) in rosbags types."""
        types = self.typestore.types
        vector = types["geometry_msgs/msg/Vector3"]
        with_covariance = types["geometry_msgs/msg/PoseWithCovariance"]
        hypothesis = types["vision_msgs/msg/ObjectHypothesis"]
        with_pose = types["vision_msgs/msg/ObjectHypothesisWithPose"]
        box, detection = (
            types["vision_msgs/msg/BoundingBox3D"],
            types["vision_msgs/msg/Detection3D"],
        )
        detections = [
            detection(
                header=header,
                results=[
                    with_pose(
                        hypothesis=hypothesis(class_id=spec.class_id, score=spec.score),
                        pose=with_covariance(
                            pose=self._pose(spec.centroid),
                            covariance=np.zeros(36),
                        ),
                    )
                ],
                bbox=box(
                    center=self._pose(spec.center),
                    size=vector(*spec.size),
                ),
                id=spec.id,
            )  # fmt: skip
            for spec in objects.detections()
        ]
        return types[DETECTION3D_ARRAY_TYPE](header=header, detections=detections)

    def _pose(self, position: tuple[float, float, float]) -> Any:
        """A ``geometry_msgs/Pose`` at ``position`` with the identity orientation (the default
        of an rclpy Pose)."""
        types = self.typestore.types
        quaternion = types["geometry_msgs/msg/Quaternion"]
        return types["geometry_msgs/msg/Pose"](
            position=types["geometry_msgs/msg/Point"](*position),
            orientation=quaternion(0.0, 0.0, 0.0, 1.0),
        )

    def _cloud(self, header: Any, cloud: Any) -> Any:
        types = self.typestore.types
        field = types["sensor_msgs/msg/PointField"]
        return types[POINTCLOUD2_TYPE](
            header=header,
            height=cloud.height,
            width=cloud.width,
            fields=[field(name=n, offset=o, datatype=t, count=c) for n, o, t, c in cloud.fields],
            is_bigendian=cloud.is_bigendian,
            point_step=cloud.point_step,
            row_step=cloud.row_step,
            data=np.ascontiguousarray(cloud.data, dtype=np.uint8),
            is_dense=cloud.is_dense,
        )

    def _camera_info(self, header: Any, info: CameraInfoOutput) -> Any:
        types = self.typestore.types
        x_offset, y_offset, height, width, do_rectify = info.roi
        roi = types["sensor_msgs/msg/RegionOfInterest"](
            x_offset=x_offset, y_offset=y_offset, height=height, width=width, do_rectify=do_rectify
        )
        return types[CAMERA_INFO_TYPE](
            header=header,
            height=info.height,
            width=info.width,
            distortion_model=info.distortion_model,
            d=np.asarray(info.d, dtype=np.float64),
            k=np.asarray(info.k, dtype=np.float64),
            r=np.asarray(info.r, dtype=np.float64),
            p=np.asarray(info.p, dtype=np.float64),
            binning_x=info.binning_x,
            binning_y=info.binning_y,
            roi=roi,
        )
