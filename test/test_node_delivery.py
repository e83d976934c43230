"""Every frame of a reliable camera reaches the node and is labelled or dropped by the node:
the node (its own process, default parameters, tiny preset on the CPU) against a camera
process publishing 640x480 and 1280x720 rgb8 with a driver's usual QoS (reliable, keep-last
10), over real DDS on a private domain (:mod:`ovseg_ros.harness`).

Independent of the machine's speed and load: a busy engine drops frames by design (its
latest-frame slot), so the check is the accounting, not a share of labelled frames. Labels
are matched to frames by their header stamps; the node's ``/diagnostics`` counters before and
after each size must show every frame received (none lost in transport) and each either
processed, with its labels here, or dropped.

With the old best-effort default, Fast DDS lost most of these frames (README, "Large images
and DDS"); ``qos_reliability: auto`` subscribes reliable because the camera is.
"""

from __future__ import annotations

import re
import time

import pytest

from ovseg_ros.harness.client import NodeClient, counters
from ovseg_ros.harness.domain import child_env, private_domain_id
from ovseg_ros.harness.peers import run_camera
from ovseg_ros.harness.process import NodeProcess, wait_for, wait_until

CAMERA_TOPIC = "/delivery_camera/image"
RATE_HZ, DURATION_S = 10.0, 2.0  # 20 frames per size, faster than the engine: some dropped
SIZES = ((640, 480), (1280, 720))

pytestmark = [pytest.mark.dds, pytest.mark.slow, pytest.mark.timeout(600)]


def test_every_frame_of_a_reliable_camera_is_labelled_or_dropped(tmp_path) -> None:
    domain = private_domain_id()
    env = child_env(domain)
    # A reliable publisher here first: the node (qos_reliability auto) subscribes reliable
    # before the camera sends anything, so no frame meets the switch of subscriptions.
    client = NodeClient.on_domain(domain, image_topic=CAMERA_TOPIC, labels="stamps")
    tiny = {"preset": "tiny", "device": "cpu"}  # everything else: the defaults
    node = NodeProcess(env, tmp_path / "node.log", tiny, ["-r", f"image:={CAMERA_TOPIC}"])
    try:
        wait_for(
            lambda: client.subscription_reliability(CAMERA_TOPIC, "ovseg") == "reliable",
            120,
            "the node to subscribe reliable",
            node,
        )
        for width, height in SIZES:
            before = counters(client.fresh_diagnostics())  # the node idle
            shot = run_camera(
                env, tmp_path / f"camera_{width}.log", CAMERA_TOPIC, (width, height), RATE_HZ,
                DURATION_S,
            )  # fmt: skip
            sent = shot.stamps
            assert shot.matched and len(sent) == RATE_HZ * DURATION_S
            after = counters(client.settled_diagnostics(time.time_ns(), timeout=120))
            got = {key: after[key] - before[key] for key in after}

            def labelled(sent: list[int] = sent) -> int:
                arrivals = client.arrivals(client.labels_topic)
                return sum(stamp in arrivals for stamp in sent)

            wait_until(lambda n=got["frames_processed"]: labelled() >= n, 10)
            where = f"{width}x{height}: {labelled()} labelled, node counters {got}\n{node.tail(30)}"
            assert got["frames_received"] == len(sent), f"lost in transport: {where}"
            assert got["frames_invalid"] == got["inference_errors"] == 0, where
            assert labelled() == got["frames_processed"], where
            assert labelled() + got["frames_dropped"] == len(sent), where
        # auto chose reliable because the publishers are (at once here: ours came first).
        assert re.search(r"(subscribed|switched to) reliable \(qos_reliability auto", node.log())
    finally:
        node.stop()
        client.close()
