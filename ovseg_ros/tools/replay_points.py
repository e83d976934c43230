"""``ovseg-replay --depth-topic T --camera-info-topic T``: labelled clouds into the output bag.

The same :class:`~ovseg_ros.points_stage.PointsStage` as the node pairs each color frame with
the depth frame of nearest stamp and builds ``<namespace>/points`` (PointCloud2, header stamp
of the color frame, frame_id of the depth image) and ``<namespace>/camera_info`` (the latest
CameraInfo with the labels' header, scaled to their size), both written at the color frame's
bag timestamp.

A bag is read in time order, and a driver may record a color frame before its depth partner:
color frames wait (:class:`DepthAligner`) until a depth frame stamped at or after them has
been read, at most :data:`MAX_WAITING` frames, or the end of the input.
"""

from __future__ import annotations

import argparse
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ovseg_ros.outputs import CAMERA_INFO, POINTS, CameraInfoOutput
from ovseg_ros.pipeline import FrameResult
from ovseg_ros.points_stage import PointsSettings, PointsStage
from ovseg_ros.stamps import stamp_ns
from ovseg_ros.tools.cli import UsageError

POINTCLOUD2_TYPE = "sensor_msgs/msg/PointCloud2"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
DEPTH_TYPE = "sensor_msgs/msg/Image"
MAX_WAITING = 8  # color frames held back waiting for their depth partner


@dataclass(frozen=True)
class DepthOptions:
    """The depth inputs of a replay run and the cloud parameters."""

    depth_topic: str
    camera_info_topic: str
    tolerance: float = 0.02
    settings: PointsSettings = PointsSettings()


def check_depth_topics(reader: Any, options: DepthOptions, image_topics: dict[str, str]) -> None:
    """``UsageError`` unless both topics are in the bag with the right types and there is
    exactly one image topic (a depth stream belongs to one camera)."""
    types = {c.topic: c.msgtype for c in reader.connections}
    for flag, topic, msgtype in (
        ("--depth-topic", options.depth_topic, DEPTH_TYPE),
        ("--camera-info-topic", options.camera_info_topic, CAMERA_INFO_TYPE),
    ):
        if topic not in types:
            raise UsageError(f"{flag} {topic} is not in the bag")
        if types[topic] != msgtype:
            raise UsageError(f"{flag} {topic} is {types[topic]}, not {msgtype}")
    if len(image_topics) != 1:
        raise UsageError(
            "--depth-topic needs exactly one image topic (the color camera it is registered "
            f"to); got {', '.join(image_topics)}"
        )


def add_depth_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "point clouds",
        "write <namespace>/points and <namespace>/camera_info (as the node with "
        "depth:=true); the cloud options default to the params file's values",
    )
    add = group.add_argument
    add("--depth-topic", help="registered depth Image topic (16UC1 mm or 32FC1 m)")
    add("--camera-info-topic", help="CameraInfo topic of the depth image")
    add("--depth-sync-tolerance", type=float, help="seconds (default 0.02)")
    add("--points-stride", type=int, help="use every n-th depth pixel (default 1)")
    add("--points-organized", action=argparse.BooleanOptionalAction, default=None)
    add("--depth-min", type=float, help="metres (default 0.1)")
    add("--depth-max", type=float, help="metres (default 10.0)")
    add("--points-classes", nargs="*", help="only points of these classes (default: all)")


def depth_options(args: argparse.Namespace, params: dict[str, Any]) -> DepthOptions | None:
    """``--depth-topic`` and friends (flags win over the params file), checked."""
    if args.depth_topic is None and args.camera_info_topic is None:
        return None
    if not args.depth_topic or not args.camera_info_topic:
        raise UsageError("--depth-topic and --camera-info-topic go together")
    flags = {
        "points_stride": args.points_stride,
        "points_organized": args.points_organized,
        "depth_min": args.depth_min,
        "depth_max": args.depth_max,
        "points_classes": args.points_classes,
        "depth_sync_tolerance": args.depth_sync_tolerance,
    }
    values = {k: params[k] for k in flags if params.get(k) is not None}
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        settings = PointsSettings.from_values(values)
        tolerance = float(values.get("depth_sync_tolerance", 0.02))
        if not tolerance >= 0.0:
            raise ValueError(f"depth_sync_tolerance must be >= 0 seconds, got {tolerance}")
    except (TypeError, ValueError) as exc:
        raise UsageError(f"point cloud options: {exc}") from None
    return DepthOptions(
        _absolute(args.depth_topic), _absolute(args.camera_info_topic), tolerance, settings
    )


def _absolute(topic: str) -> str:
    topic = topic.strip()
    return topic if topic.startswith("/") else f"/{topic}"


class DepthAligner:
    """Depth / camera_info messages into the stage; color frames held until pairable."""

    def __init__(self, options: DepthOptions, typestore: Any) -> None:
        self.options, self.typestore = options, typestore
        self.stage = PointsStage(options.tolerance, options.settings)
        self._waiting: deque[tuple[int, tuple]] = deque()  # (color stamp, frame args)
        self._latest_depth_ns: int | None = None

    def accepts(self, topic: str) -> bool:
        return topic in (self.options.depth_topic, self.options.camera_info_topic)

    def push(self, topic: str, raw: bytes | memoryview, msgtype: str) -> Iterator[tuple]:
        """Take a depth or camera_info message; yields the color frames now ready."""
        msg = self.typestore.deserialize_cdr(raw, msgtype)
        if topic == self.options.depth_topic:
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
    """Serialises the ``points`` / ``camera_info`` outputs into the output bag."""

    def __init__(self, out: Any, prefix: str) -> None:
        from ovseg_ros.tools.bag_io import RELIABLE_QOS

        self.out, self.typestore = out, out.typestore
        self.connections = {
            POINTS: out.add(f"{prefix}/{POINTS}", POINTCLOUD2_TYPE, RELIABLE_QOS),
            CAMERA_INFO: out.add(f"{prefix}/{CAMERA_INFO}", CAMERA_INFO_TYPE, RELIABLE_QOS),
        }

    def write(self, timestamp: int, frame: FrameResult) -> None:
        """The frame's cloud (with the depth image's frame_id) and camera model, if any."""
        types, header = self.typestore.types, frame.header
        if frame.cloud is not None:
            cloud_header = types["std_msgs/msg/Header"](
                stamp=header.stamp, frame_id=frame.cloud.frame_id
            )
            msg = self._cloud(cloud_header, frame.cloud.cloud)
            self.out._write(self.connections[POINTS], timestamp, msg, POINTCLOUD2_TYPE)
        if frame.camera_info is not None:
            msg = self._camera_info(header, frame.camera_info)
            self.out._write(self.connections[CAMERA_INFO], timestamp, msg, CAMERA_INFO_TYPE)

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
