"""The node on the ROS 2 distributions it supports, driven over real DDS as a camera and a
planner drive it: frames in and labels out with ``qos_reliability: auto``, a vocabulary change
(parameter ``classes``), a lifecycle cycle (deactivate, activate), a clean stop.

The node is one child process (``python -m ovseg_ros.ros.main``, tiny models on the CPU).
``OVSEG_RCLPY_SHAPE`` says which rclpy it sees:

- ``humble`` (the default): this environment's rclpy (Jazzy) given the shape of Humble's
  rclpy 3.3 by ``test/humble_shape/sitecustomize.py``, first on the child's ``PYTHONPATH``:
  no ``rclpy.event_handler`` outside rclpy, Humble's ``rclpy.qos_event``, no
  ``BEST_AVAILABLE`` QoS policies. The node's log shows that the shape was applied and that
  :mod:`ovseg_ros.ros.compat` fell back to ``rclpy.qos_event``.
- ``native``: rclpy as installed; ``scripts/test_distro.sh kilted`` runs this module that way
  in an environment with Kilted's rclpy wheels.

In either case the node must run on the same rcl and rmw libraries as this process. The last
test checks in this process what ``best_available`` becomes where rclpy has no BEST_AVAILABLE.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rclpy
from lifecycle_msgs.msg import Transition
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_harness import TINY, private_domain_id, ros_context, wait_until
from sensor_msgs.msg import Image

from ovseg_ros.harness import process
from ovseg_ros.harness.client import NodeClient
from ovseg_ros.harness.domain import child_env
from ovseg_ros.ros import adaptive_qos

SHAPE = os.environ.get("OVSEG_RCLPY_SHAPE", "humble")
SHAPE_DIR = Path(__file__).resolve().parent / "humble_shape"
DOMAIN_ID = private_domain_id()
PARAMS = {**TINY, "qos_reliability": "auto", "text_cache_dir": "none"}
NEW_CLASSES = ["floor", "door", "wall"]

pytestmark = [pytest.mark.dds, pytest.mark.slow, pytest.mark.timeout(300)]


def ros_library_dirs(pid: int | str) -> set[str]:
    """Folders of the rcl and rmw libraries mapped into process ``pid`` (Linux)."""
    with open(f"/proc/{pid}/maps", encoding="ascii", errors="replace") as maps:
        paths = {line.split(maxsplit=5)[-1].strip() for line in maps}
    return {str(Path(p).parent) for p in paths if Path(p).name in ("librcl.so", "librmw.so")}


@pytest.fixture(scope="module")
def context():
    with ros_context(DOMAIN_ID) as ctx:
        yield ctx


@pytest.fixture(scope="module", params=[SHAPE])
def node(request, tmp_path_factory):
    """The node process, its rclpy shaped as ``SHAPE`` says (the tests' ids show it)."""
    assert SHAPE in ("humble", "native"), f"OVSEG_RCLPY_SHAPE must be humble or native: {SHAPE}"
    env = child_env(DOMAIN_ID)
    if request.param == "humble":
        env["PYTHONPATH"] = f"{SHAPE_DIR}{os.pathsep}{env['PYTHONPATH']}"
    log = tmp_path_factory.mktemp("node") / "node.log"
    child = process.NodeProcess(env, log, PARAMS)
    yield child
    child.stop()


@pytest.fixture(scope="module")
def client(context, node):
    client = NodeClient(context)  # camera (reliable, as drivers publish) and planner
    assert wait_until(lambda: client.image_pub.get_subscription_count() > 0, 120), node.log()
    yield client
    client.close()


def test_frames_in_labels_out_with_auto_reliability(client, node) -> None:
    labels = client.stream_until_labels(1)
    assert (labels.encoding, labels.width, labels.height) == ("mono8", 64, 48)
    # auto: every publisher (the camera) is reliable, so the node subscribes reliable.
    assert wait_until(lambda: client.subscription_reliability("/image", "ovseg") == "reliable", 60)
    assert client.stream_until_labels(100).header.stamp.sec >= 100
    # The node runs on the ROS 2 libraries of this process (Kilted's in the Kilted run).
    assert ros_library_dirs(node.pid) == ros_library_dirs("self") != set()
    log = node.log()
    if SHAPE == "humble":
        assert "humble shape: applied" in log, log
        assert "refused import of rclpy.event_handler from ovseg_ros.ros.compat" in log, log
    assert "/image: subscribed" in log or "/image: switched to reliable" in log, log
    assert "Traceback" not in log, log


def test_vocabulary_change(client, node) -> None:
    before = client.vocabularies()[-1]["version"]
    (result,) = client.set_parameters(Parameter("classes", value=NEW_CLASSES))
    assert result.successful, result.reason
    assert wait_until(lambda: client.vocabularies()[-1]["version"] > before, 120), node.log()
    latest = client.vocabularies()[-1]
    assert [c["name"] for c in latest["classes"]] == NEW_CLASSES
    labels = client.stream_until_labels(1_000)
    ids = set(np.unique(np.frombuffer(bytes(labels.data), np.uint8)).tolist())
    assert ids <= {0, 1, 2, latest["unlabeled_id"]}, ids


def test_lifecycle_cycle(client, node) -> None:
    assert client.state() == "active"
    assert not client.transition(Transition.TRANSITION_ACTIVATE)  # refused, not fatal
    assert client.transition(Transition.TRANSITION_DEACTIVATE)
    assert client.state() == "inactive"
    assert client.transition(Transition.TRANSITION_ACTIVATE)
    assert client.state() == "active"
    assert client.stream_until_labels(2_000).header.stamp.sec >= 2_000
    assert node.alive(), node.log()


def test_stops_cleanly(client, node) -> None:
    assert node.stop() == 0
    log = node.log()
    assert "shutting down from active" in log
    assert "Traceback" not in log and "qos_event" not in log, log  # no deprecation warning


def test_best_available_without_rclpy_support(monkeypatch) -> None:
    """The override ``best_available`` where rclpy has no BEST_AVAILABLE (Humble): chosen
    from the publishers as ``auto`` would, once; rclpy's own policy where it exists."""
    topic = "/best_available/image"
    override = adaptive_qos.override_parameter(topic)
    with ros_context(DOMAIN_ID) as context:
        node = rclpy.create_node(
            "best_available",
            context=context,
            parameter_overrides=[Parameter(override, value="best_available")],
        )
        try:
            native = getattr(ReliabilityPolicy, "BEST_AVAILABLE", None)
            if native is not None:
                assert adaptive_qos.choose(node, topic, "auto") == native
            monkeypatch.setitem(adaptive_qos._FIXED, "best_available", None)
            assert adaptive_qos.choose(node, topic, "auto") == ReliabilityPolicy.BEST_EFFORT
            node.create_publisher(Image, topic, QoSProfile(depth=1))  # reliable
            assert wait_until(lambda: adaptive_qos.offered(node, topic), 10)
            assert adaptive_qos.choose(node, topic, "auto") == ReliabilityPolicy.RELIABLE
            best_effort = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
            node.create_publisher(Image, topic, best_effort)
            assert wait_until(lambda: len(adaptive_qos.offered(node, topic)) == 2, 10)
            assert adaptive_qos.choose(node, topic, "auto") == ReliabilityPolicy.BEST_EFFORT
        finally:
            node.destroy_node()
