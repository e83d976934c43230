"""The node's frame worker, without ROS: latest-frame slots per camera, one thread, and what it
does per round (:class:`RoundJob`).

Every camera (key ``""`` in the single-camera mode) has one slot. A frame that arrives while
the worker is busy replaces the one waiting in its camera's slot and is counted as dropped,
so the output follows the camera instead of lagging behind it. One exception absorbs the
bursts of a reliable transport (two frames delivered together after a retransmission): while
the engine takes less than half the camera's period, a second frame may wait behind the
first, since both are done before the next one is due; an engine slower than that keeps
only the newest frame. The worker takes a *round* (the oldest waiting frame of every camera
with one), lets the job apply parameter changes (never during inference), then hands it the
whole round. No camera starves: whatever the others send, a waiting frame is in the next
round. Executor callbacks only call :meth:`Worker.submit`, which never waits for the GPU.

A frame's path: the camera's subscription callback -> :meth:`Worker.submit` -> the worker
thread -> :meth:`RoundJob.process` -> :func:`ovseg_ros.pipeline.process_frames` (typed results)
-> the vocabulary's ``valid_from`` (once per round) -> each camera's one ``publish`` call.
Parameter changes accepted by the node's callback wait in :class:`PendingChanges` and are
applied by :meth:`RoundJob.between_rounds`, so every frame sees one consistent set of them.
"""

from __future__ import annotations

import threading
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ovseg_ros.image_conversion import ImageConversionError
from ovseg_ros.log_throttle import KindThrottle, problem_kind, suppressed_note
from ovseg_ros.pipeline import (
    FrameInput,
    FrameResult,
    complete_objects,
    per_class_topics,
    process_frames,
)
from ovseg_ros.points_stage import PointsSettings
from ovseg_ros.ros.stats import Stats
from ovseg_ros.ros.versions import VersionLog
from ovseg_ros.ros.vocabulary_updater import VocabularyUpdater
from ovseg_ros.stamps import stamp_ns
from ovseg_ros.temporal import TemporalFusion, TemporalSettings

WARN_THROTTLE_S = 5.0  # per camera and kind of problem


@dataclass
class Frame:
    """One input message of camera ``camera`` (an Image, or a CompressedImage)."""

    camera: str
    message: Any
    compressed: bool
    lost_before: int = 0  # frames the camera sent just before this one that never arrived
    period_s: float | None = None  # the camera's estimated period, when known


class Job(Protocol):
    """What the worker thread runs (the node's :class:`RoundJob`)."""

    def between_rounds(self) -> None:
        """Apply queued changes; called before every round, and when woken."""

    def process(self, frames: list[Frame]) -> None:
        """Segment and publish one round: at most one frame per camera."""

    def on_error(self, message: str) -> None:
        """A round or a change failed (already counted in the stats): report it."""


class FrameSlots:
    """One latest-frame slot per camera: ``put`` replaces a frame nobody has taken yet (or,
    with ``depth=2``, the older of two waiting frames)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        # camera -> waiting frames, oldest first; insertion order = arrival order of the round
        self._frames: dict[str, deque[Frame]] = {}
        self._woken = False

    def put(self, frame: Frame, depth: int = 1) -> bool:
        """Queue ``frame`` behind at most ``depth - 1`` waiting frames of its camera; True if
        that pushed out a waiting frame."""
        with self._cond:
            waiting = self._frames.pop(frame.camera, None) or deque()
            waiting.append(frame)
            replaced = len(waiting) > max(depth, 1)
            while len(waiting) > max(depth, 1):
                waiting.popleft()
            self._frames[frame.camera] = waiting
            self._cond.notify()
            return replaced

    def take_round(self, timeout: float) -> list[Frame]:
        """The oldest waiting frame of every camera, or [] after ``timeout`` or a :meth:`wake`."""
        with self._cond:
            if not self._frames and not self._woken:
                self._cond.wait(timeout)
            frames = [waiting.popleft() for waiting in self._frames.values()]
            self._frames = {camera: w for camera, w in self._frames.items() if w}
            self._woken = False
            return frames

    def wake(self) -> None:
        """Make a waiting :meth:`take_round` return now (e.g. to apply a parameter change)."""
        with self._cond:
            self._woken = True
            self._cond.notify()

    def clear(self) -> None:
        with self._cond:
            self._frames.clear()


class Worker:
    """One thread: ``job.between_rounds()``, then ``job.process(frames)`` with the round.

    An exception in either is counted in the stats of the cameras concerned (``""`` for
    ``between_rounds``) and reported to ``job.on_error``; the worker keeps going.
    """

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.slots = FrameSlots()
        self._busy = threading.Lock()  # held during a round
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._job: Job | None = None

    def submit(self, frame: Frame) -> None:
        """Executor side: count the frame and put it in its slot; returns at once."""
        self.stats.count(frame.camera, "received")
        if frame.lost_before:
            self.stats.count(frame.camera, "input_lost", frame.lost_before)
        if self.slots.put(frame, self._slot_depth(frame)):
            self.stats.count(frame.camera, "dropped")

    def _slot_depth(self, frame: Frame) -> int:
        """2 while the engine's median time is under half the camera's period, else 1."""
        if frame.period_s is None:
            return 1
        median = self.stats.median_inference(frame.camera)
        return 2 if median is not None and 2 * median < frame.period_s else 1

    def wake(self) -> None:
        self.slots.wake()

    def start(self, job: Job) -> None:
        """Run ``job`` on the worker thread (started now, or already running)."""
        self._job = job
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ovseg-worker", daemon=True)
        self._thread.start()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def drain(self, timeout: float) -> bool:
        """Drop waiting frames and wait for the round in progress; False on timeout."""
        self.slots.clear()
        if self._busy.acquire(timeout=timeout):
            self._busy.release()
            return True
        return False

    def stop(self, timeout: float) -> bool:
        """Stop the thread; False if it is still inside a long round after ``timeout``."""
        self._stop.set()
        self.slots.wake()
        thread, self._thread = self._thread, None
        if thread is None or thread is threading.current_thread():
            self._job = None
            return True
        thread.join(timeout)
        stopped = not thread.is_alive()
        if stopped:
            self._job = None
        return stopped

    def _run(self) -> None:
        while not self._stop.is_set():
            frames = self.slots.take_round(timeout=0.2)
            job = self._job
            if self._stop.is_set() or job is None:
                break
            with self._busy:
                self._guarded(job, [""], job.between_rounds)
                if frames and not self._stop.is_set():
                    self._guarded(job, [f.camera for f in frames], job.process, frames)

    def _guarded(self, job: Job, cameras: list[str], function: Callable, *args: Any) -> None:
        try:
            function(*args)
        except Exception as exc:  # one bad frame or request must not stop the worker
            error = f"{type(exc).__name__}: {exc}"
            for camera in cameras:
                self.stats.record_error(camera, error)
            if not self._stop.is_set():
                job.on_error(f"{error}\n{traceback.format_exc()}")


# -- the node's rounds ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Changes:
    """Accepted parameter changes not applied yet (None / empty: unchanged)."""

    confidence: list[str] | None = None
    overlay_alpha: float | None = None
    points: PointsSettings | None = None
    knobs: dict[str, Any] | None = None
    masks: list[str] | None = None
    temporal: TemporalSettings | None = None

    @property
    def per_class_changed(self) -> bool:
        """Whether the per-class topics change."""
        return self.confidence is not None or self.masks is not None

    def __bool__(self) -> bool:
        optional = (self.confidence, self.masks, self.overlay_alpha, self.points, self.temporal)
        return any(v is not None for v in optional) or bool(self.knobs)


class PendingChanges:
    """Parameter changes accepted by the executor, applied by the worker between rounds.

    (``classes`` changes go through :mod:`.vocabulary_updater`: they are encoded first.)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending = Changes()

    def add(self, changes: Changes) -> bool:
        """Queue ``changes`` (a later value replaces an earlier one); True if anything was."""

        def newer(name: str) -> Any:
            value = getattr(changes, name)
            return value if value is not None else getattr(old, name)

        with self._lock:
            old = self._pending
            self._pending = Changes(
                confidence=newer("confidence"),
                masks=newer("masks"),
                overlay_alpha=newer("overlay_alpha"),
                points=newer("points"),
                temporal=newer("temporal"),
                knobs={**(old.knobs or {}), **(changes.knobs or {})},
            )
        return bool(changes)

    def take(self) -> Changes:
        """Everything queued so far, and forget it."""
        with self._lock:
            taken, self._pending = self._pending, Changes()
            return taken


class Camera(Protocol):
    """What a round needs of a camera (:class:`ovseg_ros.ros.camera.Camera`)."""

    key: str
    input_topic: str
    plan: Any  # ovseg_ros.pipeline.OutputPlan
    depth: Any  # ovseg_ros.points_stage.PointsStage | None
    camera_info: Any  # ovseg_ros.camera_info_input.CameraInfoInput

    def listening(self) -> frozenset[str]: ...

    def set_plan(self, class_topics: dict[str, int], overlay_alpha: float | None) -> None: ...

    def set_objects(self, enabled: bool) -> None: ...

    def publish(self, frame: FrameResult) -> None: ...

    def publish_objects(self, frame: FrameResult) -> None: ...

    def log_warnings(self, warnings: list[str]) -> None: ...

    def publish_label_info(
        self, vocabulary: Any, valid_from: int | None, threshold: float
    ) -> None: ...


@dataclass
class FrameSettings:
    """The node's per-frame settings that configure reads and parameter changes update."""

    confidence_classes: list[str]
    overlay_alpha: float
    max_pixels: int
    mask_classes: list[str] = field(default_factory=list)


class RoundJob:
    """The configured node's work on the worker thread: changes between rounds, then rounds.

    ``cameras`` publish their own outputs; ``publish_vocabulary(json)`` publishes on
    ``~/vocabulary``; ``logger`` (``info``/``warning``/``error``) and ``clock`` (``now()``,
    the node's, so sim time counts) are the node's. Nothing here calls back into the node.
    """

    def __init__(
        self,
        segmenter: Any,
        cameras: Sequence[Camera],
        *,
        settings: FrameSettings,
        stats: Stats,
        versions: VersionLog,
        publish_vocabulary: Callable[[str], None],
        vocabulary: VocabularyUpdater,
        changes: PendingChanges,
        logger: Any,
        clock: Any,
        temporal: dict[str, TemporalFusion] | None = None,
    ) -> None:
        self.segmenter = segmenter
        # Each camera's temporal fusion state (cameras without one: frames alone).
        self.temporal = temporal or {}
        self.cameras = {camera.key: camera for camera in cameras}
        self.settings = settings
        self.stats, self.versions = stats, versions
        self._publish_vocabulary = publish_vocabulary
        self._vocabulary, self._changes = vocabulary, changes
        self._logger, self._clock = logger, clock
        self._warnings = KindThrottle(WARN_THROTTLE_S)  # one throttle per kind of problem
        self.update_plans()
        self._publish_label_info()

    # -- between rounds ------------------------------------------------------------------------

    def between_rounds(self) -> None:
        """Apply the queued parameter changes and a vocabulary ready to take effect."""
        changes = self._changes.take()
        if changes.knobs:
            self.segmenter.update_config(**changes.knobs)
            self._logger.info(f"engine parameters updated: {changes.knobs}")
        if changes.temporal is not None:
            for stage in self.temporal.values():
                stage.set_settings(changes.temporal)
            self._logger.info(
                f"temporal fusion: alpha {changes.temporal.alpha:g}, reset after "
                f"{changes.temporal.reset_s:g} s"
            )
        if changes.points is not None:
            for camera in self.cameras.values():
                if camera.depth is not None:
                    camera.depth.set_settings(changes.points)
                    camera.set_objects(changes.points.objects.enabled)
        if changes.confidence is not None:
            self.settings = replace(self.settings, confidence_classes=changes.confidence)
        if changes.masks is not None:
            self.settings = replace(self.settings, mask_classes=changes.masks)
        if changes.overlay_alpha is not None:
            self.settings = replace(self.settings, overlay_alpha=changes.overlay_alpha)
        activated = self._vocabulary.activate(self.segmenter.activate_vocabulary)
        if activated is not None:
            # Published before any frame labelled with it.
            self._publish_vocabulary(
                self.versions.new_version(activated.vocabulary, list(self.cameras))
            )
            self._logger.info(activated.message(self.versions.version))
        if changes.knobs and "prob_threshold" in changes.knobs:
            self._publish_label_info()  # its threshold
        if activated is not None or changes.per_class_changed or changes.overlay_alpha is not None:
            self.update_plans()

    def update_plans(self) -> None:
        """Every camera's outputs for the current vocabulary and settings, applied to all
        cameras or (should creating a topic fail) to none."""
        vocabulary = self.segmenter.vocabulary
        topics, absent = per_class_topics(
            vocabulary, self.settings.confidence_classes, self.settings.mask_classes
        )
        for parameter, missing in absent.items():
            if missing:
                self._logger.warning(
                    f"{parameter} not in the vocabulary (no topic): {', '.join(missing)}; "
                    f"vocabulary: {', '.join(vocabulary.names)}"
                )
        previous = {key: camera.plan for key, camera in self.cameras.items()}
        try:
            for camera in self.cameras.values():
                camera.set_plan(topics, self.settings.overlay_alpha)
        except Exception as exc:  # noqa: BLE001 - checked before; never half-applied
            for key, camera in self.cameras.items():  # every camera back to its old topics
                camera.set_plan(previous[key].class_topics, previous[key].overlay_alpha)
            self._logger.error(f"per-class topics unchanged on every camera: {exc}")

    def _publish_label_info(self) -> None:
        """Each camera's ``~/label_info`` for the current version, once its ``valid_from`` for
        that camera is known (the cameras skip what they already sent)."""
        threshold = self.segmenter.config.prob_threshold
        for key, camera in self.cameras.items():
            camera.publish_label_info(
                self.versions.vocabulary, self.versions.valid_from.get(key), threshold
            )

    # -- a round ---------------------------------------------------------------------------------

    def process(self, frames: list[Frame]) -> None:
        """Segment the round's frames in one batch, publish each camera's outputs, then find
        and publish their 3D objects (the labels never wait for them)."""
        round_ = [(self.cameras[f.camera], f) for f in frames if f.camera in self.cameras]
        inputs = [
            FrameInput(
                frame.message,
                frame.compressed,
                camera.plan,
                camera.listening(),
                self.settings.max_pixels,
                camera.depth,
                camera.camera_info,
                temporal=self.temporal.get(camera.key),
            )
            for camera, frame in round_
        ]
        results = process_frames(self.segmenter, inputs)
        done = [
            (camera, frame, result)
            for (camera, frame), result in zip(round_, results, strict=True)
            if isinstance(result, FrameResult)
        ]
        stamps = {camera.key: stamp_ns(result.header.stamp) for camera, _, result in done}
        update = self.versions.frames(stamps)
        if update is not None:
            self._publish_vocabulary(update)  # before these frames' labels
            self._publish_label_info()
        for (camera, frame), result in zip(round_, results, strict=True):
            if isinstance(result, ImageConversionError):
                self._invalid(camera, frame, result)
                continue
            camera.publish(result)
        published = self._clock.now().nanoseconds
        for camera, _, result in done:
            camera.log_warnings(complete_objects(result))
            camera.publish_objects(result)
            stamp = stamps[camera.key]
            latency = (published - stamp) * 1e-9 if stamp > 0 else None
            self.stats.record_frame(camera.key, result.inference_s, latency, result.output_kinds())

    def on_error(self, message: str) -> None:
        """A round failed (the worker counted it): log it, throttled per exception type."""
        suppressed = self._warnings.admit(("error", message.split(":", 1)[0]))
        if suppressed is not None:
            self._logger.error(f"frame failed: {message}{suppressed_note(suppressed)}")

    def _invalid(self, camera: Camera, frame: Frame, error: ImageConversionError) -> None:
        self.stats.count(camera.key, "invalid")
        kind = problem_kind(error)
        suppressed = self._warnings.admit(("invalid", camera.key, kind))
        if suppressed is not None:
            self._logger.warning(
                f"skipping invalid frame [{kind}] ({camera.input_topic}, frame_id "
                f"{frame.message.header.frame_id!r}): {error}{suppressed_note(suppressed)}"
            )
