"""What a segmented frame produces, shared by the ROS node and the offline replay tool (no ROS).

The node and ``ovseg-replay`` must write identical messages for the same result, so the
choices live here: the typed outputs of a frame (:class:`ImageOutput`, :class:`CloudOutput`,
:class:`CameraInfoOutput`), the label image encoding, the vocabulary JSON, per-class topic
names and the overlay.

Output names (``suffix``) are relative to a camera's output namespace (``~`` or ``~/<camera>``
in the node, ``--namespace`` in replay).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ovseg_ros.points import PointCloudData, PointsError, scale_camera_info
from ovseg_ros.points.objects import Objects
from ovseg_ros.segmentation.vocabulary import UINT8_LABEL_ENTRIES, Vocabulary, unlabeled_id
from ovseg_ros.stamps import split_ns

# Topic suffixes below a camera's output namespace.
LABELS = "labels"
CONFIDENCE = "confidence"  # also the prefix of the per-class topics "confidence/<class>"
MASK = "mask"  # the prefix of the per-class masks "mask/<class>"
OVERLAY = "overlay"
POINTS = "points"
CAMERA_INFO = "camera_info"
LABEL_INFO = "label_info"
OBJECTS = "objects"  # vision_msgs/Detection3DArray
OBJECT_MARKERS = "objects/markers"  # visualization_msgs/MarkerArray


@dataclass(frozen=True)
class ImageOutput:
    """One ``sensor_msgs/Image`` output: ``array`` ``[H, W]`` or ``[H, W, 3]`` in the
    sensor_msgs ``encoding``, published on ``suffix`` with the input frame's header."""

    suffix: str
    array: np.ndarray
    encoding: str


@dataclass(frozen=True)
class CloudOutput:
    """The labelled ``sensor_msgs/PointCloud2`` of a frame: the color frame's stamp, the depth
    image's ``frame_id``."""

    cloud: PointCloudData
    frame_id: str


@dataclass(frozen=True)
class CameraInfoOutput:
    """A ``sensor_msgs/CameraInfo`` (every field but the header, as plain values), published
    with the labels' header. ``roi``: ``(x_offset, y_offset, height, width, do_rectify)``."""

    height: int
    width: int
    distortion_model: str
    d: tuple[float, ...]
    k: tuple[float, ...]
    r: tuple[float, ...]
    p: tuple[float, ...]
    binning_x: int
    binning_y: int
    roi: tuple[int, int, int, int, bool]

    @classmethod
    def from_message(cls, msg: Any) -> CameraInfoOutput:
        """The fields of a CameraInfo message (rclpy or rosbags)."""
        roi = msg.roi
        return cls(
            height=int(msg.height),
            width=int(msg.width),
            distortion_model=str(msg.distortion_model),
            d=tuple(float(v) for v in msg.d),
            k=tuple(float(v) for v in msg.k),
            r=tuple(float(v) for v in msg.r),
            p=tuple(float(v) for v in msg.p),
            binning_x=int(msg.binning_x),
            binning_y=int(msg.binning_y),
            roi=(
                int(roi.x_offset),
                int(roi.y_offset),
                int(roi.height),
                int(roi.width),
                bool(roi.do_rectify),
            ),
        )

    def scaled_to(self, width: int, height: int) -> CameraInfoOutput | None:
        """The same view described at ``width x height`` (the labels' size); None when it
        cannot be scaled (a size of 0, K/P of the wrong length)."""
        if (self.width, self.height) == (width, height):
            return self
        try:
            scaled = scale_camera_info(self.k, self.p, self.width, self.height, width, height)
        except PointsError:
            return None
        return CameraInfoOutput(
            height=scaled["height"],
            width=scaled["width"],
            distortion_model=self.distortion_model,
            d=self.d,
            k=tuple(scaled["k"]),
            r=self.r,
            p=tuple(scaled["p"]),
            binning_x=self.binning_x,
            binning_y=self.binning_y,
            roi=(0, 0, 0, 0, False),  # the ROI was in the other resolution
        )


@dataclass(frozen=True)
class LabelInfoOutput:
    """A ``vision_msgs/LabelInfo`` (without its header): ``class_map`` as ``(class_id, name)``
    per vocabulary entry (its first synonym), ``threshold`` = ``prob_threshold`` (below it a
    pixel is unlabeled: 255 / 65535). Published with the header stamp of the vocabulary
    version's ``valid_from`` for the camera, so tools can tell which labels it names."""

    class_map: tuple[tuple[int, str], ...]
    threshold: float

    @classmethod
    def of(cls, vocab: Vocabulary, threshold: float) -> LabelInfoOutput:
        return cls(tuple(enumerate(vocab.names)), float(threshold))


# vision_msgs/msg/LabelInfo and VisionClass (vision_msgs 4.x), for registering the types where
# vision_msgs is not installed (rosbags writes them into bags from these definitions).
LABEL_INFO_TYPE = "vision_msgs/msg/LabelInfo"
VISION_CLASS_TYPE = "vision_msgs/msg/VisionClass"
LABEL_INFO_DEFINITIONS = {
    LABEL_INFO_TYPE: (
        "std_msgs/Header header\nvision_msgs/VisionClass[] class_map\nfloat32 threshold\n"
    ),
    VISION_CLASS_TYPE: "uint16 class_id\nstring class_name\n",
}


# visualization_msgs/Marker constants used here.
MARKER_CUBE, MARKER_TEXT_VIEW_FACING = 1, 9
MARKER_ADD, MARKER_DELETEALL = 0, 3
MARKER_ALPHA = 0.5  # the boxes' opacity
MARKER_TEXT_HEIGHT = 0.1  # metres, the class name and score above each box
MIN_MARKER_SIZE = 0.01  # metres: RViz rejects a box with a zero-size axis (a flat object)
TEXT_SUFFIX = "/text"  # the text markers' namespace: "<class>/text" (a CUBE's is "<class>")


@dataclass(frozen=True)
class MarkerSpec:
    """One ``visualization_msgs/Marker`` as plain values (header: the objects'; ``lifetime``
    0 and ``frame_locked`` false); ``color`` RGBA in [0, 1]; ``text`` for TEXT_VIEW_FACING
    (and, for a CUBE, the object's JSON record: RViz ignores it, a planner may read it)."""

    ns: str
    id: int
    type: int
    action: int
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: tuple[float, float, float] = (0.0, 0.0, 0.0)
    color: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    text: str = ""


@dataclass(frozen=True)
class DetectionSpec:
    """One ``vision_msgs/Detection3D`` as plain values: ``id`` ``"<class>/<index>"``, one
    hypothesis (``class_id`` = class name, ``score``; its pose's position = the ``centroid``,
    identity orientation, zero covariance), ``bbox`` ``center`` (identity orientation) and
    ``size``."""

    id: str
    class_id: str
    score: float
    centroid: tuple[float, float, float]
    center: tuple[float, float, float]
    size: tuple[float, float, float]


@dataclass(frozen=True)
class ObjectsOutput:
    """A frame's 3D objects (:class:`~ovseg_ros.points.objects.Objects`): published with the
    color frame's stamp and ``frame_id`` (the depth image's; the color frame's when there was
    no depth to pair). ``names`` / ``colors``: each object's class name as in ``~/vocabulary``
    and its RGB color."""

    objects: Objects
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    frame_id: str

    @classmethod
    def of(cls, objects: Objects, vocab: Vocabulary, frame_id: str) -> ObjectsOutput:
        entries = [vocab.entries[int(c)] for c in objects.class_ids]
        return cls(
            objects, tuple(e.name for e in entries), tuple(e.color for e in entries), frame_id
        )

    @classmethod
    def empty(cls, frame_id: str) -> ObjectsOutput:
        """No objects (the marker array only clears the previous ones)."""
        return cls(Objects.empty(), (), (), frame_id)

    @cached_property
    def records(self) -> list[dict[str, Any]]:
        """Per object ``{"id", "class_id", "name", "score", "pixels", "box_2d", "centroid",
        "box_center", "box_size"}`` (plain Python values): what the messages are made of (made
        once: the markers and the detections of a frame share them)."""
        o = self.objects
        rows = zip(
            o.class_ids.tolist(),
            o.scores.tolist(),
            o.pixels.tolist(),
            o.boxes_2d.tolist(),
            o.centroids.tolist(),
            o.box_centers.tolist(),
            o.box_sizes.tolist(),
            strict=True,
        )
        return [
            {
                "id": f"{name}/{index}",
                "class_id": class_id,
                "name": name,
                "score": score,
                "pixels": pixels,
                "box_2d": box,
                "centroid": centroid,
                "box_center": center,
                "box_size": size,
            }
            for index, (name, (class_id, score, pixels, box, centroid, center, size)) in enumerate(
                zip(self.names, rows, strict=True)
            )
        ]

    def markers(self) -> list[MarkerSpec]:
        """``DELETEALL`` (clears the previous frame's), then per object a ``CUBE`` (box centre
        and size, at least :data:`MIN_MARKER_SIZE`; class color, alpha 0.5; ``ns`` the class
        name, ``id`` the object's index) and a ``TEXT_VIEW_FACING`` "name 0.83" just above the
        box (optical frame: -y is up; ``ns`` "<class>/text", the same ``id``)."""
        specs = [MarkerSpec(ns="", id=0, type=MARKER_CUBE, action=MARKER_DELETEALL)]
        for index, (record, color) in enumerate(zip(self.records, self.colors, strict=True)):
            x, y, z = record["box_center"]
            size = tuple(max(v, MIN_MARKER_SIZE) for v in record["box_size"])
            rgba = (color[0] / 255.0, color[1] / 255.0, color[2] / 255.0, MARKER_ALPHA)
            name, score = record["name"], record["score"]
            specs.append(
                MarkerSpec(name, index, MARKER_CUBE, MARKER_ADD, (x, y, z), size, rgba,
                           json.dumps(record, separators=(",", ":")))
            )  # fmt: skip
            above = (x, y - size[1] / 2 - MARKER_TEXT_HEIGHT, z)
            specs.append(
                MarkerSpec(name + TEXT_SUFFIX, index, MARKER_TEXT_VIEW_FACING, MARKER_ADD, above,
                           (0.0, 0.0, MARKER_TEXT_HEIGHT), (1.0, 1.0, 1.0, 1.0),
                           f"{name} {score:.2f}")
            )  # fmt: skip
        return specs

    def detections(self) -> list[DetectionSpec]:
        """One :class:`DetectionSpec` per object (the 2D box and pixel count have no field in
        Detection3D: they are in the CUBE markers' JSON ``text``)."""
        return [
            DetectionSpec(
                r["id"],
                r["name"],
                r["score"],
                tuple(r["centroid"]),
                tuple(r["box_center"]),
                tuple(r["box_size"]),
            )  # fmt: skip
            for r in self.records
        ]


# vision_msgs/msg/Detection3DArray and the types it holds (vision_msgs 4.x), for registering
# where vision_msgs is not installed, as LabelInfo.
DETECTION3D_ARRAY_TYPE = "vision_msgs/msg/Detection3DArray"
DETECTION3D_DEFINITIONS = {
    DETECTION3D_ARRAY_TYPE: "std_msgs/Header header\nvision_msgs/Detection3D[] detections\n",
    "vision_msgs/msg/Detection3D": (
        "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
        "vision_msgs/BoundingBox3D bbox\nstring id\n"
    ),
    "vision_msgs/msg/ObjectHypothesisWithPose": (
        "vision_msgs/ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n"
    ),
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/BoundingBox3D": "geometry_msgs/Pose center\ngeometry_msgs/Vector3 size\n",
}


MONO16_MAX_ENTRIES = 65535  # ids 0..65534, and 65535 for unlabeled

_NOT_TOKEN = re.compile(r"[^a-z0-9_]+")
_NAME_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_name_token(name: str) -> bool:
    """Whether ``name`` can be one part of a ROS name: letters, digits and single
    underscores, not starting with a digit (a camera name, a namespace part)."""
    return bool(_NAME_TOKEN.fullmatch(name)) and "__" not in name


def labels_image(labels: np.ndarray, num_entries: int) -> tuple[str, np.ndarray]:
    """``(encoding, array)`` for a label map: mono8 up to 254 entries, else mono16.

    The encoding depends on the vocabulary size, not on the labels present, so a subscriber
    sees one encoding per vocabulary version; its largest value, 255 or 65535
    (:func:`~ovseg_ros.segmentation.vocabulary.unlabeled_id`), is never a class id.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be [H, W], got shape {labels.shape}")
    if num_entries < 1:
        raise ValueError(f"num_entries must be >= 1, got {num_entries}")
    if num_entries <= UINT8_LABEL_ENTRIES:
        return "mono8", labels.astype(np.uint8, copy=False)
    if num_entries <= MONO16_MAX_ENTRIES:
        return "mono16", labels.astype(np.uint16, copy=False)
    raise ValueError(
        f"{num_entries} classes do not fit a mono16 label image (max {MONO16_MAX_ENTRIES})"
    )


def vocabulary_json(vocab: Vocabulary, valid_from: Mapping[str, int] | None = None) -> str:
    """``{"version", "classes": [{"id", "name", "synonyms", "color"}], "unlabeled_id",
    "valid_from"}``, one line.

    ``unlabeled_id``: the label of pixels no class reaches ``prob_threshold`` on (255 in mono8
    label images, 65535 in mono16).

    ``valid_from`` maps a camera name (``""`` with one camera) to the header stamp, in
    nanoseconds, of that camera's first frame labelled with this version; it is written as
    ``{"sec", "nanosec"}``. Rule for subscribers: a label image from camera ``c`` with stamp
    ``t`` belongs to the highest version whose ``valid_from[c] <= t``.
    """
    data = vocab.to_json_dict()
    data["unlabeled_id"] = unlabeled_id(len(vocab))
    data["valid_from"] = {
        camera: dict(zip(("sec", "nanosec"), split_ns(stamp), strict=True))
        for camera, stamp in (valid_from or {}).items()
    }
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def confidence_topic_suffix(name: str) -> str:
    """A valid ROS topic token for a class name: ``"Traffic light"`` -> ``"traffic_light"``.

    Accents dropped (``café`` -> ``cafe``); lowercase; runs of characters outside
    ``[a-z0-9_]`` become one ``_``; no leading or trailing ``_`` (a leading one would hide
    the topic); a leading digit gets ``class_`` in front; never empty. Give it one synonym,
    not a whole ``"a; b"`` entry.
    """
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    token = _NOT_TOKEN.sub("_", ascii_name.strip().lower())
    token = re.sub(r"_+", "_", token).strip("_")
    if not token:
        return "class"
    if token[0].isdigit():
        token = f"class_{token}"
    return token


def render_overlay(
    rgb: np.ndarray, labels: np.ndarray, vocab: Vocabulary, alpha: float = 0.5
) -> np.ndarray:
    """Blend each pixel with its class color: ``(1 - alpha) * rgb + alpha * color``, uint8;
    unlabeled pixels (:func:`~ovseg_ros.segmentation.vocabulary.unlabeled_id`) keep the
    camera's color.

    One palette lookup for the whole image (no Python loop over classes or pixels).
    """
    rgb = np.asarray(rgb)
    labels = np.asarray(labels)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"labels shape {labels.shape} differs from image {rgb.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    n = len(vocab.entries)
    palette = np.zeros((n + 1, 3), np.uint16)  # row n: unlabeled, drawn with weight 0
    palette[:n] = [entry.color for entry in vocab.entries]
    # Fixed point with 8 fractional bits: exact at alpha 0 and 1, within 1 level elsewhere.
    weight = np.uint16(round(alpha * 256))
    if labels.size and (labels.min() < 0 or labels.max() >= n):
        outside = labels[(labels < 0) | (labels >= n)]
        if not np.all(outside == unlabeled_id(n)):
            raise ValueError(
                f"labels range [{labels.min()}, {labels.max()}] outside the {n} classes"
            )
        index = np.minimum(labels, n)
        weight = np.where(index == n, 0, weight).astype(np.uint16)[..., None]
        labels = index
    colors = palette[labels]
    blended = rgb.astype(np.uint16) * (256 - weight) + colors * weight + 128
    return (blended >> 8).astype(np.uint8)
