"""A round of frames in the node: segmented together, then each camera's outputs published.

The worker hands :meth:`Rounds.process` the round (one frame per camera with a waiting frame).
The frames go through :func:`ovseg_ros.pipeline.process_frames` in one batch; then, per
frame: the vocabulary update its stamp needs (``valid_from``, before its labels), the image
outputs, the point cloud, the stats. A frame that cannot be decoded, or is larger than
``max_image_pixels``, is counted as invalid and warned about (throttled per camera and kind).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from rclpy.lifecycle import LifecycleNode

from ovseg_ros.image_conversion import MAX_IMAGE_PIXELS, ImageConversionError
from ovseg_ros.pipeline import FrameInput, FrameResult, process_frames
from ovseg_ros.ros.camera import Camera
from ovseg_ros.ros.depth_input import points_outputs
from ovseg_ros.ros.log_throttle import KindThrottle, problem_kind, suppressed_note
from ovseg_ros.ros.versions import VersionLog
from ovseg_ros.ros.worker import Frame, Stats

WARN_THROTTLE_S = 5.0


class Rounds:
    """Processes the worker's rounds for ``node`` (logger, clock) and publishes the results.

    ``overlay_alpha`` applies from the next round on; ``max_pixels`` is set at configure.
    """

    def __init__(
        self,
        node: LifecycleNode,
        stats: Stats,
        versions: VersionLog,
        publish_vocabulary: Callable[[str], None],
    ) -> None:
        self.node, self.stats, self.versions = node, stats, versions
        self._publish_vocabulary = publish_vocabulary
        self._warnings = KindThrottle(WARN_THROTTLE_S)  # one throttle per kind of problem
        self.overlay_alpha = 0.5
        self.max_pixels: int | None = MAX_IMAGE_PIXELS

    def process(self, segmenter: Any, cameras: Sequence[Camera], frames: list[Frame]) -> None:
        """Segment a round's frames (one per camera) in one batch, then publish each."""
        by_key = {c.key: c for c in cameras}
        frames = [f for f in frames if f.camera in by_key]
        if segmenter is None or not frames:
            return  # released meanwhile
        inputs = [self._input(by_key[f.camera], f) for f in frames]
        for frame, result in zip(frames, process_frames(segmenter, inputs), strict=True):
            camera = by_key[frame.camera]
            if isinstance(result, ImageConversionError):
                self._invalid(camera, frame.message, result)
            else:
                self._publish(segmenter, camera, frame.message, result)

    def on_error(self, message: str) -> None:
        """A round failed (the worker counted it): log it, throttled per exception type."""
        suppressed = self._warnings.admit(("error", message.split(":", 1)[0]))
        if suppressed is not None:
            self.node.get_logger().error(f"frame failed: {message}{suppressed_note(suppressed)}")

    def _input(self, camera: Camera, frame: Frame) -> FrameInput:
        plan = dataclasses.replace(camera.plan, overlay_alpha=self.overlay_alpha)
        return FrameInput(frame.message, frame.compressed, plan, camera.wants, self.max_pixels)

    def _invalid(self, camera: Camera, msg: Any, error: ImageConversionError) -> None:
        self.stats.count(camera.key, "invalid")
        kind = problem_kind(error)
        suppressed = self._warnings.admit(("invalid", camera.key, kind))
        if suppressed is not None:
            self.node.get_logger().warning(
                f"skipping invalid frame [{kind}] ({camera.input_topic}, frame_id "
                f"{msg.header.frame_id!r}): {error}{suppressed_note(suppressed)}"
            )

    def _publish(self, segmenter: Any, camera: Camera, msg: Any, result: FrameResult) -> None:
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        update = self.versions.frame(camera.key, stamp_ns)
        if update is not None:
            self._publish_vocabulary(update)  # before this frame's labels
        camera.publish(msg.header, result.outputs)
        # The cloud after the labels, so building it never delays them.
        camera.publish(msg.header, points_outputs(camera, msg.header, result, segmenter))
        now_ns = self.node.get_clock().now().nanoseconds
        latency = (now_ns - stamp_ns) * 1e-9 if stamp_ns > 0 else None
        self.stats.record_frame(camera.key, result.inference_s, latency)
