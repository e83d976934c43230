"""Pair each color frame with the depth frame of nearest stamp (no ROS, thread-safe).

Only the few most recent depth frames are kept (no backlog): a color frame that arrives late,
after its depth partner has been pushed out, is unpaired and counted, never waited for.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from threading import Lock
from typing import Generic, TypeVar

from ovseg_ros.points.errors import PointsError

T = TypeVar("T")


@dataclass
class PairingStats:
    """Counters for ``/diagnostics``.

    ``depth_received``: depth frames pushed. ``paired``: color frames given a depth partner.
    ``unpaired``: color frames without one (``no_depth`` of them before any depth arrived,
    the rest had none within the tolerance).
    """

    depth_received: int = 0
    paired: int = 0
    unpaired: int = 0
    no_depth: int = 0


class DepthPairer(Generic[T]):
    """The ``capacity`` most recent depth frames.

    Stamps are integer nanoseconds (``sec * 10**9 + nanosec``), so no float rounding; the
    tolerance is in seconds (``depth_sync_tolerance``). A depth frame may pair with several
    color frames (a color camera faster than the depth camera).
    """

    def __init__(self, tolerance: float = 0.02, capacity: int = 4) -> None:
        if not tolerance >= 0.0:
            raise PointsError(f"depth_sync_tolerance must be >= 0 seconds, got {tolerance}")
        if capacity < 1:
            raise PointsError(f"the depth buffer needs a capacity >= 1, got {capacity}")
        self.tolerance_ns = round(float(tolerance) * 1e9)
        self._frames: deque[tuple[int, T]] = deque(maxlen=int(capacity))
        self._lock = Lock()
        self.stats = PairingStats()

    def push(self, stamp_ns: int, depth: T) -> None:
        """Keep a depth frame; the oldest one goes when the buffer is full."""
        with self._lock:
            self._frames.append((int(stamp_ns), depth))
            self.stats.depth_received += 1

    def pair(self, color_stamp_ns: int) -> T | None:
        """The depth frame of nearest stamp within the tolerance, or None (counted)."""
        color_stamp_ns = int(color_stamp_ns)
        with self._lock:
            best: tuple[int, T] | None = None
            for stamp, depth in self._frames:  # a handful of frames, not points
                gap = abs(stamp - color_stamp_ns)
                if gap <= self.tolerance_ns and (best is None or gap < best[0]):
                    best = (gap, depth)
            if best is None:
                self.stats.unpaired += 1
                if not self._frames:
                    self.stats.no_depth += 1
                return None
            self.stats.paired += 1
            return best[1]

    def stats_dict(self) -> dict[str, int]:
        """A snapshot of the counters."""
        with self._lock:
            return dict(vars(self.stats))
