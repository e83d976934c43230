"""The topic names a node's cameras would have, checked before anything is created: camera
names that are ROS name tokens, input and output topics that resolve under the node's
namespace and fit the rmw's length limit, and the per-class topics of a vocabulary."""

from __future__ import annotations

from typing import Any

from rclpy.node import Node

from ovseg_ros.outputs import is_name_token
from ovseg_ros.pipeline import per_class_topics
from ovseg_ros.segmentation.vocabulary import Vocabulary

MAX_TOPIC_LENGTH = 247  # rmw: RMW_TOPIC_MAX_NAME_LENGTH = 255 - 8 (the DDS prefix and suffix)
# The node's outputs below a camera's namespace: the longest decides whether a name fits.
CAMERA_TOPICS = ("labels", "confidence", "overlay", "points", "camera_info")
OBJECT_TOPICS = ("objects/markers",)  # with objects: true, checked then
CAMERA_INPUTS = ("image", "depth", "camera_info")


def camera_names(names: Any) -> list[str]:
    """The ``cameras`` parameter as a list; ``ValueError`` for a blank, repeated or invalid
    name (not a ROS name token, e.g. ``front/left``, ``2nd``, ``a__b``)."""
    names = list(names or [])
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"cameras: empty camera name in {names!r}")
        if not is_name_token(name):
            raise ValueError(
                f"cameras: {name!r} is not a ROS name token (letters, digits and single "
                "underscores, not starting with a digit)"
            )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"cameras: repeated camera names {repeated}")
    return names


def check_camera_topics(node: Node, cameras: list[str], objects: bool) -> None:
    """``ValueError`` when a camera's input or output topics would not be valid ROS topic
    names here (namespace and node name included), e.g. too long for the rmw (247
    characters), before anything is created. ``objects``: whether the objects topics exist."""
    outputs = CAMERA_TOPICS + OBJECT_TOPICS * objects
    for key in cameras:
        prefix = f"{key}/" if key else ""
        names = [f"~/{prefix}{suffix}" for suffix in outputs]
        names += [f"{prefix}{suffix}" for suffix in CAMERA_INPUTS]
        for name in names:
            problem = topic_problem(node, name)
            if problem:
                where = f"camera {key!r}: " if key else ""
                raise ValueError(f"cameras: {where}{problem}")


def topic_problem(node: Node, name: str) -> str:
    """Why ``name`` (relative, ``~`` allowed) cannot be a topic of ``node``; "" if it can."""
    namespace = node.get_namespace().rstrip("/")
    full = f"{namespace}/{node.get_name()}{name[1:]}" if name.startswith("~") else name
    if not full.startswith("/"):
        full = f"{namespace}/{full}"
    if len(full) > MAX_TOPIC_LENGTH:  # rcl's own message would not say by how much
        shown = full if len(full) <= 80 else f"{full[:40]}...{full[-30:]}"
        return (
            f"topic {shown} has {len(full)} characters, over the {MAX_TOPIC_LENGTH} the rmw accepts"
        )
    try:
        node.resolve_topic_name(name)
    except Exception as exc:  # rclpy raises RCLError / InvalidTopicNameException
        reason = str(exc).split(",")[0].split(":", 1)[-1].strip()
        return f"topic {name!r} is not a valid topic name here ({reason})"
    return ""


def class_topic_problems(
    node: Node,
    cameras: list[str],
    vocabulary: Vocabulary,
    confidence: list[str],
    masks: list[str] = (),
) -> list[str]:
    """Why the ``~/[<camera>/]confidence/<class>`` topics of ``confidence`` and the
    ``~/[<camera>/]mask/<class>`` topics of ``masks`` cannot all be created (one line per bad
    topic; [] when every camera can have every one)."""
    topics, _ = per_class_topics(vocabulary, confidence, masks)
    problems = []
    for key in cameras:
        prefix = f"{key}/" if key else ""
        problems += [p for s in topics if (p := topic_problem(node, f"~/{prefix}{s}"))]
    return problems
