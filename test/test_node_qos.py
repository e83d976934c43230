"""The node's input side over real DDS: the subscription's reliability follows the publishers
(``qos_reliability: auto``, the default), fixed settings and the standard override stay put,
and frames the camera withholds are counted in ``/diagnostics``.

The nodes run in-process (tiny random models on the CPU); the cameras are nodes of a second
rclpy context, so a second DDS participant, on a private domain. Nothing is mocked.
"""

from __future__ import annotations

import random
import threading
import time
import traceback
from collections.abc import Iterator

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_harness import TINY, private_domain_id, ros_context, segment_node, wait_until
from sensor_msgs.msg import CameraInfo, Image

from ovseg_ros.ros.adaptive_qos import for_publishers
from ovseg_ros.ros.diagnostics import INPUT_LOSS_HINT
from ovseg_ros.ros.executor import NodeExecutor
from ovseg_ros.ros.input_loss import InputLossEstimator
from ovseg_ros.ros.node import SegmentNode

DOMAIN_ID = private_domain_id()
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
BEST_EFFORT = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
R, BE = ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT

pytestmark = [pytest.mark.dds, pytest.mark.slow, pytest.mark.timeout(240)]


def make_image(stamp_ns: int, width: int = 64, height: int = 48) -> Image:
    rng = np.random.default_rng(stamp_ns % 1000)
    msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
    msg.header.frame_id = "camera"
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.data = rng.integers(0, 256, (height, width, 3), dtype=np.uint8).tobytes()
    return msg


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


class Peer:
    """Cameras and a listener in their own context (another DDS participant)."""

    def __init__(self) -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=DOMAIN_ID)
        self.node = rclpy.create_node("qos_peer", context=self.context)
        self.lock = threading.Lock()
        self.labels: dict[str, set[int]] = {}
        self.statuses: list[DiagnosticStatus] = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, RELIABLE)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()

    def listen(self, topic: str) -> None:
        self.labels[topic] = set()

        def on_labels(msg, topic=topic) -> None:
            with self.lock:
                self.labels[topic].add(stamp_of(msg))

        self.node.create_subscription(Image, topic, on_labels, RELIABLE)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            self.statuses.extend(msg.status)

    def labelled(self, topic: str, stamp: int) -> bool:
        with self.lock:
            return stamp in self.labels[topic]

    def status_values(self, name: str) -> dict[str, str]:
        with self.lock:
            for status in reversed(self.statuses):
                if status.name == name:
                    return {kv.key: kv.value for kv in status.values}
        return {}

    def subscriber_reliability(self, topic: str, node_name: str) -> ReliabilityPolicy | None:
        """What the ROS graph says of ``node_name``'s subscription (seen from this peer)."""
        for info in self.node.get_subscriptions_info_by_topic(topic):
            if info.node_name == node_name:
                return info.qos_profile.reliability
        return None

    def close(self) -> None:
        self.executor.shutdown()
        # A spin thread still inside rclpy at interpreter exit aborts the process
        # ("terminate called without an active exception", ros2/rclpy#1484): join it.
        self.spinner.join(10)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture(scope="module")
def context() -> Iterator[Context]:
    with ros_context(DOMAIN_ID) as ctx:
        yield ctx


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    peer = Peer()
    yield peer
    peer.close()


def running_node(context, name: str, topic: str, **overrides) -> Iterator[SegmentNode]:
    node = segment_node(context, {**TINY, **overrides}, "-r", f"image:={topic}", node_name=name)
    assert node.state_label == "active"
    executor = NodeExecutor(context=context)
    executor.add_node(node)
    errors: list[BaseException] = []

    def spin() -> None:
        try:
            executor.spin()
        except BaseException as exc:  # an executor thread that dies is a failure, not a hang
            errors.append(exc)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    node.spin_errors = errors  # for the tests that stress the executor
    yield node
    executor.shutdown()
    spinner.join(10)
    node.close()
    node.destroy_node()
    assert not errors, f"the executor died: {errors[0]!r}"


def policy(node: SegmentNode) -> ReliabilityPolicy | None:
    subscription = node.cameras[0].subscription
    return None if subscription is None else subscription.qos_profile.reliability


def labelled_through(peer: Peer, publisher, labels_topic: str, stamp: int) -> bool:
    """Publish frames (new stamps) on ``publisher`` until one is labelled."""
    for i in range(40):
        publisher.publish(make_image(stamp + i))
        if wait_until(lambda s=stamp + i: peer.labelled(labels_topic, s), 0.5):
            return True
    return False


# -- the rule --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [([], BE), ([R], R), ([R, R], R), ([BE], BE), ([R, BE], BE), ([BE, BE], BE)],
)
def test_reliable_only_when_every_publisher_is(offered, chosen) -> None:
    assert for_publishers(offered) == chosen


# -- auto over DDS ---------------------------------------------------------------------------


def test_auto_follows_the_publishers(context, peer) -> None:
    topic, labels = "/auto_cam/image", "/ovseg_auto/labels"
    peer.listen(labels)
    nodes = running_node(context, "ovseg_auto", topic)
    node = next(nodes)
    camera = rclpy.create_node("auto_camera", context=peer.context)
    try:
        assert str(node.get_parameter("qos_reliability").value) == "auto"  # the default
        assert policy(node) == BE  # no publisher yet: best effort matches whichever comes

        reliable = camera.create_publisher(Image, topic, RELIABLE)
        assert wait_until(lambda: policy(node) == R, 10)
        assert wait_until(lambda: peer.subscriber_reliability(topic, "ovseg_auto") == R, 10)
        assert labelled_through(peer, reliable, labels, 1_000_000_000)

        best_effort = camera.create_publisher(Image, topic, BEST_EFFORT)
        assert wait_until(lambda: policy(node) == BE, 10)
        # Both connect: frames of either publisher are labelled.
        assert labelled_through(peer, best_effort, labels, 2_000_000_000)
        assert labelled_through(peer, reliable, labels, 3_000_000_000)

        camera.destroy_publisher(best_effort)
        assert wait_until(lambda: policy(node) == R, 10)
        assert labelled_through(peer, reliable, labels, 4_000_000_000)

        camera.destroy_publisher(reliable)
        assert wait_until(lambda: policy(node) == BE, 10)
        alone = camera.create_publisher(Image, topic, BEST_EFFORT)
        time.sleep(2 * 0.5)  # a few polls: a best-effort publisher changes nothing
        assert policy(node) == BE
        assert labelled_through(peer, alone, labels, 5_000_000_000)

        assert node.qos_follower.switches == 4  # BE->R, R->BE, BE->R, R->BE
        # The transient mismatch while a best-effort publisher joins is no incompatibility.
        assert node.stats.total("qos_incompatible") == 0
    finally:
        camera.destroy_node()
        nodes.close()


class Stream:
    """A reliable camera publishing frames with new stamps from its own thread."""

    def __init__(self, publisher, period_s: float = 0.01) -> None:
        self.publisher, self.period = publisher, period_s
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.publisher.publish(make_image(9_000_000_000 + self.sent))
            self.sent += 1
            time.sleep(self.period)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def test_resubscribing_while_frames_flow_keeps_the_executor_alive(context, peer) -> None:
    """The race behind a dead executor thread: a subscription (with its incompatible-QoS event
    handler) destroyed from another thread while the executor builds its wait set. rclpy then
    raised InvalidHandle in the spin thread and the node went deaf (with the node's executor,
    the follower renews on the spin thread itself; a renewal from any thread must be safe all
    the same). Hundreds of renewals while frames flow must leave the executor spinning and the
    frames labelled."""
    topic, labels = "/churn_cam/image", "/ovseg_churn/labels"
    peer.listen(labels)
    nodes = running_node(context, "ovseg_churn", topic)
    node = next(nodes)
    camera = rclpy.create_node("churn_camera", context=peer.context)
    stream = None
    try:
        publisher = camera.create_publisher(Image, topic, RELIABLE)
        assert wait_until(lambda: policy(node) == R, 10)
        stream = Stream(publisher, period_s=0.001)  # many wake-ups: many wait sets built
        node.qos_follower.stop()  # this thread plays the follower (one renewer at a time)
        pause = random.Random(0)
        for _ in range(400):
            node.cameras[0].resubscribe()  # what the follower does on a switch, from a thread
            time.sleep(pause.uniform(0.0, 0.003))  # land anywhere in the executor's cycle
            assert not node.spin_errors, "the executor died: " + "".join(
                traceback.format_exception(node.spin_errors[0])
            )
        stream.close()
        assert labelled_through(peer, publisher, labels, 8_000_000_000)
        assert not node.spin_errors
    finally:
        if stream is not None:
            stream.close()
        camera.destroy_node()
        nodes.close()


def test_adaptive_switches_while_frames_flow(context, peer) -> None:
    """The follower's own path, several times: a best-effort publisher joins and leaves while a
    reliable camera streams; every switch lands, the executor survives, frames are labelled."""
    topic, labels = "/switch_cam/image", "/ovseg_switch/labels"
    peer.listen(labels)
    nodes = running_node(context, "ovseg_switch", topic)
    node = next(nodes)
    camera = rclpy.create_node("switch_camera", context=peer.context)
    stream = None
    try:
        publisher = camera.create_publisher(Image, topic, RELIABLE)
        assert wait_until(lambda: policy(node) == R, 10)
        stream = Stream(publisher)
        for _ in range(4):
            joiner = camera.create_publisher(Image, topic, BEST_EFFORT)
            assert wait_until(lambda: policy(node) == BE, 15)
            camera.destroy_publisher(joiner)
            assert wait_until(lambda: policy(node) == R, 15)
        stream.close()
        assert node.qos_follower.switches == 1 + 8
        assert labelled_through(peer, publisher, labels, 8_500_000_000)
        assert not node.spin_errors
    finally:
        if stream is not None:
            stream.close()
        camera.destroy_node()
        nodes.close()


def test_depth_inputs_follow_their_publishers(context, peer) -> None:
    """depth:=true: the depth and camera_info subscriptions adapt like the image one."""
    nodes = running_node(context, "ovseg_rgbd", "/adapt_rgbd/image", depth=True)
    node = next(nodes)
    camera = rclpy.create_node("rgbd_camera", context=peer.context)
    try:
        rgbd = node.cameras[0]
        assert rgbd.depth is not None

        def policies() -> list[ReliabilityPolicy]:
            return [s.qos_profile.reliability for s, _ in node.cameras[0].adaptive()]

        assert policies() == [BE, BE, BE]  # no publisher yet
        depth_topic = node.resolve_topic_name(rgbd.depth_topic)
        info_topic = node.resolve_topic_name(rgbd.info_topic)
        camera.create_publisher(Image, depth_topic, RELIABLE)
        assert wait_until(lambda: policies() == [BE, R, BE], 15)
        info = camera.create_publisher(CameraInfo, info_topic, RELIABLE)
        assert wait_until(lambda: policies() == [BE, R, R], 15)
        camera.destroy_publisher(info)
        camera.create_publisher(CameraInfo, info_topic, BEST_EFFORT)
        assert wait_until(lambda: policies() == [BE, R, BE], 15)
        assert node.qos_follower.switches == 3
    finally:
        camera.destroy_node()
        nodes.close()


def test_fixed_setting_and_override_stay_put(context, peer) -> None:
    """qos_reliability best_effort, and auto with the standard override set to best_effort:
    a reliable publisher alone does not make them reliable."""
    override = "qos_overrides./override_cam/image.subscription.reliability"
    fixed = running_node(context, "ovseg_fixed", "/fixed_cam/image", qos_reliability="best_effort")
    overridden = running_node(
        context, "ovseg_override", "/override_cam/image", **{override: "best_effort"}
    )
    nodes = [next(fixed), next(overridden)]
    camera = rclpy.create_node("fixed_camera", context=peer.context)
    try:
        assert nodes[1].describe_parameter(override).read_only
        for topic in ("/fixed_cam/image", "/override_cam/image"):
            camera.create_publisher(Image, topic, RELIABLE)
        assert wait_until(
            lambda: all(n.count_publishers(n.cameras[0].subscription.topic_name) for n in nodes), 10
        )
        time.sleep(3 * 0.5)  # several polls
        assert [policy(n) for n in nodes] == [BE, BE]
        assert [n.qos_follower.switches for n in nodes] == [0, 0]
    finally:
        camera.destroy_node()
        fixed.close()
        overridden.close()


def test_invalid_override_refuses_activation(context) -> None:
    override = "qos_overrides./bad_cam/image.subscription.reliability"
    overrides = {**TINY, override: "sometimes"}
    node = segment_node(
        context, overrides, "-r", "image:=/bad_cam/image", node_name="ovseg_bad_qos"
    )
    try:
        assert node.autostart_failed and node.state_label == "inactive"
        assert node.cameras[0].subscription is None
    finally:
        node.close()
        node.destroy_node()


# -- input loss ------------------------------------------------------------------------------


def test_withheld_frames_are_counted_in_diagnostics(context, peer) -> None:
    """A camera at a fixed 100 ms period that never sends every third frame: 1/3 lost."""
    topic, name = "/loss_cam/image", "ovseg_loss"
    nodes = running_node(context, name, topic, diagnostics_period=0.25)
    node = next(nodes)
    camera = rclpy.create_node("loss_camera", context=peer.context)
    try:
        publisher = camera.create_publisher(Image, topic, RELIABLE)
        assert wait_until(lambda: policy(node) == R, 10)  # auto: reliable camera, reliable
        assert wait_until(lambda: publisher.get_subscription_count() == 1, 10)
        time.sleep(0.5)  # the writer's side of the match
        period, start = 100_000_000, 7_000_000_000
        sent = [start + i * period for i in range(60) if i % 3 != 2]  # ends on i = 58
        for stamp in sent:
            publisher.publish(make_image(stamp))
            time.sleep(0.05)  # the node reads every frame (its input depth is 5)
        assert wait_until(lambda: node.stats.total("received") == len(sent), 10)
        withheld = 19  # i = 2, 5, ..., 56: between the first and the last frame sent
        assert node.stats.total("input_lost") == withheld
        status = f"{name}: segmentation"
        assert wait_until(
            lambda: peer.status_values(status).get("frames_lost_in_transport") == str(withheld),
            5,
        )
        with peer.lock:
            warned = [
                s
                for s in peer.statuses
                if s.name == status
                and s.level == DiagnosticStatus.WARN
                and INPUT_LOSS_HINT in s.message
            ]
        assert warned, "no WARN naming the README section while a third of the frames were lost"
        assert "lost before reaching the node" in warned[0].message
    finally:
        camera.destroy_node()
        nodes.close()


def test_losses_during_the_warm_up_are_reported_once_the_period_is_known() -> None:
    """What the node counts is the sum of ``update``'s returns: it must equal ``lost``."""
    estimator = InputLossEstimator(min_deltas=8)
    stamps = [i * 100_000_000 for i in range(60) if i % 3 != 2]
    reported = [estimator.update(s) for s in stamps]
    assert sum(reported) == estimator.stats().lost == 19
    assert reported[:8] == [0] * 8 and reported[8] == 4  # the warm-up's three, and its own
