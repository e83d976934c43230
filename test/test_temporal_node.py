"""The node with temporal fusion, over real DDS: a noisy static scene is labelled with fewer
label changes once ``temporal_alpha`` is set at runtime, invalid values and a missing OpenCV are
refused with a reason, and ``/diagnostics`` counts fused frames and resets.

The node runs in this process on its own executor (tiny models); the harness's client plays
camera and parameter client.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter
from ros_harness import TINY, private_domain_id, ros_context, running_segment_node, wait_until

from ovseg_ros.bench.scene import synthetic_image
from ovseg_ros.harness.client import NodeClient
from ovseg_ros.harness.frames import rgb8_message
from ovseg_ros.stamps import stamp_ns

pytest.importorskip("cv2")
pytestmark = [pytest.mark.dds, pytest.mark.slow, pytest.mark.timeout(180)]

DOMAIN_ID = private_domain_id()
FRAMES = 6  # per phase
PERIOD_NS = 100_000_000  # 10 Hz stamps


class Statuses:
    """The latest ``/diagnostics`` status of each name."""

    def __init__(self, client: NodeClient) -> None:
        self.lock, self.latest = threading.Lock(), {}
        client.node.create_subscription(DiagnosticArray, "/diagnostics", self._on, 50)

    def _on(self, msg: DiagnosticArray) -> None:
        with self.lock:
            for status in msg.status:
                self.latest[status.name] = {kv.key: kv.value for kv in status.values}

    def get(self, name: str) -> dict[str, str]:
        with self.lock:
            return dict(self.latest.get(name, {}))


def label_changes(client: NodeClient, first_ns: int, seed: int) -> float:
    """Publish ``FRAMES`` noisy frames of one static scene (each after the previous one's
    labels arrived): the mean share of pixels whose label changed from the previous frame."""
    scene = synthetic_image(64, 48, seed=1).astype(np.int16)
    rng = np.random.default_rng(seed)
    previous, changes = None, []
    for k in range(FRAMES):
        stamp = first_ns + k * PERIOD_NS
        noisy = (scene + rng.normal(0, 20, scene.shape)).clip(0, 255).astype(np.uint8)
        message = rgb8_message(noisy, stamp)

        def arrived(stamp=stamp):
            return [m for m in client.labels() if stamp_ns(m.header.stamp) == stamp]

        # Re-sent until labelled: qos_reliability auto renews the subscription when it sees the
        # reliable publisher, and a message published meanwhile is lost (a repeat fuses with
        # the same frame, which changes no label count below).
        for _ in range(30):
            client.image_pub.publish(message)
            if wait_until(arrived, 2):
                break
        assert arrived(), f"no labels for frame {k}"
        msg = arrived()[0]
        labels = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width)
        if previous is not None:
            changes.append(float((labels != previous).mean()))
        previous = labels
    return float(np.mean(changes))


def test_temporal_alpha_at_runtime_steadies_a_noisy_static_scene(monkeypatch):
    with ros_context(DOMAIN_ID) as context, running_segment_node(context, TINY):
        client = NodeClient(context)
        statuses = Statuses(client)
        try:
            client.stream_until_labels(1)  # discovery done, node active
            before = label_changes(client, 100 * 10**9, seed=0)

            (refused,) = client.set_parameters(Parameter("temporal_alpha", value=0.99))
            assert not refused.successful
            monkeypatch.setitem(sys.modules, "cv2", None)  # as on a machine without OpenCV
            (refused,) = client.set_parameters(Parameter("temporal_alpha", value=0.6))
            monkeypatch.undo()
            assert not refused.successful and "opencv-python-headless" in refused.reason
            (accepted,) = client.set_parameters(Parameter("temporal_alpha", value=0.6))
            assert accepted.successful, accepted.reason

            after = label_changes(client, 200 * 10**9, seed=1)
            assert after < 0.8 * before, (before, after)

            def counted() -> dict[str, str]:
                values = statuses.get("ovseg: temporal")
                return values if int(values.get("frames_fused", 0)) >= FRAMES - 1 else {}

            assert wait_until(counted, 30), statuses.latest.keys()
            values = counted()
            assert values["temporal_alpha"] == "0.6"
            assert int(values["frames_alone"]) == 1  # the first frame after switching on
            assert int(values["resets_cut"]) == 0
            assert int(values["flow_time_us"]) > 0 and int(values["fusion_time_us"]) > 0
            assert "flow_ms_per_frame" in values and "fusion_ms_per_frame" in values
        finally:
            client.close()
