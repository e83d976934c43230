"""The segment_node executable and its launch file: exit codes, messages, signals.

Each test starts ``python -m ovseg_ros.ros.main`` as a subprocess (tiny random models on the
CPU) on a private DDS domain.
"""

from __future__ import annotations

import os
import py_compile
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOMAIN_ID = random.Random(os.getpid() ^ time.time_ns()).randint(1, 200)
TINY = {"preset": "tiny", "device": "cpu", "templates": "single"}

pytestmark = pytest.mark.timeout(120)


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


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
    assert {"node_name", "use_sim_time", "preset", "image_transport"} <= names
    assert module._parse_classes("['person', 'chair; stool']") == ["person", "chair; stool"]
    with pytest.raises(ValueError):
        module._parse_classes("[]")


# -- the executable ------------------------------------------------------------------------------


def _spawn(*ros_args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env["ROS_DOMAIN_ID"] = str(DOMAIN_ID)
    env["RCUTILS_LOGGING_BUFFERED_STREAM"] = "0"
    command = [sys.executable, "-m", "ovseg_ros.ros.main", "--ros-args", *ros_args]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_unknown_image_transport_is_refused_at_configure() -> None:
    process = _spawn(
        "-r", "__node:=ovseg_transport", "-p", "image_transport:=theora",
        *[arg for k, v in TINY.items() for arg in ("-p", f"{k}:={v}")],
    )  # fmt: skip
    output, _ = process.communicate(timeout=90)
    assert process.returncode == 1, output
    assert "image_transport must be one of ['raw', 'compressed']" in output
    assert "Traceback" not in output, output


def test_missing_weights_exit_with_a_clear_message() -> None:
    process = _spawn(
        "-r", "__node:=ovseg_missing", "-p", "preset:=full", "-p", "device:=cpu",
        "-p", "clip_weights:=/nonexistent/clip.safetensors",
    )  # fmt: skip
    output, _ = process.communicate(timeout=90)
    assert process.returncode == 1, output
    assert "clip_weights='/nonexistent/clip.safetensors' does not exist" in output
    assert "configuration failed" in output
    assert "Traceback" not in output, output


def test_second_ctrl_c_during_shutdown_prints_no_traceback() -> None:
    """Under ros2 launch, Ctrl-C reaches the node twice (terminal and launch)."""
    process = _spawn(
        "-r", "__node:=ovseg_double", "-r", "image:=/signal_double",
        *[arg for k, v in TINY.items() for arg in ("-p", f"{k}:={v}")],
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        assert wait_until(lambda: any("active: segmenting" in line for line in lines), 90), lines
        process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 15
        while process.poll() is None and time.monotonic() < deadline:
            process.send_signal(signal.SIGINT)  # again and again while it shuts down
            time.sleep(0.01)
        process.wait(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(5)
    output = "".join(lines)
    assert process.returncode == 0, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert "shutting down" in output


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_stop_the_node_cleanly(sig: signal.Signals) -> None:
    process = _spawn(
        "-r", f"__node:=ovseg_{sig.name.lower()}", "-r", f"image:=/signal_{sig.name.lower()}",
        *[arg for k, v in TINY.items() for arg in ("-p", f"{k}:={v}")],
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        assert wait_until(lambda: any("active: segmenting" in line for line in lines), 90), lines
        process.send_signal(sig)
        process.wait(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(5)
    assert process.returncode == 0, "".join(lines)
    assert "Traceback" not in "".join(lines)
