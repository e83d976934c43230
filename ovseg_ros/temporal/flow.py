"""Motion between two frames on small grey images: dense optical flow (OpenCV's DIS) in both
directions, where it is reliable (forward-backward consistent), and how badly the previous
frame explains the current one once warped (the scene-cut test). numpy in, numpy out.

OpenCV is imported when first needed: without it the package works, only temporal fusion is
unavailable (:func:`opencv_problem` says so in one line).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Long side of the grey thumbnails the flow runs on (a 640x480 frame: 160x120). DIS at this
# size costs well under a millisecond per direction on one CPU core; a camera's motion
# between two frames at video rate is a few thumbnail pixels, which DIS resolves to a tenth.
FLOW_LONG_SIDE = 160
MIN_FLOW_SIDE = 16  # thinner thumbnails are padded for DIS (see MotionEstimator._flows)
# Thumbnails are scaled to this mean grey level: auto-exposure changes the gain between frames,
# which would otherwise read as a residual everywhere (and bias the flow).
MEAN_LEVEL = 128.0
# Forward-backward consistency (Sundaram et al., ECCV 2010): the flow at x and the reverse
# flow where it lands must cancel to within 1% of their squared lengths plus this (thumbnail
# pixels squared); elsewhere (occlusions, newly visible content, failed matches) the frame is
# used alone.
CONSISTENCY_PX2 = 0.5
CONSISTENCY_RELATIVE = 0.01
# A scene cut: the mean absolute difference between the current thumbnail and the warped
# previous one, both box-filtered over CUT_BOX pixels (sensor noise averages out, a different
# scene does not), over the pixels the flow maps into the previous frame, relative to the mean
# level. Measured on the synthetic video of ``ovseg-bench temporal`` (frames of 64x48 to
# 640x480, noise of 8 and 20 grey levels, pans and zooms): 0.006-0.018 between consecutive
# frames, 0.15-0.35 between unrelated scenes; the threshold sits between with room both sides.
CUT_RESIDUAL = 0.1
CUT_BOX = 5
# A pixel whose warped previous grey level differs from its own by more than this (grey levels,
# after the gain normalisation) or more than NOISE_FACTOR times the frame's mean difference
# (the sensor noise, where the thumbnail averages little of it away) is not the same surface:
# content a moving object uncovered. Where the flow is smooth across an object's trailing
# edge, this is what catches the uncovered background.
PIXEL_RESIDUAL = 12
NOISE_FACTOR = 4.0
# A moving object's labels reach beyond its own pixels (a method labels by patches of 14-16
# processing pixels, and propagates): the pixels within this many thumbnail pixels of content
# the residual flags (4 px each at 640x480) are new content too. Measured on the benchmark's
# video (the trail columns): without it, where a moving disk had been two frames earlier, 0.5
# (PEARL) to 2 (MaskCLIP) more pixels in a hundred were mislabelled than without fusion; with
# it, as many as without fusion.
CONTENT_MARGIN = 2


class OpenCVMissing(RuntimeError):
    """OpenCV (cv2) does not import here, or lacks DIS optical flow."""


def opencv_problem() -> str:
    """Why temporal fusion cannot run here (one line), or "" when it can."""
    try:
        import cv2
    except ImportError as exc:
        reason = f"OpenCV does not import ({exc})"
    else:
        if hasattr(cv2, "DISOpticalFlow_create"):
            return ""
        reason = f"OpenCV {getattr(cv2, '__version__', '?')} has no DIS optical flow"
    return (
        f"temporal fusion needs OpenCV's optical flow: {reason}; install python3-opencv "
        "(rosdep) or pip install opencv-python-headless"
    )


def _cv2() -> Any:
    problem = opencv_problem()
    if problem:
        raise OpenCVMissing(problem)
    import cv2

    return cv2


def thumbnail_size(height: int, width: int, long_side: int = FLOW_LONG_SIDE) -> tuple[int, int]:
    """``(h, w)`` of the thumbnail of an ``height x width`` frame: the long side at most
    ``long_side`` (smaller frames keep their size), the aspect ratio kept."""
    scale = min(1.0, long_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def thumbnail(rgb: np.ndarray, long_side: int = FLOW_LONG_SIDE) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB -> ``uint8 [h, w]`` grey thumbnail (area-averaged, which also
    averages the sensor noise away) scaled to the mean level :data:`MEAN_LEVEL`."""
    cv2 = _cv2()
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    h, w = thumbnail_size(*grey.shape, long_side)
    if (h, w) != grey.shape:
        grey = cv2.resize(grey, (w, h), interpolation=cv2.INTER_AREA)
    mean = float(grey.mean())
    if mean <= 0.0:
        return grey
    return cv2.convertScaleAbs(grey, alpha=MEAN_LEVEL / mean)  # saturating, rounded


@dataclass(frozen=True)
class Motion:
    """The motion from the previous thumbnail to the current one.

    ``flow``: ``float32 [h, w, 2]`` (x, y) for each current thumbnail pixel, the displacement
    to where it was in the previous one (thumbnail pixels). ``valid``: ``bool [h, w]``, where
    that flow is forward-backward consistent and lands inside the previous thumbnail.
    ``residual``: the scene-cut measure (see :data:`CUT_RESIDUAL`).
    """

    flow: np.ndarray
    valid: np.ndarray
    residual: float

    @property
    def cut(self) -> bool:
        return self.residual > CUT_RESIDUAL


class MotionEstimator:
    """DIS optical flow between thumbnails (one instance per camera: DIS keeps buffers)."""

    def __init__(self) -> None:
        cv2 = _cv2()
        self._cv2 = cv2
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        self._kernel = np.ones((3, 3), np.uint8)
        self._content_kernel = np.ones((2 * CONTENT_MARGIN + 1,) * 2, np.uint8)
        self._coordinates: tuple[np.ndarray, np.ndarray] | None = None

    def estimate(self, previous: np.ndarray, current: np.ndarray) -> Motion:
        """The :class:`Motion` from ``previous`` to ``current`` (thumbnails of one size)."""
        if previous.shape != current.shape:
            raise ValueError(f"thumbnails differ in size: {previous.shape} vs {current.shape}")
        cv2 = self._cv2
        backward, forward = self._flows(previous, current)
        xs, ys = self._grid(current.shape)
        map_x, map_y = xs + backward[..., 0], ys + backward[..., 1]
        h, w = current.shape
        inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
        linear, edge = cv2.INTER_LINEAR, cv2.BORDER_REPLICATE
        returned = cv2.remap(forward, map_x, map_y, linear, borderMode=edge)
        bx, by, rx, ry = backward[..., 0], backward[..., 1], returned[..., 0], returned[..., 1]
        error = np.square(bx + rx) + np.square(by + ry)
        lengths = np.square(bx) + np.square(by) + np.square(rx) + np.square(ry)
        consistent = error <= CONSISTENCY_RELATIVE * lengths + CONSISTENCY_PX2
        warped = cv2.remap(previous, map_x, map_y, linear, borderMode=edge)
        difference = cv2.absdiff(current, warped)
        noise = float(difference[inside].mean()) if inside.any() else float(MEAN_LEVEL)
        same = (difference <= max(PIXEL_RESIDUAL, NOISE_FACTOR * noise)).view(np.uint8)
        same = cv2.erode(same, self._content_kernel, borderType=edge).view(bool)
        # Occlusion borders are blurred at this size: a pixel next to an unreliable one is not
        # trusted either.
        valid = (inside & consistent & same).view(np.uint8)
        valid = cv2.erode(valid, self._kernel, borderType=edge).view(bool)
        # The cut test compares local means (a box of CUT_BOX pixels): sensor noise averages
        # out, a different scene does not.
        box = (CUT_BOX, CUT_BOX)
        structural = cv2.absdiff(cv2.blur(current, box), cv2.blur(warped, box))[inside]
        residual = float(structural.mean()) / MEAN_LEVEL if structural.size else 1.0
        return Motion(backward, valid, residual)

    def _flows(self, previous: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """DIS flow current -> previous and previous -> current, ``float32 [h, w, 2]`` each.

        DIS refuses images below about a dozen pixels a side and crashes (OpenCV 4.x-5.1) on
        thin ones, whose coarsest pyramid level has no rows: a short side is padded (edge
        pixels repeated) to at least :data:`MIN_FLOW_SIDE` and a quarter of the long side
        (checked on every thumbnail shape), and the flow cropped back."""
        h, w = current.shape
        side = max(MIN_FLOW_SIDE, -(-max(h, w) // 4))
        pad_h, pad_w = max(0, side - h), max(0, side - w)
        if pad_h or pad_w:
            pad = (0, pad_h, 0, pad_w, self._cv2.BORDER_REPLICATE)
            previous = self._cv2.copyMakeBorder(previous, *pad)
            current = self._cv2.copyMakeBorder(current, *pad)
        backward = self._dis.calc(current, previous, None)  # current -> previous
        forward = self._dis.calc(previous, current, None)  # previous -> current
        return backward[:h, :w], np.ascontiguousarray(forward[:h, :w])

    def _grid(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``xs, ys`` ``float32 [h, w]`` pixel coordinates (kept while the size holds)."""
        if self._coordinates is None or self._coordinates[0].shape != shape:
            h, w = shape
            self._coordinates = np.meshgrid(
                np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
            )
        return self._coordinates


def sampling_grid(
    flow: np.ndarray, valid: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """A thumbnail motion as ``grid_sample``'s sampling grid at the processing resolution.

    Args:
        flow: ``float32 [fh, fw, 2]``, for each current pixel the displacement (x, y) to where
            it was in the previous frame, in thumbnail pixels.
        valid: ``bool [fh, fw]``.
        size: ``(h, w)`` of the processing resolution.
    Returns:
        ``grid float32 [h, w, 2]``: where each processing pixel samples the previous frame, in
        ``grid_sample``'s coordinates (``align_corners=False``: -1 and 1 are the outer pixel
        edges); ``valid bool [h, w]``: the flow is reliable there (bilinear weight of valid
        thumbnail pixels over one half) and the sample lies inside the previous frame. The flow
        is resized bilinearly with pixel centres aligned and its vectors scaled by ``w / fw``,
        ``h / fh``.
    """
    cv2 = _cv2()
    h, w = size
    fh, fw = valid.shape
    if (fh, fw) != (h, w):
        flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)
        flow *= np.array([w / fw, h / fh], np.float32)
        valid = cv2.resize(valid.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
    xs = np.arange(w, dtype=np.float32)[None, :] + flow[..., 0]
    ys = np.arange(h, dtype=np.float32)[:, None] + flow[..., 1]
    inside = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)
    grid = np.empty((h, w, 2), np.float32)
    np.multiply(xs, 2.0 / w, out=grid[..., 0])
    np.multiply(ys, 2.0 / h, out=grid[..., 1])
    grid[..., 0] += 1.0 / w - 1.0
    grid[..., 1] += 1.0 / h - 1.0
    return grid, valid & inside
