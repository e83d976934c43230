"""The node (over real DDS) and ovseg-replay (over a real bag) write identical messages.

The same serialised camera frames go to a live node and into a rosbag2 bag; the node's
outputs are received as raw CDR bytes and compared byte for byte with what ``ovseg-replay``
writes: labels, confidence, per-class confidences, overlay and the vocabulary message, and
from a registered depth image and camera_info the cloud, the camera model and the 3D objects'
markers.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from rclpy.context import Context
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message
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
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from ovseg_ros.points_stage import ObjectsSettings, PointsSettings
from ovseg_ros.ros.parameters import DEFAULT_CLASSES
from ovseg_ros.segmentation import SegmenterConfig, build_segmenter
from ovseg_ros.tools.replay.core import run_replay
from ovseg_ros.tools.replay.plan import DepthOptions, ReplayOptions

DOMAIN_ID = private_domain_id()
CONFIDENCE_CLASSES = ["man", "door"]
NAME = "ovseg_eq"
SUFFIXES = ["labels", "confidence", "confidence/person", "confidence/door", "overlay"]
# The depth side's outputs and their types (objects: 5 pixels suffice on these small frames).
DEPTH_SUFFIXES = {"points": PointCloud2, "camera_info": CameraInfo, "objects/markers": MarkerArray}
OBJECTS = {"depth": True, "objects": True, "objects_min_points": 5}
H, W = 48, 64
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
    h, w = H, W
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


def depth_side(color: Image) -> tuple[Image, CameraInfo]:
    """A registered 16UC1 depth image (1 m left, 2 m right, a step in the middle rows) and
    its camera_info, stamped as ``color``."""
    z = np.full((H, W), 1000, np.uint16)
    z[:, W // 2 :] = 2000
    z[H // 3 : 2 * H // 3, W // 4 : 3 * W // 4] = 1500
    depth = Image(height=H, width=W, encoding="16UC1", step=2 * W, data=z.tobytes())
    info = CameraInfo(height=H, width=W, distortion_model="plumb_bob", d=[0.0] * 5)
    info.k = [60.0, 0.0, 31.5, 0.0, 60.0, 23.5, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [60.0, 0.0, 31.5, 0.0, 0.0, 60.0, 23.5, 0.0, 0.0, 0.0, 1.0, 0.0]
    for msg in (depth, info):
        msg.header.stamp, msg.header.frame_id = color.header.stamp, "depth_optical"
    return depth, info


@pytest.fixture(scope="module")
def context():
    with ros_context(DOMAIN_ID) as ctx:
        yield ctx


def node_outputs(context: Context, inputs: list[Image]) -> dict[str, list[bytes]]:
    """Publish ``inputs`` to a live node; its outputs as raw CDR bytes, per topic suffix."""
    overrides = {**TINY, "confidence_classes": CONFIDENCE_CLASSES, **OBJECTS}
    node = segment_node(context, overrides, node_name=NAME)
    assert node.state_label == "active"
    executor = spin_segment_node(node, context)
    tester = rclpy.create_node("eq_tester", context=context)
    received: dict[str, list[bytes]] = {s: [] for s in [*SUFFIXES, *DEPTH_SUFFIXES, "vocabulary"]}
    lock = threading.Lock()

    def keep(suffix: str):
        def callback(raw: bytes) -> None:
            with lock:
                received[suffix].append(bytes(raw))

        return callback

    for suffix in SUFFIXES:
        tester.create_subscription(Image, f"/{NAME}/{suffix}", keep(suffix), RELIABLE, raw=True)
    for suffix, msg_type in DEPTH_SUFFIXES.items():
        tester.create_subscription(msg_type, f"/{NAME}/{suffix}", keep(suffix), RELIABLE, raw=True)
    tester.create_subscription(String, f"/{NAME}/vocabulary", keep("vocabulary"), LATCHED, raw=True)
    publisher = tester.create_publisher(Image, "/image", RELIABLE)
    depth_publisher = tester.create_publisher(Image, "/depth", RELIABLE)
    info_publisher = tester.create_publisher(CameraInfo, "/camera_info", RELIABLE)
    outputs = [*SUFFIXES, *DEPTH_SUFFIXES]
    spin = spin_in_thread(tester, context)
    try:
        assert wait_until(
            lambda: (
                all(node.count_subscribers(f"/{NAME}/{s}") > 0 for s in outputs)
                and publisher.get_subscription_count() > 0
                and depth_publisher.get_subscription_count() > 0
            ),
            20,
        )
        for msg in inputs:  # one at a time: none may be dropped
            depth, info = depth_side(msg)
            info_publisher.publish(info)
            depth_publisher.publish(depth)
            time.sleep(0.1)  # depth first, as a driver's aligned depth usually is
            publisher.publish(msg)
            count = len(received["objects/markers"]) + 1
            assert wait_until(lambda c=count: len(received["objects/markers"]) >= c, 60)
        assert wait_until(lambda: all(len(received[s]) == len(inputs) for s in outputs), 10)
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
        add = writer.add_connection
        connection = add("/cam/image", "sensor_msgs/msg/Image", typestore=typestore)
        depth_c = add("/cam/depth", "sensor_msgs/msg/Image", typestore=typestore)
        info_c = add("/cam/info", "sensor_msgs/msg/CameraInfo", typestore=typestore)
        for i, msg in enumerate(inputs):
            t = 10**18 + i * 10**8
            depth, info = depth_side(msg)
            writer.write(info_c, t - 2, serialize_message(info))
            writer.write(depth_c, t - 1, serialize_message(depth))
            writer.write(connection, t, serialize_message(msg))
    segmenter = build_segmenter(SegmenterConfig.from_dict(TINY))
    segmenter.set_vocabulary(DEFAULT_CLASSES)
    options = ReplayOptions(
        input=source,
        output=tmp_path / "out",
        namespace=f"/{NAME}",
        image_topics=("/cam/image",),
        confidence_classes=tuple(CONFIDENCE_CLASSES),
        overlay=True,
        overlay_alpha=0.5,
        copy_input=False,
        depth=DepthOptions(
            "/cam/depth", "/cam/info", settings=PointsSettings(objects=ObjectsSettings(True, (), 5))
        ),
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
    # label_info and objects (Detection3DArray): the node publishes them only where
    # vision_msgs imports (not from PyPI).
    assert set(offline) == {*SUFFIXES, *DEPTH_SUFFIXES, "vocabulary", "label_info", "objects"}
    for suffix in [*SUFFIXES, *DEPTH_SUFFIXES]:
        assert len(live[suffix]) == len(offline[suffix]) == len(inputs), suffix
        for i, (a, b) in enumerate(zip(live[suffix], offline[suffix], strict=True)):
            if suffix == "objects/markers":
                # Fast CDR leaves a Marker's alignment padding (after its bools) uninitialised:
                # the same message, other bytes. Every field must be equal.
                a, b = (deserialize_message(raw, MarkerArray) for raw in (a, b))
                assert len(a.markers) > 1, "no objects to compare"
            assert a == b, f"{suffix} of frame {i} differs"
    # The vocabulary: one version, valid from the start, the same JSON.
    assert offline["vocabulary"] == [live["vocabulary"][-1]]
