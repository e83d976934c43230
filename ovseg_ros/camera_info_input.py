"""One camera's ``camera_info`` input, shared by the node and ``ovseg-replay`` (no ROS needed).

Cameras repeat the same camera_info with every frame: each distinct message is validated once
(:class:`~ovseg_ros.points.CameraModel`) and the latest one is kept. The frame pipeline
publishes it, scaled to the labels' size, as the frame's ``camera_info`` output (with or
without depth); the points stage back-projects depth with its model.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ovseg_ros.outputs import CameraInfoOutput
from ovseg_ros.points import MAX_DISTORTION_COEFFICIENTS, CameraModel, PointsError


@dataclass(frozen=True)
class CameraInfoState:
    """The latest camera_info: its fields, its validated model (None when invalid) and, when
    invalid, why."""

    info: CameraInfoOutput | None
    model: CameraModel | None
    error: str = ""


class CameraInfoInput:
    """The latest ``sensor_msgs/CameraInfo`` (rclpy or rosbags object) of one camera.

    Thread-safe: :meth:`push` runs on the executor, the readers on the frame worker.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: CameraInfoState | None = None
        self._cache: dict[tuple, CameraInfoState] = {}  # the latest distinct message only
        self._received = 0

    def push(self, msg: Any) -> None:
        """Keep ``msg`` as the latest camera_info, validated once per distinct content. A
        distortion vector longer than any model needs is refused by its length alone, before
        any numeric work."""
        key = _content_key(msg)
        with self._lock:
            self._received += 1
            state = self._cache.get(key) if key is not None else None
        if state is None:
            try:
                model = CameraModel.from_message(msg)
                state = CameraInfoState(CameraInfoOutput.from_message(msg), model)
            except PointsError as exc:
                state = CameraInfoState(None, None, str(exc))
        with self._lock:
            if key is not None:
                self._cache = {key: state}
            self._latest = state

    def latest(self) -> CameraInfoState | None:
        """The latest camera_info's state, None before any arrived."""
        with self._lock:
            return self._latest

    def scaled(self, width: int, height: int) -> CameraInfoOutput | None:
        """The latest valid camera model described at ``width x height`` (the labels' size);
        None before one arrived, when the latest is invalid, or when it cannot be scaled."""
        state = self.latest()
        if state is None or state.model is None or state.info is None:
            return None
        return state.info.scaled_to(width, height)

    @property
    def received(self) -> int:
        """camera_info messages pushed."""
        with self._lock:
            return self._received


def _content_key(msg: Any) -> tuple | None:
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
