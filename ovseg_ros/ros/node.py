"""The segmentation node: lifecycle glue between the cameras, the worker and the pipeline.

A managed (lifecycle) node, ``ovseg`` by default, that configures and activates itself unless
``autostart`` is false:

- configure: builds the segmenter (loads the models), encodes the vocabulary, creates the
  output publishers and starts the worker thread;
- activate: subscribes to ``image`` (or ``<image>/compressed``, parameter ``image_transport``);
- deactivate: unsubscribes; the lifecycle publishers publish nothing more;
- cleanup: releases the models (GPU memory).

Frames go through one worker thread (:mod:`.worker`): latest frame only, so the output
follows the camera, and executor callbacks (parameters, services, lifecycle) never wait on
the GPU. Vocabulary changes (``classes``) are encoded on their own thread
(:mod:`.vocabulary_updater`) and applied between frames; ``~/vocabulary`` says from which
frame on each version holds (:mod:`.versions`). Invalid lifecycle requests are refused
(:mod:`.lifecycle_guard`).

Run: ``ros2 run ovseg_ros segment_node --ros-args -r image:=/camera/color/image_raw``.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import QoSRequestedIncompatibleQoSInfo
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSPolicyKind, qos_policy_name_from_kind
from std_msgs.msg import String

from ovseg_ros.image_conversion import ImageConversionError
from ovseg_ros.pipeline import FrameInput, class_confidence_topics, process_frames, string_list
from ovseg_ros.ros import parameters
from ovseg_ros.ros.adaptive_qos import ReliabilityFollower
from ovseg_ros.ros.camera import Camera
from ovseg_ros.ros.depth_input import (
    attach_depth,
    points_outputs,
    points_statuses,
    set_points_settings,
)
from ovseg_ros.ros.diagnostics import NodeInfo, camera_statuses, segmentation_status
from ovseg_ros.ros.lifecycle_guard import guard_change_state
from ovseg_ros.ros.log_throttle import KindThrottle, problem_kind, suppressed_note
from ovseg_ros.ros.qos import VOCABULARY_QOS
from ovseg_ros.ros.versions import VersionLog
from ovseg_ros.ros.vocabulary_updater import VocabularyUpdater, accepted_message, pending_info
from ovseg_ros.ros.worker import Frame, PendingChanges, Stats, Worker, combined
from ovseg_ros.segmentation.config import SegmenterConfig
from ovseg_ros.segmentation.vocabulary import parse_entries

WARN_THROTTLE_S = 5.0
JOIN_TIMEOUT_S = 5.0  # a worker stuck in a long CPU inference is abandoned after this


class SegmentNode(LifecycleNode):
    """Lifecycle node publishing labels, confidences, an overlay and the vocabulary."""

    def __init__(self, node_name: str = "ovseg", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        guard_change_state(self, self.get_logger().warning)  # invalid requests: refused
        parameters.declare(self)
        self.stats = Stats()
        self.worker = Worker(
            self._process_round, self._apply_pending, self.stats, self._on_error, batch=True
        )
        self.cameras: list[Camera] = []  # created at configure
        self.qos_follower = ReliabilityFollower(self)  # qos_reliability auto, while active
        self.versions = VersionLog()
        self._pending = PendingChanges()
        self._warnings = KindThrottle(WARN_THROTTLE_S)  # one throttle per kind of problem
        # classes changes are encoded on their own thread; the worker activates them.
        self._vocabulary = VocabularyUpdater(lambda: self._segmenter, self.worker.wake, self._log)
        self._segmenter = None
        self._state_label = "unconfigured"
        self._failure = ""  # why the last configure failed, for diagnostics
        self._overlay_alpha = float(self._value("publish_overlay_alpha"))
        self._confidence_classes = string_list(self._value("confidence_classes"), "")
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # Diagnostics and the vocabulary history live as long as the node.
        self._vocabulary_pub = self.create_publisher(String, "~/vocabulary", VOCABULARY_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._last_diag: tuple[float, dict] = (time.monotonic(), {})
        self._diag_timer = self.create_timer(
            float(self._value("diagnostics_period")),
            self._publish_diagnostics,
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self.autostart_failed = False
        if self._value("autostart"):
            ok = self.trigger_configure() == TransitionCallbackReturn.SUCCESS
            ok = ok and self.trigger_activate() == TransitionCallbackReturn.SUCCESS
            self.autostart_failed = not ok

    # -- parameters --------------------------------------------------------------------------

    def _value(self, name: str) -> Any:
        return parameters.value(self, name)

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Validate a change (refusing it with a reason) and queue it for the worker."""
        result, change = parameters.check_change(params, parameters.engine_values(self))
        if result.successful:
            result, points = parameters.check_points_change(self, params)
        if not result.successful:
            return result
        set_points_settings(self.cameras, points)
        if change.overlay_alpha is not None:
            self._overlay_alpha = change.overlay_alpha
        if change.classes is not None:
            number = self._vocabulary.request(change.classes)
            self.get_logger().info(accepted_message(number, change.classes, self.versions.version))
        if self._pending.add(None, change.confidence, change.knobs):
            self.worker.wake()
        return result

    # -- lifecycle ---------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._failure = ""
        try:
            config = SegmenterConfig.from_dict(parameters.engine_values(self))
            parameters.check_node_values(self)
            classes = list(self._value("classes") or [])
            parse_entries(classes)
        except (ValueError, TypeError) as exc:
            return self._configure_failed(f"invalid parameters: {exc}")
        self._pending.take()  # the parameters are read now; nothing left to apply
        self._vocabulary.cancel()
        self._confidence_classes = string_list(self._value("confidence_classes"), "")
        self.get_logger().info(f"loading {config.method} ({config.preset}) on {config.device} ...")
        started = time.perf_counter()
        try:
            from ovseg_ros.segmentation import build_segmenter

            segmenter = build_segmenter(config)
            vocabulary = segmenter.set_vocabulary(classes)
            if segmenter.device.type == "cuda":
                segmenter.warmup()  # CUDA context and kernels now, not on the first frame
        except (FileNotFoundError, ValueError) as exc:
            # WeightsNotFoundError says which file is missing and how to get it: no traceback.
            return self._configure_failed(str(exc))
        except Exception as exc:  # a bug or a driver problem: keep the traceback
            return self._configure_failed(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        self._segmenter = segmenter
        self.cameras = self._make_cameras()
        attach_depth(self, self.cameras)
        self._publish_vocabulary(self.versions.new_version(vocabulary, self._camera_keys()))
        self.get_logger().info(
            f"{segmenter.config.method} ready on {segmenter.config.device} in "
            f"{time.perf_counter() - started:.1f} s; vocabulary v{self.versions.version}: "
            f"{', '.join(vocabulary.names)}"
        )
        self._update_plans(active=False)
        self.worker.start()
        self._state_label = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        transport = str(self._value("image_transport"))
        reliability = str(self._value("qos_reliability")).strip().lower()
        group = MutuallyExclusiveCallbackGroup()
        try:
            topics = [
                c.subscribe(transport, reliability, self.worker.submit, self._incompatible, group)
                for c in self.cameras
            ]
        except Exception as exc:  # bad transport / QoS settings: refuse, never die
            self.get_logger().error(f"cannot subscribe: {exc}")
            for camera in self.cameras:
                camera.unsubscribe()
            return TransitionCallbackReturn.FAILURE
        self._state_label = "active"
        self.get_logger().info(f"active: segmenting {', '.join(topics)} ({reliability})")
        self.qos_follower.start(reliability, lambda: self.cameras, group)
        return super().on_activate(state)  # enables the lifecycle publishers

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        self._state_label = "inactive"
        self.get_logger().info("inactive: not processing frames")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state_label = "unconfigured"
        self.get_logger().info("cleaned up: models released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().info(f"shutting down from {state.label}")
        self.close()
        self._state_label = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in state {state.label}: releasing everything")
        self.close()
        self._state_label = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """Stop processing and release the models; safe to call more than once."""
        self._stop_input()
        self._release()

    @property
    def segmenter(self):
        """The engine while configured, else None."""
        return self._segmenter

    @property
    def state_label(self) -> str:
        return self._state_label

    @property
    def vocabulary_version(self) -> int:
        """The version last published on ``~/vocabulary`` (0 before the first)."""
        return self.versions.version

    def class_confidence_topics(self) -> dict[str, int]:
        """Resolved ``~/confidence/<class>`` topic names -> entry index (all cameras)."""
        return {t: i for camera in self.cameras for t, i in camera.class_topics().items()}

    def _configure_failed(self, reason: str) -> TransitionCallbackReturn:
        self._failure = reason.splitlines()[0]
        self.get_logger().error(f"configuration failed: {reason}")
        return TransitionCallbackReturn.FAILURE

    def _stop_input(self) -> None:
        self.qos_follower.stop()  # before unsubscribing: it would subscribe again
        for camera in self.cameras:
            camera.unsubscribe()
        # Wait for a frame in flight, so nothing is published after deactivation returns.
        self.worker.drain(JOIN_TIMEOUT_S)

    def _release(self) -> None:
        self._vocabulary.stop(JOIN_TIMEOUT_S)
        if not self.worker.stop(JOIN_TIMEOUT_S):
            self.get_logger().warning("worker still busy after shutdown request; leaving it")
        for camera in self.cameras:
            camera.destroy()
        self.cameras = []
        segmenter, self._segmenter = self._segmenter, None
        if segmenter is not None:
            segmenter.release()
            self.versions.release()

    def _make_cameras(self) -> list[Camera]:
        """One Camera per name in ``cameras`` (checked at configure); none: key ``""``."""
        names = parameters.camera_names(self._value("cameras"))
        return [Camera(self, key) for key in names] if names else [Camera(self)]

    def _camera_keys(self) -> list[str]:
        return [camera.key for camera in self.cameras]

    # -- worker side -------------------------------------------------------------------------

    def _apply_pending(self) -> None:
        """Apply parameter changes between frames (never during ``segment``)."""
        _, confidence, knobs = self._pending.take()  # classes: self._vocabulary
        segmenter = self._segmenter
        if segmenter is None:
            return
        if knobs:
            segmenter.update_config(**knobs)
            self.get_logger().info(f"engine parameters updated: {knobs}")
        if confidence is not None:
            self._confidence_classes = confidence
        activated = self._vocabulary.activate(segmenter.activate_vocabulary)
        if activated is not None:
            vocabulary = activated.vocabulary
            # Published before any frame labelled with it.
            self._publish_vocabulary(self.versions.new_version(vocabulary, self._camera_keys()))
            self.get_logger().info(activated.message(self.versions.version))
        if activated is not None or confidence is not None:
            self._update_plans(active=self._state_label == "active")

    def _update_plans(self, active: bool) -> None:
        vocabulary = self._segmenter.vocabulary
        topics, missing = class_confidence_topics(vocabulary, self._confidence_classes)
        if missing:
            self.get_logger().warning(
                f"confidence_classes not in the vocabulary (no topic): {', '.join(missing)}; "
                f"vocabulary: {', '.join(vocabulary.names)}"
            )
        for camera in self.cameras:
            camera.set_plan(topics, self._overlay_alpha, active)

    def _process_round(self, frames: list[Frame]) -> None:
        """Segment a round's frames (one per camera) in one batch, then publish each."""
        cameras = {c.key: c for c in self.cameras}
        frames = [f for f in frames if f.camera in cameras]
        if self._segmenter is None or not frames:
            return  # released meanwhile
        inputs = []
        for frame in frames:
            camera = cameras[frame.camera]
            plan = dataclasses.replace(camera.plan, overlay_alpha=self._overlay_alpha)
            inputs.append(FrameInput(frame.message, frame.compressed, plan, camera.wants))
        for frame, result in zip(frames, process_frames(self._segmenter, inputs), strict=True):
            self._publish_frame(cameras[frame.camera], frame.message, result)

    def _publish_frame(self, camera: Camera, msg: Any, result: Any) -> None:
        if isinstance(result, ImageConversionError):
            self.stats.count(camera.key, "invalid")
            kind = problem_kind(result)
            suppressed = self._warnings.admit(("invalid", camera.key, kind))
            if suppressed is not None:
                self.get_logger().warning(
                    f"skipping invalid frame [{kind}] ({camera.input_topic}, frame_id "
                    f"{msg.header.frame_id!r}): {result}{suppressed_note(suppressed)}"
                )
            return
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        update = self.versions.frame(camera.key, stamp_ns)
        if update is not None:
            self._publish_vocabulary(update)  # before this frame's labels
        camera.publish(msg.header, result.outputs)
        # The cloud after the labels, so building it never delays them.
        camera.publish(msg.header, points_outputs(camera, msg.header, result, self._segmenter))
        latency = (self.get_clock().now().nanoseconds - stamp_ns) * 1e-9 if stamp_ns > 0 else None
        self.stats.record_frame(camera.key, result.inference_s, latency)

    def _log(self, level: str, message: str) -> None:
        getattr(self.get_logger(), level)(message)

    def _publish_vocabulary(self, text: str) -> None:
        self._vocabulary_pub.publish(String(data=text))

    def _on_error(self, message: str) -> None:
        suppressed = self._warnings.admit(("error", message.split(":", 1)[0]))  # by type
        if suppressed is not None:
            self.get_logger().error(f"frame failed: {message}{suppressed_note(suppressed)}")

    def _incompatible(self, topic: str, info: QoSRequestedIncompatibleQoSInfo) -> None:
        if info.last_policy_kind == QoSPolicyKind.RELIABILITY and self.qos_follower.adapts(topic):
            return  # a best-effort publisher joined: the follower switches to best effort
        subscribed = {c.subscription.topic_name: c.key for c in self.cameras if c.subscription}
        self.stats.count(subscribed.get(topic, ""), "qos_incompatible")  # per camera
        self.get_logger().warning(
            f"{topic}: a publisher offers an incompatible "
            f"{qos_policy_name_from_kind(info.last_policy_kind)} QoS policy, so its frames never "
            "arrive (e.g. a best-effort camera with qos_reliability:=reliable)",
            throttle_duration_sec=WARN_THROTTLE_S,
        )

    # -- diagnostics -------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        now, snapshots = time.monotonic(), self.stats.snapshot()
        last_time, last = self._last_diag
        self._last_diag = (now, snapshots)
        segmenter = self._segmenter
        config = segmenter.config if segmenter is not None else None
        vocabulary = segmenter.vocabulary if segmenter is not None else None
        info = NodeInfo(
            name=f"{self.get_name()}: segmentation",
            state=self._state_label,
            failure=self._failure,
            configured=segmenter is not None,
            method=config.method if config else str(self._value("method")),
            device=str(config.device) if config else str(self._value("device")),
            preset=config.preset if config else str(self._value("preset")),
            vocabulary_version=self.versions.version,
            vocabulary_size=len(vocabulary) if vocabulary else 0,
            **pending_info(self._vocabulary.pending(), self.versions.version),
        )
        elapsed = now - last_time
        named = [camera.key for camera in self.cameras if camera.key]  # multi-camera mode
        msg = DiagnosticArray(
            status=[segmentation_status(info, combined(snapshots), combined(last), elapsed)]
            + camera_statuses(info, named, snapshots, last, elapsed)
            + points_statuses(self.get_name(), self.cameras, self._state_label == "active")
        )
        msg.header.stamp = self.get_clock().now().to_msg()
        try:
            self._diag_pub.publish(msg)
        except Exception:  # the context is going away
            pass
