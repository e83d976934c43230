"""The fusion math on the scores' device: the previous probabilities warped onto the current
frame, and the weighted mix. Pure tensor functions, no state (the sampling grid comes from
:func:`ovseg_ros.temporal.flow.sampling_grid`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def warp_probabilities(probabilities: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The previous frame's probabilities seen from the current frame.

    Args:
        probabilities: ``[Q, h, w]`` of the previous frame.
        grid: ``[h, w, 2]`` float32, where each current pixel was in the previous frame, in
            ``grid_sample``'s coordinates (``align_corners=False``).
    Returns:
        ``[Q, h, w]``: bilinear samples of ``probabilities``, each a convex combination of four
        pixels (so still summing to 1; border pixels repeated outside). At integer
        displacements a sample is its source pixel's value, exactly where the grid is exact in
        float (e.g. power-of-two sizes).
    """
    return F.grid_sample(
        probabilities[None].float(),
        grid[None],
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )[0]


def fuse(
    now: torch.Tensor, warped: torch.Tensor, valid: torch.Tensor, alpha: float
) -> torch.Tensor:
    """``normalise((1 - alpha) now + alpha warped)`` where ``valid``, ``now`` elsewhere
    (normalised too, which changes it by float rounding only).

    Args:
        now, warped: ``[Q, h, w]`` distributions over queries (sum 1 over ``Q``).
        valid: ``[h, w]`` bool.
    Returns:
        ``[Q, h, w]`` float32, each pixel summing to 1.
    """
    # One pass: the weight of the past is alpha where valid and 0 elsewhere (lerp by 0 is
    # ``now`` exactly), instead of mixing everywhere and selecting.
    weight = valid.to(torch.float32).mul_(alpha)
    mixed = torch.lerp(now.float(), warped.float(), weight)  # (1 - w) now + w warped
    # The sum is at least (1 - a) max(now) > 0: no division by zero.
    return mixed.div_(mixed.sum(dim=0, keepdim=True))
