"""Launch the ovseg_ros segmentation node.

    ros2 launch ovseg_ros segment.launch.py image:=/camera/color/image_raw
    ros2 launch ovseg_ros segment.launch.py classes:="['floor', 'person', 'door']" device:=cuda

Arguments left empty (method, classes, device, preset, image_transport) come from the params
file (config/segment.yaml by default). With ``image_transport:=compressed`` the node subscribes
``<image>/compressed`` only (the image_transport convention; it resolves the remapped name).
"""

from __future__ import annotations

import os

import yaml
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare("ovseg_ros"), "config", "segment.yaml"])
    arguments = [
        DeclareLaunchArgument(
            "image",
            default_value="/camera/color/image_raw",
            description="Input sensor_msgs/Image topic (with image_transport:=compressed, its "
            "/compressed sibling is subscribed instead).",
        ),
        DeclareLaunchArgument(
            "image_transport",
            default_value="",
            description="raw (subscribe image) or compressed (image/compressed only); "
            "empty: from params_file (raw).",
        ),
        DeclareLaunchArgument(
            "method",
            default_value="",
            description="pearl, maskclip, lposs or lposs_plus; empty: from params_file.",
        ),
        DeclareLaunchArgument(
            "classes",
            default_value="",
            description="Vocabulary as a YAML list, e.g. \"['person', 'chair; stool']\"; "
            "empty: from params_file.",
        ),
        DeclareLaunchArgument(
            "device",
            default_value="",
            description="Torch device: auto, cpu, cuda, cuda:1; empty: from params_file.",
        ),
        DeclareLaunchArgument(
            "preset",
            default_value="",
            description="full (real weights), tiny (tiny random models) or random (real "
            "architectures, random weights); empty: params_file.",
        ),
        DeclareLaunchArgument(
            "params_file",
            default_value=default_params,
            description="ROS 2 parameters file with all node parameters.",
        ),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node."),
        DeclareLaunchArgument("node_name", default_value="ovseg", description="Name of the node."),
        DeclareLaunchArgument(
            "use_sim_time",
            default_value="false",
            description="Use /clock (true when playing a rosbag with --clock).",
        ),
        DeclareLaunchArgument(
            "dds_profile",
            default_value="",
            description="Fast DDS profile for the node: large_images (config/"
            "fastdds_large_images.xml, camera frames over shared memory; the camera driver needs "
            "it too, see the README's 'Large images and DDS') or an XML path; empty: none.",
        ),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_segment_node)])


def _segment_node(context: LaunchContext, *args, **kwargs) -> list[Node]:
    """The node, with overrides only for the arguments that were given."""

    def value(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    overrides: dict[str, object] = {}
    for name in ("method", "device", "preset", "image_transport"):
        if value(name):
            overrides[name] = value(name)
    if value("classes"):
        overrides["classes"] = _parse_classes(value("classes"))
    sim_time = value("use_sim_time").lower()
    if sim_time not in _TRUE + _FALSE:
        raise ValueError(f"use_sim_time must be true or false, got {sim_time!r}")
    overrides["use_sim_time"] = sim_time in _TRUE

    image = value("image").rstrip("/")
    if not image:
        raise ValueError("the image argument must name a topic")
    return [
        Node(
            package="ovseg_ros",
            executable="segment_node",
            name=value("node_name"),
            namespace=value("namespace"),
            parameters=[value("params_file"), overrides],  # later entries win
            remappings=[("image", image)],
            output="screen",
            emulate_tty=True,
            additional_env=_dds_env(value("dds_profile"), context),
        )
    ]


def _dds_env(profile: str, context: LaunchContext) -> dict[str, str]:
    """The Fast DDS profile variables (2.x reads FASTRTPS_, 3.x FASTDDS_) for the node."""
    if not profile:
        return {}
    if profile == "large_images":
        share = FindPackageShare("ovseg_ros").perform(context)
        profile = f"{share}/config/fastdds_large_images.xml"
    if not os.path.isfile(profile):
        raise ValueError(f"dds_profile: no such file {profile!r} (large_images or an XML path)")
    return {"FASTRTPS_DEFAULT_PROFILES_FILE": profile, "FASTDDS_DEFAULT_PROFILES_FILE": profile}


def _parse_classes(text: str) -> list[str]:
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
