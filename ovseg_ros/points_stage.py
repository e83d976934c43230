"""The points stage of one camera, shared by the node and ``ovseg-replay`` (no ROS needed).

Depth frames and camera_info messages (rclpy or rosbags objects) are pushed as they arrive;
after a color frame is segmented, :meth:`PointsStage.outputs` pairs it with the depth frame of
nearest stamp (:class:`~ovseg_ros.points.DepthPairer`), back-projects the labels
(:func:`~ovseg_ros.points.build_cloud`, on the engine's device) and returns the frame's
:class:`DepthOutputs`: the cloud and the camera model. Bad input never raises: the cloud is
skipped, counted by kind, and a warning is returned at most once per kind per
``warn_interval`` (so one noisy problem does not hide another).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ovseg_ros.image_conversion import MAX_IMAGE_PIXELS
from ovseg_ros.log_throttle import KindThrottle
from ovseg_ros.outputs import CameraInfoOutput, CloudOutput
from ovseg_ros.points import (
    MAX_DISTORTION_COEFFICIENTS,
    CameraModel,
    DepthPairer,
    PointsError,
    PointsOptions,
    build_cloud,
    class_ids,
    decode_depth,
)
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
    """The depth side of one segmented frame: its cloud (None when skipped or not wanted), the
    camera model at the labels' size (None before a usable camera_info) and the warnings to
    log (already throttled)."""

    cloud: CloudOutput | None = None
    camera_info: CameraInfoOutput | None = None
    warnings: list[str] = field(default_factory=list)


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
        """From parameter values (names as the node's parameters); checked."""
        classes = values.get("points_classes") or []
        if isinstance(classes, str) or not isinstance(classes, (list, tuple)):
            raise PointsError(f"points_classes must be a list of names, got {classes!r}")
        stride = values.get("points_stride", 1)
        if isinstance(stride, float) and stride.is_integer():
            stride = int(stride)  # a params file may say 2.0
        settings = cls(
            stride=stride,
            organized=bool(values.get("points_organized", False)),
            depth_min=float(values.get("depth_min", 0.1)),
            depth_max=float(values.get("depth_max", 10.0)),
            classes=tuple(str(c).strip() for c in classes if str(c).strip()),
        )
        settings.options()
        return settings


class PointsStage:
    """Depth + camera_info inputs of one camera and the cloud of each segmented frame.

    Thread-safe: ``push_*`` run on the executor, :meth:`outputs` on the frame worker.
    ``clock`` (seconds) paces the throttled warnings. ``max_pixels`` bounds the depth images
    (the node's ``max_image_pixels``).
    """

    def __init__(
        self,
        tolerance: float = 0.02,
        settings: PointsSettings | None = None,
        warn_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        max_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        self.pairer: DepthPairer[Any] = DepthPairer(tolerance, DEPTH_CAPACITY)
        self.max_pixels = int(max_pixels)  # larger depth images are refused before decoding
        self._refused_depth = 0
        self._info_cache: dict[tuple, tuple[Any, Any, str]] = {}
        self.settings = settings or PointsSettings()
        self.settings.options()
        self._warnings = KindThrottle(float(warn_interval), clock)  # per kind of problem
        self._lock = threading.Lock()
        self._skipped = dict.fromkeys(SKIP_KINDS, 0)
        self._published = 0
        self._latest_depth_ns: int | None = None

    # -- inputs (executor side) ----------------------------------------------------------------

    def push_depth(self, msg: Any) -> None:
        """Keep a depth ``sensor_msgs/Image`` for pairing (decoded only if paired); one larger
        than ``max_pixels`` by its declared size is refused and counted, never decoded."""
        if int(msg.height) * int(msg.width) > self.max_pixels:
            with self._lock:
                self._refused_depth += 1
            return
        stamp = stamp_ns(msg.header.stamp)
        self.pairer.push(stamp, msg)
        with self._lock:
            self._latest_depth_ns = stamp

    def push_camera_info(self, msg: Any) -> None:
        """The latest ``sensor_msgs/CameraInfo``, validated once per distinct message.

        Cameras repeat the same camera_info with every frame: an identical one reuses the
        previous validation. A distortion vector longer than any model needs is refused by
        its length alone, before any numeric work (:class:`CameraModel`).
        """
        key = _camera_info_key(msg)
        with self._lock:
            cached = self._info_cache.get(key) if key is not None else None
        if cached is None:
            try:
                model = CameraModel.from_message(msg)
                cached = (CameraInfoOutput.from_message(msg), model, "")
            except PointsError as exc:
                cached = (None, None, str(exc))
            if key is not None:
                with self._lock:
                    self._info_cache = {key: cached}  # the latest distinct one
        self.pairer.camera_info = cached

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
    ) -> DepthOutputs:
        """The depth outputs of a segmented color frame with ``header``.

        ``camera_info``: the latest one, scaled to the labels' size, once one was received.
        ``cloud``: when the frame has a depth partner and the inputs are valid (and
        ``cloud`` is true: nobody listening, nothing built). ``rgb``: ``uint8 [H, W, 3]``;
        ``result``: the engine's result (``labels``, ``confidence`` ``[H, W]`` and
        ``vocabulary``). Never raises for bad input.
        """
        out = DepthOutputs()
        info = self.pairer.camera_info
        height, width = result.labels.shape[:2]
        if info is not None and info[1] is not None:  # the validated model only
            out.camera_info = info[0].scaled_to(width, height)
        if not cloud:
            return out
        color_ns = stamp_ns(header.stamp)
        depth_msg = self.pairer.pair(color_ns)
        skip = self._check(info, depth_msg, color_ns)
        if skip is None:
            skip = self._cloud(info[1], depth_msg, rgb, result, device, out)
        if skip is not None:
            kind, detail = skip
            with self._lock:
                self._skipped[kind] += 1
            self._warn(out, kind, f"no point cloud: {detail}")
        return out

    def counters(self) -> dict[str, int]:
        """Counters for ``/diagnostics``: inputs received, pairing, clouds published/skipped."""
        pairing = self.pairer.stats_dict()
        with self._lock:
            values = {
                "depth_received": pairing["depth_received"],
                "camera_info_received": pairing["camera_info_received"],
                "depth_refused_too_large": self._refused_depth,
                "depth_paired": pairing["paired"],
                "depth_unpaired": pairing["unpaired"],
                "clouds_published": self._published,
            }
            values.update({f"clouds_skipped_{k}": n for k, n in self._skipped.items()})
        return values

    def _check(self, info: Any, depth_msg: Any, color_ns: int) -> tuple[str, str] | None:
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
        if info[1] is None:
            return "bad_camera_info", info[2]
        return None

    def _cloud(
        self,
        model: CameraModel,
        depth_msg: Any,
        rgb: np.ndarray,
        result: Any,
        device: torch.device | str,
        out: DepthOutputs,
    ) -> tuple[str, str] | None:
        try:
            depth = decode_depth(
                depth_msg.encoding,
                depth_msg.height,
                depth_msg.width,
                depth_msg.step,
                depth_msg.data,
                depth_msg.is_bigendian,
            )
        except PointsError as exc:
            return "bad_depth", str(exc)
        try:
            model.check_size(depth.width, depth.height)
        except PointsError as exc:
            return "size_mismatch", str(exc)
        settings = self.settings
        ids, missing = class_ids(settings.classes, result.vocabulary)
        if missing:
            self._warn(
                out,
                "points_classes",
                f"points_classes not in the vocabulary (no points of them): {', '.join(missing)}",
            )
        try:
            cloud = build_cloud(
                depth, model, result.labels, result.confidence, rgb, settings.options(ids), device
            )
        except PointsError as exc:
            return "bad_depth", str(exc)
        out.cloud = CloudOutput(cloud, frame_id=str(depth_msg.header.frame_id))
        with self._lock:
            self._published += 1
        return None

    def _warn(self, out: DepthOutputs, kind: str, text: str) -> None:
        if self._warnings.admit(kind) is not None:
            out.warnings.append(text)


def _camera_info_key(msg: Any) -> tuple | None:
    """What identifies a camera_info's content (everything but the header), or None when
    its distortion vector is too long to be worth keying (it is refused anyway)."""
    if len(msg.d) > MAX_DISTORTION_COEFFICIENTS:
        return None
    roi = msg.roi
    return (
        int(msg.height),
        int(msg.width),
        str(msg.distortion_model),
        tuple(float(v) for v in msg.d),
        tuple(float(v) for v in msg.k),
        tuple(float(v) for v in msg.r),
        tuple(float(v) for v in msg.p),
        int(msg.binning_x),
        int(msg.binning_y),
        (
            int(roi.x_offset),
            int(roi.y_offset),
            int(roi.height),
            int(roi.width),
            bool(roi.do_rectify),
        ),
    )
