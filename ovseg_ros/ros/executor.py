"""The node's executor: every callback on the spinning thread, but slow ones on their own.

rclpy's ``MultiThreadedExecutor`` hands each ready callback to a thread pool and goes back to
waiting; while a callback's group is busy, the same entity is ready again at once, so the
spinning thread rebuilds its wait set in a tight loop. A camera flooding at 200 Hz kept it
there: the node spent both CPU cores spinning (and the GIL with them), the worker labelled
4 frames in 10 s and a second camera at 2 Hz got 2 of its 20 frames labelled. Our callbacks
are short (they put a frame in a slot, validate a parameter, publish diagnostics), so here
they run inline, one after the other, as in rclpy's ``SingleThreadedExecutor``: the same
flood leaves the slow camera 20 of 20.

The exceptions are lifecycle transitions (``configure`` loads the models for seconds): their
service sits in a :class:`SlowCallbackGroup`, whose callbacks run on a small thread pool, so
a request that arrives meanwhile is answered (refused as "in progress" by
:mod:`.lifecycle_guard`) and the diagnostics keep flowing.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.context import Context
from rclpy.executors import (
    ConditionReachedException,
    ShutdownException,
    SingleThreadedExecutor,
    TimeoutException,
)

SLOW_THREADS = 2  # a transition in progress, and a request refused meanwhile


class SlowCallbackGroup(ReentrantCallbackGroup):
    """Callbacks that may take seconds: :class:`NodeExecutor` runs them off its thread."""


class NodeExecutor(SingleThreadedExecutor):
    """Callbacks on the spinning thread, those of a :class:`SlowCallbackGroup` on a pool."""

    def __init__(self, *, context: Context | None = None) -> None:
        super().__init__(context=context)
        self._slow = ThreadPoolExecutor(SLOW_THREADS, thread_name_prefix="ovseg-transition")

    def spin_once(self, timeout_sec: float | None = None) -> None:
        try:
            handler, entity, _ = self.wait_for_ready_callbacks(timeout_sec)
        except (ShutdownException, TimeoutException, ConditionReachedException):
            return
        if isinstance(getattr(entity, "callback_group", None), SlowCallbackGroup):
            self._slow.submit(handler)  # the callback answers its own errors (lifecycle_guard)
            return
        handler()
        if handler.exception() is not None:
            raise handler.exception()

    def shutdown(self, timeout_sec: float | None = None) -> bool:
        done = super().shutdown(timeout_sec)
        self._slow.shutdown(wait=False, cancel_futures=True)
        return done
