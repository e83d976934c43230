"""Reusable ``sensor_msgs/Image`` messages for a camera's output topics.

Every frame publishes images of the same size on the same topics, so each topic keeps one
message and one payload buffer: the output array's bytes are copied once, straight into the
buffer (no ``bytes`` object, no new buffer while the size stays the same). rclpy serialises
the message inside ``publish``, so the buffer is free again when ``publish`` returns.

The payload is an ``array.array('B')``: rclpy takes it as it is, whereas a numpy array or a
list is checked element by element on assignment (~150 ms for a 640x480 32FC1 image).
"""

from __future__ import annotations

import array

import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from ovseg_ros.image_conversion import image_fields_and_array


class OutputMessages:
    """One reusable Image message per output (``suffix``); not thread-safe (the worker's)."""

    def __init__(self) -> None:
        self._messages: dict[str, tuple[Image, array.array]] = {}

    def message(self, suffix: str, header: Header, data: np.ndarray, encoding: str) -> Image:
        """The message of ``suffix`` holding ``data`` ([H, W] or [H, W, 3]) in ``encoding``.

        Valid until the next call for the same ``suffix``: publish it before then.
        """
        fields, contiguous = image_fields_and_array(data, encoding)
        source = memoryview(contiguous).cast("B")  # [H * step] bytes, no copy
        msg, payload = self._messages.get(suffix, (None, None))
        if msg is None or len(payload) != source.nbytes:
            msg = Image()
            msg.data = array.array("B", [0]) * source.nbytes
            payload = msg.data  # the message's own array (the setter may have copied ours)
            self._messages[suffix] = (msg, payload)
        memoryview(payload)[:] = source  # the one copy
        msg.header = header
        msg.height, msg.width, msg.step = fields["height"], fields["width"], fields["step"]
        msg.encoding, msg.is_bigendian = fields["encoding"], fields["is_bigendian"]
        return msg

    def forget(self, suffix: str) -> None:
        """Drop the buffer of an output that is no longer published."""
        self._messages.pop(suffix, None)
