"""The frame pipeline shared by the node and ``ovseg-replay`` (no ROS needed).

message -> RGB (:mod:`ovseg_ros.image_conversion`) -> ``SegmentationResult`` -> the frame's
typed outputs (:class:`FrameResult`): image outputs (``labels``: mono8, mono16 from 255
entries, the unlabeled value 255 / 65535 below ``prob_threshold``; ``confidence``: 32FC1, the
winning class's probability; ``confidence/<class>``: 32FC1 and ``mask/<class>``: mono8 0/255,
one per requested class; ``overlay``: rgb8), the camera model at the labels' size (from the
camera's camera_info), and with a depth side the labelled cloud and the 3D objects. The node
and the replay tool only add the header, serialise and publish / write, so both produce
identical messages for the same frame. Only the labels are always made; the rest only when
wanted. The objects are found in a second step, :func:`complete_objects`, which the node runs
after it has published the round's labels (they never wait for the objects).

Several cameras' frames go through :func:`process_frames` as one round: decoded, segmented
by one ``segment_batch`` call (a camera with temporal fusion on has its frame's scores fused
with its previous frames' between the engine's scoring and its labels:
:mod:`ovseg_ros.temporal`), then each frame's outputs.
"""

from __future__ import annotations

import time
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ovseg_ros.camera_info_input import CameraInfoInput
from ovseg_ros.image_conversion import MAX_IMAGE_PIXELS, ImageConversionError, message_to_rgb
from ovseg_ros.outputs import (
    CAMERA_INFO,
    CONFIDENCE,
    LABELS,
    MASK,
    OBJECT_MARKERS,
    OBJECTS,
    OVERLAY,
    POINTS,
    CameraInfoOutput,
    CloudOutput,
    ImageOutput,
    ObjectsOutput,
    confidence_topic_suffix,
    labels_image,
    render_overlay,
)
from ovseg_ros.points_stage import ObjectsJob, PointsStage
from ovseg_ros.stamps import stamp_ns
from ovseg_ros.temporal import TemporalFusion, segment_frames


@dataclass(frozen=True)
class OutputPlan:
    """What a frame may produce besides ``labels``, ``confidence``, ``camera_info`` and the
    cloud.

    ``class_topics``: ``"confidence/<class>"`` and ``"mask/<class>"`` -> vocabulary entry index
    (from :func:`class_topics`). ``overlay_alpha``: class color opacity; None = no overlay.
    """

    class_topics: Mapping[str, int] = field(default_factory=dict)
    overlay_alpha: float | None = None


@dataclass(frozen=True)
class FrameInput:
    """One camera's frame for :func:`process_frames`.

    ``msg``: an Image or CompressedImage (rclpy or rosbags). ``wanted``: the outputs besides
    ``labels`` someone listens to (suffixes: ``confidence``, per-class confidences and masks,
    ``overlay``, ``points``, ``camera_info``); None = all. ``camera_info``: the camera's
    camera_info input, None without one. ``depth``: the camera's points stage, None without
    depth. Frames larger than ``max_pixels`` are refused before decoding.
    """

    msg: Any
    compressed: bool
    plan: OutputPlan = OutputPlan()
    wanted: Container[str] | None = None
    max_pixels: int | None = MAX_IMAGE_PIXELS
    depth: PointsStage | None = None
    camera_info: CameraInfoInput | None = None
    temporal: TemporalFusion | None = None  # the camera's temporal fusion (None: frame alone)

    def wants(self, suffix: str) -> bool:
        return self.wanted is None or suffix in self.wanted

    def wants_objects(self) -> bool:
        """Objects are on for this camera (``objects``) and someone listens to them."""
        return (
            self.depth is not None
            and self.depth.settings.objects.enabled
            and (self.wants(OBJECTS) or self.wants(OBJECT_MARKERS))
        )


@dataclass
class FrameResult:
    """A segmented frame: its RGB ``[H, W, 3]``, the engine's result and the typed outputs.

    ``images`` in publishing order (labels first); ``camera_info``: the camera model at the
    labels' size once a valid one arrived; ``cloud``: only with a depth side; ``warnings``:
    about the depth side, already throttled. ``inference_s``: the
    round's ``segment_batch`` time (what each of its frames waited for its result).
    ``pending_objects``: the objects to find (:func:`complete_objects`), which then become
    ``objects``.
    """

    header: Any
    rgb: np.ndarray
    result: Any
    images: list[ImageOutput]
    inference_s: float
    cloud: CloudOutput | None = None
    camera_info: CameraInfoOutput | None = None
    warnings: list[str] = field(default_factory=list)
    pending_objects: ObjectsJob | None = None
    objects: ObjectsOutput | None = None

    def output_kinds(self) -> list[str]:
        """What was made for this frame, by kind (:data:`OUTPUT_KINDS`; a kind once per
        output, e.g. ``mask`` twice for two masks)."""
        kinds = [_output_kind(image.suffix) for image in self.images]
        if self.camera_info is not None:
            kinds.append(CAMERA_INFO)
        if self.cloud is not None:
            kinds.append(POINTS)
        if self.objects is not None:
            kinds.append(OBJECTS)
        return kinds


# The kinds of output a frame can make (``FrameResult.output_kinds``), for diagnostics.
CLASS_CONFIDENCE = f"class_{CONFIDENCE}"  # any "confidence/<class>"
OUTPUT_KINDS = (LABELS, CONFIDENCE, CLASS_CONFIDENCE, MASK, OVERLAY, CAMERA_INFO, POINTS, OBJECTS)


def _output_kind(suffix: str) -> str:
    """``"confidence/door"`` -> ``class_confidence``, ``"mask/door"`` -> ``mask``, else the
    suffix itself."""
    prefix, per_class, _ = suffix.partition("/")
    return CLASS_CONFIDENCE if per_class and prefix == CONFIDENCE else prefix


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


def class_topics(
    vocabulary: Any, names: Iterable[str], prefix: str = CONFIDENCE
) -> tuple[dict[str, int], list[str]]:
    """``({"<prefix>/<class>": entry index}, names not in the vocabulary)``; ``prefix``:
    ``confidence`` (probability images) or ``mask`` (0/255 masks).

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
        suffix = f"{prefix}/{confidence_topic_suffix(vocabulary.entries[index].name)}"
        if suffix in topics and topics[suffix] != index:
            suffix = f"{suffix}_{index}"
        topics[suffix] = index
    return topics, missing


def per_class_topics(
    vocabulary: Any, confidence: Iterable[str], masks: Iterable[str]
) -> tuple[dict[str, int], dict[str, list[str]]]:
    """The per-class topics of ``confidence_classes`` and ``mask_classes`` together
    (:func:`class_topics`), and the names not in the vocabulary by parameter."""
    topics: dict[str, int] = {}
    missing: dict[str, list[str]] = {}
    for parameter, names, prefix in (
        ("confidence_classes", confidence, CONFIDENCE),
        ("mask_classes", masks, MASK),
    ):
        found, missing[parameter] = class_topics(vocabulary, names, prefix)
        topics.update(found)
    return topics, missing


def image_outputs(rgb: np.ndarray, result: Any, frame: FrameInput) -> list[ImageOutput]:
    """The image outputs of one segmented frame: labels always; confidence, per-class
    confidences and masks, and the overlay when planned and wanted."""
    vocabulary = result.vocabulary
    # label_ids: uint8 as they left the device (mono8 without a copy) up to 254 entries
    encoding, labels = labels_image(result.label_ids, len(vocabulary))
    outputs = [ImageOutput(LABELS, labels, encoding)]
    if frame.wants(CONFIDENCE):
        confidence = np.ascontiguousarray(result.confidence, dtype=np.float32)
        outputs.append(ImageOutput(CONFIDENCE, confidence, "32FC1"))
    for suffix, index in frame.plan.class_topics.items():
        if index >= len(vocabulary) or not frame.wants(suffix):
            continue
        if suffix.startswith(f"{MASK}/"):
            mask = np.equal(result.label_ids, index).view(np.uint8)
            mask *= 255  # 0 / 255, in place on the fresh boolean array
            outputs.append(ImageOutput(suffix, mask, "mono8"))
        else:
            probability = np.ascontiguousarray(result.probability_of(index), dtype=np.float32)
            outputs.append(ImageOutput(suffix, probability, "32FC1"))
    alpha = frame.plan.overlay_alpha
    if alpha is not None and frame.wants(OVERLAY):
        overlay = render_overlay(rgb, result.label_ids, vocabulary, alpha)
        outputs.append(ImageOutput(OVERLAY, overlay, "rgb8"))
    return outputs


def process_frames(
    segmenter: Any, frames: Sequence[FrameInput]
) -> list[FrameResult | ImageConversionError]:
    """Decode, segment (one ``segment_batch`` for the round) and make every frame's outputs.

    Each result equals :func:`process_frame` of that frame alone. An undecodable frame, or one
    of more than its ``max_pixels`` (kind ``"limit"``, found before decoding), gives its
    :class:`ImageConversionError` in its place; the others are still segmented.
    """
    decoded: list[np.ndarray | ImageConversionError] = []
    for frame in frames:
        try:
            decoded.append(message_to_rgb(frame.msg, frame.compressed, max_pixels=frame.max_pixels))
        except ImageConversionError as exc:
            decoded.append(exc)
    images = [rgb for rgb in decoded if isinstance(rgb, np.ndarray)]
    kept = [f for f, rgb in zip(frames, decoded, strict=True) if isinstance(rgb, np.ndarray)]
    stages, stamps = [f.temporal for f in kept], [stamp_ns(f.msg.header.stamp) for f in kept]
    started = time.perf_counter()
    # Pixels below prob_threshold get the unlabeled value, not a robot's class 0. A camera's
    # temporal fusion, when on, runs between scoring and labels (ovseg_ros.temporal).
    results = iter(segment_frames(segmenter, images, stages, stamps) if images else [])
    inference = time.perf_counter() - started
    out: list[FrameResult | ImageConversionError] = []
    for frame, rgb in zip(frames, decoded, strict=True):
        if isinstance(rgb, ImageConversionError):
            out.append(rgb)
            continue
        result = next(results)
        header = frame.msg.header
        done = FrameResult(header, rgb, result, image_outputs(rgb, result, frame), inference)
        if frame.camera_info is not None and frame.wants(CAMERA_INFO):
            height, width = result.size
            done.camera_info = frame.camera_info.scaled(width, height)
        if frame.depth is not None:
            depth = frame.depth.outputs(
                header,
                rgb,
                result,
                segmenter.device,
                cloud=frame.wants(POINTS),
                objects=frame.wants_objects(),
            )
            done.cloud, done.warnings = depth.cloud, depth.warnings
            done.pending_objects = depth.objects
        out.append(done)
    return out


def complete_objects(frame: FrameResult) -> list[str]:
    """Find the frame's pending 3D objects (sets ``frame.objects``); the warnings to log.

    Nothing to do without pending objects. The node calls it after publishing the labels,
    replay right after :func:`process_frame`.
    """
    job, frame.pending_objects = frame.pending_objects, None
    if job is None:
        return []
    frame.objects, warnings = job.run()
    return warnings


def process_frame(segmenter: Any, frame: FrameInput) -> FrameResult:
    """:func:`process_frames` for one frame; raises its
    :class:`~ovseg_ros.image_conversion.ImageConversionError` instead of returning it."""
    (done,) = process_frames(segmenter, [frame])
    if isinstance(done, ImageConversionError):
        raise done
    return done
