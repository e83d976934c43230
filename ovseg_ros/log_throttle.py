"""Log throttling per kind of problem (no ROS).

One throttle for every bad-frame warning hides all kinds but the most frequent: a camera
sending oversized frames every 30 ms would mask a second camera's undecodable ones forever.
:class:`KindThrottle` lets the first message of each key through, then at most one per
period, and says how many were suppressed in between.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

MAX_KEYS = 1024  # keys come from a fixed set of kinds x cameras; a bound all the same


class KindThrottle:
    """At most one message per ``period_s`` for each key."""

    def __init__(self, period_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = period_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}

    def admit(self, key: Hashable) -> int | None:
        """None if a message for ``key`` must be dropped now; else how many were dropped
        since the last admitted one (0 for the first)."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            if last is None and len(self._last) >= MAX_KEYS:
                self._last.clear()
                self._suppressed.clear()
            self._last[key] = now
            return self._suppressed.pop(key, 0)


def problem_kind(exc: BaseException) -> str:
    """The kind of a frame problem: ``ImageConversionError.kind`` (encoding, size, step, data,
    decode, limit, ...) when it has one, else the exception's type name."""
    kind = getattr(exc, "kind", None)
    return kind if isinstance(kind, str) and kind else type(exc).__name__


def suppressed_note(count: int) -> str:
    """`` (N more of this kind since the last message)`` or ``""``."""
    return f" ({count} more of this kind since the last message)" if count else ""
