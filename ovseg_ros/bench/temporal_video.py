"""The synthetic video of ``ovseg-bench temporal``: a textured scene seen by a camera that pans,
zooms and rolls by known homographies, with a moving object, per-frame sensor noise and an
exposure drift; and the noise-free frames beside it.

Everything about the motion is known, so label flicker can be measured after compensating it
(:func:`correspondence`), over the pixels visible in both frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ovseg_ros.bench.scene import synthetic_image

RATE_HZ = 20.0
NOISE_SIGMA = 8.0  # grey levels, per pixel and frame
EXPOSURE_DRIFT = 0.05  # the gain drifts from 1 to 1 + this over the video (auto-exposure)
OBJECT_COLOR = (235, 30, 200)  # no scene region has it


@dataclass(frozen=True)
class Video:
    """``frames``: ``uint8 [H, W, 3]`` as a camera gives them (noise, exposure drift);
    ``clean``: the same views without either. ``homographies[t]``: ``[3, 3]`` frame ``t``
    pixel -> scene pixel. ``objects[t]``: ``bool [H, W]``, the moving object in frame ``t``.
    ``stamps_ns[t]``: the frame's stamp (:data:`RATE_HZ`)."""

    frames: list[np.ndarray]
    clean: list[np.ndarray]
    homographies: list[np.ndarray]
    objects: list[np.ndarray]
    stamps_ns: list[int]

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.frames[0].shape[:2]


def _scene(width: int, height: int, seed: int) -> np.ndarray:
    """``float32 [2H, 2W, 3]``: colour regions with a blotchy texture the flow can follow."""
    scene = synthetic_image(2 * width, 2 * height, seed=seed, regions=30).astype(np.float32)
    rng = np.random.default_rng(seed + 1)
    blotches = rng.normal(0.0, 1.0, (height // 8, width // 8)).astype(np.float32)
    blotches = cv2.resize(blotches, (2 * width, 2 * height), interpolation=cv2.INTER_CUBIC)
    return scene + 18.0 * blotches[..., None]


def camera_path(width: int, height: int, frames: int, motion: float = 1.0) -> list[np.ndarray]:
    """Frame -> scene homographies: per frame a pan of 0.3% of the width (and half that down),
    a zoom in of 0.4% and a roll of 0.1 degrees, about the scene's centre, all times
    ``motion`` (at 20 Hz and ``motion`` 1: 6% of the width per second, a slowly moving
    camera)."""
    homographies = []
    for t in range(frames):
        zoom = 1.0 - 0.004 * motion * t
        angle = np.deg2rad(0.1 * motion * t)
        c, s = np.cos(angle) * zoom, np.sin(angle) * zoom
        centre_x = width + 0.003 * motion * width * t - 0.03 * width
        centre_y = height + 0.0015 * motion * width * t - 0.015 * width
        to_centre = np.array([[1, 0, -width / 2], [0, 1, -height / 2], [0, 0, 1]])
        rotate = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        to_scene = np.array([[1, 0, centre_x], [0, 1, centre_y], [0, 0, 1]])
        homographies.append(to_scene @ rotate @ to_centre)
    return homographies


def make_video(
    width: int = 640,
    height: int = 480,
    frames: int = 24,
    *,
    seed: int = 0,
    noise: float = NOISE_SIGMA,
    drift: float = EXPOSURE_DRIFT,
    motion: float = 1.0,
) -> Video:
    """The video (deterministic for a ``seed``). The object, a disk of a fifth of the height,
    crosses the scene at 2.5% of the width per frame on top of the camera's motion."""
    scene = _scene(width, height, seed)
    rng = np.random.default_rng(seed + 2)
    homographies = camera_path(width, height, frames, motion)
    radius = height / 10
    out_frames, clean, objects = [], [], []
    for t, homography in enumerate(homographies):
        canvas = scene.copy()
        mask = np.zeros(scene.shape[:2], np.uint8)
        centre = (int(0.7 * width + 0.025 * width * t), int(1.0 * height))
        cv2.circle(mask, centre, int(radius), 1, -1)
        canvas[mask > 0] = OBJECT_COLOR
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        view = cv2.warpPerspective(canvas, homography, (width, height), flags=flags)
        covered = cv2.warpPerspective(
            mask, homography, (width, height), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
        )
        gain = 1.0 + drift * t / max(frames - 1, 1)
        noisy = view * gain + rng.normal(0.0, noise, view.shape).astype(np.float32)
        clean.append(np.clip(view, 0, 255).round().astype(np.uint8))
        out_frames.append(np.clip(noisy, 0, 255).round().astype(np.uint8))
        objects.append(covered > 0)
    stamps = [int(round(t * 1e9 / RATE_HZ)) for t in range(frames)]
    return Video(out_frames, clean, homographies, objects, stamps)


def correspondence(
    video: Video, t: int, back: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each pixel of frame ``t`` was in frame ``t - back`` (the known camera motion,
    nearest pixel): ``(rows [H, W], cols [H, W], visible [H, W] bool)``, ``visible`` where that
    lies inside frame ``t - back``."""
    height, width = video.size
    motion = np.linalg.inv(video.homographies[t - back]) @ video.homographies[t]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    points = np.stack([xs, ys, np.ones_like(xs)], axis=-1) @ motion.T
    x = np.rint(points[..., 0] / points[..., 2])
    y = np.rint(points[..., 1] / points[..., 2])
    visible = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    rows = np.clip(y, 0, height - 1).astype(np.intp)
    cols = np.clip(x, 0, width - 1).astype(np.intp)
    return rows, cols, visible
