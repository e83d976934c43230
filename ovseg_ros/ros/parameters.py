"""The node's ROS parameters: one :class:`FieldSpec` per parameter, descriptors generated.

Engine parameters mirror :class:`~ovseg_ros.segmentation.config.SegmenterConfig` fields
(``field_specs()``: doc, type, choices, range, read-only when a change needs a new model);
node parameters (vocabulary, transport, QoS, ...) are specified here the same way. The QoS of
the image subscription is overridable the standard rclpy way
(``qos_overrides./<topic>.subscription.<policy>``, declared when the node subscribes).

Here: declaring them and reading them at configure (:func:`read_settings`). A set-parameters
request at runtime is checked in :mod:`.parameter_changes`; camera and topic names in
:mod:`.topic_names`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
)
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter

from ovseg_ros.image_conversion import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE
from ovseg_ros.pipeline import string_list
from ovseg_ros.points.objects import MAX_DEPTH_GAP, MAX_MIN_POINTS
from ovseg_ros.points_stage import PointsSettings
from ovseg_ros.ros.topic_names import camera_names, check_camera_topics
from ovseg_ros.segmentation.budget import check_frame_memory
from ovseg_ros.segmentation.config import FieldSpec, SegmenterConfig, field_specs
from ovseg_ros.segmentation.vocabulary import MAX_ENTRIES, parse_entries
from ovseg_ros.temporal import (
    DEFAULT_RESET_S,
    MAX_ALPHA,
    MAX_RESET_S,
    MEMORY_CLASS_MAPS,
    MEMORY_TERM,
    TemporalSettings,
    opencv_problem,
)

DEFAULT_CLASSES = [
    "background; floor; wall; ceiling; sky",
    "person; man; woman",
    "chair",
    "table; desk",
    "door",
]
TRANSPORTS = ("raw", "compressed")
DEPTH_TRANSPORTS = ("raw", "compressedDepth")
RELIABILITIES = ("auto", "best_effort", "reliable")
MAX_CLASS_TOPICS = 32  # ~/confidence/<class> (or ~/mask/<class>) topics: a publisher and an
# image per frame each
MAX_CAMERAS = 16
MAX_POINTS_CLASSES = 256
NODE_SPECS: tuple[FieldSpec, ...] = (
    FieldSpec(
        "classes",
        list[str],
        DEFAULT_CLASSES,
        "Vocabulary: one entry per class, synonyms separated by ';' (the first names the "
        "class); non-empty, no blank or duplicate names. Changeable at runtime.",
        max_items=MAX_ENTRIES,
    ),
    FieldSpec(
        "confidence_classes",
        list[str],
        [],
        "Classes (names or synonyms in classes) that get a ~/confidence/<class> topic (32FC1 "
        "probability), named after the class's first synonym; '' entries ignored.",
        max_items=MAX_CLASS_TOPICS,
    ),
    FieldSpec(
        "mask_classes",
        list[str],
        [],
        "Classes (names or synonyms in classes) that get a ~/mask/<class> topic (mono8: 255 "
        "where the class is the label, else 0), named like the confidence topics; '' entries "
        "ignored. Changeable at runtime.",
        max_items=MAX_CLASS_TOPICS,
    ),
    FieldSpec(
        "publish_overlay_alpha",
        float,
        0.5,
        "Opacity of the class colors in ~/overlay.",
        minimum=0.0,
        maximum=1.0,
    ),
    FieldSpec(
        "image_transport",
        str,
        "raw",
        "Input: raw (subscribe image) or compressed (subscribe <resolved image topic>"
        "/compressed). One subscription at a time.",
        choices=TRANSPORTS,
        rebuild=True,
    ),
    FieldSpec(
        "max_image_pixels",
        int,
        MAX_IMAGE_PIXELS,
        "Largest input frame, in pixels (width x height; default 8K, 7680x4320): larger frames "
        "are refused before decoding (raw ones by their declared size, compressed ones by "
        "their header) with a warning of kind 'limit'.",
        minimum=1,
        maximum=MAX_IMAGE_SIDE * MAX_IMAGE_SIDE,
        rebuild=True,
    ),
    FieldSpec(
        "qos_reliability",
        str,
        "auto",
        "Reliability of the image subscription: auto (reliable while every publisher of the "
        "topic offers reliable, else best effort; re-chosen as publishers come and go), "
        "best_effort (accepts both kinds of publisher) or reliable; "
        "qos_overrides./<topic>.subscription.reliability wins over it.",
        choices=RELIABILITIES,
        rebuild=True,
    ),
    FieldSpec(
        "cameras",
        list[str],
        [],
        "Camera names; empty: one camera (inputs image, outputs ~/labels ...). Each name c "
        "(a ROS name token: letters, digits, '_', not starting with a digit; unique) gets "
        "inputs c/image and outputs ~/c/labels ...; all cameras share one model and are "
        "segmented together.",
        rebuild=True,
        max_items=MAX_CAMERAS,
    ),
    FieldSpec(
        "autostart",
        bool,
        True,
        "Configure and activate at start-up (false: wait for a lifecycle manager).",
        rebuild=True,
    ),
    FieldSpec(
        "diagnostics_period",
        float,
        1.0,
        "Seconds between /diagnostics messages.",
        minimum=0.01,
        maximum=3600.0,
        rebuild=True,
    ),
    # -- labelled point clouds (ovseg_ros.points_stage) --
    FieldSpec(
        "depth",
        bool,
        False,
        "Publish ~/points (PointCloud2: x y z rgb label confidence) and ~/camera_info: "
        "subscribe depth (16UC1 mm or 32FC1 m, registered to the color image) and "
        "camera_info (of the depth image), per camera.",
        rebuild=True,
    ),
    FieldSpec(
        "depth_transport",
        str,
        "raw",
        "Depth input (with depth): raw (subscribe depth, sensor_msgs/Image) or compressedDepth "
        "(subscribe <resolved depth topic>/compressedDepth, sensor_msgs/CompressedImage of "
        "image_transport_plugins' compressed_depth_image_transport: png or rvl). One "
        "subscription at a time.",
        choices=DEPTH_TRANSPORTS,
        rebuild=True,
    ),
    FieldSpec(
        "depth_sync_tolerance",
        float,
        0.02,
        "Seconds: a color frame is paired with the depth frame of nearest stamp within this; "
        "without one its cloud is skipped (counted in /diagnostics).",
        minimum=0.0,
        maximum=10.0,
        rebuild=True,
    ),
    FieldSpec(
        "points_stride",
        int,
        1,
        "Use every n-th depth pixel in u and v (1: every pixel). Changeable at runtime.",
        minimum=1,
        maximum=64,
    ),
    FieldSpec(
        "points_organized",
        bool,
        False,
        "false: only valid points (height 1); true: the strided depth grid, invalid points "
        "NaN. Changeable at runtime.",
    ),
    FieldSpec(
        "depth_min",
        float,
        0.1,
        "Metres: nearer depth gives no point. Changeable at runtime.",
        minimum=0.0,
        maximum=1000.0,
    ),
    FieldSpec(
        "depth_max",
        float,
        10.0,
        "Metres: farther depth gives no point (must exceed depth_min). Changeable at runtime.",
        minimum=0.0,
        maximum=1000.0,
    ),
    FieldSpec(
        "points_classes",
        list[str],
        [],
        "Only points labelled one of these classes (names or synonyms in classes); empty: "
        "all. Changeable at runtime.",
        max_items=MAX_POINTS_CLASSES,
    ),
    # -- 3D objects (ovseg_ros.points.objects), from the same depth pairing as the cloud --
    FieldSpec(
        "objects",
        bool,
        False,
        "Publish the 3D objects of each frame on ~/objects/markers (visualization_msgs/"
        "MarkerArray) and, where vision_msgs imports, ~/objects (vision_msgs/Detection3DArray):"
        " connected pixels of one class whose neighbours' depths differ by at most "
        "objects_depth_gap. Needs depth: true. Computed only while someone subscribes, after the "
        "labels are published. Changeable at runtime.",
    ),
    FieldSpec(
        "objects_classes",
        list[str],
        [],
        "Only objects of these classes (names or synonyms in classes); empty: every class. "
        "Changeable at runtime.",
        max_items=MAX_POINTS_CLASSES,
    ),
    FieldSpec(
        "objects_min_points",
        int,
        50,
        "Objects of fewer pixels (with valid depth) are dropped. Changeable at runtime.",
        minimum=1,
        maximum=MAX_MIN_POINTS,
    ),
    FieldSpec(
        "objects_depth_gap",
        float,
        0.15,
        "Metres: neighbouring pixels of one class whose depths differ by more are not "
        "connected (two chairs side by side at different depths are two objects). Changeable "
        "at runtime.",
        minimum=0.001,
        maximum=MAX_DEPTH_GAP,
    ),
    # -- temporal fusion (ovseg_ros.temporal) --
    FieldSpec(
        "temporal_alpha",
        float,
        0.0,
        "Temporal fusion, per camera: weight of the previous frame's class probabilities, "
        "warped onto the current frame by optical flow, in the fused ones (labels hold still "
        "on static or slowly moving cameras); 0: off. Needs OpenCV. Changeable at runtime.",
        minimum=0.0,
        maximum=MAX_ALPHA,
    ),
    FieldSpec(
        "temporal_reset_s",
        float,
        DEFAULT_RESET_S,
        "Temporal fusion restarts from the current frame after a stamp gap longer than this "
        "(seconds; also on a stamp going backwards, a vocabulary or size change and a scene "
        "cut). Changeable at runtime.",
        minimum=0.001,
        maximum=MAX_RESET_S,
    ),
    FieldSpec(
        "max_frame_memory_mb",
        float,
        4096.0,
        "Budget of the engine's working memory for one frame, in MiB: a configuration or "
        "runtime change (engine knobs, classes) whose estimate for the largest frame "
        "max_image_pixels allows exceeds it is refused with the reason "
        "(ovseg_ros.segmentation.budget).",
        minimum=256.0,
        maximum=1048576.0,
        rebuild=True,
    ),
)
# The depth side's runtime-changeable parameters (ovseg_ros.points_stage.PointsSettings).
POINTS_PARAMETERS = (
    "points_stride",
    "points_organized",
    "depth_min",
    "depth_max",
    "points_classes",
    "objects",
    "objects_classes",
    "objects_min_points",
    "objects_depth_gap",
)

_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
    list[str]: ParameterType.PARAMETER_STRING_ARRAY,
}


def all_specs() -> tuple[FieldSpec, ...]:
    """Node parameters, then every engine parameter."""
    return NODE_SPECS + field_specs()


def descriptor(spec: FieldSpec) -> tuple[Any, ParameterDescriptor]:
    """``(default value, descriptor)`` of the parameter for ``spec``.

    Optional booleans ("auto" / true / false) are dynamically typed. Ranges become
    descriptor ranges where ROS can express them (closed, both ends, a non-optional field);
    every constraint is in ``additional_constraints``.
    """
    desc = ParameterDescriptor(
        name=spec.name,
        description=spec.doc + (" Needs a restart." if spec.rebuild else ""),
        additional_constraints=spec.constraints,
        read_only=spec.rebuild,
    )
    default = spec.unset if spec.default is None else spec.default
    if spec.optional and spec.type is bool:
        desc.dynamic_typing = True
        return default, desc
    desc.type = _TYPES[spec.type]
    if spec.type == list[str] and not default:
        # rclpy cannot infer the type of an empty list: declare by type (value unset).
        return Parameter.Type.STRING_ARRAY, desc
    closed = not (spec.min_open or spec.max_open or spec.optional)
    if closed and spec.minimum is not None and spec.maximum is not None:
        if spec.type is float:
            desc.floating_point_range = [
                FloatingPointRange(from_value=spec.minimum, to_value=spec.maximum, step=0.0)
            ]
        elif spec.type is int:
            low, high = int(spec.minimum), int(spec.maximum)
            desc.integer_range = [IntegerRange(from_value=low, to_value=high, step=1)]
    if spec.type is float:
        default = float(default)
    return default, desc


def declare(node: Node) -> None:
    """Declare every parameter (values from the command line / params file win)."""
    for spec in all_specs():
        default, desc = descriptor(spec)
        node.declare_parameter(spec.name, default, desc)


def value(node: Node, name: str) -> Any:
    """A parameter's value; None when unset (a YAML ``[]`` or ``~`` leaves it unset)."""
    try:
        return node.get_parameter(name).value
    except ParameterUninitializedException:
        return None


def check_node_values(node: Node) -> None:
    """``ValueError`` naming the node parameter whose value breaks its choices or range."""
    for spec in NODE_SPECS:
        current = value(node, spec.name)
        if spec.type == list[str]:
            if current is not None:
                spec.check(list(current))
        elif spec.choices or spec.minimum is not None or spec.maximum is not None:
            spec.check(current)
    camera_names(value(node, "cameras"))
    points_settings(node)


def check_budget(
    node: Node, config: SegmenterConfig, classes: list[str], temporal_alpha: float | None = None
) -> None:
    """``ValueError`` (:func:`~ovseg_ros.segmentation.budget.check_frame_memory`) when the
    largest frame this node accepts would exceed ``max_frame_memory_mb`` with ``config``, the
    vocabulary ``classes`` and temporal fusion (``temporal_alpha``, None: the parameter's)."""
    queries = sum(len(synonyms) for synonyms in parse_entries(classes))
    if temporal_alpha is None:
        temporal_alpha = float(value(node, "temporal_alpha"))
    check_frame_memory(
        config,
        int(value(node, "max_image_pixels")),
        queries,
        float(value(node, "max_frame_memory_mb")),
        {MEMORY_TERM: MEMORY_CLASS_MAPS} if temporal_alpha > 0 else None,
    )


def engine_values(node: Node) -> dict[str, Any]:
    return {name: value(node, name) for name in SegmenterConfig.field_names()}


@dataclass(frozen=True)
class NodeSettings:
    """What configure reads: the engine config, the vocabulary, the cameras, frame settings."""

    config: SegmenterConfig
    classes: list[str]
    cameras: list[str]  # camera keys; [""]: the single-camera mode
    confidence_classes: list[str]
    mask_classes: list[str]
    overlay_alpha: float
    max_pixels: int
    depth: bool  # subscribe depth + camera_info, publish the labelled cloud
    depth_sync_tolerance: float
    depth_transport: str  # raw | compressedDepth
    points: PointsSettings
    temporal: TemporalSettings = TemporalSettings()  # temporal_alpha, temporal_reset_s


def read_settings(node: Node) -> NodeSettings:
    """The parameters configure reads, checked (``ValueError``/``TypeError`` names a bad one)."""
    config = SegmenterConfig.from_dict(engine_values(node))
    check_node_values(node)
    classes = list(value(node, "classes") or [])
    parse_entries(classes)
    cameras = camera_names(value(node, "cameras")) or [""]
    check_camera_topics(node, cameras, objects=bool(value(node, "objects")))
    check_budget(node, config, classes)
    return NodeSettings(
        config=config,
        classes=classes,
        cameras=cameras,
        confidence_classes=string_list(value(node, "confidence_classes"), ""),
        mask_classes=string_list(value(node, "mask_classes"), ""),
        overlay_alpha=float(value(node, "publish_overlay_alpha")),
        max_pixels=int(value(node, "max_image_pixels")),
        depth=bool(value(node, "depth")),
        depth_sync_tolerance=float(value(node, "depth_sync_tolerance")),
        depth_transport=str(value(node, "depth_transport")),
        points=points_settings(node),
        temporal=temporal_settings(node),
    )


def points_settings(node: Node, changed: dict[str, Any] | None = None) -> PointsSettings:
    """The depth side's parameters (with ``changed`` values applied); ``ValueError`` if
    invalid, or when ``objects`` is on without ``depth``."""
    values = {name: value(node, name) for name in POINTS_PARAMETERS}
    settings = PointsSettings.from_values({**values, **(changed or {})})
    if settings.objects.enabled and not value(node, "depth"):
        raise ValueError("objects: true needs depth: true (objects are found in the depth image)")
    return settings


TEMPORAL_PARAMETERS = {"temporal_alpha": "alpha", "temporal_reset_s": "reset_s"}


def temporal_settings(node: Node, changed: dict[str, Any] | None = None) -> TemporalSettings:
    """The fusion parameters (with ``changed`` values applied); ``ValueError`` if invalid, or
    when fusion is on and OpenCV's optical flow is missing (one line saying what to install)."""
    values = {name: value(node, name) for name in TEMPORAL_PARAMETERS}
    values.update(changed or {})
    try:
        settings = TemporalSettings(
            **{field: float(values[name]) for name, field in TEMPORAL_PARAMETERS.items()}
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    problem = opencv_problem() if settings.enabled else ""
    if problem:
        raise ValueError(f"temporal_alpha {settings.alpha:g}: {problem}")
    return settings
