"""The frame pipeline shared by the node and ``ovseg-replay`` (no ROS needed).

message fields -> RGB (:mod:`ovseg_ros.image_conversion`) -> ``SegmentationResult`` ->
a list of named :class:`Output` s. The node and the replay tool only add the input header,
serialise and publish / write, so both produce identical messages for the same frame.

Output names are relative to a camera's output namespace (``~`` in the node, ``--namespace``
in replay): ``labels`` (mono8, mono16 above 256 entries), ``confidence`` (32FC1, the winning
class's probability), ``confidence/<class>`` (32FC1, one per requested class) and ``overlay``
(rgb8, only when requested). An :class:`Output` has a ``kind``; every output here is an
``"image"``, and other kinds (a point cloud) carry their own array layout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ovseg_ros.image_conversion import MAX_IMAGE_PIXELS, ImageConversionError, message_to_rgb
from ovseg_ros.outputs import confidence_topic_suffix, labels_image, render_overlay

LABELS = "labels"
CONFIDENCE = "confidence"
OVERLAY = "overlay"
IMAGE = "image"
POINTS = "points"  # Output kind and topic suffix of the labelled cloud
CAMERA_INFO = "camera_info"  # Output kind and topic suffix of the republished camera model


@dataclass(frozen=True)
class Output:
    """One message's payload.

    ``suffix``: topic name below the camera's output namespace (``"confidence/person"``).
    ``kind`` ``"image"``: ``array`` is [H, W] or [H, W, 3] in the sensor_msgs ``encoding``.
    ``kind`` ``"points"``: ``payload`` is the :class:`~ovseg_ros.points.PointCloudData`
    (``array`` its bytes); ``kind`` ``"camera_info"``: ``payload`` is the CameraInfo fields
    (:mod:`ovseg_ros.points_stage`). ``frame_id``: replaces the input header's (a cloud is in
    the depth image's frame); None keeps it.
    """

    suffix: str
    array: np.ndarray
    encoding: str
    kind: str = IMAGE
    payload: Any = None
    frame_id: str | None = None


@dataclass(frozen=True)
class OutputPlan:
    """What a frame produces besides ``labels`` and ``confidence`` (always produced).

    ``class_topics``: ``"confidence/<class>"`` -> vocabulary entry index (from
    :func:`class_confidence_topics`). ``overlay_alpha``: class color opacity; None = no overlay.
    """

    class_topics: Mapping[str, int] = field(default_factory=dict)
    overlay_alpha: float | None = None


@dataclass
class FrameResult:
    """A segmented frame: its RGB [H, W, 3], the engine's result, the outputs, the timing."""

    rgb: np.ndarray
    result: Any
    outputs: list[Output]
    inference_s: float


def string_list(value: Any, name: str) -> list[str]:
    """A list of strings from a parameter / params-file value; blank entries dropped.

    ``None`` is an empty list; a bare string or a non-list raises ``ValueError`` (a one-class
    list written as ``classes: person`` is a mistake, not a vocabulary).
    """
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of strings, got {value!r}")
    return [str(v).strip() for v in value if str(v).strip()]


def class_confidence_topics(
    vocabulary: Any, names: Iterable[str]
) -> tuple[dict[str, int], list[str]]:
    """``({"confidence/<class>": entry index}, names not in the vocabulary)``.

    A name may be any synonym; the topic is named after the entry's first synonym
    (:func:`~ovseg_ros.outputs.confidence_topic_suffix`). When two entries map to one token
    (``"Traffic light"``, ``"traffic-light"``), the later one gets ``_<index>`` appended.
    """
    topics: dict[str, int] = {}
    missing: list[str] = []
    for name in names:
        try:
            index = vocabulary.index(name)
        except KeyError:
            missing.append(name)
            continue
        suffix = f"{CONFIDENCE}/{confidence_topic_suffix(vocabulary.entries[index].name)}"
        if suffix in topics and topics[suffix] != index:
            suffix = f"{suffix}_{index}"
        topics[suffix] = index
    return topics, missing


def frame_outputs(
    rgb: np.ndarray,
    result: Any,
    plan: OutputPlan,
    wanted: Callable[[str], bool] | None = None,
) -> list[Output]:
    """The outputs of one segmented frame. ``wanted(suffix)`` can skip optional outputs
    (per-class confidences, overlay) nobody listens to; labels and confidence are always made.
    """
    vocabulary = result.vocabulary
    # label_ids: uint8 as they left the device (mono8 without a copy) up to 256 entries
    encoding, labels = labels_image(result.label_ids, len(vocabulary))
    outputs = [
        Output(LABELS, labels, encoding),
        Output(CONFIDENCE, np.ascontiguousarray(result.confidence, dtype=np.float32), "32FC1"),
    ]
    for suffix, index in plan.class_topics.items():
        if index < len(vocabulary) and (wanted is None or wanted(suffix)):
            probability = np.ascontiguousarray(result.probability_of(index), dtype=np.float32)
            outputs.append(Output(suffix, probability, "32FC1"))
    if plan.overlay_alpha is not None and (wanted is None or wanted(OVERLAY)):
        overlay = render_overlay(rgb, result.label_ids, vocabulary, plan.overlay_alpha)
        outputs.append(Output(OVERLAY, overlay, "rgb8"))
    return outputs


def process_frame(
    segmenter: Any,
    msg: Any,
    compressed: bool,
    plan: OutputPlan,
    wanted: Callable[[str], bool] | None = None,
    *,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
) -> FrameResult:
    """Decode ``msg`` (Image or CompressedImage, rclpy or rosbags), segment it, make outputs.

    Raises :class:`~ovseg_ros.image_conversion.ImageConversionError` for an undecodable
    frame, or one of more than ``max_pixels`` pixels (kind ``"limit"``, found before
    decoding), before the segmenter runs.
    """
    rgb = message_to_rgb(msg, compressed, max_pixels=max_pixels)
    started = time.perf_counter()
    result = segmenter.segment(rgb)
    inference = time.perf_counter() - started
    return FrameResult(rgb, result, frame_outputs(rgb, result, plan, wanted), inference)


@dataclass(frozen=True)
class FrameInput:
    """One camera's frame for :func:`process_frames`: as the arguments of :func:`process_frame`."""

    msg: Any
    compressed: bool
    plan: OutputPlan
    wanted: Callable[[str], bool] | None = None
    max_pixels: int | None = MAX_IMAGE_PIXELS


def process_frames(
    segmenter: Any, frames: Sequence[FrameInput]
) -> list[FrameResult | ImageConversionError]:
    """:func:`process_frame` for several cameras' frames, segmented in one ``segment_batch``.

    Each result equals :func:`process_frame` of that frame alone. An undecodable frame gives
    its :class:`ImageConversionError` in its place; the others are still segmented.
    ``inference_s`` is the whole batch's (the time each frame waited for its result).
    """
    decoded: list[np.ndarray | ImageConversionError] = []
    for frame in frames:
        try:
            decoded.append(message_to_rgb(frame.msg, frame.compressed, max_pixels=frame.max_pixels))
        except ImageConversionError as exc:
            decoded.append(exc)
    images = [rgb for rgb in decoded if isinstance(rgb, np.ndarray)]
    started = time.perf_counter()
    results = iter(segmenter.segment_batch(images) if images else [])
    inference = time.perf_counter() - started
    out: list[FrameResult | ImageConversionError] = []
    for frame, rgb in zip(frames, decoded, strict=True):
        if isinstance(rgb, ImageConversionError):
            out.append(rgb)
            continue
        result = next(results)
        outputs = frame_outputs(rgb, result, frame.plan, frame.wanted)
        out.append(FrameResult(rgb, result, outputs, inference))
    return out
