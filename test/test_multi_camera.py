"""One node, several cameras (parameter ``cameras``), over real DDS.

Three cameras with different image sizes and contents share one tiny model: every output
carries its own camera's header and size and equals what the engine gives for that image
alone; a camera flooding at 60 Hz does not starve one at 5 Hz; a camera that stops does not
stall the others; a vocabulary change reaches every camera in the same version. Camera names
are validated. The node runs in-process on its own executor; a second node plays the cameras.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.srv import SetParameters
from rclpy.context import Context
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from ros_harness import (
    TINY,
    private_domain_id,
    ros_context,
    running_segment_node,
    segment_node,
    spin_in_thread,
    wait_until,
)
from sensor_msgs.msg import Image
from std_msgs.msg import String

from ovseg_ros.ros.parameters import DEFAULT_CLASSES
from ovseg_ros.ros.topic_names import camera_names
from ovseg_ros.segmentation import SegmenterConfig, build_segmenter

DOMAIN_ID = private_domain_id()
CAMERAS = ["front", "left", "right"]
SIZES = {"front": (64, 48), "left": (80, 40), "right": (40, 56)}  # (width, height)
# front is remapped from a RealSense driver's topic; left and right keep <camera>/image.
INPUTS = {"front": "/front/camera/color/image_raw", "left": "/left/image", "right": "/right/image"}
NEW_CLASSES = ["background; wall", "person", "door", "window"]
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(
    depth=16, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)

pytestmark = [pytest.mark.dds, pytest.mark.slow, pytest.mark.timeout(180)]


def pixels(camera: str, sec: int) -> np.ndarray:
    """A per-camera scene (its own size and color layout) with per-frame noise."""
    width, height = SIZES[camera]
    index = CAMERAS.index(camera)
    rng = np.random.default_rng(1000 * index + sec)
    image = np.empty((height, width, 3), np.int16)
    colors = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (220, 220, 220)]
    image[:, : width // 2] = colors[index]
    image[:, width // 2 :] = colors[(index + 2) % 4]
    image[height // 2 :, width // 3 :] = colors[(index + 3) % 4]
    image += rng.integers(-20, 21, image.shape, dtype=np.int16)
    return image.clip(0, 255).astype(np.uint8)


def make_image(camera: str, sec: int) -> Image:
    rgb = pixels(camera, sec)
    height, width = rgb.shape[:2]
    msg = Image(height=height, width=width, encoding="rgb8", step=width * 3, data=rgb.tobytes())
    msg.header.frame_id = f"{camera}_optical_frame"
    msg.header.stamp.sec = sec
    msg.header.stamp.nanosec = 100 + CAMERAS.index(camera)
    return msg


class Cameras:
    """A node publishing the three cameras and recording the segmentation node's outputs."""

    def __init__(self, context: Context) -> None:
        self.node = rclpy.create_node("multi_camera_tester", context=context)
        self.lock = threading.Lock()
        self.received: dict[str, list] = {}
        self.publishers = {
            camera: self.node.create_publisher(Image, topic, RELIABLE)
            for camera, topic in INPUTS.items()
        }
        for camera in CAMERAS:
            for suffix in ("labels", "confidence"):
                self._subscribe(Image, f"/ovseg/{camera}/{suffix}", RELIABLE)
        self._subscribe(String, "/ovseg/vocabulary", LATCHED)
        self._subscribe(DiagnosticArray, "/diagnostics", QoSProfile(depth=50))
        self.set_params = self.node.create_client(SetParameters, "/ovseg/set_parameters")
        self.executor = spin_in_thread(self.node, context)

    def _subscribe(self, msg_type, topic: str, qos: QoSProfile) -> None:
        self.received[topic] = []

        def callback(msg, topic=topic) -> None:
            with self.lock:
                self.received[topic].append(msg)

        self.node.create_subscription(msg_type, topic, callback, qos)

    def messages(self, topic: str) -> list:
        with self.lock:
            return list(self.received[topic])

    def labels(self, camera: str, sec: int, suffix: str = "labels") -> list[Image]:
        topic = f"/ovseg/{camera}/{suffix}"
        return [m for m in self.messages(topic) if m.header.stamp.sec == sec]

    def publish(self, camera: str, sec: int) -> None:
        self.publishers[camera].publish(make_image(camera, sec))

    def vocabularies(self) -> list[dict]:
        return [json.loads(m.data) for m in self.messages("/ovseg/vocabulary")]

    def statuses(self) -> dict[str, DiagnosticStatus]:
        """The latest status of each name."""
        latest: dict[str, DiagnosticStatus] = {}
        for array in self.messages("/diagnostics"):
            latest.update({status.name: status for status in array.status})
        return latest

    def set_parameters(self, *parameters: Parameter):
        assert self.set_params.wait_for_service(timeout_sec=15)
        request = SetParameters.Request(parameters=[p.to_parameter_msg() for p in parameters])
        future = self.set_params.call_async(request)
        assert wait_until(future.done, 15)
        return future.result().results

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.fixture(scope="module")
def context():
    with ros_context(DOMAIN_ID) as ctx:
        yield ctx


@pytest.fixture(scope="module")
def ovseg(context):
    overrides = {**TINY, "cameras": CAMERAS, "diagnostics_period": 0.5}
    remap = ("-r", f"front/image:={INPUTS['front']}")
    with running_segment_node(context, overrides, *remap) as node:
        assert node.state_label == "active" and not node.autostart_failed
        yield node


@pytest.fixture(scope="module")
def cams(context, ovseg):
    cams = Cameras(context)
    for camera in CAMERAS:
        assert wait_until(lambda c=camera: ovseg.count_subscribers(f"/ovseg/{c}/labels") > 0, 20)
        assert wait_until(lambda c=camera: ovseg.count_publishers(INPUTS[c]) > 0, 20)
    yield cams
    cams.close()


@pytest.fixture(scope="module")
def reference():
    """The engine alone, built from the same config: what each camera's image should give."""
    segmenter = build_segmenter(SegmenterConfig(**TINY))
    yield segmenter
    segmenter.release()


def _publish_all(cams: Cameras, sec: int, cameras=CAMERAS) -> None:
    for camera in cameras:
        cams.publish(camera, sec)


def _stream_until_all_labelled(cams: Cameras, first_sec: int, cameras=CAMERAS) -> int:
    """Publish every camera's frame with one stamp until all of them come back labelled."""
    for sec in range(first_sec, first_sec + 40):
        _publish_all(cams, sec, cameras)
        if wait_until(lambda s=sec: all(cams.labels(c, s) for c in cameras), 5.0):
            return sec
    raise AssertionError("no round labelled every camera")


def _array(msg: Image, dtype: str) -> np.ndarray:
    return np.frombuffer(bytes(msg.data), dtype).reshape(msg.height, msg.width)


def _subscribers(observer, topic: str) -> list[str]:
    """Node names subscribing ``topic``, as ``observer`` (a node without remappings: a node
    applies its own remapping rules to the names it queries) sees the graph."""
    return [i.node_name for i in observer.get_subscriptions_info_by_topic(topic)]


# -- topics and names --------------------------------------------------------------------------


def test_topics_per_camera_relative_and_remappable(cams, ovseg) -> None:
    for camera, topic in INPUTS.items():
        assert _subscribers(cams.node, topic) == ["ovseg"]
        for suffix in ("labels", "confidence", "overlay"):
            assert ovseg.count_publishers(f"/ovseg/{camera}/{suffix}") == 1
    # Not the single-camera topics, nor the unremapped name of front.
    assert _subscribers(cams.node, "/image") == _subscribers(cams.node, "/front/image") == []
    assert ovseg.count_publishers("/ovseg/labels") == 0
    # One model and one vocabulary topic for all.
    assert ovseg.count_publishers("/ovseg/vocabulary") == 1


def test_camera_names_validated() -> None:
    assert camera_names(None) == [] and camera_names(["front", "rear_2"]) == ["front", "rear_2"]
    for bad, reason in [
        (["front", "front"], "repeated"),
        (["front", ""], "empty"),
        (["front/left"], "not a ROS name token"),
        (["2nd"], "not a ROS name token"),
        (["a__b"], "not a ROS name token"),
        (["~front"], "not a ROS name token"),
    ]:
        with pytest.raises(ValueError, match=reason):
            camera_names(bad)


def test_invalid_cameras_refused_at_configure(context, cams) -> None:
    overrides = {**TINY, "cameras": ["front", "front"], "diagnostics_period": 0.2}
    node = segment_node(context, overrides, node_name="ovseg_bad")
    executor = spin_in_thread(node, context)
    try:
        assert node.autostart_failed and node.state_label == "unconfigured"
        assert node.segmenter is None  # refused before any model was built

        def refused() -> bool:
            status = cams.statuses().get("ovseg_bad: segmentation")
            return (
                status is not None
                and status.level == DiagnosticStatus.ERROR
                and ("cameras: repeated camera names ['front']" in status.message)
            )

        assert wait_until(refused, 10)
    finally:
        executor.shutdown()
        node.destroy_node()


def test_cameras_read_only_at_runtime(cams, ovseg) -> None:
    (result,) = cams.set_parameters(Parameter("cameras", value=["front"]))
    assert not result.successful and "read-only" in result.reason
    assert [c.key for c in ovseg.cameras] == CAMERAS


# -- outputs -----------------------------------------------------------------------------------


def test_each_output_is_its_own_cameras_alone(cams, ovseg, reference) -> None:
    reference.set_vocabulary(DEFAULT_CLASSES)
    sec = _stream_until_all_labelled(cams, 100)
    assert wait_until(lambda: all(cams.labels(c, sec, "confidence") for c in CAMERAS), 5)
    for camera in CAMERAS:
        width, height = SIZES[camera]
        (labels,) = cams.labels(camera, sec)
        (confidence,) = cams.labels(camera, sec, "confidence")
        for msg in (labels, confidence):
            assert msg.header.frame_id == f"{camera}_optical_frame"
            assert msg.header.stamp.nanosec == 100 + CAMERAS.index(camera)
            assert (msg.width, msg.height) == (width, height)
        alone = reference.segment(pixels(camera, sec))
        np.testing.assert_allclose(_array(confidence, "<f4"), alone.confidence, atol=1e-5)
        got = _array(labels, np.uint8)
        # Labels equal wherever the top two classes are not tied to float rounding.
        top2 = np.sort(alone.probabilities, axis=0)[-2:]
        decided = (top2[1] - top2[0]) > 1e-4
        assert decided.mean() > 0.9
        np.testing.assert_array_equal(got[decided], alone.labels[decided])
    # Different cameras saw different scenes (the check above is not trivially shared).
    label_sets = [_array(cams.labels(c, sec)[0], np.uint8).tobytes() for c in CAMERAS]
    assert len(set(label_sets)) == len(CAMERAS)


# -- scheduling --------------------------------------------------------------------------------


def _flood(cams: Cameras, camera: str, hz: float, stop: threading.Event, first_sec: int) -> None:
    sec = first_sec
    while not stop.is_set():
        cams.publish(camera, sec)
        sec += 1
        time.sleep(1.0 / hz)


def test_flooding_camera_does_not_starve_a_slow_one(cams, ovseg) -> None:
    before = ovseg.stats.snapshot()
    stop = threading.Event()
    flood = threading.Thread(target=_flood, args=(cams, "front", 60.0, stop, 10_000), daemon=True)
    flood.start()
    try:
        slow = list(range(500, 515))
        for sec in slow:  # left at 5 Hz: each frame must be segmented, whatever front does
            started = time.monotonic()
            cams.publish("left", sec)
            assert wait_until(lambda s=sec: cams.labels("left", s), 20), f"left frame {sec} lost"
            time.sleep(max(0.0, 0.2 - (time.monotonic() - started)))
    finally:
        stop.set()
        flood.join()

    def counters() -> dict[str, tuple[int, int, int]]:
        return {k: (s.received, s.processed, s.dropped) for k, s in ovseg.stats.snapshot().items()}

    def settled() -> bool:  # every frame delivered and its round finished
        first = counters()
        time.sleep(0.5)
        return counters() == first

    assert wait_until(settled, 20)
    after = ovseg.stats.snapshot()
    left_new = after["left"].processed - before["left"].processed
    front_received = after["front"].received - before["front"].received
    front_processed = after["front"].processed - before["front"].processed
    assert left_new == len(slow) and after["left"].dropped == before["left"].dropped
    assert front_processed > 0 and front_received > len(slow)
    print(
        f"\nfront: {front_received} received, {front_processed} processed, "
        f"{after['front'].dropped - before['front'].dropped} dropped; left: {left_new}/"
        f"{len(slow)} processed"
    )

    # Diagnostics: one status per camera plus the node's, with per-camera counters.
    def counted() -> bool:
        statuses = cams.statuses()
        values = [
            {kv.key: kv.value for kv in statuses[f"ovseg: camera {c}"].values}
            for c in ("left", "front")
            if f"ovseg: camera {c}" in statuses
        ]
        return len(values) == 2 and [int(v["frames_processed"]) for v in values] == [
            after["left"].processed,
            after["front"].processed,
        ]

    assert wait_until(counted, 10)
    statuses = cams.statuses()
    assert {"ovseg: segmentation", *(f"ovseg: camera {c}" for c in CAMERAS)} <= set(statuses)
    front = {kv.key: kv.value for kv in statuses["ovseg: camera front"].values}
    node = {kv.key: kv.value for kv in statuses["ovseg: segmentation"].values}
    assert int(front["frames_dropped"]) == after["front"].dropped
    assert int(node["frames_received"]) >= int(front["frames_received"])
    assert {"rate_hz", "latency_p50_ms", "latency_p99_ms", "frames_invalid"} <= set(front)


def test_a_stopped_camera_does_not_stall_the_others(cams, ovseg) -> None:
    _stream_until_all_labelled(cams, 700)
    # right stops; front and left go on, every one of their frames is segmented.
    for sec in range(750, 760):
        _publish_all(cams, sec, ["front", "left"])
        assert wait_until(lambda s=sec: cams.labels("front", s) and cams.labels("left", s), 20)

    # While front and left stream, right's status says it gets nothing; theirs stay OK.
    def right_silent_others_ok() -> bool:
        statuses = cams.statuses()
        right, front = statuses.get("ovseg: camera right"), statuses.get("ovseg: camera front")
        return (
            right is not None
            and front is not None
            and right.level == DiagnosticStatus.WARN
            and right.message == "no input frames"
            and front.level == DiagnosticStatus.OK
        )

    sec = 760
    deadline = time.monotonic() + 20
    while not right_silent_others_ok() and time.monotonic() < deadline:
        _publish_all(cams, sec, ["front", "left"])
        sec += 1
        time.sleep(0.1)
    assert right_silent_others_ok()
    # right comes back: it is segmented again.
    _stream_until_all_labelled(cams, 900)


def test_vocabulary_change_reaches_every_camera_in_one_version(cams, ovseg, reference) -> None:
    old = ovseg.vocabulary_version
    before = _stream_until_all_labelled(cams, 1000)
    (result,) = cams.set_parameters(Parameter("classes", value=NEW_CLASSES))
    assert result.successful
    assert wait_until(lambda: ovseg.vocabulary_version > old, 20)
    sec = _stream_until_all_labelled(cams, 1100)
    # One version for all three cameras, each with its own first stamp.
    assert wait_until(lambda: set(cams.vocabularies()[-1]["valid_from"]) == set(CAMERAS), 20)
    latest = cams.vocabularies()[-1]
    assert latest["version"] == old + 1 == ovseg.vocabulary_version
    assert [c["name"] for c in latest["classes"]] == [c.split(";")[0] for c in NEW_CLASSES]
    reference.set_vocabulary(NEW_CLASSES)
    for camera in CAMERAS:
        nanosec = 100 + CAMERAS.index(camera)
        stamp = latest["valid_from"][camera]
        valid_from = stamp["sec"] * 10**9 + stamp["nanosec"]
        assert before * 10**9 + nanosec < valid_from <= sec * 10**9 + nanosec
        # Frames from valid_from on are labelled with the new vocabulary, as the engine does.
        alone = reference.segment(pixels(camera, sec))
        (confidence,) = cams.labels(camera, sec, "confidence")
        np.testing.assert_allclose(_array(confidence, "<f4"), alone.confidence, atol=1e-5)
        assert _array(cams.labels(camera, sec)[0], np.uint8).max() < len(NEW_CLASSES)
    # Restore the default vocabulary for later tests.
    (result,) = cams.set_parameters(Parameter("classes", value=DEFAULT_CLASSES))
    assert result.successful
