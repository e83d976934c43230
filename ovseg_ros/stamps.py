"""Message stamps (``builtin_interfaces/Time``: rclpy or rosbags objects) as integer
nanoseconds, and back; no ROS needed."""

from __future__ import annotations

from typing import Any

NS_PER_S = 1_000_000_000


def stamp_ns(stamp: Any) -> int:
    """A ``builtin_interfaces/Time`` (anything with ``sec`` and ``nanosec``) in nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def split_ns(ns: int) -> tuple[int, int]:
    """Nanoseconds -> ``(sec, nanosec)`` as a ``builtin_interfaces/Time`` holds them."""
    return divmod(int(ns), NS_PER_S)


def stamp_text(ns: int) -> str:
    """Nanoseconds as ``sec.nanosec`` with nine digits (``12.000000500``), for messages."""
    sec, nanosec = split_ns(ns)
    return f"{sec}.{nanosec:09d}"
