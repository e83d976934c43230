"""The one error type of the point-cloud stage."""

from __future__ import annotations


class PointsError(ValueError):
    """Bad depth, camera_info or options: the cloud of this frame is skipped, nothing else.

    The message says what is wrong, so the node can warn (throttled) and count it.
    """
