"""The segment_node executable and its launch file: exit codes, messages, signals.

Each test starts ``python -m ovseg_ros.ros.main`` as a subprocess (tiny random models on the
CPU) on a private DDS domain, through the harness (:mod:`ovseg_ros.harness`).
"""

from __future__ import annotations

import py_compile
import signal
import time
from pathlib import Path

import pytest

from ovseg_ros.harness.domain import child_env, private_domain_id
from ovseg_ros.harness.process import NodeProcess, wait_until

REPO = Path(__file__).resolve().parents[1]
DOMAIN_ID = private_domain_id()
TINY = {"preset": "tiny", "device": "cpu", "templates": "single"}

pytestmark = [pytest.mark.dds, pytest.mark.slow, pytest.mark.timeout(120)]


# -- launch ----------------------------------------------------------------------------------------


def test_launch_file_compiles() -> None:
    py_compile.compile(str(REPO / "launch" / "segment.launch.py"), doraise=True)


def test_launch_description() -> None:
    pytest.importorskip("launch_ros")
    import importlib.util

    from launch.actions import DeclareLaunchArgument

    spec = importlib.util.spec_from_file_location(
        "segment_launch", REPO / "launch/segment.launch.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {a.name for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert {"image", "method", "classes", "device", "params_file", "namespace"} <= names
    assert {"node_name", "use_sim_time", "preset", "image_transport", "depth_transport"} <= names
    assert {"rviz", "depth", "objects", "temporal_alpha"} <= names


# -- the executable ------------------------------------------------------------------------------


def _spawn(tmp_path: Path, params: dict, *ros_args: str) -> NodeProcess:
    return NodeProcess(child_env(DOMAIN_ID), tmp_path / "node.log", params, ros_args)


def _finish(node: NodeProcess, timeout: float = 90) -> tuple[int, str]:
    """The exit status and the whole output of a node that exits by itself."""
    try:
        code = node.wait(timeout)
    finally:
        node.stop()
    return code, node.log()


def test_unknown_image_transport_is_refused_at_configure(tmp_path) -> None:
    node = _spawn(tmp_path, {**TINY, "image_transport": "theora"}, "-r", "__node:=ovseg_transport")
    code, output = _finish(node)
    assert code == 1, output
    assert "image_transport must be one of ['raw', 'compressed']" in output
    assert "Traceback" not in output, output


def test_missing_weights_exit_with_a_clear_message(tmp_path) -> None:
    params = {"preset": "full", "device": "cpu", "clip_weights": "/nonexistent/clip.safetensors"}
    code, output = _finish(_spawn(tmp_path, params, "-r", "__node:=ovseg_missing"))
    assert code == 1, output
    assert "clip_weights='/nonexistent/clip.safetensors' does not exist" in output
    assert "configuration failed" in output
    assert "Traceback" not in output, output


def test_second_ctrl_c_during_shutdown_prints_no_traceback(tmp_path) -> None:
    """Under ros2 launch, Ctrl-C reaches the node twice (terminal and launch)."""
    node = _spawn(tmp_path, TINY, "-r", "__node:=ovseg_double", "-r", "image:=/signal_double")
    try:
        assert wait_until(lambda: "active: segmenting" in node.log(), 90), node.log()
        node.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 15
        while node.alive() and time.monotonic() < deadline:
            node.send_signal(signal.SIGINT)  # again and again while it shuts down
            time.sleep(0.01)
        code = node.wait(timeout=15)
    finally:
        node.stop()
    output = node.log()
    assert code == 0, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert "shutting down" in output


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_stop_the_node_cleanly(tmp_path, sig: signal.Signals) -> None:
    name = sig.name.lower()
    node = _spawn(tmp_path, TINY, "-r", f"__node:=ovseg_{name}", "-r", f"image:=/signal_{name}")
    try:
        assert wait_until(lambda: "active: segmenting" in node.log(), 90), node.log()
        node.send_signal(sig)
        code = node.wait(timeout=15)
    finally:
        node.stop()
    assert code == 0, node.log()
    assert "Traceback" not in node.log()
