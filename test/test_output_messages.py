"""Reusable output messages: the same fields and bytes as ``array_to_image_fields``, one
buffer per topic while the size stays, serialised (as ``publish`` does) with the right data."""

from __future__ import annotations

import array

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from ovseg_ros.image_conversion import ImageConversionError, array_to_image_fields
from ovseg_ros.ros.output_messages import OutputMessages


def header(sec: int) -> Header:
    h = Header(frame_id="camera")
    h.stamp.sec = sec
    return h


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64).astype(np.uint8), "mono8"),
        (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 7, "mono16"),
        (np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64), "32FC1"),
        (
            np.arange(48 * 64 * 3, dtype=np.uint32).reshape(48, 64, 3)[:, ::-1].astype(np.uint8),
            "rgb8",
        ),
    ],
)
def test_fields_and_bytes_match_array_to_image_fields(data, encoding) -> None:
    msg = OutputMessages().message("x", header(3), data, encoding)
    expected = array_to_image_fields(data, encoding)
    assert isinstance(msg.data, array.array)
    assert msg.data.tobytes() == expected.pop("data")
    assert {k: getattr(msg, k) for k in expected} == expected
    assert msg.header.stamp.sec == 3 and msg.header.frame_id == "camera"


def test_one_buffer_per_topic_refilled_in_place_and_serialised_right() -> None:
    messages = OutputMessages()
    rng = np.random.default_rng(0)
    frames = [rng.random((48, 64), dtype=np.float32) for _ in range(3)]
    first = messages.message("confidence", header(1), frames[0], "32FC1")
    buffer = first.data
    wire = serialize_message(first)  # what publish() sends for frame 0
    second = messages.message("confidence", header(2), frames[1], "32FC1")
    assert second is first and second.data is buffer  # reused, not reallocated
    labels = messages.message("labels", header(2), (frames[1] > 0.5).astype(np.uint8), "mono8")
    assert labels.data is not buffer  # another topic, another buffer
    for sec, msg, frame in ((1, None, frames[0]), (2, second, frames[1])):
        received = deserialize_message(wire if msg is None else serialize_message(msg), Image)
        assert received.header.stamp.sec == sec
        np.testing.assert_array_equal(
            np.frombuffer(received.data, np.float32).reshape(48, 64), frame
        )
    bigger = messages.message("confidence", header(3), np.ones((96, 128), np.float32), "32FC1")
    assert (bigger.height, bigger.width, len(bigger.data)) == (96, 128, 96 * 128 * 4)


def test_bad_output_array_is_refused() -> None:
    with pytest.raises(ImageConversionError, match="mono8 needs dtype uint8"):
        OutputMessages().message("labels", header(1), np.zeros((4, 4), np.int32), "mono8")
