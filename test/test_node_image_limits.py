"""segment_node over real DDS refuses a 31 KB PNG that declares 16000x16000 pixels: a warning
of kind 'limit', no growth of the node's memory, and the next frame is labelled as usual; with
``max_image_pixels`` set low it refuses a raw frame above it and labels a smaller one.
The node runs as a subprocess (tiny random models, CPU) so its resident set is its own."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from PIL import Image as PILImage
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from test_image_limits import bilevel_png

REPO = Path(__file__).resolve().parents[1]
DOMAIN_ID = random.Random(os.getpid() ^ time.time_ns()).randint(1, 200)
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)

pytestmark = pytest.mark.timeout(300)


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _jpeg(sec: int) -> CompressedImage:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(sec).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    PILImage.fromarray(pixels).save(buffer, format="JPEG")
    msg = CompressedImage(format="jpeg", data=buffer.getvalue())
    msg.header.stamp.sec = sec
    return msg


def _start_node(*args: str) -> tuple[subprocess.Popen, list[str]]:
    """The node as a subprocess (tiny models, CPU) with ``args``; its log lines as they come."""
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.update(ROS_DOMAIN_ID=str(DOMAIN_ID), RCUTILS_LOGGING_BUFFERED_STREAM="0")
    tiny = ["-p", "preset:=tiny", "-p", "device:=cpu", "-p", "templates:=single"]
    node = subprocess.Popen(
        [sys.executable, "-m", "ovseg_ros.ros.main", "--ros-args", *tiny, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(node.stdout), daemon=True).start()
    return node, log


def _stop_node(node: subprocess.Popen) -> None:
    node.terminate()
    try:
        node.wait(30)
    except subprocess.TimeoutExpired:
        node.kill()


def test_png_bomb_is_refused_by_the_node_with_flat_memory() -> None:
    node, log = _start_node(
        "-p", "image_transport:=compressed", "-r", "image:=/bomb_cam/image"
    )  # fmt: skip
    context = Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    tester = rclpy.create_node("bomb_sender", context=context)
    labels: list[Image] = []
    tester.create_subscription(Image, "/ovseg/labels", labels.append, RELIABLE)
    camera = tester.create_publisher(CompressedImage, "/bomb_cam/image/compressed", RELIABLE)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(tester)
    threading.Thread(target=executor.spin, daemon=True).start()

    def labelled(sec: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(m.header.stamp.sec == sec for m in labels):
                return True
            assert node.poll() is None, "".join(log)
            camera.publish(_jpeg(sec))
            time.sleep(0.5)
        return False

    try:
        assert labelled(1, 180.0), "the node never labelled a frame:\n" + "".join(log)
        with open(f"/proc/{node.pid}/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")  # the node's high-water mark restarts from its resident set now
        baseline = _status_kib(node.pid, "VmRSS")
        bomb = CompressedImage(format="png", data=bilevel_png(16000, 16000))
        assert len(bomb.data) < 100_000
        deadline = time.monotonic() + 60.0
        while not any("[limit]" in line for line in log) and time.monotonic() < deadline:
            camera.publish(bomb)
            time.sleep(0.5)
        warning = [line for line in log if "[limit]" in line]
        assert warning and "16000x16000" in warning[0], "".join(log)
        growth_mib = (_status_kib(node.pid, "VmHWM") - baseline) / 1024
        assert growth_mib < 200, growth_mib  # decoding alone would take 732 MiB
        assert labelled(2, 60.0), "".join(log)  # and it goes on labelling
    finally:
        executor.shutdown(timeout_sec=2.0)
        tester.destroy_node()
        rclpy.try_shutdown(context=context)
        _stop_node(node)


def _raw(sec: int, size: int) -> Image:
    pixels = np.random.default_rng(sec).integers(0, 256, (size, size, 3), dtype=np.uint8)
    msg = Image(height=size, width=size, encoding="rgb8", step=size * 3, data=pixels.tobytes())
    msg.header.stamp.sec = sec
    return msg


def test_max_image_pixels_refuses_a_larger_raw_frame() -> None:
    """max_image_pixels 64x64: a 100x100 raw frame gets a [limit] warning and no labels; the
    32x32 frames after it are labelled."""
    node, log = _start_node(
        "-p", f"max_image_pixels:={64 * 64}", "-r", "image:=/small_cam/image",
        "-r", "__node:=ovseg_small",
    )  # fmt: skip
    context = Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    tester = rclpy.create_node("small_sender", context=context)
    labels: list[Image] = []
    tester.create_subscription(Image, "/ovseg_small/labels", labels.append, RELIABLE)
    camera = tester.create_publisher(Image, "/small_cam/image", RELIABLE)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(tester)
    threading.Thread(target=executor.spin, daemon=True).start()

    def labelled(sec: int, size: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(m.header.stamp.sec == sec for m in labels):
                return True
            assert node.poll() is None, "".join(log)
            camera.publish(_raw(sec, size))
            time.sleep(0.5)
        return False

    try:
        assert labelled(1, 32, 180.0), "the node never labelled a frame:\n" + "".join(log)
        assert not labelled(2, 100, 10.0), "a 100x100 frame was labelled"
        warning = [line for line in log if "[limit]" in line]
        assert warning and "100x100" in warning[0] and str(64 * 64) in warning[0], "".join(log)
        assert labelled(3, 32, 60.0), "".join(log)  # and it goes on labelling
        assert all(m.width == 32 for m in labels)
    finally:
        executor.shutdown(timeout_sec=2.0)
        tester.destroy_node()
        rclpy.try_shutdown(context=context)
        _stop_node(node)
