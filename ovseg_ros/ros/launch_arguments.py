"""What the launch arguments of ``launch/segment.launch.py`` set on the node: each argument's
text checked and turned into a parameter value, an empty argument leaving the params file's
value. Plain Python (no ROS imports) so that it is tested where the ``launch`` packages are not
installed (pip-only ROS)."""

from __future__ import annotations

from collections.abc import Callable

import yaml

from ovseg_ros.temporal.settings import MAX_ALPHA

TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")


def node_overrides(value: Callable[[str], str]) -> dict[str, object]:
    """The node parameters the launch arguments set (``value``: an argument's text, stripped);
    an argument left empty sets nothing, so the params file's value holds."""
    overrides: dict[str, object] = {}
    for name in ("method", "device", "preset", "image_transport", "depth_transport"):
        if value(name):
            overrides[name] = value(name)
    if value("classes"):
        overrides["classes"] = parse_classes(value("classes"))
    cameras = parse_cameras(value("cameras"))
    if cameras:
        overrides["cameras"] = cameras
    for name in ("depth", "objects"):
        flag = value(name).lower()
        if flag and flag not in TRUE + FALSE:
            raise ValueError(f"{name} must be true or false, got {flag!r}")
        if flag:
            overrides[name] = flag in TRUE
    if overrides.get("objects") and "depth" not in overrides:
        overrides["depth"] = True  # objects are found in the depth image
    sim_time = value("use_sim_time").lower()
    if sim_time not in TRUE + FALSE:
        raise ValueError(f"use_sim_time must be true or false, got {sim_time!r}")
    overrides["use_sim_time"] = sim_time in TRUE
    alpha = value("temporal_alpha")
    if alpha:
        try:
            overrides["temporal_alpha"] = float(alpha)
        except ValueError:
            raise ValueError(f"temporal_alpha must be a number, got {alpha!r}") from None
        if not 0.0 <= overrides["temporal_alpha"] <= MAX_ALPHA:
            raise ValueError(f"temporal_alpha must be in [0, {MAX_ALPHA}], got {alpha}")
    return overrides


def parse_classes(text: str) -> list[str]:
    """``"['person', 'chair']"`` (YAML / Python list syntax) -> a list of strings."""
    try:
        classes = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"classes is not a YAML list: {text!r} ({exc})") from exc
    if isinstance(classes, str):
        classes = [classes]  # a single class given without brackets
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, (str, int, float)) and str(c).strip() for c in classes)
    ):
        raise ValueError(f"classes must be a non-empty list of names, got {text!r}")
    return [str(c) for c in classes]


def parse_cameras(text: str) -> list[str]:
    """``"['front', 'left']"`` -> camera names ("" -> []); the node validates the names."""
    if not text:
        return []
    try:
        cameras = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"cameras is not a YAML list: {text!r} ({exc})") from exc
    if isinstance(cameras, str):
        cameras = [cameras]
    if not isinstance(cameras, list) or not all(isinstance(c, str) for c in cameras):
        raise ValueError(f"cameras must be a list of names, got {text!r}")
    return cameras


def parse_camera_topics(text: str, cameras: list[str]) -> dict[str, str]:
    """``"{front: /front/camera/color/image_raw}"`` -> camera -> image topic (checked against
    the ``cameras`` argument when it is given)."""
    if not text:
        return {}
    try:
        topics = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"camera_topics is not a YAML mapping: {text!r} ({exc})") from exc
    if not isinstance(topics, dict) or not all(
        isinstance(t, str) and t.strip() for t in topics.values()
    ):
        raise ValueError(f"camera_topics must map camera names to topics, got {text!r}")
    unknown = sorted(str(c) for c in topics if c not in cameras)
    if unknown and cameras:  # cameras from the params file are not known here
        raise ValueError(f"camera_topics: {unknown} not in cameras {cameras}")
    return {str(c): t.strip() for c, t in topics.items()}
