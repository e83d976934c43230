"""The points stage of one camera, shared by the node and ``ovseg-replay`` (no ROS needed).

Depth frames and camera_info messages (rclpy or rosbags objects) are pushed as they arrive;
after a color frame is segmented, :meth:`PointsStage.outputs` pairs it with the depth frame of
nearest stamp (:class:`~ovseg_ros.points.DepthPairer`), back-projects the labels
(:func:`~ovseg_ros.points.build_cloud`, on the engine's device) and returns the ``points``
and ``camera_info`` :class:`~ovseg_ros.pipeline.Output` s. Bad input never raises: the cloud
is skipped, counted by kind, and a warning is returned at most once per kind per
``warn_interval`` (so one noisy problem does not hide another).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ovseg_ros.pipeline import CAMERA_INFO, POINTS, Output
from ovseg_ros.points import (
    CameraModel,
    DepthPairer,
    PointsError,
    PointsOptions,
    build_cloud,
    class_ids,
    decode_depth,
    scale_camera_info,
)
from ovseg_ros.ros.log_throttle import KindThrottle  # ROS-free

# Why a color frame got no cloud (diagnostics keys ``clouds_skipped_<kind>``).
SKIP_KINDS = (
    "unpaired",  # no depth frame within depth_sync_tolerance of the color stamp
    "no_camera_info",  # none received yet
    "bad_camera_info",  # K with zeros, unsupported distortion, ...
    "bad_depth",  # another encoding, truncated data, ...
    "size_mismatch",  # depth size differs from the size camera_info describes
)
DEPTH_CAPACITY = 4  # depth frames kept for pairing: no backlog


def stamp_ns(stamp: Any) -> int:
    """A ``builtin_interfaces/Time`` as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


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
    ``clock`` (seconds) paces the throttled warnings.
    """

    def __init__(
        self,
        tolerance: float = 0.02,
        settings: PointsSettings | None = None,
        warn_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pairer: DepthPairer[Any] = DepthPairer(tolerance, DEPTH_CAPACITY)
        self.settings = settings or PointsSettings()
        self.settings.options()
        self._warnings = KindThrottle(float(warn_interval), clock)  # per kind of problem
        self._lock = threading.Lock()
        self._skipped = dict.fromkeys(SKIP_KINDS, 0)
        self._published = 0
        self._latest_depth_ns: int | None = None

    # -- inputs (executor side) ----------------------------------------------------------------

    def push_depth(self, msg: Any) -> None:
        """Keep a depth ``sensor_msgs/Image`` for pairing (decoded only if paired)."""
        stamp = stamp_ns(msg.header.stamp)
        self.pairer.push(stamp, msg)
        with self._lock:
            self._latest_depth_ns = stamp

    def push_camera_info(self, msg: Any) -> None:
        """The latest ``sensor_msgs/CameraInfo``, validated now (once per message)."""
        try:
            model, error = CameraModel.from_message(msg), ""
        except PointsError as exc:
            model, error = None, str(exc)
        self.pairer.camera_info = (msg, model, error)

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
    ) -> tuple[list[Output], list[str]]:
        """``(outputs, warnings)`` for a segmented color frame with ``header``.

        Outputs: ``camera_info`` (the latest one, scaled to the labels' size, for the labels'
        header) once one was received, and ``points`` when the frame has a depth partner and
        the inputs are valid. ``rgb``: ``uint8 [H, W, 3]``; ``result``: the engine's result
        (``labels``, ``confidence`` ``[H, W]`` and ``vocabulary``). Warnings: throttled
        per kind; never raises for bad input.
        """
        outputs: list[Output] = []
        warnings: list[str] = []
        color_ns = stamp_ns(header.stamp)
        depth_msg = self.pairer.pair(color_ns)
        info = self.pairer.camera_info
        height, width = result.labels.shape[:2]
        if info is not None:
            camera_info = self._camera_info_output(info[0], width, height)
            if camera_info is not None:
                outputs.append(camera_info)
        skip = self._check(info, depth_msg, color_ns)
        if skip is None:
            skip = self._cloud(info[1], depth_msg, rgb, result, device, outputs, warnings)
        if skip is not None:
            kind, detail = skip
            with self._lock:
                self._skipped[kind] += 1
            warning = self._throttled(kind, f"no point cloud: {detail}")
            if warning:
                warnings.append(warning)
        return outputs, warnings

    def counters(self) -> dict[str, int]:
        """Counters for ``/diagnostics``: inputs received, pairing, clouds published/skipped."""
        pairing = self.pairer.stats_dict()
        with self._lock:
            values = {
                "depth_received": pairing["depth_received"],
                "camera_info_received": pairing["camera_info_received"],
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
                f" {_seconds(color_ns)} (latest depth stamp {_seconds(latest)}, "
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
        outputs: list[Output],
        warnings: list[str],
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
            warning = self._throttled(
                "points_classes",
                f"points_classes not in the vocabulary (no points of them): {', '.join(missing)}",
            )
            if warning:
                warnings.append(warning)
        try:
            cloud = build_cloud(
                depth, model, result.labels, result.confidence, rgb, settings.options(ids), device
            )
        except PointsError as exc:
            return "bad_depth", str(exc)
        outputs.append(
            Output(POINTS, cloud.data, "", POINTS, cloud, frame_id=str(depth_msg.header.frame_id))
        )
        with self._lock:
            self._published += 1
        return None

    def _camera_info_output(self, msg: Any, width: int, height: int) -> Output | None:
        fields = camera_info_fields(msg)
        if (fields["width"], fields["height"]) != (width, height):
            try:
                fields.update(
                    scale_camera_info(
                        fields["k"], fields["p"], fields["width"], fields["height"], width, height
                    )
                )
            except PointsError:
                return None  # a size of 0 or a K/P of the wrong length: nothing to describe
            fields["roi"] = (0, 0, 0, 0, False)  # the ROI was in the other resolution
        return Output(CAMERA_INFO, np.zeros(0, np.uint8), "", CAMERA_INFO, fields)

    def _throttled(self, kind: str, text: str) -> str | None:
        return text if self._warnings.admit(kind) is not None else None


def camera_info_fields(msg: Any) -> dict[str, Any]:
    """The fields of a CameraInfo (rclpy or rosbags) except the header, as plain values.

    ``roi``: ``(x_offset, y_offset, height, width, do_rectify)``.
    """
    roi = msg.roi
    return {
        "height": int(msg.height),
        "width": int(msg.width),
        "distortion_model": str(msg.distortion_model),
        "d": [float(v) for v in msg.d],
        "k": [float(v) for v in msg.k],
        "r": [float(v) for v in msg.r],
        "p": [float(v) for v in msg.p],
        "binning_x": int(msg.binning_x),
        "binning_y": int(msg.binning_y),
        "roi": (
            int(roi.x_offset),
            int(roi.y_offset),
            int(roi.height),
            int(roi.width),
            bool(roi.do_rectify),
        ),
    }


def _seconds(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"
