"""Destroying subscriptions while a multi-threaded executor waits on them, without a crash.

rclpy (Jazzy 7.1) snapshots ``node.waitables`` before building its wait set, and when a
waitable was destroyed in between it still calls ``add_to_wait_set`` on it, which raises
``InvalidHandle: cannot use Destroyable because destruction was requested`` in the executor's
spin thread. A subscription's event handlers (incompatible QoS, ...) are such waitables. And
after the wait, the executor's generator walks ``node.subscriptions`` calling
``sub.handle.pointer``, suspended at every ready callback it yields: a subscription destroyed
meanwhile raises the same error there. With a ``MultiThreadedExecutor`` every callback (the
QoS follower's timer, a lifecycle transition) runs while the spin thread is in that code, so
``Node.destroy_subscription`` from a callback can kill the executor.

:class:`Retirer` removes the subscription and its handlers from the node at once (no callback
after ``retire`` returns, no new wait set includes them) but keeps their handles valid, the
subscription's by holding it in use as the executor itself does, and destroys them only after
:data:`GRACE_S`, long after any executor pass that saw them has moved on.
"""

from __future__ import annotations

import threading
import time

from rclpy.node import Node
from rclpy.subscription import Subscription

# An executor pass holds an entity for the time it takes to dispatch the callbacks ready with
# it, and a take already queued in its thread pool runs once a pool thread is free: both take
# milliseconds, far more on an overloaded CPU. 0.5 s was seen exceeded on a 2-core box at
# load 4; 1 s is still short enough for ``drain`` to wait out at node shutdown.
GRACE_S = 1.0


class Retirer:
    """Destroys the subscriptions of ``node`` safely; ``sweep()`` frees what is due."""

    def __init__(self, node: Node, grace_s: float = GRACE_S) -> None:
        self._node, self._grace = node, grace_s
        self._lock = threading.Lock()
        # (retired at, subscription, its event handlers)
        self._retired: list[tuple[float, Subscription, list]] = []

    def retire(self, subscription: Subscription) -> None:
        """Stop ``subscription`` now (no more callbacks); free its handles later."""
        handlers = list(subscription.event_handlers)
        for handler in handlers:
            self._node.remove_waitable(handler)
        subscription.event_handlers = []  # destroy_subscription must not touch them
        subscription.handle.__enter__()  # in use: destroy_subscription only requests it
        self._node.destroy_subscription(subscription)
        with self._lock:
            self._retired.append((time.monotonic(), subscription, handlers))
        self.sweep()

    def sweep(self, force: bool = False) -> int:
        """Destroy the handlers retired more than the grace period ago (all with ``force``,
        for when no executor spins the node any more); how many subscriptions were freed."""
        now = time.monotonic()
        with self._lock:
            due, kept = [], []
            for retired in self._retired:
                (due if force or now - retired[0] >= self._grace else kept).append(retired)
            self._retired = kept
        for _, subscription, handlers in due:
            subscription.handle.__exit__(None, None, None)  # the requested destruction happens
            for handler in handlers:
                handler.destroy()
        return len(due)

    def drain(self) -> None:
        """Wait out the grace period of the last retired subscription, then free them all:
        safe whether or not an executor still spins the node (at most ``GRACE_S``)."""
        with self._lock:
            last = max((r[0] for r in self._retired), default=None)
        if last is not None:
            time.sleep(max(0.0, last + self._grace - time.monotonic()))
        self.sweep()

    @property
    def pending(self) -> int:
        """Subscriptions whose event handlers are still waiting to be destroyed."""
        with self._lock:
            return len(self._retired)
