"""The node (over real DDS) and ovseg-replay (over a real bag) write identical messages.

The same serialised camera frames go to a live node and into a rosbag2 bag; the node's
outputs are received as raw CDR bytes and compared byte for byte with what ``ovseg-replay``
writes: labels, confidence, per-class confidences, overlay and the vocabulary message.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import rclpy
from rclpy.context import Context
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from ros_harness import (
    TINY,
    private_domain_id,
    ros_context,
    segment_node,
    spin_in_thread,
    spin_segment_node,
    stop_node,
    wait_until,
)
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import Image
from std_msgs.msg import String

from ovseg_ros.ros.parameters import DEFAULT_CLASSES
from ovseg_ros.segmentation import SegmenterConfig, build_segmenter
from ovseg_ros.tools.replay.core import run_replay
from ovseg_ros.tools.replay.plan import ReplayOptions

DOMAIN_ID = private_domain_id()
CONFIDENCE_CLASSES = ["man", "door"]
NAME = "ovseg_eq"
SUFFIXES = ["labels", "confidence", "confidence/person", "confidence/door", "overlay"]
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(
    depth=16, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)

pytestmark = [pytest.mark.dds, pytest.mark.slow, pytest.mark.timeout(180)]


def _mosaic_rggb(rgb: np.ndarray) -> np.ndarray:
    mosaic = rgb[..., 1].copy()
    mosaic[0::2, 0::2] = rgb[0::2, 0::2, 0]
    mosaic[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return mosaic


def frames() -> list[Image]:
    """Three camera frames: rgb8, bgr8 with row padding, and a Bayer mosaic."""
    rng = np.random.default_rng(7)
    h, w = 48, 64
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, : w // 2] = (200, 40, 40)
    rgb[:, w // 2 :] = (40, 40, 200)
    rgb = np.clip(rgb + rng.integers(-20, 21, rgb.shape), 0, 255).astype(np.uint8)
    padded = np.concatenate([rgb[..., ::-1].reshape(h, -1), np.zeros((h, 8), np.uint8)], 1)
    layouts = [
        ("rgb8", w * 3, rgb.tobytes()),
        ("bgr8", w * 3 + 8, padded.tobytes()),
        ("bayer_rggb8", w, _mosaic_rggb(rgb).tobytes()),
    ]
    messages = []
    for i, (encoding, step, data) in enumerate(layouts):
        msg = Image(height=h, width=w, encoding=encoding, step=step, data=data)
        msg.header.frame_id = "camera"
        msg.header.stamp.sec, msg.header.stamp.nanosec = 500 + i, 1000 * i + 7
        messages.append(msg)
    return messages


@pytest.fixture(scope="module")
def context():
    with ros_context(DOMAIN_ID) as ctx:
        yield ctx


def node_outputs(context: Context, inputs: list[Image]) -> dict[str, list[bytes]]:
    """Publish ``inputs`` to a live node; its outputs as raw CDR bytes, per topic suffix."""
    overrides = {**TINY, "confidence_classes": CONFIDENCE_CLASSES}
    node = segment_node(context, overrides, node_name=NAME)
    assert node.state_label == "active"
    executor = spin_segment_node(node, context)
    tester = rclpy.create_node("eq_tester", context=context)
    received: dict[str, list[bytes]] = {s: [] for s in [*SUFFIXES, "vocabulary"]}
    lock = threading.Lock()

    def keep(suffix: str):
        def callback(raw: bytes) -> None:
            with lock:
                received[suffix].append(bytes(raw))

        return callback

    for suffix in SUFFIXES:
        tester.create_subscription(Image, f"/{NAME}/{suffix}", keep(suffix), RELIABLE, raw=True)
    tester.create_subscription(String, f"/{NAME}/vocabulary", keep("vocabulary"), LATCHED, raw=True)
    publisher = tester.create_publisher(Image, "/image", RELIABLE)
    spin = spin_in_thread(tester, context)
    try:
        assert wait_until(
            lambda: (
                all(node.count_subscribers(f"/{NAME}/{s}") > 0 for s in SUFFIXES)
                and publisher.get_subscription_count() > 0
            ),
            20,
        )
        for msg in inputs:  # one at a time: none may be dropped
            publisher.publish(msg)
            count = len(received["labels"]) + 1
            assert wait_until(lambda c=count: len(received["labels"]) >= c, 60)
        assert wait_until(lambda: all(len(received[s]) == len(inputs) for s in SUFFIXES), 10)
        with lock:
            return {k: list(v) for k, v in received.items()}
    finally:
        spin.shutdown()
        tester.destroy_node()
        stop_node(node, executor)


def replay_outputs(tmp_path: Path, inputs: list[Image]) -> dict[str, list[bytes]]:
    """Write ``inputs`` (the same serialised bytes) into a bag and run the replay over it."""
    typestore = get_typestore(Stores.ROS2_JAZZY)
    source = tmp_path / "in"
    with Writer(source, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        connection = writer.add_connection(
            "/cam/image", "sensor_msgs/msg/Image", typestore=typestore
        )
        for i, msg in enumerate(inputs):
            writer.write(connection, 10**18 + i * 10**8, serialize_message(msg))
    segmenter = build_segmenter(SegmenterConfig.from_dict(TINY))
    segmenter.set_vocabulary(DEFAULT_CLASSES)
    options = ReplayOptions(
        input=source,
        output=tmp_path / "out",
        namespace=f"/{NAME}",
        confidence_classes=tuple(CONFIDENCE_CLASSES),
        overlay=True,
        overlay_alpha=0.5,
        copy_input=False,
    )
    stats = run_replay(options, segmenter, log=lambda line: None)
    assert stats.frames_out == len(inputs), stats.skip_lines
    written: dict[str, list[bytes]] = {}
    with Reader(tmp_path / "out") as reader:
        for connection, _, raw in reader.messages():
            suffix = connection.topic.removeprefix(f"/{NAME}/")
            written.setdefault(suffix, []).append(bytes(raw))
    return written


def test_node_and_replay_write_identical_messages(context, tmp_path) -> None:
    inputs = frames()
    live = node_outputs(context, inputs)
    offline = replay_outputs(tmp_path, inputs)
    # label_info: the node publishes it only where vision_msgs imports (not from PyPI).
    assert set(offline) == {*SUFFIXES, "vocabulary", "label_info"}
    for suffix in SUFFIXES:
        assert len(live[suffix]) == len(offline[suffix]) == len(inputs), suffix
        for i, (a, b) in enumerate(zip(live[suffix], offline[suffix], strict=True)):
            assert a == b, f"{suffix} of frame {i} differs"
    # The vocabulary: one version, valid from the start, the same JSON.
    assert offline["vocabulary"] == [live["vocabulary"][-1]]
