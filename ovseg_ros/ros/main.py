"""``segment_node``: run the segmentation node until SIGINT / SIGTERM.

Also ``python -m ovseg_ros.ros.main``. Exit status 0 after a signal or a lifecycle
``shutdown`` transition, 1 if the node could not start. Under ``ros2 launch`` a Ctrl-C
reaches the node twice (terminal and launch): the first starts the shutdown, later ones
during the shutdown and the interpreter's exit are ignored; a second one while the models
are still loading aborts the loading.
"""

from __future__ import annotations

import signal
import sys
import threading
import traceback
from typing import Any

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.signals import SignalHandlerOptions

from ovseg_ros.ros.executor import NodeExecutor
from ovseg_ros.ros.node import JOIN_TIMEOUT_S, SegmentNode


class _Signals:
    """SIGINT / SIGTERM set an event; rclpy's own handlers would raise KeyboardInterrupt
    wherever the main thread is, which can leave an executor thread unregistered."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.shutting_down = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop.is_set() and not self.shutting_down:
            raise KeyboardInterrupt  # a second Ctrl-C while loading: stop waiting for it
        self.stop.set()


def main(args: list[str] | None = None) -> int:
    """Run the node until SIGINT / SIGTERM; exit status 1 if it could not start."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signals = _Signals()
    node: SegmentNode | None = None
    executor: NodeExecutor | None = None
    spinner: threading.Thread | None = None
    code = 0
    try:
        node = SegmentNode()
        if node.autostart_failed:
            node.get_logger().error("start-up failed (see above); exiting")
            code = 1
        elif not signals.stop.is_set():
            executor = NodeExecutor()
            executor.add_node(node)
            spinner = threading.Thread(target=_spin, args=(executor, signals.stop), name="ros-spin")
            spinner.start()
            while not signals.stop.wait(0.2):
                if node.finalized.is_set():  # a lifecycle shutdown: the process ends too
                    node.get_logger().info("finalized by a lifecycle shutdown: exiting")
                    break
    except KeyboardInterrupt:
        pass
    except ParameterException as exc:  # e.g. 'logit_scale: 40' where a double is expected
        hint = " (write doubles with a decimal point: 40.0)" if "'DOUBLE'" in str(exc) else ""
        rclpy.logging.get_logger("ovseg").error(f"invalid parameter: {exc}{hint}")
        code = 1
    finally:
        signals.shutting_down = True  # from here on, more signals are ignored
        signals.stop.set()
        # Stop spinning before the lifecycle shutdown destroys subscriptions and timers, so no
        # executor thread is inside a callback of an entity being destroyed.
        if executor is not None:
            executor.shutdown(timeout_sec=JOIN_TIMEOUT_S)
        if spinner is not None:
            spinner.join(JOIN_TIMEOUT_S)
        if node is not None:
            _finalize(node)
            node.destroy_node()
        rclpy.try_shutdown()
        # The process is exiting: a late Ctrl-C must neither raise KeyboardInterrupt in an
        # atexit hook (torch has some) nor kill it (Python's exit restores the default
        # handler for a Python-level one, not for SIG_IGN).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    return code


def _spin(executor: NodeExecutor, stop: threading.Event) -> None:
    try:
        while not stop.is_set():
            try:
                executor.spin()  # returns once the executor or the context is shut down
                break
            except ExternalShutdownException:
                break
            except Exception as exc:  # noqa: BLE001 - one failed callback must not stop the node
                if stop.is_set():  # during shutdown, entities vanishing under a callback
                    break
                rclpy.logging.get_logger("ovseg").error(
                    f"callback failed, node keeps running: {exc!r}\n{traceback.format_exc()}"
                )
    finally:
        stop.set()  # the context went away: let main() clean up and exit


def _finalize(node: SegmentNode) -> None:
    """Take the lifecycle to finalized (on_shutdown releases everything)."""
    try:
        if node.state_label != "finalized":
            node.trigger_shutdown()
    except Exception as exc:  # the context may already be gone
        node.get_logger().debug(f"shutdown transition: {exc}")
    node.close()


if __name__ == "__main__":
    sys.exit(main())
