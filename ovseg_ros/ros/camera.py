"""One camera's ROS side: its image subscription and the lifecycle publishers of its outputs.

The node holds one :class:`Camera` per input (key ``""``: inputs ``image``, outputs ``~/...``;
key ``k``: inputs ``k/image``, outputs ``~/k/...``). Output publishers are rclpy lifecycle
publishers: they publish only while the node is active.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from rclpy.callback_groups import CallbackGroup
from rclpy.event_handler import QoSRequestedIncompatibleQoSInfo, SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleNode
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from ovseg_ros.pipeline import CONFIDENCE, IMAGE, LABELS, OVERLAY, Output, OutputPlan
from ovseg_ros.ros.adaptive_qos import OVERRIDING_OPTIONS
from ovseg_ros.ros.depth_input import DepthInput
from ovseg_ros.ros.input_loss import InputLossEstimator, stamp_ns
from ovseg_ros.ros.inputs import Inputs, factory
from ovseg_ros.ros.output_messages import OutputMessages
from ovseg_ros.ros.qos import OUTPUT_QOS
from ovseg_ros.ros.worker import Frame


class Camera:
    """Subscription (one transport at a time) and output publishers of camera ``key``."""

    def __init__(self, node: LifecycleNode, key: str = "") -> None:
        self.node, self.key = node, key
        self.input_topic = f"{key}/image" if key else "image"
        self.prefix = f"~/{key}" if key else "~"
        self.plan = OutputPlan()
        self._publishers = {
            suffix: node.create_lifecycle_publisher(Image, f"{self.prefix}/{suffix}", OUTPUT_QOS)
            for suffix in (LABELS, CONFIDENCE, OVERLAY)
        }
        self._class_publishers: dict[str, object] = {}  # "confidence/<class>" -> publisher
        self.depth: DepthInput | None = None  # depth side, attached by the node with depth:=true
        self.input_loss = InputLossEstimator()  # frames lost before reaching us, from the stamps
        self._inputs = Inputs(node)  # image, then depth and camera_info where attached
        self._messages = OutputMessages()  # one reusable message per output topic

    # -- input -------------------------------------------------------------------------------

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
        group: CallbackGroup,
    ) -> str:
        """Subscribe ``image`` (raw) or ``<resolved image>/compressed``, and depth where
        attached; the image topic name."""
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
        image = factory(
            self.node,
            msg_type,
            topic,
            lambda msg: on_frame(self._frame(msg, compressed)),
            reliability,
            group,
            event_callbacks=events,
            qos_overriding_options=OVERRIDING_OPTIONS,
        )
        depth = self.depth.factories(reliability, group) if self.depth is not None else []
        return self._inputs.subscribe([image, *depth])[0]

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
        self._inputs.unsubscribe()
        self.input_loss.clear()  # a later activation starts a new stamp sequence

    def _frame(self, msg: Image | CompressedImage, compressed: bool) -> Frame:
        """The worker's frame for ``msg``, with the frames lost just before it (by stamp)."""
        stamp = stamp_ns(msg.header.stamp.sec, msg.header.stamp.nanosec)
        lost = self.input_loss.update(stamp) if stamp > 0 else 0
        return Frame(self.key, msg, compressed, lost_before=lost, period_s=self.input_loss.period_s)

    # -- outputs -----------------------------------------------------------------------------

    def set_plan(self, class_topics: Mapping[str, int], active: bool) -> None:
        """Per-class publishers for ``class_topics`` (created / destroyed as needed); the
        overlay opacity is added per round (:class:`~.frames.Rounds`)."""
        self.plan = OutputPlan(class_topics=dict(class_topics))
        for suffix in list(self._class_publishers):
            if suffix not in class_topics:
                self.node.destroy_lifecycle_publisher(self._class_publishers.pop(suffix))
                self._messages.forget(suffix)
        for suffix in class_topics:
            if suffix not in self._class_publishers:
                publisher = self.node.create_lifecycle_publisher(
                    Image, f"{self.prefix}/{suffix}", OUTPUT_QOS
                )
                if active:  # created after on_activate: enable it ourselves
                    publisher.on_activate(None)
                self._class_publishers[suffix] = publisher

    def wants(self, suffix: str) -> bool:
        """Optional outputs (overlay, per-class confidence) are made only while subscribed."""
        publisher = self._publisher(suffix)
        return publisher is not None and publisher.get_subscription_count() > 0

    def publish(self, header: Header, outputs: list[Output]) -> None:
        for output in outputs:
            if output.kind != IMAGE:  # points, camera_info
                if self.depth is not None:
                    self.depth.publish(header, output)
                continue
            publisher = self._publisher(output.suffix)
            if publisher is not None:
                msg = self._messages.message(output.suffix, header, output.array, output.encoding)
                publisher.publish(msg)

    def class_topics(self) -> dict[str, int]:
        """Resolved per-class topic names -> vocabulary entry index."""
        return {
            self._class_publishers[s].topic_name: i
            for s, i in self.plan.class_topics.items()
            if s in self._class_publishers
        }

    def destroy(self) -> None:
        self.unsubscribe()
        self._inputs.drain()
        for publisher in [*self._publishers.values(), *self._class_publishers.values()]:
            self.node.destroy_lifecycle_publisher(publisher)
        self._publishers, self._class_publishers = {}, {}
        if self.depth is not None:
            self.depth.destroy()
            self.depth = None

    def _publisher(self, suffix: str):
        return self._publishers.get(suffix) or self._class_publishers.get(suffix)
