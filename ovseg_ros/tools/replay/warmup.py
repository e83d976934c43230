"""Where a fleet window's temporal fusion warm-up starts: ``temporal_warmup`` image frames of
every image topic before the window, so that its first written frame has (to the
:data:`~ovseg_ros.temporal.CONVERGENCE` tolerance) the fused state a single run has there.

Only bag times are read to find the start (the frames themselves are segmented by the window's
pass, :func:`ovseg_ros.tools.replay.core.replay_stream` with ``warm_until``).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ovseg_ros.temporal import warmup_frames
from ovseg_ros.tools.replay.plan import ReplayOptions, plan_from_reader


def warmup_count(options: ReplayOptions) -> int:
    """Frames of each image topic a window fuses before its start (0: fusion off)."""
    if not options.temporal.enabled:
        return 0
    if options.temporal_warmup is not None:
        return options.temporal_warmup
    return warmup_frames(options.temporal.alpha)


def warmup_start(reader: Any, options: ReplayOptions, start: int | None) -> int | None:
    """The bag time from which a window starting at ``start`` warms its fusion up: that of the
    :func:`warmup_count`-th image frame before ``start`` of the topic reaching back furthest (the
    bag's first message when a topic has fewer); None without a warm-up (fusion off, a count
    of 0, or the bag's first window)."""
    count = warmup_count(options)
    first = reader.start_time
    if count <= 0 or start is None or start <= first:
        return None
    topics = set(plan_from_reader(reader, options).image_topics)
    connections = [c for c in reader.connections if c.topic in topics]
    # Reach back twice the span the frames take at the topics' mean rates; double until enough.
    period = max((reader.end_time - first) / max(c.msgcount, 1) for c in connections)
    span = max(int(2 * count * period), 1)
    while True:
        since = max(first, start - span)
        recent = {topic: deque(maxlen=count) for topic in topics}
        for connection, timestamp, _ in reader.messages(
            connections=connections, start=since, stop=start
        ):
            recent[connection.topic].append(timestamp)
        if since == first or all(len(times) == count for times in recent.values()):
            break
        span *= 2
    if since == first and any(len(times) < count for times in recent.values()):
        return first
    return min((times[0] for times in recent.values() if times), default=None)
