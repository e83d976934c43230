"""The node's frame worker, without ROS: latest-frame slots, per-camera stats, one thread.

Every camera (key ``""`` in the single-camera mode) has one slot. A frame that arrives while
the worker is busy replaces the one waiting in its camera's slot and is counted as dropped,
so the output follows the camera instead of lagging behind it. One exception absorbs the
bursts of a reliable transport (two frames delivered together after a retransmission): while
the engine takes less than half the camera's period, a second frame may wait behind the
first, since both are done before the next one is due; an engine slower than that keeps
only the newest frame. The worker takes a *round*
(every camera with a waiting frame), applies parameter changes between rounds (never during
inference), then processes the round's frames one by one or, in batch mode, all together.
No camera starves: whatever the others send, a waiting frame is in the next round. Executor
callbacks only call :meth:`Worker.submit`, which never waits for the GPU.
"""

from __future__ import annotations

import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LATENCY_WINDOW = 600  # samples kept for the percentiles (~20 s at 30 Hz)
MEDIAN_WINDOW = 15  # recent inference times that decide whether a burst can be absorbed
COUNTERS = (
    "received",
    "processed",
    "dropped",
    "invalid",
    "errors",
    "qos_incompatible",
    "input_lost",
)


@dataclass
class Frame:
    """One input message of camera ``camera`` (an Image, or a CompressedImage)."""

    camera: str
    message: Any
    compressed: bool
    lost_before: int = 0  # frames the camera sent just before this one that never arrived
    period_s: float | None = None  # the camera's estimated period, when known


@dataclass
class CameraStats:
    """Counters and latency windows of one camera (guarded by :attr:`Stats.lock`)."""

    received: int = 0
    processed: int = 0
    dropped: int = 0  # replaced in the slot before the worker took them
    invalid: int = 0  # undecodable frames
    errors: int = 0  # exceptions while processing
    qos_incompatible: int = 0  # publishers whose QoS cannot match the subscription
    input_lost: int = 0  # sent by the camera, never arrived (estimated from the stamps)
    latency: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))  # s
    inference: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))  # s
    last_error: str = ""


@dataclass(frozen=True)
class StatsSnapshot:
    """A consistent copy of one camera's stats (or of their sum over cameras)."""

    received: int = 0
    processed: int = 0
    dropped: int = 0
    invalid: int = 0
    errors: int = 0
    qos_incompatible: int = 0
    input_lost: int = 0
    latency: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [N] seconds
    inference: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [N] seconds
    last_error: str = ""


class Stats:
    """Per-camera stats shared by the worker, the executor callbacks and diagnostics."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._cameras: dict[str, CameraStats] = {}

    def camera(self, key: str) -> CameraStats:
        """The live stats of camera ``key`` (created on first use); lock to read several."""
        with self.lock:
            return self._cameras.setdefault(key, CameraStats())

    def count(self, camera: str, counter: str, n: int = 1) -> None:
        if counter not in COUNTERS:
            raise KeyError(f"unknown counter {counter!r}")
        stats = self.camera(camera)
        with self.lock:
            setattr(stats, counter, getattr(stats, counter) + n)

    def record_frame(self, camera: str, inference_s: float, latency_s: float | None) -> None:
        """A processed frame: its inference time and, for stamped frames, now - stamp."""
        stats = self.camera(camera)
        with self.lock:
            stats.processed += 1
            stats.inference.append(inference_s)
            if latency_s is not None:
                stats.latency.append(latency_s)

    def median_inference(self, camera: str) -> float | None:
        """Median of the camera's recent inference times (s), None before its first frame."""
        stats = self.camera(camera)
        with self.lock:
            recent = list(stats.inference)[-MEDIAN_WINDOW:]
        return float(np.median(recent)) if recent else None

    def record_error(self, camera: str, error: str) -> None:
        stats = self.camera(camera)
        with self.lock:
            stats.errors += 1
            stats.last_error = error

    def total(self, counter: str) -> int:
        """A counter summed over cameras."""
        with self.lock:
            return sum(getattr(s, counter) for s in self._cameras.values())

    def snapshot(self) -> dict[str, StatsSnapshot]:
        """Camera key -> a copy of its stats."""
        with self.lock:
            return {key: _copy(stats) for key, stats in self._cameras.items()}


def _copy(stats: CameraStats) -> StatsSnapshot:
    return StatsSnapshot(
        **{name: getattr(stats, name) for name in COUNTERS},
        latency=np.array(stats.latency, dtype=np.float64),
        inference=np.array(stats.inference, dtype=np.float64),
        last_error=stats.last_error,
    )


def combined(snapshots: dict[str, StatsSnapshot]) -> StatsSnapshot:
    """The sum over cameras (latencies concatenated; the last error of any camera)."""
    parts = list(snapshots.values())
    if not parts:
        return StatsSnapshot()
    return StatsSnapshot(
        **{name: sum(getattr(p, name) for p in parts) for name in COUNTERS},
        latency=np.concatenate([p.latency for p in parts]),
        inference=np.concatenate([p.inference for p in parts]),
        last_error=next((p.last_error for p in reversed(parts) if p.last_error), ""),
    )


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
    """One thread: ``between_rounds()``, then ``process(frame)`` for each frame of a round,
    or with ``batch=True`` ``process(frames)`` once with the round's frames (one per camera).

    An exception in either is counted in the stats of the cameras concerned (``""`` for
    ``between_rounds``) and reported to ``on_error(message)``; the worker keeps going.
    """

    def __init__(
        self,
        process: Callable[[Any], None],
        between_rounds: Callable[[], None],
        stats: Stats,
        on_error: Callable[[str], None],
        *,
        batch: bool = False,
    ) -> None:
        self._process, self._between_rounds, self._batch = process, between_rounds, batch
        self.stats, self._on_error = stats, on_error
        self.slots = FrameSlots()
        self._busy = threading.Lock()  # held during a round
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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

    def start(self) -> None:
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
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            frames = self.slots.take_round(timeout=0.2)
            if self._stop.is_set():
                break
            with self._busy:
                self._guarded([""], self._between_rounds)
                if self._batch:  # the whole round in one call: segmented together
                    if frames and not self._stop.is_set():
                        self._guarded([f.camera for f in frames], self._process, frames)
                    continue
                for frame in frames:
                    if self._stop.is_set():
                        break
                    self._guarded([frame.camera], self._process, frame)

    def _guarded(self, cameras: list[str], function: Callable, *args: Any) -> None:
        try:
            function(*args)
        except Exception as exc:  # one bad frame or request must not stop the worker
            error = f"{type(exc).__name__}: {exc}"
            for camera in cameras:
                self.stats.record_error(camera, error)
            if not self._stop.is_set():
                self._on_error(f"{error}\n{traceback.format_exc()}")


class PendingChanges:
    """Parameter changes accepted by the executor, applied by the worker between rounds.

    (``classes`` changes go through :mod:`.vocabulary_updater`: they are encoded first.)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._confidence: list[str] | None = None
        self._knobs: dict[str, Any] = {}

    def add(self, confidence: list[str] | None = None, knobs: dict[str, Any] | None = None) -> bool:
        """Queue changes (a later one replaces an earlier one); True if anything was queued."""
        with self._lock:
            if confidence is not None:
                self._confidence = confidence
            self._knobs.update(knobs or {})
        return confidence is not None or bool(knobs)

    def take(self) -> tuple[list[str] | None, dict[str, Any]]:
        """``(confidence_classes, engine knobs)`` queued so far, and forget them."""
        with self._lock:
            taken = (self._confidence, self._knobs)
            self._confidence, self._knobs = None, {}
            return taken
