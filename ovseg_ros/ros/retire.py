"""Destroying subscriptions while a multi-threaded executor waits on them, without a crash.

rclpy (Jazzy 7.1) snapshots ``node.waitables`` before building its wait set, and when a
waitable was destroyed in between it still calls ``add_to_wait_set`` on it, which raises
``InvalidHandle: cannot use Destroyable because destruction was requested`` in the executor's
spin thread. A subscription's event handlers (incompatible QoS, ...) are such waitables, and
with a ``MultiThreadedExecutor`` every callback (the QoS follower's timer, a lifecycle
transition) runs while the spin thread is building or waiting on a wait set, so
``Node.destroy_subscription`` from a callback can kill the executor. Subscriptions themselves
are safe (the executor skips destroyed ones); only their event handlers are not.

:class:`Retirer` detaches the handlers from the node at once (no new wait set includes them),
destroys the subscription, and destroys the handlers only after :data:`GRACE_S`, long after
any wait set built from an older snapshot has entered (and so protected) or skipped them.
"""

from __future__ import annotations

import threading
import time

from rclpy.node import Node
from rclpy.subscription import Subscription

GRACE_S = 2.0


class Retirer:
    """Destroys the subscriptions of ``node`` safely; ``sweep()`` frees what is due."""

    def __init__(self, node: Node, grace_s: float = GRACE_S) -> None:
        self._node, self._grace = node, grace_s
        self._lock = threading.Lock()
        self._retired: list[tuple[float, list]] = []  # (retired at, event handlers)

    def retire(self, subscription: Subscription) -> None:
        """Stop ``subscription`` now (no more callbacks); free its event handlers later."""
        handlers = list(subscription.event_handlers)
        for handler in handlers:
            self._node.remove_waitable(handler)
        subscription.event_handlers = []  # destroy_subscription must not touch them
        self._node.destroy_subscription(subscription)
        with self._lock:
            self._retired.append((time.monotonic(), handlers))
        self.sweep()

    def sweep(self, force: bool = False) -> int:
        """Destroy the handlers retired more than the grace period ago (all with ``force``,
        for when no executor spins the node any more); how many subscriptions were freed."""
        now = time.monotonic()
        with self._lock:
            due = [h for t, h in self._retired if force or now - t >= self._grace]
            self._retired = [
                (t, h) for t, h in self._retired if not (force or now - t >= self._grace)
            ]
        for handlers in due:
            for handler in handlers:
                handler.destroy()
        return len(due)

    @property
    def pending(self) -> int:
        """Subscriptions whose event handlers are still waiting to be destroyed."""
        with self._lock:
            return len(self._retired)
