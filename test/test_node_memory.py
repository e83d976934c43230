"""An 8K frame through ``segment_node`` (a process, real DDS, tiny models on the CPU, 20
classes) with the node's peak memory linear in pixels, not pixels x classes.

Per-class probabilities at 8K would be 20 x 7680 x 4320 float32 = 2.5 GiB, plus as much again
for the softmax that makes them; the node keeps them at the processing resolution and makes
only labels and confidence at the output size (and per-class maps only for subscribed
topics). Measured on a 2-core CPU box: ~1.7 GiB above the node's resting peak, for the
input message, its RGB copy, the int32 labels, the float32 confidence and the two output
messages. The bound below is generous for that and still below what probabilities would add.
"""

from __future__ import annotations

import numpy as np
import pytest
from node_process import Client, NodeProcess
from ros_harness import TINY, private_domain_id, ros_context, wait_until
from sensor_msgs.msg import Image

DOMAIN_ID = private_domain_id()
CLASSES = [f"class {i}" for i in range(20)]
WIDTH, HEIGHT = 7680, 4320  # 8K: the default max_image_pixels
GROWTH_BOUND_MIB = 3072

pytestmark = [pytest.mark.dds, pytest.mark.slow, pytest.mark.timeout(600)]


def _frame(sec: int) -> Image:
    msg = Image(height=HEIGHT, width=WIDTH, encoding="rgb8", step=WIDTH * 3)
    msg.header.stamp.sec = sec
    pixels = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    pixels[:, : WIDTH // 2] = (200, 40, 40)
    pixels[:, WIDTH // 2 :] = (40, 40, 200)
    msg.data = pixels.tobytes()
    return msg


def test_8k_frame_memory_is_linear_in_pixels(tmp_path) -> None:
    params = {**TINY, "classes": CLASSES, "qos_reliability": "reliable"}
    node = NodeProcess(DOMAIN_ID, tmp_path / "node.log", params)
    with ros_context(DOMAIN_ID) as context:
        client = Client(context)
        try:
            assert wait_until(lambda: client.image_pub.get_subscription_count() > 0, 120), (
                node.log()
            )
            client.stream_until_labels(1)  # models loaded, one small frame segmented
            resting = node.peak_rss_mib()
            client.image_pub.publish(_frame(100))
            assert wait_until(lambda: client.labels_at(100), 400), node.log()
            (labels,) = client.labels_at(100)
            assert (labels.width, labels.height, labels.encoding) == (WIDTH, HEIGHT, "mono8")
            growth = node.peak_rss_mib() - resting
            print(f"8K frame, 20 classes: node peak RSS {resting:.0f} -> +{growth:.0f} MiB")
            assert growth < GROWTH_BOUND_MIB, node.log()
            assert node.alive()
        finally:
            client.close()
            node.stop()
