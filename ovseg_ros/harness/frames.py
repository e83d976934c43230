"""The harness's test frame: a red left half and a blue right half with some noise, which
even the tiny random models tell apart; as pixels and as a stamped rgb8 message."""

from __future__ import annotations

import numpy as np
from sensor_msgs.msg import Image

from ovseg_ros.stamps import split_ns


def two_tone_rgb(width: int = 64, height: int = 48, seed: int = 0) -> np.ndarray:
    """``uint8 [H, W, 3]``: (200, 40, 40) left, (40, 40, 200) right, noise +-20 from ``seed``."""
    rng = np.random.default_rng(seed)
    pixels = np.empty((height, width, 3), np.int16)
    pixels[:, : width // 2] = (200, 40, 40)
    pixels[:, width // 2 :] = (40, 40, 200)
    pixels += rng.integers(-20, 21, pixels.shape, dtype=np.int16)
    return pixels.clip(0, 255).astype(np.uint8)


def rgb8_message(pixels: np.ndarray, stamp_ns: int = 0, frame_id: str = "camera") -> Image:
    """``pixels`` (``uint8 [H, W, 3]``, RGB) as an rgb8 Image stamped ``stamp_ns``."""
    height, width = pixels.shape[:2]
    msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = split_ns(stamp_ns)
    msg.data = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    return msg


def stamped_frame(sec: int, width: int = 64, height: int = 48) -> Image:
    """The two-tone frame stamped ``sec`` seconds, its noise seeded by ``sec``."""
    return rgb8_message(two_tone_rgb(width, height, seed=sec), sec * 1_000_000_000)
