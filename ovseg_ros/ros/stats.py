"""Per-camera frame statistics of the node, without ROS: counters and latency windows, shared
by the executor callbacks (received, dropped), the worker (processed, invalid, errors) and
``/diagnostics`` (snapshots)."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

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
    computed: Counter = field(default_factory=Counter)  # output kind -> outputs made


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
    computed: dict[str, int] = field(default_factory=dict)  # output kind -> outputs made


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

    def record_frame(
        self,
        camera: str,
        inference_s: float,
        latency_s: float | None,
        outputs: Iterable[str] = (),
    ) -> None:
        """A processed frame: its inference time, for stamped frames now - stamp, and the
        kinds of output made for it."""
        stats = self.camera(camera)
        with self.lock:
            stats.processed += 1
            stats.computed.update(outputs)
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
        computed=dict(stats.computed),
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
        computed=dict(sum((Counter(p.computed) for p in parts), Counter())),
    )
