"""The image subscription's reliability: fixed, or following the publishers (``auto``).

``qos_reliability: auto`` does what ``ros2 bag record`` does: subscribe reliable when every
publisher of the topic offers reliable, best effort otherwise (a best-effort subscription
matches both kinds; a reliable one never receives from a best-effort publisher). Reliable
matters for large frames: Fast DDS loses most best-effort frames above its shared-memory
segment (README, "Large images and DDS"), while a reliable camera repairs them.

The choice is made when the node subscribes and again every :data:`POLL_PERIOD_S` while it
is active (:class:`ReliabilityFollower`), for the image and the depth / camera_info inputs
alike; a subscription is recreated only when its chosen policy changes, which may lose the
frames in flight at that moment. The old one is retired through :mod:`.retire`: destroying it
outright from the timer would race the multi-threaded executor's wait. With no publisher yet,
the subscription is best effort, so whichever publisher appears first connects at once.

The standard override ``qos_overrides./<topic>.subscription.reliability`` wins over
``qos_reliability``. It is declared here rather than by rclpy's ``QoSOverridingOptions``:
rclpy would declare it once with the first policy chosen and apply that value to every later
subscription, pinning the policy. Declared here, its default is the ``qos_reliability`` value
(``auto`` included), so a value that differs from it was set by the user.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import QoSPolicyKind, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.subscription import Subscription

from ovseg_ros.ros.compat import BEST_AVAILABLE

AUTO = "auto"
SETTINGS = (AUTO, "best_effort", "reliable")
POLL_PERIOD_S = 0.5
# What rclpy declares and applies for the image subscription; reliability is handled here.
OVERRIDING_OPTIONS = QoSOverridingOptions((QoSPolicyKind.HISTORY, QoSPolicyKind.DEPTH))
_FIXED = {
    "reliable": ReliabilityPolicy.RELIABLE,
    "best_effort": ReliabilityPolicy.BEST_EFFORT,
    "system_default": ReliabilityPolicy.SYSTEM_DEFAULT,
    "best_available": BEST_AVAILABLE,  # None on Humble: chosen in choose(), as rmw would
}


def override_parameter(topic: str) -> str:
    """The standard reliability override of the subscription to the resolved ``topic``."""
    return f"qos_overrides.{topic}.subscription.reliability"


def setting_of(node: Node, topic: str, setting: str) -> str:
    """``auto`` or a fixed policy name for ``topic``: the override where set, else ``setting``.

    Declares the override parameter (read-only, default ``setting``) on first use; a value the
    override or ``setting`` cannot mean raises ``ValueError``.
    """
    setting = str(setting).strip().lower()
    if setting not in SETTINGS:
        raise ValueError(f"qos_reliability must be one of {', '.join(SETTINGS)}, got {setting!r}")
    name = override_parameter(topic)
    if not node.has_parameter(name):
        descriptor = ParameterDescriptor(
            description=f"reliability for subscription `{topic}` ({', '.join(SETTINGS)}); "
            "wins over qos_reliability",
            read_only=True,
        )
        node.declare_parameter(name, setting, descriptor)
    value = str(node.get_parameter(name).value).strip().lower()
    if value != AUTO and value not in _FIXED:
        raise ValueError(f"{name} must be auto or one of {', '.join(_FIXED)}, got {value!r}")
    return value


def for_publishers(offered: Iterable[ReliabilityPolicy]) -> ReliabilityPolicy:
    """Reliable if there is a publisher and every one offers reliable; best effort otherwise."""
    offered = list(offered)
    if offered and all(p == ReliabilityPolicy.RELIABLE for p in offered):
        return ReliabilityPolicy.RELIABLE
    return ReliabilityPolicy.BEST_EFFORT


def offered(node: Node, topic: str) -> list[ReliabilityPolicy]:
    """The reliability each publisher of the resolved ``topic`` offers (from the ROS graph)."""
    return [info.qos_profile.reliability for info in node.get_publishers_info_by_topic(topic)]


def choose(node: Node, topic: str, setting: str) -> ReliabilityPolicy:
    """The reliability to subscribe the resolved ``topic`` with now."""
    value = setting_of(node, topic, setting)
    if value == AUTO or _FIXED[value] is None:  # None: best_available where rclpy lacks it
        return for_publishers(offered(node, topic))
    return _FIXED[value]


def describe(policies: Sequence[ReliabilityPolicy]) -> str:
    """``"2 publishers: 1 reliable, 1 best_effort"`` (for the log)."""
    if not policies:
        return "no publisher yet"
    counts: dict[str, int] = {}
    for policy in policies:
        counts[policy.name.lower()] = counts.get(policy.name.lower(), 0) + 1
    noun = "publisher" if len(policies) == 1 else "publishers"
    return f"{len(policies)} {noun}: " + ", ".join(f"{n} {k}" for k, n in counts.items())


class Subscriber(Protocol):
    """What the follower needs of a camera: its input subscriptions (image, depth,
    camera_info), each with a way to renew it, and a sweep of the retired ones."""

    def adaptive(self) -> list[tuple[Subscription, Callable[[], object]]]: ...

    def sweep(self) -> object: ...


class ReliabilityFollower:
    """While active: re-chooses the reliability of every ``auto`` subscription on a timer.

    ``start(subscribers)`` after subscribing; ``stop()`` before unsubscribing (it waits for a
    poll in progress, so no subscription is recreated after it returns).
    """

    def __init__(self, node: Node, period_s: float = POLL_PERIOD_S) -> None:
        self._node, self._period = node, period_s
        self._lock = threading.Lock()
        self._timer = None
        self._running = False
        self._setting = AUTO
        self._subscribers: Callable[[], list[Subscriber]] = list
        self.switches = 0  # subscriptions recreated since the node started (image, depth, info)

    def start(self, setting: str, subscribers: Callable[[], list[Subscriber]], group) -> None:
        """Log the initial choices; poll every period in callback ``group``."""
        with self._lock:
            self._setting, self._subscribers = setting, subscribers
            for subscriber in subscribers():
                for subscription, _ in subscriber.adaptive():
                    self._log_choice(subscription, "subscribed")
            if self._timer is not None and self._timer.callback_group is group:
                self._timer.reset()
            else:  # a new group (a new activation): a new timer; the old one stays cancelled
                self._timer = self._node.create_timer(self._period, self.poll, callback_group=group)
            self._running = True

    def stop(self) -> None:
        # Cancelled, not destroyed: destroying a timer from a callback can make the
        # multi-threaded executor's spin thread touch a destroyed handle (see .retire).
        with self._lock:
            self._running = False
            if self._timer is not None:
                self._timer.cancel()

    def adapts(self, topic: str) -> bool:
        """True if the subscription to the resolved ``topic`` follows its publishers."""
        try:
            return setting_of(self._node, topic, self._setting) == AUTO
        except ValueError:
            return False

    def poll(self) -> int:
        """Recreate the subscriptions whose chosen reliability changed; how many were."""
        changed = 0
        with self._lock:
            if not self._running:
                return 0  # stopped meanwhile
            for subscriber in self._subscribers():
                subscriber.sweep()  # subscriptions replaced earlier: free them once it is safe
                for subscription, renew in subscriber.adaptive():
                    topic = subscription.topic_name
                    if not self.adapts(topic):
                        continue
                    wanted = choose(self._node, topic, self._setting)
                    if wanted == subscription.qos_profile.reliability:
                        continue
                    renew()
                    self.switches += 1
                    changed += 1
                    self._log_choice(topic, "switched to", wanted)
        return changed

    def _log_choice(
        self, subscription: Subscription | str, verb: str, policy: ReliabilityPolicy | None = None
    ) -> None:
        """One line per choice of an adaptive subscription (fixed ones are not followed)."""
        topic = subscription if isinstance(subscription, str) else subscription.topic_name
        if not self.adapts(topic):
            return
        if policy is None:
            assert not isinstance(subscription, str)
            policy = subscription.qos_profile.reliability
        policy = policy.name.lower()
        publishers = describe(offered(self._node, topic))
        self._node.get_logger().info(
            f"{topic}: {verb} {policy} (qos_reliability auto, {publishers})"
        )
