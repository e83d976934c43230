"""Several frames through one model: windows batched across frames, refiners batched across
frames of the same shape. Pure tensor functions used by ``Segmenter.segment_batch``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import clip_backbone as clip
from .pearl import tlp_pool_factors, tlp_solve
from .postprocess import CHUNK_ELEMENTS

Norm = tuple[torch.Tensor, torch.Tensor]  # mean, std [1, 3, 1, 1]
WindowOutputs = tuple[torch.Tensor, tuple[int, int]]  # per-window tensor, patch grid


def pearl_tokens(visual: nn.Module, norm: Norm, windows: torch.Tensor) -> WindowOutputs:
    """Windows ``[n, 3, s, t]`` in [0, 1] -> tokens before PEARL's last block and the grid."""
    mean, std = norm
    return clip.tokens_before_last_block(visual, (windows - mean) / std, pearl_style=True)


def maskclip_features(visual: nn.Module, norm: Norm, windows: torch.Tensor) -> WindowOutputs:
    """Windows ``[n, 3, s, t]`` in [0, 1] -> MaskCLIP patch features ``[n, hw, D]``, grid."""
    mean, std = norm
    return clip.maskclip_patch_features(visual, (windows - mean) / std)


def dino_features(model: nn.Module, norm: Norm, windows: torch.Tensor) -> WindowOutputs:
    """Windows ``[n, 3, s, t]`` in [0, 1] -> DINO value features ``[n, hw, D]``, grid."""
    from .dino_backbone import dino_value_features

    mean, std = norm
    return dino_value_features(model, (windows - mean) / std)


def group_by_shape(shapes: Sequence[tuple[int, ...]]) -> list[list[int]]:
    """Indices grouped by equal shape, groups in order of first appearance."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(index)
    return list(groups.values())


def batched_windows(
    fn: Callable[[torch.Tensor], tuple],
    crops: Sequence[torch.Tensor],
    max_batch: int,
) -> list[tuple]:
    """Run ``fn`` over the windows of all frames together.

    Frames whose windows have the same size share forward passes of at most ``max_batch``
    windows (a ViT treats every window independently, so only the batch composition
    changes, not the maths).

    Args:
        fn: windows ``[n, 3, s, t]`` -> a tuple of tensors with ``n`` rows each and of other
            values that depend on the window size only (e.g. the patch grid).
        crops: per frame, its windows ``[n_i, 3, s_i, t_i]``.
    Returns:
        per frame, ``fn``'s outputs for its ``n_i`` windows.
    """
    results: list[tuple | None] = [None] * len(crops)
    for group in group_by_shape([c.shape[1:] for c in crops]):
        windows = torch.cat([crops[i] for i in group]) if len(group) > 1 else crops[group[0]]
        parts = [fn(windows[s : s + max_batch]) for s in range(0, windows.shape[0], max_batch)]
        outputs = [
            torch.cat(column) if isinstance(column[0], torch.Tensor) else column[0]
            for column in zip(*parts, strict=True)
        ]
        start = 0
        for i in group:
            n = crops[i].shape[0]
            results[i] = tuple(
                out[start : start + n] if isinstance(out, torch.Tensor) else out for out in outputs
            )
            start += n
    return results  # type: ignore[return-value]


def upsample_pool(
    x: torch.Tensor,
    size: tuple[int, int],
    factors: tuple[int, int],
    *,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> torch.Tensor:
    """``avg_pool(upsample(x, size), factors)`` for ``x`` ``[1, C, h, w]`` (float32), a few
    channels at a time: identical values, but only ``chunk_elements`` at ``size`` at once.
    Factors ``(1, 1)``: the upsampled map itself (no pooling)."""
    per_chunk = max(1, chunk_elements // max(size[0] * size[1], 1))
    pooled = []
    for start in range(0, x.shape[1], per_chunk):
        part = x[:, start : start + per_chunk]
        if tuple(part.shape[-2:]) != tuple(size):
            part = F.interpolate(part, size=size, mode="bilinear", align_corners=False)
        part = part.float()
        if factors != (1, 1):
            part = F.avg_pool2d(part, factors, stride=factors)
        pooled.append(part)
    return torch.cat(pooled, dim=1)


def text_aware_refine(
    images: Sequence[torch.Tensor],
    scores: Sequence[torch.Tensor],
    sizes: Sequence[tuple[int, int]],
    text: torch.Tensor,
    *,
    grid: int,
    iters: int,
) -> list[torch.Tensor]:
    """PEARL's TLP on logits upsampled to each frame's output size, without ever holding them.

    TLP averages the upsampled logits over cells of about ``1/grid`` of the image, so the
    pooled logits are built from a few upsampled classes at a time (``upsample_pool``); the
    solve runs on the pooled grid, batched over frames whose grids have the same shape. The
    refined logits stay at the grid: the caller upsamples them with the other classes (so
    per frame the memory at the output size is one chunk, not ``C x H x W``).

    Args:
        images: per frame ``[1, 3, h, w]`` CLIP-normalised image at the processing size.
        scores: per frame ``[1, Q, h, w]`` logits at the processing size.
        sizes: per frame output size ``(H, W)``.
    Returns:
        per frame refined logits ``[1, Q, gh, gw]`` (``[1, Q, H, W]`` when the frame is small
        enough for TLP to work at full resolution).
    """
    pooled = []
    for image, score, size in zip(images, scores, sizes, strict=True):
        factors = tlp_pool_factors(size[0], size[1], grid)
        pooled.append((upsample_pool(image, size, factors), upsample_pool(score, size, factors)))
    refined: list[torch.Tensor | None] = [None] * len(pooled)
    for group in group_by_shape([p[1].shape for p in pooled]):
        image = torch.cat([pooled[i][0] for i in group])
        logits = torch.cat([pooled[i][1] for i in group])
        out = tlp_solve(image, logits, text, iters=iters)
        for row, i in enumerate(group):
            refined[i] = out[row : row + 1]
    return refined  # type: ignore[return-value]
