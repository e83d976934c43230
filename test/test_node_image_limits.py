"""segment_node over real DDS refuses a 31 KB PNG that declares 16000x16000 pixels: a warning
of kind 'limit', no growth of the node's memory, and the next frame is labelled as usual; with
``max_image_pixels`` set low it refuses a raw frame above it and labels a smaller one.
The node runs as a subprocess (tiny random models, CPU) so its resident set is its own."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from test_image_limits import bilevel_png

from ovseg_ros.harness.client import NodeClient
from ovseg_ros.harness.domain import child_env, private_domain_id
from ovseg_ros.harness.process import NodeProcess

DOMAIN_ID = private_domain_id()
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
TINY = {"preset": "tiny", "device": "cpu", "templates": "single"}

pytestmark = [pytest.mark.dds, pytest.mark.slow, pytest.mark.timeout(300)]


def _jpeg(sec: int) -> CompressedImage:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(sec).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    PILImage.fromarray(pixels).save(buffer, format="JPEG")
    msg = CompressedImage(format="jpeg", data=buffer.getvalue())
    msg.header.stamp.sec = sec
    return msg


def _start_node(tmp_path: Path, params: dict, *ros_args: str) -> NodeProcess:
    """The node as a subprocess (tiny models, CPU) with ``params`` and ``ros_args``."""
    return NodeProcess(child_env(DOMAIN_ID), tmp_path / "node.log", {**TINY, **params}, ros_args)


def _labelled(client: NodeClient, node: NodeProcess, camera, msg, sec: int, timeout: float) -> bool:
    """Publish ``msg`` every 0.5 s until labels stamped ``sec`` arrive; whether they did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.labels_at(sec):
            return True
        assert node.alive(), node.log()
        camera.publish(msg)
        time.sleep(0.5)
    return False


def test_png_bomb_is_refused_by_the_node_with_flat_memory(tmp_path) -> None:
    node = _start_node(tmp_path, {"image_transport": "compressed"}, "-r", "image:=/bomb_cam/image")
    client = NodeClient.on_domain(DOMAIN_ID, image_topic=None, client_name="bomb_sender")
    camera = client.node.create_publisher(CompressedImage, "/bomb_cam/image/compressed", RELIABLE)
    try:
        labelled = _labelled(client, node, camera, _jpeg(1), 1, 180.0)
        assert labelled, "the node never labelled a frame:\n" + node.log()
        baseline = node.reset_peak_rss()  # the peak restarts from the resident set now
        bomb = CompressedImage(format="png", data=bilevel_png(16000, 16000))
        assert len(bomb.data) < 100_000
        deadline = time.monotonic() + 60.0
        while "[limit]" not in node.log() and time.monotonic() < deadline:
            camera.publish(bomb)
            time.sleep(0.5)
        warning = [line for line in node.log().splitlines() if "[limit]" in line]
        assert warning and "16000x16000" in warning[0], node.log()
        growth_mib = node.peak_rss_mib() - baseline
        assert growth_mib < 200, growth_mib  # decoding alone would take 732 MiB
        assert _labelled(client, node, camera, _jpeg(2), 2, 60.0), node.log()  # it goes on
    finally:
        client.close()
        node.stop()


def _raw(sec: int, size: int) -> Image:
    pixels = np.random.default_rng(sec).integers(0, 256, (size, size, 3), dtype=np.uint8)
    msg = Image(height=size, width=size, encoding="rgb8", step=size * 3, data=pixels.tobytes())
    msg.header.stamp.sec = sec
    return msg


def test_max_image_pixels_refuses_a_larger_raw_frame(tmp_path) -> None:
    """max_image_pixels 64x64: a 100x100 raw frame gets a [limit] warning and no labels; the
    32x32 frames after it are labelled."""
    node = _start_node(
        tmp_path, {"max_image_pixels": 64 * 64}, "-r", "image:=/small_cam/image",
        "-r", "__node:=ovseg_small",
    )  # fmt: skip
    client = NodeClient.on_domain(
        DOMAIN_ID, "ovseg_small", image_topic="/small_cam/image", camera_qos=RELIABLE,
        client_name="small_sender",
    )  # fmt: skip
    camera = client.image_pub
    try:
        labelled = _labelled(client, node, camera, _raw(1, 32), 1, 180.0)
        assert labelled, "the node never labelled a frame:\n" + node.log()
        deadline = time.monotonic() + 60.0
        while "[limit]" not in node.log() and time.monotonic() < deadline:
            camera.publish(_raw(2, 100))
            time.sleep(0.5)
        warning = [line for line in node.log().splitlines() if "[limit]" in line]
        assert warning and "100x100" in warning[0] and str(64 * 64) in warning[0], node.log()
        assert _labelled(client, node, camera, _raw(3, 32), 3, 60.0), node.log()  # it goes on
        # Frames are labelled in order: labels for the 100x100 frames would have come first.
        assert not client.labels_at(2), "100x100 labelled"
        assert all(m.width == 32 for m in client.labels())
    finally:
        client.close()
        node.stop()
