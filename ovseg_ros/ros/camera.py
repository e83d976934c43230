"""One camera's ROS side: its image subscription and the lifecycle publishers of its outputs.

The node holds one :class:`Camera` per input (key ``""``: inputs ``image``, outputs ``~/...``;
key ``k``: inputs ``k/image``, outputs ``~/k/...``). Output publishers are rclpy lifecycle
publishers: they publish only while the node is active.
"""

from __future__ import annotations

import array
from collections.abc import Callable, Mapping

import numpy as np
from rclpy.callback_groups import CallbackGroup
from rclpy.event_handler import QoSRequestedIncompatibleQoSInfo, SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleNode
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from ovseg_ros.image_conversion import array_to_image_fields
from ovseg_ros.pipeline import CONFIDENCE, IMAGE, LABELS, OVERLAY, Output, OutputPlan
from ovseg_ros.ros.adaptive_qos import OVERRIDING_OPTIONS
from ovseg_ros.ros.depth_input import DepthInput
from ovseg_ros.ros.input_loss import InputLossEstimator, stamp_ns
from ovseg_ros.ros.output_messages import OutputMessages
from ovseg_ros.ros.qos import OUTPUT_QOS, input_qos
from ovseg_ros.ros.retire import Retirer
from ovseg_ros.ros.worker import Frame


class Camera:
    """Subscription (one transport at a time) and output publishers of camera ``key``."""

    def __init__(self, node: LifecycleNode, key: str = "") -> None:
        self.node, self.key = node, key
        self.input_topic = f"{key}/image" if key else "image"
        self.prefix = f"~/{key}" if key else "~"
        self.plan = OutputPlan()
        self.subscription = None
        self._publishers = {
            suffix: node.create_lifecycle_publisher(Image, f"{self.prefix}/{suffix}", OUTPUT_QOS)
            for suffix in (LABELS, CONFIDENCE, OVERLAY)
        }
        self._class_publishers: dict[str, object] = {}  # "confidence/<class>" -> publisher
        self.depth: DepthInput | None = None  # depth side, attached by the node with depth:=true
        self.input_loss = InputLossEstimator()  # frames lost before reaching us, from the stamps
        self._resubscribe: Callable[[], str] | None = None
        self._retirer = Retirer(node)  # destroys subscriptions without racing the executor
        self._messages = OutputMessages()  # one reusable message per output topic

    # -- input -------------------------------------------------------------------------------

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
        topic = self._subscribe_image(transport, reliability, on_frame, on_incompatible, group)
        self._resubscribe = lambda: self._subscribe_image(
            transport, reliability, on_frame, on_incompatible, group
        )
        if self.depth is not None:
            self.depth.subscribe(reliability, group)
        return topic

    def _subscribe_image(
        self,
        transport: str,
        reliability: str,
        on_frame: Callable[[Frame], None],
        on_incompatible: Callable[[str, QoSRequestedIncompatibleQoSInfo], None],
        group: CallbackGroup,
    ) -> str:
        if transport == "compressed":
            # Resolved (remapping applied) first, so -r image:=/x/image moves both.
            topic = f"{self.node.resolve_topic_name(self.input_topic)}/compressed"
            msg_type, compressed = CompressedImage, True
        elif transport == "raw":
            topic, msg_type, compressed = self.input_topic, Image, False
        else:
            raise ValueError(f"image_transport must be raw or compressed, got {transport!r}")
        holder: dict[str, str] = {}
        events = SubscriptionEventCallbacks(
            incompatible_qos=lambda info: on_incompatible(holder.get("topic", topic), info)
        )
        self.subscription = self.node.create_subscription(
            msg_type,
            topic,
            lambda msg: on_frame(self._frame(msg, compressed)),
            input_qos(self.node, topic, reliability),
            callback_group=group,
            event_callbacks=events,
            qos_overriding_options=OVERRIDING_OPTIONS,
        )
        holder["topic"] = self.subscription.topic_name
        return self.subscription.topic_name

    def resubscribe(self) -> str:
        """Recreate the image subscription (its reliability chosen anew); depth is kept."""
        if self._resubscribe is None:
            return ""
        if self.subscription is not None:
            self._retirer.retire(self.subscription)
            self.subscription = None
        return self._resubscribe()

    def adaptive(self) -> list[tuple[Subscription, Callable[[], object]]]:
        """Every input subscription with the way to renew it (for the QoS follower)."""
        pairs: list[tuple[Subscription, Callable[[], object]]] = []
        if self.subscription is not None:
            pairs.append((self.subscription, self.resubscribe))
        if self.depth is not None:
            pairs.extend(self.depth.adaptive())
        return pairs

    def sweep(self) -> None:
        """Free what earlier unsubscriptions left for later (see :mod:`.retire`)."""
        self._retirer.sweep()
        if self.depth is not None:
            self.depth.sweep()

    def unsubscribe(self) -> None:
        if self.subscription is not None:
            self._retirer.retire(self.subscription)
            self.subscription = None
        if self.depth is not None:
            self.depth.unsubscribe()
        self.input_loss.clear()  # a later activation starts a new stamp sequence
        self._resubscribe = None

    def _frame(self, msg: Image | CompressedImage, compressed: bool) -> Frame:
        """The worker's frame for ``msg``, with the frames lost just before it (by stamp)."""
        stamp = stamp_ns(msg.header.stamp.sec, msg.header.stamp.nanosec)
        lost = self.input_loss.update(stamp) if stamp > 0 else 0
        return Frame(self.key, msg, compressed, lost_before=lost, period_s=self.input_loss.period_s)

    # -- outputs -----------------------------------------------------------------------------

    def set_plan(self, class_topics: Mapping[str, int], overlay_alpha: float, active: bool) -> None:
        """Per-class publishers for ``class_topics`` (created / destroyed as needed)."""
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
        self._retirer.drain()
        for publisher in [*self._publishers.values(), *self._class_publishers.values()]:
            self.node.destroy_lifecycle_publisher(publisher)
        self._publishers, self._class_publishers = {}, {}
        if self.depth is not None:
            self.depth.destroy()
            self.depth = None

    def _publisher(self, suffix: str):
        return self._publishers.get(suffix) or self._class_publishers.get(suffix)


def image_msg(header: Header, data: np.ndarray, encoding: str) -> Image:
    """A sensor_msgs/Image with the fields :func:`array_to_image_fields` gives ``data``."""
    fields = array_to_image_fields(data, encoding)
    msg = Image(
        header=header,
        height=fields["height"],
        width=fields["width"],
        encoding=fields["encoding"],
        is_bigendian=fields["is_bigendian"],
        step=fields["step"],
    )
    payload = array.array("B")
    payload.frombytes(fields["data"])  # array.array skips the per-byte checks of a bytes value
    msg.data = payload
    return msg
