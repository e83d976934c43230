"""One camera's ROS side: its input subscriptions and the lifecycle publishers of its outputs.

The node holds one :class:`Camera` per input. Key ``""``: inputs ``image`` (or
``<image>/compressed``), ``camera_info``, ``depth``; outputs ``~/labels``, ``~/confidence``,
``~/confidence/<class>``, ``~/mask/<class>``, ``~/overlay``, ``~/camera_info``, ``~/points``,
and with ``objects`` ``~/objects/markers`` (and ``~/objects`` where vision_msgs imports).
Key ``k``: the same under ``k/`` and ``~/k/``. All inputs are remappable. camera_info is
always subscribed (the labels' camera model is published whenever one is known); with depth,
the camera's :class:`~ovseg_ros.points_stage.PointsStage` receives the depth messages and
builds the cloud inside the frame pipeline. Output publishers are rclpy lifecycle publishers:
they publish only while the node is active.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode
from rclpy.subscription import Subscription
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from ovseg_ros.camera_info_input import CameraInfoInput
from ovseg_ros.outputs import (
    CAMERA_INFO,
    CONFIDENCE,
    LABEL_INFO,
    LABELS,
    OBJECT_MARKERS,
    OBJECTS,
    OVERLAY,
    POINTS,
    LabelInfoOutput,
)
from ovseg_ros.pipeline import FrameResult, OutputPlan
from ovseg_ros.points_stage import PointsStage
from ovseg_ros.ros.adaptive_qos import OVERRIDING_OPTIONS
from ovseg_ros.ros.compat import QoSRequestedIncompatibleQoSInfo, SubscriptionEventCallbacks
from ovseg_ros.ros.diagnostics import points_status
from ovseg_ros.ros.input_loss import InputLossEstimator
from ovseg_ros.ros.inputs import Inputs, factory
from ovseg_ros.ros.output_messages import (
    OutputMessages,
    camera_info_message,
    cloud_message,
    detection_array_message,
    detection_types,
    label_info_message,
    label_info_types,
    marker_array_message,
)
from ovseg_ros.ros.qos import LABEL_INFO_QOS, OUTPUT_QOS
from ovseg_ros.ros.worker import Frame
from ovseg_ros.stamps import split_ns, stamp_ns


class Camera:
    """Subscriptions (one image transport at a time, depth + camera_info with a points stage)
    and output publishers of camera ``key``."""

    def __init__(
        self,
        node: LifecycleNode,
        key: str = "",
        depth: PointsStage | None = None,
        depth_transport: str = "raw",
    ):
        self.node, self.key = node, key
        self.depth_transport = depth_transport  # raw | compressedDepth (<depth>/compressedDepth)
        self.input_topic = self._name("image")
        self.depth_topic, self.info_topic = self._name("depth"), self._name(CAMERA_INFO)
        self.prefix = f"~/{key}" if key else "~"
        self.plan = OutputPlan()
        self.depth = depth  # the points stage (depth:=true), else None
        # The points stage's camera model is the camera's: one camera_info subscription.
        self.camera_info = depth.camera_info if depth is not None else CameraInfoInput()
        self._publishers = {
            suffix: node.create_lifecycle_publisher(Image, f"{self.prefix}/{suffix}", OUTPUT_QOS)
            for suffix in (LABELS, CONFIDENCE, OVERLAY)
        }
        self._publishers[CAMERA_INFO] = node.create_lifecycle_publisher(
            CameraInfo, f"{self.prefix}/{CAMERA_INFO}", OUTPUT_QOS
        )
        if depth is not None:
            self._publishers[POINTS] = node.create_lifecycle_publisher(
                PointCloud2, f"{self.prefix}/{POINTS}", OUTPUT_QOS
            )
        # "confidence/<class>" and "mask/<class>" -> publisher
        self._class_publishers: dict[str, object] = {}
        # ~/objects/markers and ~/objects while objects are on (set_objects)
        self._object_publishers: dict[str, object] = {}
        self._detection_types = detection_types()
        # ~/label_info where vision_msgs imports (latched: a plain publisher, like ~/vocabulary)
        self._label_info_types = label_info_types()
        self._label_info = None
        if self._label_info_types is not None:
            self._label_info = node.create_publisher(
                self._label_info_types[0], f"{self.prefix}/{LABEL_INFO}", LABEL_INFO_QOS
            )
        self._label_info_sent: tuple | None = None  # (version, valid_from, threshold)
        self.input_loss = InputLossEstimator()  # frames lost before reaching us, from the stamps
        self._inputs = Inputs(node)  # image, then depth and camera_info with a points stage
        self._image_group = MutuallyExclusiveCallbackGroup()
        self._depth_group = MutuallyExclusiveCallbackGroup()
        self._messages = OutputMessages()  # one reusable message per image topic
        self._active = False  # subscribed: publishers created now must be enabled by hand
        self._last_points: dict[str, int] = {}  # the depth counters at the previous status

    def _name(self, topic: str) -> str:
        return f"{self.key}/{topic}" if self.key else topic

    # -- inputs ------------------------------------------------------------------------------

    @property
    def subscription(self) -> Subscription | None:
        """The image subscription (the first input), None while unsubscribed."""
        return self._inputs.subscriptions[0] if self._inputs.subscriptions else None

    def subscribe(
        self,
        transport: str,
        reliability: str,
        on_frame: Callable[[Frame], None],
        on_incompatible: Callable[[str, QoSRequestedIncompatibleQoSInfo], None],
    ) -> str:
        """Subscribe ``image`` (raw) or ``<resolved image>/compressed``, and depth +
        camera_info with a points stage; the image topic name. ``reliability`` as the
        ``qos_reliability`` parameter (``auto``: the QoS follower renews every input).

        Each camera's image callbacks have their own callback group, and its depth and
        camera_info callbacks another: a flooding camera, or a slow camera_info, never holds
        up another camera's frames or its own."""
        if transport == "compressed":
            # Resolved (remapping applied) first, so -r image:=/x/image moves both.
            topic = f"{self.node.resolve_topic_name(self.input_topic)}/compressed"
            msg_type, compressed = CompressedImage, True
        elif transport == "raw":
            topic, msg_type, compressed = self.input_topic, Image, False
        else:
            raise ValueError(f"image_transport must be raw or compressed, got {transport!r}")
        events = SubscriptionEventCallbacks(
            incompatible_qos=lambda info: on_incompatible(
                self.subscription.topic_name if self.subscription else topic, info
            )
        )
        factories = [
            factory(
                self.node,
                msg_type,
                topic,
                lambda msg: on_frame(self._frame(msg, compressed)),
                reliability,
                self._image_group,
                event_callbacks=events,
                qos_overriding_options=OVERRIDING_OPTIONS,
            )
        ]
        if self.depth is not None:
            factories.append(self._depth_input(reliability))
        node, group = self.node, self._depth_group
        factories.append(
            factory(node, CameraInfo, self.info_topic, self.camera_info.push, reliability, group)
        )
        self._active = True
        return self._inputs.subscribe(factories)[0]

    def _depth_input(self, reliability: str) -> Callable[[], Subscription]:
        """The depth subscription's factory: ``depth`` (raw) or, with ``depth_transport``
        compressedDepth, ``<resolved depth>/compressedDepth`` only (as the compressed image)."""
        stage, group = self.depth, self._depth_group
        if self.depth_transport == "compressedDepth":
            topic = f"{self.node.resolve_topic_name(self.depth_topic)}/compressedDepth"
            push, msg_type = stage.push_compressed_depth, CompressedImage
        elif self.depth_transport == "raw":
            topic, push, msg_type = self.depth_topic, stage.push_depth, Image
        else:
            raise ValueError(
                f"depth_transport must be raw or compressedDepth, got {self.depth_transport!r}"
            )
        return factory(self.node, msg_type, topic, push, reliability, group)

    def resubscribe(self) -> str:
        """Recreate the image subscription (its reliability chosen anew); depth is kept."""
        return self._inputs.renew(0)

    def adaptive(self) -> list[tuple[Subscription, Callable[[], object]]]:
        """Every input subscription with the way to renew it (for the QoS follower)."""
        return self._inputs.adaptive()

    def sweep(self) -> None:
        """Free what earlier unsubscriptions left for later (see :mod:`.retire`)."""
        self._inputs.sweep()

    def unsubscribe(self) -> None:
        self._active = False
        self._inputs.unsubscribe()
        self.input_loss.clear()  # a later activation starts a new stamp sequence

    def _frame(self, msg: Image | CompressedImage, compressed: bool) -> Frame:
        """The worker's frame for ``msg``, with the frames lost just before it (by stamp)."""
        stamp = stamp_ns(msg.header.stamp)
        lost = self.input_loss.update(stamp) if stamp > 0 else 0
        return Frame(self.key, msg, compressed, lost_before=lost, period_s=self.input_loss.period_s)

    # -- outputs -----------------------------------------------------------------------------

    def set_plan(self, class_topics: Mapping[str, int], overlay_alpha: float | None) -> None:
        """The outputs of the next frames: per-class publishers for ``class_topics`` (created
        / destroyed as needed) and the overlay opacity."""
        self.plan = OutputPlan(class_topics=dict(class_topics), overlay_alpha=overlay_alpha)
        for suffix in list(self._class_publishers):
            if suffix not in class_topics:
                self.node.destroy_lifecycle_publisher(self._class_publishers.pop(suffix))
                self._messages.forget(suffix)
        for suffix in class_topics:
            if suffix not in self._class_publishers:
                publisher = self.node.create_lifecycle_publisher(
                    Image, f"{self.prefix}/{suffix}", OUTPUT_QOS
                )
                if self._active:  # created after on_activate: enable it ourselves
                    publisher.on_activate(None)
                self._class_publishers[suffix] = publisher

    def set_objects(self, enabled: bool) -> None:
        """Create (or destroy) the objects publishers: ``~/objects/markers``, and
        ``~/objects`` where vision_msgs imports. Only with depth."""
        if not enabled or self.depth is None:
            for publisher in self._object_publishers.values():
                self.node.destroy_lifecycle_publisher(publisher)
            self._object_publishers = {}
            return
        if self._object_publishers:
            return
        types = {OBJECT_MARKERS: MarkerArray}
        if self._detection_types is not None:
            types[OBJECTS] = self._detection_types.Detection3DArray
        for suffix, msg_type in types.items():
            publisher = self.node.create_lifecycle_publisher(
                msg_type, f"{self.prefix}/{suffix}", OUTPUT_QOS
            )
            if self._active:  # created after on_activate: enable it ourselves
                publisher.on_activate(None)
            self._object_publishers[suffix] = publisher

    def listening(self) -> frozenset[str]:
        """The outputs besides the labels someone subscribes to (confidence, per-class
        confidences and masks, overlay, camera_info, points, objects): the others are not
        computed."""
        optional = [
            CONFIDENCE, OVERLAY, CAMERA_INFO, POINTS, *self._class_publishers,
            *self._object_publishers,
        ]  # fmt: skip
        return frozenset(
            suffix
            for suffix in optional
            if (publisher := self._publisher(suffix)) is not None
            and publisher.get_subscription_count() > 0
        )

    def publish(self, frame: FrameResult) -> None:
        """Publish every output of a segmented frame: the images (labels first), then the
        cloud (the depth image's frame_id) and the camera model; log its depth warnings."""
        header = frame.header
        for image in frame.images:
            publisher = self._publisher(image.suffix)
            if publisher is not None:
                publisher.publish(
                    self._messages.message(image.suffix, header, image.array, image.encoding)
                )
        if frame.cloud is not None and POINTS in self._publishers:
            cloud_header = Header(stamp=header.stamp, frame_id=frame.cloud.frame_id)
            self._publishers[POINTS].publish(cloud_message(frame.cloud.cloud, cloud_header))
        if frame.camera_info is not None and CAMERA_INFO in self._publishers:
            self._publishers[CAMERA_INFO].publish(camera_info_message(header, frame.camera_info))
        self.log_warnings(frame.warnings)

    def publish_objects(self, frame: FrameResult) -> None:
        """Publish the frame's 3D objects (found after its labels were published), with the
        color frame's stamp and the depth image's frame_id."""
        objects = frame.objects
        if objects is None:
            return
        header = Header(stamp=frame.header.stamp, frame_id=objects.frame_id)
        markers = self._object_publishers.get(OBJECT_MARKERS)
        if markers is not None:
            markers.publish(marker_array_message(header, objects))
        detections = self._object_publishers.get(OBJECTS)
        if detections is not None:
            detections.publish(detection_array_message(self._detection_types, header, objects))

    def log_warnings(self, warnings: list[str]) -> None:
        """Log (already throttled) warnings about this camera's frames."""
        for warning in warnings:
            where = f"camera {self.key!r}: " if self.key else ""
            self.node.get_logger().warning(where + warning)

    def publish_label_info(self, vocabulary, valid_from: int | None, threshold: float) -> None:
        """``~/label_info`` for ``vocabulary`` (stamped with its ``valid_from`` for this
        camera, once known), when it differs from the last one published; nothing without
        vision_msgs."""
        if self._label_info is None or vocabulary is None or valid_from is None:
            return
        key = (vocabulary.version, valid_from, float(threshold))
        if key == self._label_info_sent:
            return
        sec, nanosec = split_ns(valid_from)
        header = Header(stamp=Time(sec=sec, nanosec=nanosec))
        info = LabelInfoOutput.of(vocabulary, threshold)
        self._label_info.publish(label_info_message(self._label_info_types, header, info))
        self._label_info_sent = key

    def class_topics(self) -> dict[str, int]:
        """Resolved per-class topic names -> vocabulary entry index."""
        return {
            self._class_publishers[s].topic_name: i
            for s, i in self.plan.class_topics.items()
            if s in self._class_publishers
        }

    def points_status(self, node_name: str, active: bool) -> DiagnosticStatus | None:
        """This camera's point cloud status (None without depth), against the last call's."""
        if self.depth is None:
            return None
        counters = self.depth.counters()
        name = f"{node_name}: points" + (f" {self.key}" if self.key else "")
        status = points_status(name, counters, self._last_points, active)
        self._last_points = counters
        return status

    def destroy(self) -> None:
        self.unsubscribe()
        self._inputs.drain()
        publishers = [
            *self._publishers.values(),
            *self._class_publishers.values(),
            *self._object_publishers.values(),
        ]
        for publisher in publishers:
            self.node.destroy_lifecycle_publisher(publisher)
        self._publishers, self._class_publishers, self._object_publishers = {}, {}, {}
        if self._label_info is not None:
            self.node.destroy_publisher(self._label_info)
            self._label_info = None

    def _publisher(self, suffix: str):
        return (
            self._publishers.get(suffix)
            or self._class_publishers.get(suffix)
            or self._object_publishers.get(suffix)
        )
