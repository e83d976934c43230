"""The segmentation node: lifecycle glue between the cameras, the worker and the pipeline.

A managed (lifecycle) node, ``ovseg`` by default, that configures and activates itself unless
``autostart`` is false. The flow:

- configure: reads and checks the parameters (:mod:`.parameters`), builds the segmenter
  (loads the models), encodes the vocabulary, creates one :class:`~.camera.Camera` per
  camera (output publishers; depth side with ``depth``) and starts the worker thread;
- activate: each camera subscribes to ``image`` (or ``<image>/compressed``, parameter
  ``image_transport``); ``qos_reliability`` auto is followed by :mod:`.adaptive_qos`;
- a round: executor callbacks put frames in the worker's latest-frame slots (:mod:`.worker`);
  the worker thread takes every waiting frame, and its :class:`~.worker.RoundJob` applies
  queued parameter changes, segments the frames in one batch (:mod:`ovseg_ros.pipeline`) and
  has each camera publish its outputs. Executor callbacks never wait on the GPU, and nothing
  of this file runs per frame;
- publish: labels, confidences, overlay, then the point cloud and camera model (lifecycle
  publishers: nothing while inactive); ``~/vocabulary`` says from which frame on each version
  holds (:mod:`.versions`); ``/diagnostics`` every ``diagnostics_period`` (:mod:`.diagnostics`);
- deactivate: unsubscribes and waits for the round in flight; cleanup: releases the models.

Vocabulary changes (``classes``) are encoded on their own thread (:mod:`.vocabulary_updater`)
and applied between rounds. Invalid lifecycle requests are refused (:mod:`.lifecycle_guard`).

Run: ``ros2 run ovseg_ros segment_node --ros-args -r image:=/camera/color/image_raw``.
"""

from __future__ import annotations

import threading
import time
import traceback
from functools import partial
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSPolicyKind, qos_policy_name_from_kind
from std_msgs.msg import String

from ovseg_ros.points_stage import PointsStage
from ovseg_ros.ros import parameter_changes, parameters
from ovseg_ros.ros.adaptive_qos import ReliabilityFollower
from ovseg_ros.ros.camera import Camera
from ovseg_ros.ros.compat import QoSRequestedIncompatibleQoSInfo
from ovseg_ros.ros.diagnostics import node_info, node_statuses
from ovseg_ros.ros.lifecycle_guard import guard_change_state
from ovseg_ros.ros.output_messages import detection_types, label_info_types, publish_text
from ovseg_ros.ros.qos import VOCABULARY_QOS
from ovseg_ros.ros.stats import Stats
from ovseg_ros.ros.temporal_status import TemporalDiagnostics
from ovseg_ros.ros.versions import VersionLog
from ovseg_ros.ros.vocabulary_updater import VocabularyUpdater, accepted_message, pending_info
from ovseg_ros.ros.worker import (
    WARN_THROTTLE_S,
    Changes,
    FrameSettings,
    PendingChanges,
    RoundJob,
    Worker,
)
from ovseg_ros.segmentation.config import SegmenterConfig
from ovseg_ros.temporal import TemporalFusion

JOIN_TIMEOUT_S = 5.0  # a worker stuck in a long CPU inference is abandoned after this


class SegmentNode(LifecycleNode):
    """Lifecycle node publishing labels, confidences, an overlay and the vocabulary."""

    def __init__(self, node_name: str = "ovseg", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        guard_change_state(self, self.get_logger().warning)  # invalid requests: refused
        parameters.declare(self)
        self.stats = Stats()
        self.versions = VersionLog()
        self.worker = Worker(self.stats)
        self.cameras: list[Camera] = []  # created at configure
        self.temporal: dict[str, TemporalFusion] = {}  # camera key -> fusion, from configure
        self._temporal_diagnostics = TemporalDiagnostics()
        self.qos_follower = ReliabilityFollower(self)  # qos_reliability auto, while active
        self._pending = PendingChanges()  # accepted parameter changes, for the worker
        # classes changes are encoded on their own thread; the worker activates them.
        self._vocabulary = VocabularyUpdater(lambda: self._segmenter, self.worker.wake, self._log)
        self._segmenter = None
        self._state_label = "unconfigured"
        self._failure = ""  # why the last configure failed, for diagnostics
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
        self.finalized = threading.Event()  # set by the shutdown transition: the process ends
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
        result, change = parameter_changes.check_request(self, params, self._camera_keys())
        if not result.successful:
            return result
        if change.classes is not None:
            number = self._vocabulary.request(change.classes)
            self.get_logger().info(accepted_message(number, change.classes, self.versions.version))
        queued = Changes(
            confidence=change.confidence,
            masks=change.masks,
            overlay_alpha=change.overlay_alpha,
            points=change.points,
            knobs=change.knobs,
            temporal=change.temporal,
        )
        if self._pending.add(queued):
            self.worker.wake()
        return result

    # -- lifecycle ---------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._failure = ""
        try:
            settings = parameters.read_settings(self)
        except (ValueError, TypeError) as exc:
            return self._configure_failed(f"invalid parameters: {exc}")
        self._pending.take()  # the parameters are read now; nothing left to apply
        self._vocabulary.cancel()
        started = time.perf_counter()
        failure = self._load(settings.config, settings.classes)
        if failure:
            return self._configure_failed(failure)
        self.cameras = [
            Camera(
                self,
                key,
                self._points_stage(settings) if settings.depth else None,
                settings.depth_transport,
            )
            for key in settings.cameras
        ]
        for camera in self.cameras:
            camera.set_objects(settings.points.objects.enabled)
        if settings.points.objects.enabled and detection_types() is None:
            self.get_logger().info(
                "~/objects is off: vision_msgs does not import here (install "
                "ros-$ROS_DISTRO-vision-msgs); ~/objects/markers carries the objects"
            )
        self.temporal = {key: TemporalFusion(settings.temporal) for key in settings.cameras}
        if label_info_types() is None:
            self.get_logger().info(
                "~/label_info is off: vision_msgs does not import here (install "
                "ros-$ROS_DISTRO-vision-msgs); ~/vocabulary's JSON names the classes"
            )
        vocabulary = self._segmenter.vocabulary
        publish_vocabulary = partial(publish_text, self._vocabulary_pub)
        publish_vocabulary(self.versions.new_version(vocabulary, self._camera_keys()))
        self.get_logger().info(
            f"{self._segmenter.config.method} ready on {self._segmenter.config.device} in "
            f"{time.perf_counter() - started:.1f} s; vocabulary v{self.versions.version}: "
            f"{', '.join(vocabulary.names)}"
        )
        job = RoundJob(
            self._segmenter,
            self.cameras,
            settings=FrameSettings(
                settings.confidence_classes,
                settings.overlay_alpha,
                settings.max_pixels,
                settings.mask_classes,
            ),
            stats=self.stats,
            versions=self.versions,
            publish_vocabulary=publish_vocabulary,
            vocabulary=self._vocabulary,
            changes=self._pending,
            logger=self.get_logger(),
            clock=self.get_clock(),
            temporal=self.temporal,
        )
        self.worker.start(job)
        self._state_label = "inactive"
        return TransitionCallbackReturn.SUCCESS

    @staticmethod
    def _points_stage(settings: parameters.NodeSettings) -> PointsStage:
        return PointsStage(
            settings.depth_sync_tolerance,
            settings.points,
            WARN_THROTTLE_S,
            max_pixels=settings.max_pixels,
        )

    def _load(self, config: SegmenterConfig, classes: list[str]) -> str:
        """Build the segmenter (the models) with vocabulary ``classes``; "" or why it failed."""
        self.get_logger().info(f"loading {config.method} ({config.preset}) on {config.device} ...")
        try:
            from ovseg_ros.segmentation import build_segmenter

            segmenter = build_segmenter(config)
            segmenter.set_vocabulary(classes)
            if segmenter.device.type == "cuda":
                segmenter.warmup()  # CUDA context and kernels now, not on the first frame
        except (FileNotFoundError, ValueError) as exc:
            # WeightsNotFoundError says which file is missing and how to get it: no traceback.
            return str(exc)
        except Exception as exc:  # a bug or a driver problem: keep the traceback
            return f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        self._segmenter = segmenter
        return ""

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        transport = str(self._value("image_transport"))
        reliability = str(self._value("qos_reliability")).strip().lower()
        try:
            topics = [
                c.subscribe(transport, reliability, self.worker.submit, self._incompatible)
                for c in self.cameras
            ]
        except Exception as exc:  # bad transport / QoS settings: refuse, never die
            self.get_logger().error(f"cannot subscribe: {exc}")
            for camera in self.cameras:
                camera.unsubscribe()
            return TransitionCallbackReturn.FAILURE
        self._state_label = "active"
        self.get_logger().info(f"active: segmenting {', '.join(topics)} ({reliability})")
        self.qos_follower.start(reliability, lambda: self.cameras, MutuallyExclusiveCallbackGroup())
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
        """Finalized is a lifecycle node's last state: release everything and let the
        process end (``segment_node`` exits 0), so launch's ``respawn`` or systemd restart it
        rather than a zombie that refuses ``configure`` staying up."""
        self.get_logger().info(f"shutting down from {state.label}")
        self.close()
        self._state_label = "finalized"
        self.finalized.set()
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

    def class_topics(self) -> dict[str, int]:
        """Resolved ``~/confidence/<class>`` and ``~/mask/<class>`` topic names -> entry index
        (all cameras)."""
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
        for stage in self.temporal.values():
            stage.clear()  # a later activation starts a new sequence (not a stamp-gap reset)

    def _release(self) -> None:
        self._vocabulary.stop(JOIN_TIMEOUT_S)
        if not self.worker.stop(JOIN_TIMEOUT_S):
            self.get_logger().warning("worker still busy after shutdown request; leaving it")
        for camera in self.cameras:
            camera.destroy()
        self.cameras = []
        self.temporal = {}
        self._temporal_diagnostics = TemporalDiagnostics()  # new stages count from 0
        segmenter, self._segmenter = self._segmenter, None
        if segmenter is not None:
            segmenter.release()
            self.versions.release()

    def _camera_keys(self) -> list[str]:
        return [camera.key for camera in self.cameras]

    # -- callbacks ---------------------------------------------------------------------------

    def _log(self, level: str, message: str) -> None:
        getattr(self.get_logger(), level)(message)

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
        (last_time, last), self._last_diag = self._last_diag, (now, snapshots)
        pending = pending_info(self._vocabulary.pending(), self.versions.version)
        info = node_info(
            self.get_name(), self._state_label, self._failure, self._segmenter, self._value,
            self.versions.version, pending,
        )  # fmt: skip
        active = self._state_label == "active"
        points = [camera.points_status(self.get_name(), active) for camera in self.cameras]
        temporal = self._temporal_diagnostics.statuses(self.get_name(), self.temporal)
        msg = DiagnosticArray(
            status=node_statuses(info, self._camera_keys(), snapshots, last, now - last_time)
            + [status for status in points if status is not None]
            + temporal
        )
        msg.header.stamp = self.get_clock().now().to_msg()
        try:
            self._diag_pub.publish(msg)
        except Exception:  # the context is going away
            pass
