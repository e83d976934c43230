"""A camera's input subscriptions (image, depth, camera_info), one mechanism for all of them.

Each input is a factory that creates its subscription, choosing the reliability when it is
called (:func:`~.qos.input_qos`), so the QoS follower renews an input by calling it again.
Replaced and dropped subscriptions go through :class:`~.retire.Retirer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node
from rclpy.subscription import Subscription

from ovseg_ros.ros.qos import input_qos
from ovseg_ros.ros.retire import Retirer

Factory = Callable[[], Subscription]


def factory(
    node: Node,
    msg_type: type,
    topic: str,
    callback: Callable[[Any], None],
    reliability: str,
    group: CallbackGroup,
    **options: Any,
) -> Factory:
    """Creates the subscription to ``topic`` with the reliability chosen at each call."""
    return lambda: node.create_subscription(
        msg_type,
        topic,
        callback,
        input_qos(node, topic, reliability),
        callback_group=group,
        **options,
    )


class Inputs:
    """The subscriptions made by a list of factories: renewable one by one, retired safely."""

    def __init__(self, node: Node) -> None:
        self._retirer = Retirer(node)  # destroys subscriptions without racing the executor
        self._factories: list[Factory] = []
        self.subscriptions: list[Subscription] = []

    def subscribe(self, factories: Iterable[Factory]) -> list[str]:
        """Replace the inputs by those of ``factories``; their resolved topic names."""
        self.unsubscribe()
        self._factories = list(factories)
        for make in self._factories:  # one by one: those made before a failure are kept
            self.subscriptions.append(make())
        return [s.topic_name for s in self.subscriptions]

    def renew(self, index: int) -> str:
        """Recreate input ``index`` (its reliability chosen anew); its topic name."""
        if index >= len(self.subscriptions):
            return ""
        self._retirer.retire(self.subscriptions[index])
        self.subscriptions[index] = self._factories[index]()
        return self.subscriptions[index].topic_name

    def adaptive(self) -> list[tuple[Subscription, Callable[[], object]]]:
        """Every subscription with the way to renew it (for the QoS follower)."""
        return [(s, partial(self.renew, i)) for i, s in enumerate(self.subscriptions)]

    def sweep(self) -> None:
        """Free what earlier retirements left for later (see :mod:`.retire`)."""
        self._retirer.sweep()

    def unsubscribe(self) -> None:
        for subscription in self.subscriptions:
            self._retirer.retire(subscription)
        self.subscriptions, self._factories = [], []

    def drain(self) -> None:
        self._retirer.drain()
