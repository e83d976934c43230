"""QoS profiles of the node's topics, and the one place that picks the input reliability."""

from __future__ import annotations

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from ovseg_ros.ros import adaptive_qos

OUTPUT_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE
)
# ~/vocabulary: a late subscriber gets the last 16 messages, enough to map recent label
# images to their version with "valid_from".
VOCABULARY_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=16,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
# ~/label_info (vision_msgs' convention): latched, the current version's only.
LABEL_INFO_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
INPUT_DEPTH = 5


def input_reliability(node: Node, topic: str, setting: str) -> ReliabilityPolicy:
    """Reliability of the image subscription on ``topic`` for the ``qos_reliability`` value.

    ``auto`` follows the publishers; ``qos_overrides./<topic>.subscription.reliability`` wins
    (:mod:`.adaptive_qos`, which also re-chooses while the node is active).
    """
    return adaptive_qos.choose(node, node.resolve_topic_name(topic), setting)


def input_qos(node: Node, topic: str, setting: str) -> QoSProfile:
    """The image subscription's default profile (sensor data: keep last, volatile)."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=INPUT_DEPTH,
        reliability=input_reliability(node, topic, setting),
        durability=DurabilityPolicy.VOLATILE,
    )
