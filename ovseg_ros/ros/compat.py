"""The rclpy names that differ between the ROS 2 distributions ovseg_ros runs on.

- Humble (rclpy 3.3): the QoS event classes are in ``rclpy.qos_event``; the QoS policy enums
  have no ``BEST_AVAILABLE`` member (reliability, durability, liveliness), so the middleware
  cannot choose a policy from the publishers. :data:`BEST_AVAILABLE` is None there, and
  :mod:`.adaptive_qos` makes that choice itself.
- Jazzy (rclpy 7.1) and Kilted (rclpy 9.1): the event classes are in ``rclpy.event_handler``
  (``rclpy.qos_event`` is an alias that warns when imported); ``BEST_AVAILABLE`` exists.

Everything else ovseg_ros and its harness use from rclpy has the same name and signature in
all three (checked against each one's source): ``QoSOverridingOptions``,
``get_publishers_info_by_topic`` / ``TopicEndpointInfo.qos_profile``, the executors'
``wait_for_ready_callbacks`` and exceptions, ``SignalHandlerOptions``, ``rclpy.lifecycle``
(``LifecycleNode``, lifecycle publishers, ``_state_machine``, ``_service_change_state``),
``Subscription.event_handlers``, and the logger's ``warning``.
"""

from __future__ import annotations

from rclpy.qos import ReliabilityPolicy

try:  # Jazzy and later
    from rclpy.event_handler import QoSRequestedIncompatibleQoSInfo, SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import QoSRequestedIncompatibleQoSInfo, SubscriptionEventCallbacks

# ReliabilityPolicy.BEST_AVAILABLE where rclpy has it (Iron and later), None on Humble.
BEST_AVAILABLE: ReliabilityPolicy | None = getattr(ReliabilityPolicy, "BEST_AVAILABLE", None)

__all__ = ["BEST_AVAILABLE", "QoSRequestedIncompatibleQoSInfo", "SubscriptionEventCallbacks"]
