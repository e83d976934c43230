"""segment_node over real DDS: outputs, vocabulary service, bad frames, drops, lifecycle,
the input transport switch, vocabulary versions under rapid changes, signals.

The node runs in-process (tiny random models on the CPU) on its own executor thread; a
second node plays camera and client over DDS on a private domain. Nothing is mocked.
"""

from __future__ import annotations

import io
import json
import math
import threading
import time

import numpy as np
import pytest
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from PIL import Image as PILImage
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.srv import SetParameters
from rclpy.context import Context
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from ros_harness import (
    REPO,
    TINY,
    private_domain_id,
    ros_context,
    running_segment_node,
    spin_in_thread,
    wait_until,
)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from ovseg_ros.ros.parameters import DEFAULT_CLASSES

# A private DDS domain per test module (rclpy.init(domain_id=...) and the subprocesses' env).
DOMAIN_ID = private_domain_id()
CONFIDENCE_CLASSES = ["man", "door", "unicorn"]  # "man" -> the person entry; unicorn: absent
RELIABLE = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
HISTORY = QoSProfile(
    depth=16, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
BEST_EFFORT = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)

pytestmark = [pytest.mark.dds, pytest.mark.slow, pytest.mark.timeout(120)]


def _pixels(sec: int, width: int, height: int) -> np.ndarray:
    """A red left half and a blue right half with noise: two classes even for tiny models."""
    rng = np.random.default_rng(sec)
    image = np.empty((height, width, 3), np.int16)
    image[:, : width // 2] = (200, 40, 40)
    image[:, width // 2 :] = (40, 40, 200)
    image += rng.integers(-20, 21, image.shape, dtype=np.int16)
    return image.clip(0, 255).astype(np.uint8)


def make_image(sec: int, width: int = 64, height: int = 48, frame_id: str = "camera") -> Image:
    msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec = sec
    msg.header.stamp.nanosec = 123
    msg.data = _pixels(sec, width, height).tobytes()
    return msg


def make_jpeg(sec: int, width: int = 64, height: int = 48) -> CompressedImage:
    buffer = io.BytesIO()
    PILImage.fromarray(_pixels(sec, width, height)).save(buffer, format="JPEG")
    msg = CompressedImage(format="rgb8; jpeg compressed bgr8", data=buffer.getvalue())
    msg.header.frame_id = "jpeg_camera"
    msg.header.stamp.sec = sec
    return msg


class RosHarness:
    """A camera + client node on its own executor thread, recording what the node publishes."""

    def __init__(self, context: Context) -> None:
        self.node = rclpy.create_node("ovseg_tester", context=context)
        self.lock = threading.Lock()
        self.received: dict[str, list] = {}
        self.arrivals: list[tuple[str, object, int]] = []  # (topic, msg, latest published)
        self.latest_published = -1
        self.image_pub = self.node.create_publisher(Image, "/image", RELIABLE)
        for topic in ("/ovseg/labels", "/ovseg/confidence"):
            self.subscribe(Image, topic)
        # Depth 16, like the node's history: a depth-1 reader can lose a valid_from update
        # when the next version follows it within milliseconds.
        self.subscribe(String, "/ovseg/vocabulary", HISTORY)
        self.subscribe(DiagnosticArray, "/diagnostics", QoSProfile(depth=50))
        self.set_params = self.node.create_client(SetParameters, "/ovseg/set_parameters")
        self.change_state = self.node.create_client(ChangeState, "/ovseg/change_state")
        self.get_state = self.node.create_client(GetState, "/ovseg/get_state")
        self.executor = spin_in_thread(self.node, context)

    def subscribe(self, msg_type, topic: str, qos: QoSProfile = RELIABLE):
        self.received.setdefault(topic, [])

        def callback(msg, topic=topic) -> None:
            with self.lock:
                self.received[topic].append(msg)
                self.arrivals.append((topic, msg, self.latest_published))

        return self.node.create_subscription(msg_type, topic, callback, qos)

    def messages(self, topic: str) -> list:
        with self.lock:
            return list(self.received[topic])

    def clear(self) -> None:
        with self.lock:
            for messages in self.received.values():
                messages.clear()
            self.arrivals.clear()

    def by_stamp(self, topic: str, sec: int) -> list:
        return [m for m in self.messages(topic) if m.header.stamp.sec == sec]

    def publish(self, msg: Image) -> None:
        with self.lock:
            self.latest_published = msg.header.stamp.sec
        self.image_pub.publish(msg)

    def call(self, client, request, timeout: float = 15.0):
        assert client.wait_for_service(timeout_sec=timeout), f"{client.srv_name} not available"
        future = client.call_async(request)
        assert wait_until(future.done, timeout), f"{client.srv_name}: no response"
        return future.result()

    def set_parameters(self, *parameters: Parameter):
        request = SetParameters.Request(parameters=[p.to_parameter_msg() for p in parameters])
        return self.call(self.set_params, request).results

    def transition(self, transition_id: int) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return self.call(self.change_state, request).success

    def state(self) -> int:
        return self.call(self.get_state, GetState.Request()).current_state.id

    def vocabularies(self) -> list[dict]:
        return [json.loads(m.data) for m in self.messages("/ovseg/vocabulary")]

    def diagnostics(self) -> dict[str, str]:
        """Values of the node's latest diagnostics status."""
        for array in reversed(self.messages("/diagnostics")):
            for status in array.status:
                if status.name == "ovseg: segmentation":
                    return {kv.key: kv.value for kv in status.values}
        return {}

    def stream_until_labels(self, first_sec: int, timeout: float = 20.0, **kwargs) -> Image:
        """Publish frames (a new stamp each time) until labels for one of them arrive."""
        deadline = time.monotonic() + timeout
        sec = first_sec
        while time.monotonic() < deadline:
            self.publish(make_image(sec, **kwargs))
            if wait_until(lambda s=sec: self.by_stamp("/ovseg/labels", s), 0.5):
                return self.by_stamp("/ovseg/labels", sec)[0]
            sec += 1
        raise AssertionError("no labels arrived")

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.fixture(scope="module")
def context():
    with ros_context(DOMAIN_ID) as ctx:
        yield ctx


@pytest.fixture(scope="module")
def ovseg(context):
    overrides = {**TINY, "confidence_classes": CONFIDENCE_CLASSES}
    with running_segment_node(context, overrides) as node:
        assert node.state_label == "active" and not node.autostart_failed
        yield node


@pytest.fixture(scope="module")
def tester(context, ovseg):
    tester = RosHarness(context)
    assert wait_until(lambda: ovseg.count_subscribers("/ovseg/labels") > 0)
    yield tester
    tester.close()


@pytest.fixture
def default_vocabulary(tester, ovseg):
    """Restore the default vocabulary after a test that changes it."""
    yield
    if ovseg.segmenter is not None and ovseg.segmenter.vocabulary.names != [
        c.split(";")[0].strip() for c in DEFAULT_CLASSES
    ]:
        version = ovseg.vocabulary_version
        (result,) = tester.set_parameters(Parameter("classes", value=DEFAULT_CLASSES))
        assert result.successful
        assert wait_until(lambda: tester.vocabularies()[-1]["version"] > version)


# -- outputs -----------------------------------------------------------------------------------


def test_every_output_carries_the_input_header(tester, ovseg) -> None:
    overlay = tester.subscribe(Image, "/ovseg/overlay")
    person = tester.subscribe(Image, "/ovseg/confidence/person")
    door = tester.subscribe(Image, "/ovseg/confidence/door")
    try:
        assert ovseg.class_topics() == {
            "/ovseg/confidence/person": 1,
            "/ovseg/confidence/door": 4,
        }
        assert wait_until(lambda: ovseg.count_subscribers("/ovseg/overlay") > 0)
        assert wait_until(lambda: ovseg.count_subscribers("/ovseg/confidence/door") > 0)
        labels = tester.stream_until_labels(1000)
        sec = labels.header.stamp.sec
        topics = ["/ovseg/labels", "/ovseg/confidence", "/ovseg/overlay"]
        topics += ["/ovseg/confidence/person", "/ovseg/confidence/door"]
        assert wait_until(lambda: all(tester.by_stamp(t, sec) for t in topics), 5)
        expected = {
            "/ovseg/labels": ("mono8", 64),
            "/ovseg/confidence": ("32FC1", 64 * 4),
            "/ovseg/overlay": ("rgb8", 64 * 3),
            "/ovseg/confidence/person": ("32FC1", 64 * 4),
            "/ovseg/confidence/door": ("32FC1", 64 * 4),
        }
        for topic, (encoding, step) in expected.items():
            (msg,) = tester.by_stamp(topic, sec)
            assert msg.header.frame_id == "camera", topic
            assert msg.header.stamp.nanosec == 123, topic
            assert (msg.encoding, msg.width, msg.height, msg.step) == (encoding, 64, 48, step)
            assert len(msg.data) == step * 48 and msg.is_bigendian == 0
        label_values = np.frombuffer(bytes(labels.data), np.uint8)
        assert label_values.max() < len(DEFAULT_CLASSES)
        confidence = np.frombuffer(bytes(tester.by_stamp(topics[1], sec)[0].data), "<f4")
        assert np.all((confidence > 0) & (confidence <= 1.0 + 1e-6))
        person_p = np.frombuffer(bytes(tester.by_stamp(topics[3], sec)[0].data), "<f4")
        assert np.all((person_p >= 0) & (person_p <= 1.0 + 1e-6))
        # The winning class's probability is the confidence.
        assert (label_values == 1).any()
        assert np.allclose(person_p[label_values == 1], confidence[label_values == 1], atol=1e-5)
    finally:
        for subscription in (overlay, person, door):
            tester.node.destroy_subscription(subscription)


def _camera_info(width: int, height: int) -> CameraInfo:
    info = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
    info.k = [50.0, 0.0, 31.5, 0.0, 50.0, 23.5, 0.0, 0.0, 1.0]
    info.p = [50.0, 0.0, 31.5, 0.0, 0.0, 50.0, 23.5, 0.0, 0.0, 0.0, 1.0, 0.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.d = [0.0] * 5
    return info


def test_masks_camera_info_without_depth_and_nothing_made_for_nobody(tester, ovseg) -> None:
    """Masks are the labels of one class as 0/255; the labels' camera model is published
    without depth; an output nobody subscribes to is never made (counted per output kind)."""

    def computed() -> dict[str, int]:
        snapshot = ovseg.stats.snapshot().get("")
        return dict(snapshot.computed) if snapshot else {}

    (result,) = tester.set_parameters(Parameter("mask_classes", value=["man", "door"]))
    assert result.successful, result.reason
    assert wait_until(lambda: "/ovseg/mask/person" in ovseg.class_topics())
    assert ovseg.class_topics()["/ovseg/mask/door"] == 4
    before = computed()
    tester.stream_until_labels(1500)
    unsubscribed = computed()
    assert unsubscribed["labels"] > before.get("labels", 0)
    for kind in ("mask", "camera_info", "overlay"):  # nobody listens: never made
        assert unsubscribed.get(kind, 0) == before.get(kind, 0), kind

    info_pub = tester.node.create_publisher(CameraInfo, "/camera_info", RELIABLE)
    mask = tester.subscribe(Image, "/ovseg/mask/person")
    info = tester.subscribe(CameraInfo, "/ovseg/camera_info")
    try:
        assert wait_until(lambda: ovseg.count_subscribers("/ovseg/mask/person") > 0)
        assert wait_until(lambda: ovseg.count_publishers("/camera_info") > 0)
        camera_info = _camera_info(64, 48)

        def received() -> bool:
            # Re-sent until it arrives: the subscription may be renewed (qos_reliability auto)
            # or not yet matched on the publisher's side when the node already sees it.
            info_pub.publish(camera_info)
            return ovseg.cameras[0].camera_info.latest() is not None

        assert wait_until(received, poll=0.2)
        labels = tester.stream_until_labels(1600)
        sec = labels.header.stamp.sec
        topics = ["/ovseg/mask/person", "/ovseg/camera_info"]
        assert wait_until(lambda: all(tester.by_stamp(t, sec) for t in topics), 5)
        (person,) = tester.by_stamp("/ovseg/mask/person", sec)
        assert (person.encoding, person.width, person.height) == ("mono8", 64, 48)
        label_values = np.frombuffer(bytes(labels.data), np.uint8)
        expected = np.where(label_values == 1, 255, 0)
        np.testing.assert_array_equal(np.frombuffer(bytes(person.data), np.uint8), expected)
        (model,) = tester.by_stamp("/ovseg/camera_info", sec)
        assert model.header.frame_id == labels.header.frame_id
        assert model.header.stamp == labels.header.stamp
        assert (model.width, model.height) == (64, 48) and list(model.k)[0] == 50.0
        assert computed()["mask"] > unsubscribed.get("mask", 0)
        assert "/ovseg/mask/door" not in tester.received  # made only for its subscriber
        assert computed()["mask"] - unsubscribed.get("mask", 0) == (
            computed()["labels"] - unsubscribed["labels"]
        )  # one mask per frame: the door mask, unsubscribed, was never made
    finally:
        tester.node.destroy_subscription(mask)
        tester.node.destroy_subscription(info)
        tester.node.destroy_publisher(info_pub)
        empty = Parameter("mask_classes", Parameter.Type.STRING_ARRAY, [])
        (result,) = tester.set_parameters(empty)
        assert result.successful
    assert wait_until(lambda: not any("/mask/" in t for t in ovseg.class_topics()))


def test_label_info_is_off_without_vision_msgs_and_the_json_says_unlabeled(tester, ovseg) -> None:
    """vision_msgs has no PyPI wheel: ~/label_info is absent (said once at configure) and the
    vocabulary JSON names the classes and the unlabeled value."""
    try:
        import vision_msgs  # noqa: F401
    except ImportError:
        assert ovseg.count_subscribers("/ovseg/label_info") == 0
        names = [t for t, _ in ovseg.get_publisher_names_and_types_by_node("ovseg", "/")]
        assert "/ovseg/label_info" not in names
    else:
        pytest.skip("vision_msgs imports here: ~/label_info is tested with it")
    assert tester.vocabularies()[-1]["unlabeled_id"] == 255


@pytest.fixture(scope="module")
def jpeg_node(context):
    """image_transport compressed, image remapped: subscribes /cam_x/image/compressed only."""
    overrides = {**TINY, "image_transport": "compressed"}
    remap = ("-r", "image:=/cam_x/image")
    with running_segment_node(
        context, overrides, *remap, node_name="ovseg_jpeg", namespace="/third"
    ) as node:
        yield node


def _subscribers(node, topic: str) -> int:
    return sum(i.node_name == node.get_name() for i in node.get_subscriptions_info_by_topic(topic))


def test_one_input_transport_at_a_time(tester, ovseg, jpeg_node) -> None:
    # A subscription replaced by the QoS follower stays in the graph for its grace period
    # (ros/retire.py): wait for the graph to settle rather than read it once.
    assert wait_until(
        lambda: (_subscribers(ovseg, "/image"), _subscribers(ovseg, "/image/compressed")) == (1, 0),
        5,
    )
    assert _subscribers(jpeg_node, "/cam_x/image") == 0
    assert _subscribers(jpeg_node, "/cam_x/image/compressed") == 1
    assert _subscribers(jpeg_node, "/third/image/compressed") == 0


def test_compressed_input(tester, jpeg_node) -> None:
    tester.subscribe(Image, "/third/ovseg_jpeg/labels")
    publisher = tester.node.create_publisher(CompressedImage, "/cam_x/image/compressed", RELIABLE)
    try:
        for sec in range(1100, 1140):
            publisher.publish(make_jpeg(sec, width=80, height=60))
            if wait_until(lambda s=sec: tester.by_stamp("/third/ovseg_jpeg/labels", s), 0.5):
                break
        (labels,) = tester.by_stamp("/third/ovseg_jpeg/labels", sec)
        assert labels.header.frame_id == "jpeg_camera"
        assert (labels.encoding, labels.width, labels.height) == ("mono8", 80, 60)
        # Raw frames on the remapped image topic are not subscribed.
        raw = tester.node.create_publisher(Image, "/cam_x/image", RELIABLE)
        received = jpeg_node.stats.total("received")
        for sec in range(1200, 1205):
            raw.publish(make_image(sec))
        time.sleep(0.5)
        assert jpeg_node.stats.total("received") == received
        tester.node.destroy_publisher(raw)
    finally:
        tester.node.destroy_publisher(publisher)


def test_vocabulary_is_latched_for_late_subscribers(tester, ovseg) -> None:
    late: list[String] = []
    subscription = tester.node.create_subscription(
        String, "/ovseg/vocabulary", late.append, LATCHED
    )
    try:
        assert wait_until(lambda: late, 10)
        data = json.loads(late[-1].data)
        assert data["version"] == ovseg.vocabulary_version >= 1
        assert [c["name"] for c in data["classes"]] == [
            "background",
            "person",
            "chair",
            "table",
            "door",
        ]
        assert data["classes"][1]["synonyms"] == ["person", "man", "woman"]
        assert all(len(c["color"]) == 3 for c in data["classes"])
        assert [c["id"] for c in data["classes"]] == list(range(5))
    finally:
        tester.node.destroy_subscription(subscription)


# -- runtime vocabulary --------------------------------------------------------------------------


def test_vocabulary_change_through_set_parameters(tester, ovseg, default_vocabulary) -> None:
    before = ovseg.vocabulary_version
    (result,) = tester.set_parameters(Parameter("classes", value=["floor; ground", "door"]))
    assert result.successful, result.reason
    assert wait_until(lambda: tester.vocabularies()[-1]["version"] == before + 1)
    latest = tester.vocabularies()[-1]
    assert [c["name"] for c in latest["classes"]] == ["floor", "door"]
    # Later labels use the new vocabulary: two entries -> values 0 and 1 only.
    labels = tester.stream_until_labels(2000)
    assert np.frombuffer(bytes(labels.data), np.uint8).max() <= 1
    # The per-class topics follow: "man" is gone, "door" moved to entry 1.
    assert ovseg.class_topics() == {"/ovseg/confidence/door": 1}


@pytest.fixture
def no_tlp(tester):
    """TLP costs seconds per frame with 300 classes on the CPU; switch it off meanwhile."""
    (result,) = tester.set_parameters(Parameter("tlp", value=False))  # dynamically typed
    assert result.successful, result.reason
    yield
    (result,) = tester.set_parameters(Parameter("tlp", value="auto"))
    assert result.successful, result.reason


def _mono16_labels(tester: RosHarness) -> list[Image]:
    return [m for m in tester.messages("/ovseg/labels") if m.encoding == "mono16"]


def test_300_classes_switch_labels_to_mono16(tester, ovseg, no_tlp, default_vocabulary) -> None:
    before = ovseg.vocabulary_version
    classes = [f"thing {i}" for i in range(300)]
    tester.clear()
    (result,) = tester.set_parameters(Parameter("classes", value=classes))
    assert result.successful, result.reason
    deadline = time.monotonic() + 60
    sec = 3000
    while not _mono16_labels(tester) and time.monotonic() < deadline:
        tester.publish(make_image(sec))  # frames before the switch come back as mono8
        wait_until(lambda: _mono16_labels(tester), 0.5)
        sec += 1
    assert _mono16_labels(tester), "no mono16 labels"
    labels = _mono16_labels(tester)[0]
    assert labels.step == 64 * 2
    assert np.frombuffer(bytes(labels.data), "<u2").max() < 300
    # The new vocabulary was published before the first labels that use it.
    with tester.lock:
        order = [
            (t, m) for t, m, _ in tester.arrivals if t in ("/ovseg/vocabulary", "/ovseg/labels")
        ]
    first_mono16 = next(
        i for i, (t, m) in enumerate(order) if getattr(m, "encoding", "") == "mono16"
    )
    versions_before = [
        json.loads(m.data)["version"] for t, m in order[:first_mono16] if t == "/ovseg/vocabulary"
    ]
    assert before + 1 in versions_before
    # Every labels message belongs to one vocabulary: mono8 ones never exceed 5 classes.
    for topic, msg in order:
        if topic == "/ovseg/labels" and msg.encoding == "mono8":
            assert np.frombuffer(bytes(msg.data), np.uint8).max() < len(DEFAULT_CLASSES)


def _version_of(vocabularies: list[dict], stamp_ns: int, camera: str = "") -> int:
    """The README's rule: the highest version whose valid_from[camera] <= the image stamp."""
    latest = {v["version"]: v["valid_from"] for v in vocabularies}  # last message per version
    return max(
        version
        for version, valid_from in latest.items()
        if camera in valid_from
        and valid_from[camera]["sec"] * 10**9 + valid_from[camera]["nanosec"] <= stamp_ns
    )


def test_valid_from_under_rapid_vocabulary_changes(
    tester, ovseg, no_tlp, default_vocabulary
) -> None:
    """Vocabularies alternate between 2 entries (mono8 labels) and 257 (mono16), so every
    label image shows which size of vocabulary made it; the rule must name a version of
    that size for every one, whatever order the topics' messages arrived in."""
    small, big = ["floor", "door"], [f"thing {i}" for i in range(257)]
    # Frames keep the current vocabulary until a change is encoded: keep its message.
    earlier = tester.vocabularies()
    tester.clear()
    stop = threading.Event()
    last_sec = [9000]

    def camera() -> None:
        while not stop.is_set():
            last_sec[0] += 1
            tester.publish(make_image(last_sec[0]))
            time.sleep(0.03)

    thread = threading.Thread(target=camera, daemon=True)
    thread.start()
    try:
        for k in range(6):
            (result,) = tester.set_parameters(Parameter("classes", value=big if k % 2 else small))
            assert result.successful, result.reason
            # Each change is in use before the next one (whatever the machine's speed): a
            # label image of its size arrives.
            encoding = "mono16" if k % 2 else "mono8"
            seen = len(tester.messages("/ovseg/labels"))
            assert wait_until(
                lambda e=encoding, n=seen: any(
                    m.encoding == e for m in tester.messages("/ovseg/labels")[n:]
                ),
                60,
            )
            time.sleep(0.1 * (k % 3))
    finally:
        stop.set()
        thread.join(5)
    assert wait_until(lambda: tester.by_stamp("/ovseg/labels", last_sec[0]), 20)
    time.sleep(0.5)
    vocabularies = earlier + tester.vocabularies()
    sizes = {v["version"]: len(v["classes"]) for v in vocabularies}
    labels = [m for m in tester.messages("/ovseg/labels") if m.header.stamp.sec > 9000]
    used = set()
    for msg in labels:
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        version = _version_of(vocabularies, stamp)
        used.add(version)
        assert msg.encoding == ("mono16" if sizes[version] > 256 else "mono8"), version
    assert len(used) >= 3, used  # the changes really interleaved with frames
    # A late subscriber gets the recent history (depth 16) and maps the newest image alike.
    late: list[String] = []
    history = QoSProfile(
        depth=16,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )
    subscription = tester.node.create_subscription(
        String, "/ovseg/vocabulary", late.append, history
    )
    try:
        assert wait_until(lambda: len(late) >= min(16, len(vocabularies)), 10)
        newest = labels[-1]
        stamp = newest.header.stamp.sec * 10**9 + newest.header.stamp.nanosec
        assert _version_of([json.loads(m.data) for m in late], stamp) == _version_of(
            vocabularies, stamp
        )
    finally:
        tester.node.destroy_subscription(subscription)


@pytest.mark.parametrize(
    "value,reason",
    [
        ([], "empty"),
        (["chair", "Chair"], "duplicate"),
        (["chair; seat", "seat"], "duplicate"),
        (["chair", "   "], "blank"),
        (["chair;"], "blank"),
    ],
)
def test_invalid_vocabulary_is_refused(tester, ovseg, value, reason) -> None:
    before = ovseg.vocabulary_version
    parameter = Parameter("classes", Parameter.Type.STRING_ARRAY, value)
    (result,) = tester.set_parameters(parameter)
    assert not result.successful
    assert reason in result.reason
    time.sleep(0.3)
    assert ovseg.vocabulary_version == before
    # No new version (a version may be re-published with a new valid_from entry).
    assert max(v["version"] for v in tester.vocabularies()) == before
    assert ovseg.get_parameter("classes").value == DEFAULT_CLASSES


def test_parameter_checks(tester, ovseg) -> None:
    (result,) = tester.set_parameters(Parameter("method", value="lposs"))
    assert not result.successful  # read-only: needs a restart
    (result,) = tester.set_parameters(Parameter("window_stride", value=500))
    assert not result.successful and "window_stride" in result.reason
    (result,) = tester.set_parameters(Parameter("classes", value=3))
    assert not result.successful
    (result,) = tester.set_parameters(Parameter("publish_overlay_alpha", value=2.0))
    assert not result.successful
    descriptors = {
        d.name: d
        for d in ovseg.describe_parameters(["method", "device", "classes", "alpha_kk", "tlp"])
    }
    assert descriptors["method"].read_only and descriptors["device"].read_only
    assert not descriptors["classes"].read_only and not descriptors["alpha_kk"].read_only
    assert descriptors["classes"].type == ParameterType.PARAMETER_STRING_ARRAY
    assert descriptors["tlp"].dynamic_typing  # "auto" / true / false
    assert all(d.description for d in descriptors.values())


def test_engine_knobs_apply_at_runtime(tester, ovseg) -> None:
    """A near-zero logit scale makes every class equally likely (about 1/5), so with
    prob_threshold 0.9 every pixel is unlabeled (255: on a robot entry 0 is a class like any
    other), from the next frames on."""
    labels = tester.stream_until_labels(3400)
    assert np.frombuffer(bytes(labels.data), np.uint8).max() > 0  # two halves, two classes
    try:
        results = tester.set_parameters(
            Parameter("logit_scale", value=0.01), Parameter("prob_threshold", value=0.9)
        )
        assert all(r.successful for r in results), results
        labels = tester.stream_until_labels(3500)
        assert (np.frombuffer(bytes(labels.data), np.uint8) == 255).all()
    finally:
        results = tester.set_parameters(
            Parameter("logit_scale", value=40.0), Parameter("prob_threshold", value=0.0)
        )
        assert all(r.successful for r in results)
    labels = tester.stream_until_labels(3600)
    assert np.frombuffer(bytes(labels.data), np.uint8).max() > 0


# -- robustness ----------------------------------------------------------------------------------


def test_bad_frames_are_skipped(tester, ovseg) -> None:
    invalid_before = ovseg.stats.total("invalid")
    bad: list[Image] = []
    unknown = make_image(4001)
    unknown.encoding = "nv21"
    bad.append(unknown)
    short_step = make_image(4002)
    short_step.step = 10  # < width * 3
    bad.append(short_step)
    short_data = make_image(4003)
    short_data.data = bytes(short_data.data)[:100]
    bad.append(short_data)
    empty = Image(height=0, width=0, encoding="rgb8", step=0)
    empty.header.stamp.sec = 4004
    bad.append(empty)
    for msg in bad:  # compressed ones: test_bad_compressed_frames_are_skipped
        tester.publish(msg)
        assert wait_until(lambda n=invalid_before: ovseg.stats.total("invalid") > n, 5)
        invalid_before = ovseg.stats.total("invalid")
    labels = tester.stream_until_labels(4100)  # good frames still flow
    assert labels.encoding == "mono8"
    assert not any(tester.by_stamp("/ovseg/labels", s) for s in range(4001, 4005))
    assert wait_until(lambda: int(tester.diagnostics().get("frames_invalid", 0)) >= 4, 5)
    assert ovseg.state_label == "active"


def test_bad_compressed_frames_are_skipped(tester, jpeg_node) -> None:
    tester.subscribe(Image, "/third/ovseg_jpeg/labels")
    publisher = tester.node.create_publisher(CompressedImage, "/cam_x/image/compressed", RELIABLE)
    try:
        # Matched first: a message published before discovery is lost, not late.
        assert wait_until(lambda: publisher.get_subscription_count() > 0, 30)
        corrupt = make_jpeg(4005)
        corrupt.data = b"\xff\xd8\xff\xe0" + bytes(200)
        depth = make_jpeg(4006)
        depth.format = "16UC1; compressedDepth png"
        for msg in (corrupt, depth):
            before = jpeg_node.stats.total("invalid")

            def counted(m=msg, n=before) -> bool:
                # Re-sent until counted: the node may renew its subscription (qos_reliability
                # auto) as the publisher appears, and a message sent then is lost.
                publisher.publish(m)
                return jpeg_node.stats.total("invalid") > n

            assert wait_until(counted, 30, poll=0.5)
        for sec in range(4100, 4140):  # good frames still flow
            publisher.publish(make_jpeg(sec))
            if wait_until(lambda s=sec: tester.by_stamp("/third/ovseg_jpeg/labels", s), 0.5):
                break
        assert tester.by_stamp("/third/ovseg_jpeg/labels", sec)
        assert jpeg_node.state_label == "active"
    finally:
        tester.node.destroy_publisher(publisher)


def test_stale_frames_are_dropped_not_queued(tester, ovseg) -> None:
    """Under a 30 Hz camera the node follows the newest frame instead of lagging behind."""
    width, height = 640, 480
    for sec in (5000, 5100, 5200):  # warm up this image size
        tester.stream_until_labels(sec, width=width, height=height)
    # 30 Hz, or faster where this machine segments 640x480 in under 66 ms, so that frames
    # arrive faster than they are processed and must be dropped.
    inference = min(list(ovseg.stats.camera("").inference)[-3:])
    period = min(1 / 30, inference / 2)
    frames = [make_image(6000 + i, width, height) for i in range(60)]
    tester.clear()
    dropped_before = ovseg.stats.total("dropped")
    start = time.monotonic()
    for i, msg in enumerate(frames):
        time.sleep(max(0.0, start + i * period - time.monotonic()))
        tester.publish(msg)
    # Latest-frame-only: the last frame is never dropped.
    assert wait_until(lambda: tester.by_stamp("/ovseg/labels", 6059), 20), "last frame lost"
    with tester.lock:
        seen = [
            (m.header.stamp.sec - 6000, latest - 6000)
            for t, m, latest in tester.arrivals
            if t == "/ovseg/labels" and m.header.stamp.sec >= 6000
        ]
    indices = [i for i, _ in seen]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    assert len(indices) < len(frames)  # frames were skipped ...
    # ... so each result is for a frame only a few frames older than the newest one published
    # when it arrived. A queue would fall further behind with every frame: by the end of the
    # burst its age would be about the number of frames not yet processed (tens).
    ages = [latest - i for i, latest in seen if latest < len(frames) - 1]
    # A frame waits at most one inference (the one in progress) plus its own; allow for
    # transport and a busy machine. The bound is in frames, scaled by how long this machine
    # took per frame, and stays far below the lag of a queue.
    slowest = max(list(ovseg.stats.camera("").inference)[-len(indices) :])
    bound = max(12, 4 + 2 * math.ceil(slowest / period))
    assert ages and max(ages) <= bound, (bound, ages)
    if len(ages) >= 9:  # the lag does not grow (a queue's grows by frames per result)
        third = len(ages) // 3
        assert np.mean(ages[-third:]) <= np.mean(ages[:third]) + bound / 2, (bound, ages)
    assert ovseg.stats.total("dropped") > dropped_before
    assert wait_until(lambda: int(tester.diagnostics().get("frames_dropped", 0)) > 0, 5)


# -- lifecycle -----------------------------------------------------------------------------------


def test_lifecycle_transitions(tester, ovseg) -> None:
    assert tester.state() == State.PRIMARY_STATE_ACTIVE
    version = ovseg.vocabulary_version
    tester.stream_until_labels(7000)

    assert tester.transition(Transition.TRANSITION_DEACTIVATE)
    assert tester.state() == State.PRIMARY_STATE_INACTIVE
    tester.clear()
    for sec in range(7100, 7110):
        tester.publish(make_image(sec))
        time.sleep(0.05)
    time.sleep(1.0)
    assert not tester.messages("/ovseg/labels"), "outputs while inactive"
    assert ovseg.segmenter is not None  # inactive keeps the models

    segmenter = ovseg.segmenter
    assert tester.transition(Transition.TRANSITION_CLEANUP)
    assert tester.state() == State.PRIMARY_STATE_UNCONFIGURED
    assert ovseg.segmenter is None and segmenter.released
    assert wait_until(lambda: ovseg.count_publishers("/ovseg/labels") == 0, 5)

    assert tester.transition(Transition.TRANSITION_CONFIGURE)
    assert tester.transition(Transition.TRANSITION_ACTIVATE)
    assert tester.state() == State.PRIMARY_STATE_ACTIVE
    assert ovseg.segmenter is not None and ovseg.segmenter is not segmenter
    # The published version keeps increasing across a cleanup.
    assert wait_until(
        lambda: tester.vocabularies() and tester.vocabularies()[-1]["version"] > version
    )
    assert wait_until(lambda: ovseg.count_subscribers("/ovseg/labels") > 0)
    labels = tester.stream_until_labels(7200)
    assert labels.encoding == "mono8"


# -- parameters file, QoS -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def yaml_node(context):
    """A second node started from config/segment.yaml, with reliable image subscriptions."""
    overrides = {**TINY, "qos_reliability": "reliable"}
    params = ("--params-file", str(REPO / "config" / "segment.yaml"))
    with running_segment_node(
        context, overrides, *params, node_name="ovseg_yaml", namespace="/second"
    ) as node:
        yield node


def test_params_file_holds_every_parameter(yaml_node) -> None:
    assert yaml_node.state_label == "active"
    data = yaml.safe_load((REPO / "config" / "segment.yaml").read_text())
    params = data["/**"]["ros__parameters"]
    declared = set(yaml_node.list_parameters([], 0).names)
    declared -= {"use_sim_time", "start_type_description_service"}
    # Declared by rclpy when the node subscribes (QoSOverridingOptions), documented as comments.
    declared = {name for name in declared if not name.startswith("qos_overrides.")}
    assert set(params) == declared
    overridden = {"preset", "device", "templates", "qos_reliability"}
    for name, value in params.items():
        if name in overridden:
            continue
        actual = yaml_node._value(name)
        if value == []:
            assert not actual, name
        else:
            assert actual == value, name
    assert yaml_node.segmenter.config.method == "pearl"


def test_qos_overrides_the_standard_rclpy_way(context) -> None:
    prefix = "qos_overrides./qos_test/image.subscription"
    overrides = {**TINY, f"{prefix}.reliability": "reliable", f"{prefix}.depth": 2}
    remap = ("-r", "image:=/qos_test/image")
    with running_segment_node(
        context, overrides, *remap, node_name="ovseg_qos", namespace="/"
    ) as node:
        (info,) = [
            i
            for i in node.get_subscriptions_info_by_topic("/qos_test/image")
            if i.node_name == "ovseg_qos"
        ]
        assert info.qos_profile.reliability == ReliabilityPolicy.RELIABLE  # default: best effort
        assert node.cameras[0].subscription.qos_profile.depth == 2  # discovery omits depth
        assert node.get_parameter(f"{prefix}.depth").value == 2
        assert node.describe_parameter(f"{prefix}.reliability").read_only


def test_incompatible_qos_is_reported(tester, yaml_node) -> None:
    before = yaml_node.stats.total("qos_incompatible")
    publisher = tester.node.create_publisher(Image, "/second/image", BEST_EFFORT)
    try:
        assert wait_until(lambda: yaml_node.stats.total("qos_incompatible") > before, 10)
    finally:
        tester.node.destroy_publisher(publisher)
