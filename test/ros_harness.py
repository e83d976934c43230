"""Shared scaffolding of the DDS tests: a private domain id per test module and polling (the
harness's, :mod:`ovseg_ros.harness`), an rclpy context, executors spinning on daemon
threads, and ``SegmentNode`` running in-process.

Everything is real rclpy over DDS; nothing here replaces a ROS part.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import rclpy
from rclpy.context import Context
from rclpy.executors import Executor, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from ovseg_ros.harness.domain import private_domain_id  # noqa: F401 - the tests' import
from ovseg_ros.harness.process import wait_until  # noqa: F401 - the tests' import

REPO = Path(__file__).resolve().parents[1]
TINY = {"preset": "tiny", "device": "cpu", "templates": "single"}  # fast text encoding


@contextmanager
def ros_context(domain_id: int) -> Iterator[Context]:
    """A fresh rclpy context (its own DDS participant) on ``domain_id``, shut down on exit."""
    context = Context()
    rclpy.init(context=context, domain_id=domain_id)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)


def spin_in_thread(node: Node, context: Context, threads: int = 1) -> Executor:
    """An executor (multi-threaded for ``threads`` > 1) spinning ``node`` on a daemon thread,
    which ends at ``executor.shutdown()``."""
    executor = (
        SingleThreadedExecutor(context=context)
        if threads == 1
        else MultiThreadedExecutor(num_threads=threads, context=context)
    )
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    return executor


def spin_segment_node(node: Node, context: Context) -> Executor:
    """The node's own executor (:class:`~ovseg_ros.ros.executor.NodeExecutor`, as
    ``segment_node`` runs it) spinning ``node`` on a daemon thread."""
    from ovseg_ros.ros.executor import NodeExecutor

    executor = NodeExecutor(context=context)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    return executor


def segment_node(context: Context, overrides: dict, *ros_args: str, **kwargs):
    """``SegmentNode`` in this process with parameter ``overrides`` and command-line
    ``ros_args`` (``-r`` remaps, ``--params-file``); ``kwargs``: node name, namespace."""
    from ovseg_ros.ros.node import SegmentNode  # the node (torch) only where a test runs one

    return SegmentNode(
        context=context,
        cli_args=["--ros-args", *ros_args],
        parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()],
        **kwargs,
    )


def stop_node(node, executor: Executor) -> None:
    """Stop spinning an in-process ``SegmentNode``, release its models, destroy it."""
    executor.shutdown()
    node.close()
    node.destroy_node()


@contextmanager
def running_segment_node(context: Context, overrides: dict, *ros_args: str, **kwargs):
    """:func:`segment_node` spinning on its own executor until the block ends."""
    node = segment_node(context, overrides, *ros_args, **kwargs)
    executor = spin_segment_node(node, context)
    try:
        yield node
    finally:
        stop_node(node, executor)
