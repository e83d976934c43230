"""The points stage of one camera, shared by the node and ``ovseg-replay`` (no ROS needed).

Depth frames (rclpy or rosbags objects) are pushed as they arrive, the camera model comes
from the camera's :class:`~ovseg_ros.camera_info_input.CameraInfoInput`; after a color frame
is segmented, :meth:`PointsStage.outputs` pairs it with the depth frame of nearest stamp
(:class:`~ovseg_ros.points.DepthPairer`), back-projects the labels
(:func:`~ovseg_ros.points.build_cloud`, on the engine's device) and returns the frame's
:class:`DepthOutputs`: the cloud, and the frame's 3D objects as an :class:`ObjectsJob` that the
caller runs once the labels are out (:func:`~ovseg_ros.points.objects.find_objects`). Bad input
never raises: the cloud is skipped (the objects are empty), counted by kind, and a warning is
returned at most once per kind per ``warn_interval`` (so one noisy problem does not hide
another).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ovseg_ros.camera_info_input import CameraInfoInput, CameraInfoState
from ovseg_ros.image_conversion import MAX_IMAGE_PIXELS
from ovseg_ros.log_throttle import KindThrottle
from ovseg_ros.outputs import CloudOutput, ObjectsOutput
from ovseg_ros.points import (
    CameraModel,
    DepthImage,
    DepthPairer,
    PointsError,
    PointsOptions,
    build_cloud,
    class_ids,
    compressed_depth_size,
    decode_compressed_depth,
    decode_depth,
)
from ovseg_ros.points.objects import ObjectsOptions, find_objects
from ovseg_ros.stamps import stamp_ns, stamp_text

# Why a color frame got no cloud (diagnostics keys ``clouds_skipped_<kind>``).
SKIP_KINDS = (
    "unpaired",  # no depth frame within depth_sync_tolerance of the color stamp
    "no_camera_info",  # none received yet
    "bad_camera_info",  # K with zeros, unsupported distortion, ...
    "bad_depth",  # another encoding, truncated data, ...
    "size_mismatch",  # depth size differs from the size camera_info describes
)
DEPTH_CAPACITY = 4  # depth frames kept for pairing: no backlog


@dataclass
class DepthOutputs:
    """The depth side of one segmented frame: its cloud (None when skipped or not wanted),
    its objects to compute later (None when not wanted) and the warnings to log (already
    throttled)."""

    cloud: CloudOutput | None = None
    objects: ObjectsJob | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ObjectsSettings:
    """The objects parameters (``objects``, ``objects_classes``, ``objects_min_points``,
    ``objects_depth_gap``); class names are resolved per frame, as the cloud's are."""

    enabled: bool = False
    classes: tuple[str, ...] = ()
    min_points: int = 50
    depth_gap: float = 0.15

    def options(
        self, depth_min: float, depth_max: float, classes: frozenset[int] | None = None
    ) -> ObjectsOptions:
        """The validated :class:`~ovseg_ros.points.objects.ObjectsOptions` (raises
        :class:`PointsError`)."""
        return ObjectsOptions(self.min_points, self.depth_gap, depth_min, depth_max, classes)

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> ObjectsSettings:
        """From parameter values (names as the node's parameters); checked by the caller."""
        return cls(
            enabled=bool(values.get("objects", False)),
            classes=_names(values.get("objects_classes"), "objects_classes"),
            min_points=_integer(values.get("objects_min_points", 50)),
            depth_gap=float(values.get("objects_depth_gap", 0.15)),
        )


@dataclass(frozen=True)
class PointsSettings:
    """The cloud parameters (``points_stride``, ``points_organized``, ``depth_min``,
    ``depth_max``, ``points_classes``); class names are resolved per frame against the
    frame's vocabulary (it can change at runtime)."""

    stride: int = 1
    organized: bool = False
    depth_min: float = 0.1
    depth_max: float = 10.0
    classes: tuple[str, ...] = ()
    objects: ObjectsSettings = ObjectsSettings()

    def options(self, classes: frozenset[int] | None = None) -> PointsOptions:
        """The validated :class:`PointsOptions` (raises :class:`PointsError`)."""
        return PointsOptions(
            stride=self.stride,
            organized=bool(self.organized),
            depth_min=float(self.depth_min),
            depth_max=float(self.depth_max),
            classes=classes,
        )

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> PointsSettings:
        """From parameter values (names as the node's parameters, the objects' too); checked."""
        settings = cls(
            stride=_integer(values.get("points_stride", 1)),
            organized=bool(values.get("points_organized", False)),
            depth_min=float(values.get("depth_min", 0.1)),
            depth_max=float(values.get("depth_max", 10.0)),
            classes=_names(values.get("points_classes"), "points_classes"),
            objects=ObjectsSettings.from_values(values),
        )
        settings.options()
        settings.objects.options(settings.depth_min, settings.depth_max)
        return settings


def _integer(value: Any) -> Any:
    """A whole float as an int (a params file may say 2.0); anything else as it is, for the
    options' checks to refuse."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _names(value: Any, name: str) -> tuple[str, ...]:
    """A class-name list parameter as a tuple, blank names dropped."""
    value = value or []
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise PointsError(f"{name} must be a list of names, got {value!r}")
    return tuple(str(c).strip() for c in value if str(c).strip())


class PointsStage:
    """Depth input of one camera and the cloud of each segmented frame.

    Thread-safe: ``push_*`` run on the executor, :meth:`outputs` on the frame worker.
    ``camera_info``: the camera's camera_info input (a new one by default; the node shares
    the camera's). ``clock`` (seconds) paces the throttled warnings. ``max_pixels`` bounds the
    depth images (the node's ``max_image_pixels``).
    """

    def __init__(
        self,
        tolerance: float = 0.02,
        settings: PointsSettings | None = None,
        warn_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        max_pixels: int = MAX_IMAGE_PIXELS,
        camera_info: CameraInfoInput | None = None,
    ) -> None:
        self.pairer: DepthPairer[Any] = DepthPairer(tolerance, DEPTH_CAPACITY)
        self.camera_info = camera_info if camera_info is not None else CameraInfoInput()
        self.max_pixels = int(max_pixels)  # larger depth images are refused before decoding
        self._refused_depth = 0
        self.settings = settings or PointsSettings()
        self.settings.options()
        self._warnings = KindThrottle(float(warn_interval), clock)  # per kind of problem
        self._lock = threading.Lock()
        self._skipped = {
            f"{what}_skipped_{kind}": 0 for what in ("clouds", "objects") for kind in SKIP_KINDS
        }
        self._objects = dict.fromkeys(("objects_frames", "objects_found", "objects_time_us"), 0)
        self._published = 0
        self._latest_depth_ns: int | None = None

    # -- inputs (executor side) ----------------------------------------------------------------

    def push_depth(self, msg: Any) -> None:
        """Keep a depth ``sensor_msgs/Image`` for pairing (decoded only if paired); one larger
        than ``max_pixels`` by its declared size is refused and counted, never decoded."""
        self._keep(msg, int(msg.height) * int(msg.width))

    def push_compressed_depth(self, msg: Any) -> None:
        """Keep a compressedDepth ``sensor_msgs/CompressedImage`` for pairing, as
        :meth:`push_depth` does: refused by the size its PNG / RVL header declares (read
        without decoding); a malformed one is kept, and skipped as bad depth if paired."""
        try:
            width, height = compressed_depth_size(msg.format, msg.data)
        except PointsError:
            width = height = 0  # the decoder says what is wrong, if it is ever paired
        self._keep(msg, width * height)

    def _keep(self, msg: Any, pixels: int) -> None:
        if pixels > self.max_pixels:
            with self._lock:
                self._refused_depth += 1
            return
        stamp = stamp_ns(msg.header.stamp)
        self.pairer.push(stamp, msg)
        with self._lock:
            self._latest_depth_ns = stamp

    def push_camera_info(self, msg: Any) -> None:
        """The latest ``sensor_msgs/CameraInfo`` (see :class:`CameraInfoInput`)."""
        self.camera_info.push(msg)

    def set_settings(self, settings: PointsSettings) -> None:
        """New cloud parameters, from the next frame on (validated by the caller)."""
        self.settings = settings

    # -- per frame (worker side) -------------------------------------------------------------

    def outputs(
        self,
        header: Any,
        rgb: np.ndarray,
        result: Any,
        device: torch.device | str = "cpu",
        *,
        cloud: bool = True,
        objects: bool = False,
    ) -> DepthOutputs:
        """The depth outputs of a segmented color frame with ``header``.

        ``cloud``: when the frame has a depth partner and the inputs are valid (and
        ``cloud`` is true: nobody listening, nothing built). ``objects``: an
        :class:`ObjectsJob` (when true), empty when the cloud could not be made for want of
        depth or camera model. ``rgb``: ``uint8 [H, W, 3]``; ``result``: the engine's result
        (``labels``, ``confidence`` ``[H, W]`` and ``vocabulary``). Never raises for bad input.
        """
        out = DepthOutputs()
        if not (cloud or objects):
            return out
        info = self.camera_info.latest()
        color_ns = stamp_ns(header.stamp)
        depth_msg = self.pairer.pair(color_ns)
        skip = self._check(info, depth_msg, color_ns)
        depth = None
        if skip is None:
            depth, skip = self._decode(info.model, depth_msg)
        if depth is None:
            skipped = {"clouds": cloud, "objects": objects}
            kind, detail = skip
            with self._lock:
                for what, wanted in skipped.items():
                    self._skipped[f"{what}_skipped_{kind}"] += wanted
            what = " or ".join(name for name, wanted in skipped.items() if wanted)
            self._warn(out, kind, f"no {what.replace('clouds', 'point cloud')}: {detail}")
            if objects:  # empty: subscribers clear the previous frame's objects
                out.objects = ObjectsJob(self, result, None, None, str(header.frame_id))
            return out
        frame_id = str(depth_msg.header.frame_id)
        if objects:
            out.objects = ObjectsJob(self, result, depth, info.model, frame_id)
        if cloud:
            self._cloud(info.model, depth, frame_id, rgb, result, device, out)
        return out

    def counters(self) -> dict[str, int]:
        """Counters for ``/diagnostics``: inputs received, pairing, clouds published/skipped,
        objects: frames, objects found, time spent (microseconds), frames skipped."""
        pairing = self.pairer.stats_dict()
        with self._lock:
            values = {
                "depth_received": pairing["depth_received"],
                "camera_info_received": self.camera_info.received,
                "depth_refused_too_large": self._refused_depth,
                "depth_paired": pairing["paired"],
                "depth_unpaired": pairing["unpaired"],
                "clouds_published": self._published,
                **self._objects,
            }
            values.update(self._skipped)
        return values

    def record_objects(self, found: int, seconds: float) -> None:
        """Count one frame's objects (:meth:`ObjectsJob.run`)."""
        with self._lock:
            self._objects["objects_frames"] += 1
            self._objects["objects_found"] += found
            self._objects["objects_time_us"] += round(seconds * 1e6)

    def _check(
        self, info: CameraInfoState | None, depth_msg: Any, color_ns: int
    ) -> tuple[str, str] | None:
        if depth_msg is None:
            with self._lock:
                latest = self._latest_depth_ns
            tolerance = self.pairer.tolerance_ns * 1e-9
            if latest is None:
                return "unpaired", "no depth image received yet"
            return "unpaired", (
                f"no depth image within depth_sync_tolerance {tolerance:g} s of the color stamp"
                f" {stamp_text(color_ns)} (latest depth stamp {stamp_text(latest)}, "
                f"{(latest - color_ns) * 1e-9:+.3f} s)"
            )
        if info is None:
            return "no_camera_info", "no camera_info received yet"
        if info.model is None:
            return "bad_camera_info", info.error
        return None

    def _decode(
        self, model: CameraModel, depth_msg: Any
    ) -> tuple[DepthImage | None, tuple[str, str] | None]:
        """The paired depth image decoded and checked against the camera model, or why not."""
        try:
            depth = _decode_depth_message(depth_msg, self.max_pixels)
        except PointsError as exc:
            return None, ("bad_depth", str(exc))
        try:
            model.check_size(depth.width, depth.height)
        except PointsError as exc:
            return None, ("size_mismatch", str(exc))
        return depth, None

    def _cloud(
        self,
        model: CameraModel,
        depth: DepthImage,
        frame_id: str,
        rgb: np.ndarray,
        result: Any,
        device: torch.device | str,
        out: DepthOutputs,
    ) -> None:
        settings = self.settings
        ids = self.class_ids(settings.classes, "points_classes", result.vocabulary, out.warnings)
        try:
            cloud = build_cloud(
                depth, model, result.labels, result.confidence, rgb, settings.options(ids), device
            )
        except PointsError as exc:
            with self._lock:
                self._skipped["clouds_skipped_bad_depth"] += 1
            self._warn(out, "bad_depth", f"no point cloud: {exc}")
            return
        out.cloud = CloudOutput(cloud, frame_id=frame_id)
        with self._lock:
            self._published += 1

    def class_ids(
        self, names: tuple[str, ...], parameter: str, vocabulary: Any, warnings: list[str]
    ) -> frozenset[int] | None:
        """The label ids of ``names`` (None: every class); names not in the vocabulary are
        warned about (throttled) into ``warnings``."""
        ids, missing = class_ids(names, vocabulary)
        if missing and self._warnings.admit(parameter) is not None:
            warnings.append(
                f"{parameter} not in the vocabulary (none of them): {', '.join(missing)}"
            )
        return ids

    def _warn(self, out: DepthOutputs, kind: str, text: str) -> None:
        if self._warnings.admit(kind) is not None:
            out.warnings.append(text)


class ObjectsJob:
    """A frame's 3D objects, found when :meth:`run` is called: after the frame's labels are
    out, so they never wait for the objects (:func:`ovseg_ros.pipeline.complete_objects`).

    ``depth`` / ``model``: the paired depth image and camera model, None when there was none
    (the objects are then empty, so subscribers clear the previous ones). The settings are the
    stage's when the job was made.
    """

    def __init__(
        self,
        stage: PointsStage,
        result: Any,
        depth: DepthImage | None,
        model: CameraModel | None,
        frame_id: str,
    ) -> None:
        self.stage, self.settings = stage, stage.settings
        self.result, self.depth, self.model, self.frame_id = result, depth, model, frame_id

    def run(self) -> tuple[ObjectsOutput, list[str]]:
        """``(objects, warnings to log)``; never raises for bad input."""
        warnings: list[str] = []
        vocabulary = self.result.vocabulary
        if self.depth is None or self.model is None:
            return ObjectsOutput.empty(self.frame_id), warnings
        started = time.perf_counter()
        settings = self.settings
        ids = self.stage.class_ids(
            settings.objects.classes, "objects_classes", vocabulary, warnings
        )
        options = settings.objects.options(settings.depth_min, settings.depth_max, ids)
        try:
            objects = find_objects(
                self.depth, self.model, self.result.label_ids, self.result.confidence,
                len(vocabulary), options,
            )  # fmt: skip
        except PointsError as exc:  # arrays the depth image cannot carry: no objects
            warnings.append(f"no objects: {exc}")
            return ObjectsOutput.empty(self.frame_id), warnings
        self.stage.record_objects(len(objects), time.perf_counter() - started)
        return ObjectsOutput.of(objects, vocabulary, self.frame_id), warnings


def _decode_depth_message(msg: Any, max_pixels: int) -> DepthImage:
    """A paired depth message decoded: a ``CompressedImage`` (it has ``format``, an ``Image``
    has not) as compressedDepth, an ``Image`` by its encoding."""
    if hasattr(msg, "format"):
        return decode_compressed_depth(msg.format, msg.data, max_pixels=max_pixels)
    return decode_depth(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian)
