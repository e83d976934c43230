"""Image geometry: mmseg-style rescaling, sliding windows and stitching of window scores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]  # y1, y2, x1, x2


def rescaled_size(height: int, width: int, short_side: int, max_long_side: int) -> tuple[int, int]:
    """Size after mmseg's ``Resize(scale=(max_long_side, short_side), keep_ratio=True)``.

    The scale is the largest that keeps the long side <= ``max_long_side`` and the short side
    <= ``short_side`` (``short_side=0`` keeps the image size). Sides never drop below 1.
    """
    if short_side <= 0:
        return height, width
    scale = min(max_long_side / max(height, width), short_side / min(height, width))
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray | None:
    """``uint8 [H, W, 3]`` resized to ``size`` exactly as mmseg does (OpenCV, bilinear), or
    ``None`` where OpenCV is not installed (then resize on the device; see ``resize_image``)."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[1, 3, H, W]`` float in 0..255 resized bilinearly and rounded like a uint8 resize.

    Without OpenCV's fixed-point arithmetic about one pixel in eight differs by one level.
    """
    out = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
    return out.round().clamp(0, 255)


def window_boxes(height: int, width: int, size: int, stride: int) -> list[Box]:
    """Sliding windows as mmseg places them: a regular grid, the last row/column flush with
    the border; windows are clipped to the image, so all have the same size."""
    rows = max(height - size + stride - 1, 0) // stride + 1
    cols = max(width - size + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2 = min(r * stride + size, height)
            x2 = min(c * stride + size, width)
            boxes.append((max(y2 - size, 0), y2, max(x2 - size, 0), x2))
    return boxes


def crop_windows(image: torch.Tensor, boxes: Sequence[Box]) -> torch.Tensor:
    """``[1, 3, H, W]`` -> ``[len(boxes), 3, h, w]``."""
    return torch.cat([image[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])


def stitch_windows(scores: torch.Tensor, boxes: Sequence[Box], size: tuple[int, int]):
    """Average per-window scores into the image; every pixel is covered at least once.

    Args:
        scores: ``[N, C, h, w]`` one map per box, already at the box's size.
        size: ``(H, W)`` of the image.
    Returns:
        ``[1, C, H, W]``.
    """
    out = scores.new_zeros((1, scores.shape[1], *size))
    count = scores.new_zeros((1, 1, *size))
    for score, (y1, y2, x1, x2) in zip(scores, boxes, strict=True):
        out[0, :, y1:y2, x1:x2] += score
        count[0, :, y1:y2, x1:x2] += 1
    return out / count


def grid_to_window(scores: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]):
    """Patch scores ``[N, h*w, C]`` -> bilinear maps ``[N, C, *size]``."""
    n, _, c = scores.shape
    maps = scores.transpose(1, 2).reshape(n, c, *grid)
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def stitch_patch_scores(
    scores: torch.Tensor, grid: tuple[int, int], boxes: Sequence[Box], size: tuple[int, int]
) -> torch.Tensor:
    """Per-window patch scores -> bilinear maps of each window, averaged into the image.

    The same as ``stitch_windows(grid_to_window(scores, grid, box_size), boxes, size)``, one
    window at a time, so peak memory is the image's ``C x H x W`` plus one window's, not all
    windows' full-resolution maps at once.

    Args:
        scores: ``[N, h*w, C]`` patch scores of the ``N`` windows (row-major patch grid).
        boxes: ``N`` windows ``(y1, y2, x1, x2)``.
    Returns:
        ``[1, C, H, W]``.
    """
    n, _, c = scores.shape
    out = scores.new_zeros((1, c, *size))
    count = scores.new_zeros((1, 1, *size))
    maps = scores.transpose(1, 2).reshape(n, c, *grid)
    for window, (y1, y2, x1, x2) in zip(maps, boxes, strict=True):
        up = F.interpolate(
            window[None], size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False
        )
        out[:, :, y1:y2, x1:x2] += up
        count[:, :, y1:y2, x1:x2] += 1
    return out / count
