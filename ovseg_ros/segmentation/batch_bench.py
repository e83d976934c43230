"""Inputs of the several-cameras benchmark (``ovseg-bench --cameras``, in
``ovseg_ros.tools.bench_cameras``): its vocabulary and one deterministic frame per camera."""

from __future__ import annotations

import numpy as np

VOCABULARY = ("background; sky; wall", "person", "chair", "table", "door", "floor", "car")


def camera_frame(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic ``uint8 [H, W, 3]`` frame of flat regions plus noise (one per camera)."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.uint8)
    rows = np.linspace(0, height, 4, dtype=int)
    cols = np.linspace(0, width, 5, dtype=int)
    for r0, r1 in zip(rows[:-1], rows[1:], strict=True):
        for c0, c1 in zip(cols[:-1], cols[1:], strict=True):
            image[r0:r1, c0:c1] = rng.integers(0, 256, 3)
    noise = rng.integers(-12, 13, image.shape)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
