"""Hostile lifecycle requests and bad frames against ``segment_node`` running as a process.

A lifecycle manager that retries (``activate`` while active) used to stop the node with exit
status 0; now any transition not valid in the current state, or asked while another one is
in progress, is answered ``success: false`` and frames keep flowing. Bad-frame warnings are
throttled per kind of problem, so two kinds interleaved both reach the log.
"""

from __future__ import annotations

import re
import time

import pytest
from lifecycle_msgs.msg import Transition
from node_process import Client, NodeProcess, make_image
from ros_harness import TINY, private_domain_id, ros_context, wait_until
from sensor_msgs.msg import Image

DOMAIN_ID = private_domain_id()

pytestmark = [pytest.mark.dds, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def context():
    with ros_context(DOMAIN_ID) as ctx:
        yield ctx


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    process = NodeProcess(DOMAIN_ID, tmp_path_factory.mktemp("node") / "node.log", TINY)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(context, node):
    client = Client(context)
    assert wait_until(lambda: client.image_pub.get_subscription_count() > 0, 90), node.log()
    yield client
    client.close()


def test_invalid_transitions_are_refused_and_the_node_keeps_running(client, node) -> None:
    client.stream_until_labels(100)
    assert client.state() == "active"
    # Not available from active: activate (the retrying manager), configure, cleanup, the
    # inactive state's shutdown id; by label too; and an id that is no transition at all.
    assert not client.transition(Transition.TRANSITION_ACTIVATE)
    assert not client.transition(Transition.TRANSITION_ACTIVATE)
    assert not client.transition(Transition.TRANSITION_CONFIGURE)
    assert not client.transition(Transition.TRANSITION_CLEANUP)
    assert not client.transition(Transition.TRANSITION_INACTIVE_SHUTDOWN)
    assert not client.transition(label="activate")
    assert not client.transition(label="no_such_transition")
    assert not client.transition(99)
    assert node.alive(), node.log()
    assert client.state() == "active"
    # Frames keep flowing and labels keep coming.
    labels = client.stream_until_labels(200)
    assert labels.header.stamp.sec >= 200
    assert node.alive()
    log = node.log()
    assert "transition '3' refused: not valid in state 'active'" in log, log
    assert "valid: deactivate, shutdown" in log
    assert "shutting down" not in log and "Traceback" not in log, log

    # Valid transitions still work, and invalid ones from inactive are refused alike.
    assert client.transition(Transition.TRANSITION_DEACTIVATE)
    assert not client.transition(Transition.TRANSITION_DEACTIVATE)
    assert client.state() == "inactive"
    assert client.transition(label="activate")
    assert client.state() == "active"
    client.stream_until_labels(300)
    assert node.alive()


def test_transition_during_another_is_refused(client, node) -> None:
    assert client.transition(Transition.TRANSITION_DEACTIVATE)
    assert client.transition(Transition.TRANSITION_CLEANUP)
    assert client.state() == "unconfigured"
    # configure loads the models (seconds); an activate sent right after it arrives meanwhile.
    configuring = client.transition_async(Transition.TRANSITION_CONFIGURE)
    activating = client.transition_async(Transition.TRANSITION_ACTIVATE)
    assert wait_until(lambda: configuring.done() and activating.done(), 60)
    assert configuring.result().success
    assert not activating.result().success
    assert "refused: another transition is in progress" in node.log()
    assert client.state() == "inactive"
    assert client.transition(Transition.TRANSITION_ACTIVATE)
    client.stream_until_labels(400)
    assert node.alive(), node.log()


def _bad(sec: int, kind: str) -> Image:
    msg = make_image(sec)
    if kind == "encoding":
        msg.encoding = "no_such_encoding"
    else:  # a step shorter than a row
        msg.step = 10
    return msg


def test_warnings_are_throttled_per_kind(client, node) -> None:
    """Bad frames of two kinds, interleaved faster than the throttle period: both kinds are
    logged (one shared throttle let only the first kind through), and each only once."""
    start = len(node.log())
    for i in range(40):
        client.image_pub.publish(_bad(500 + i, "encoding" if i % 2 else "step"))
        time.sleep(0.02)
    client.stream_until_labels(600)  # the bad frames before it were handled
    assert wait_until(lambda: "[step]" in node.log()[start:] and "[encoding]" in node.log(), 10)
    log = node.log()[start:]
    warnings = [line for line in log.splitlines() if "skipping invalid frame" in line]
    kinds = [re.search(r"skipping invalid frame \[(\w+)\]", line)[1] for line in warnings]
    assert sorted(kinds) == ["encoding", "step"], warnings  # once each within the period
    assert "no_such_encoding" in log
    assert node.alive()


def test_the_node_still_stops_cleanly(client, node) -> None:
    assert node.stop() == 0
    log = node.log()
    assert "shutting down from active" in log
    assert "Traceback" not in log, log
