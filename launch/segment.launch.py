"""Launch the ovseg_ros segmentation node.

    ros2 launch ovseg_ros segment.launch.py image:=/camera/color/image_raw
    ros2 launch ovseg_ros segment.launch.py classes:="['floor', 'person', 'door']" device:=cuda
    ros2 launch ovseg_ros segment.launch.py depth:=true   # + ~/points, ~/camera_info (RealSense)
    ros2 launch ovseg_ros segment.launch.py objects:=true # + ~/objects/markers (depth implied)
    ros2 launch ovseg_ros segment.launch.py temporal_alpha:=0.6  # labels that hold still
    ros2 launch ovseg_ros segment.launch.py cameras:="['front', 'left']" \
        camera_topics:="{front: /front/camera/color/image_raw, left: /left/camera/color/image_raw}"
    ros2 launch ovseg_ros segment.launch.py rviz:=true   # + rviz2 with config/ovseg.rviz

Arguments left empty (method, classes, device, preset, image_transport, depth_transport,
depth, objects, temporal_alpha) come from the params file (config/segment.yaml by default;
ovseg_ros.ros.launch_arguments checks the given ones). With ``image_transport:=compressed`` the
node subscribes ``<image>/compressed`` only (the image_transport convention; it resolves the
remapped name); with ``depth_transport:=compressedDepth``, ``<depth_topic>/compressedDepth``.
With ``cameras``, one node segments several cameras with one model: camera ``c`` reads
``c/image`` (remapped by ``camera_topics``) and publishes ``~/c/labels`` etc. With
``rviz:=true``, rviz2 shows the overlay, the labelled points and the object markers
(config/ovseg.rviz) where rviz2 is installed; without it, one line says so and the node runs.
"""

from __future__ import annotations

import os
import shutil

from launch import Action, LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from ovseg_ros.ros.launch_arguments import FALSE, TRUE, node_overrides, parse_camera_topics


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
            "depth",
            default_value="",
            description="true: also publish ~/points (labelled PointCloud2) and ~/camera_info "
            "from the depth_topic and camera_info inputs; empty: from params_file (false).",
        ),
        DeclareLaunchArgument(
            "objects",
            default_value="",
            description="true: also publish the 3D objects (~/objects/markers, and ~/objects "
            "where vision_msgs imports); implies depth:=true unless depth is given; empty: "
            "from params_file (false).",
        ),
        DeclareLaunchArgument(
            "temporal_alpha",
            default_value="",
            description="Temporal fusion: weight of the past frames' labels in [0, 0.95] "
            "(docs/temporal.md), e.g. 0.6 for a static or slowly moving camera; 0: off; empty: "
            "from params_file (0).",
        ),
        DeclareLaunchArgument(
            "depth_topic",
            default_value="/camera/aligned_depth_to_color/image_raw",
            description="Depth image registered to the color image (16UC1 mm or 32FC1 m), "
            "remaps depth. The default is realsense-ros with align_depth.enable:=true.",
        ),
        DeclareLaunchArgument(
            "depth_transport",
            default_value="",
            description="raw (subscribe depth_topic) or compressedDepth (depth_topic/"
            "compressedDepth only, as compressed_depth_image_transport publishes it); empty: "
            "from params_file (raw).",
        ),
        DeclareLaunchArgument(
            "camera_info",
            default_value="/camera/color/camera_info",
            description="sensor_msgs/CameraInfo of the depth image, remaps camera_info.",
        ),
        DeclareLaunchArgument(
            "cameras",
            default_value="",
            description="Several cameras in one node, as a YAML list, e.g. \"['front', 'left']\": "
            "camera c reads c/image and publishes ~/c/labels ...; empty: from params_file "
            "(one camera: the image argument).",
        ),
        DeclareLaunchArgument(
            "camera_topics",
            default_value="",
            description="Image topic of each camera (remaps c/image), a YAML mapping, e.g. "
            '"{front: /front/camera/color/image_raw}"; cameras left out read c/image.',
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
        DeclareLaunchArgument(
            "rviz",
            default_value="false",
            description="true: also start rviz2 with config/ovseg.rviz (overlay, labelled points, "
            "object markers of this node) if rviz2 is installed; otherwise say so and go on.",
        ),
    ]
    return LaunchDescription(
        [*arguments, OpaqueFunction(function=_segment_node), OpaqueFunction(function=_rviz)]
    )


def _segment_node(context: LaunchContext, *args, **kwargs) -> list[Node]:
    """The node, with overrides only for the arguments that were given."""

    def value(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    overrides = node_overrides(value)

    image = value("image").rstrip("/")
    if not image:
        raise ValueError("the image argument must name a topic")
    remappings = [("image", image)]
    for name, argument in (("depth", "depth_topic"), ("camera_info", "camera_info")):
        if value(argument).rstrip("/"):
            remappings.append((name, value(argument).rstrip("/")))
    cameras = overrides.get("cameras", [])
    for camera, topic in parse_camera_topics(value("camera_topics"), cameras).items():
        remappings.append((f"{camera}/image", topic))
    return [
        Node(
            package="ovseg_ros",
            executable="segment_node",
            name=value("node_name"),
            namespace=value("namespace"),
            parameters=[value("params_file"), overrides],  # later entries win
            remappings=remappings,
            output="screen",
            emulate_tty=True,
            additional_env=_dds_env(value("dds_profile"), context),
        )
    ]


# The topics config/ovseg.rviz shows, as the default node (/ovseg) publishes them.
RVIZ_TOPICS = ("overlay", "points", "objects/markers")


def _rviz(context: LaunchContext, *args, **kwargs) -> list[Action]:
    """rviz2 with the installed config/ovseg.rviz when ``rviz`` is true and rviz2 is found;
    its topics remapped to this node's namespace and name."""

    def value(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    wanted = value("rviz").lower()
    if wanted not in TRUE + FALSE:
        raise ValueError(f"rviz must be true or false, got {wanted!r}")
    if wanted in FALSE:
        return []
    config = os.path.join(FindPackageShare("ovseg_ros").perform(context), "config", "ovseg.rviz")
    node = "/".join(p for p in (value("namespace").strip("/"), value("node_name")) if p)
    remappings = [(f"/ovseg/{t}", f"/{node}/{t}") for t in RVIZ_TOPICS if node != "ovseg"]
    sim_time = value("use_sim_time").lower() in TRUE
    if _ament_package_found("rviz2"):
        rviz = Node(
            package="rviz2",
            executable="rviz2",
            arguments=["-d", config],
            parameters=[{"use_sim_time": sim_time}],
            remappings=remappings,
            output="screen",
        )
        return [rviz]
    executable = shutil.which("rviz2")
    if executable:  # on PATH without an ament index entry (a build run by hand)
        ros_args = [a for old, new in remappings for a in ("-r", f"{old}:={new}")]
        ros_args += ["-p", f"use_sim_time:={str(sim_time).lower()}"]
        return [ExecuteProcess(cmd=[executable, "-d", config, "--ros-args", *ros_args])]
    return [
        LogInfo(
            msg="rviz:=true, but rviz2 is not installed (sudo apt install "
            "ros-$ROS_DISTRO-rviz2); going on without it"
        )
    ]


def _ament_package_found(package: str) -> bool:
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    try:
        get_package_prefix(package)
    except PackageNotFoundError:
        return False
    return True


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
