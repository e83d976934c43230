"""The settings of temporal fusion (``temporal_alpha``, ``temporal_reset_s``) and the warm-up a
fleet window needs to match a single run."""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_ALPHA = 0.95  # the weight of the past; closer to 1 the labels would barely follow the scene
DEFAULT_RESET_S = 0.5
MAX_RESET_S = 3600.0
# A fleet window (ovseg-replay --ray) starts this close to a single run's fused state.
CONVERGENCE = 1e-6
MAX_WARMUP = 10_000
# What fusion holds per frame, for the node's memory budget: the state, the scores cleaned,
# their distribution, the warped state, the mix (normalised in place) and its log, each
# [Q, h, w].
MEMORY_TERM = "temporal fusion (temporal_alpha)"
MEMORY_CLASS_MAPS = 6


@dataclass(frozen=True)
class TemporalSettings:
    """``alpha``: weight of the motion-compensated previous probabilities, in
    ``[0, MAX_ALPHA]``; 0 turns fusion off. ``reset_s``: a stamp gap above this (seconds)
    drops the state. ``ValueError`` for values out of range (NaN and inf included)."""

    alpha: float = 0.0
    reset_s: float = DEFAULT_RESET_S

    def __post_init__(self) -> None:
        if not (isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha <= MAX_ALPHA):
            raise ValueError(f"temporal_alpha must be in [0, {MAX_ALPHA}], got {self.alpha!r}")
        if not (isinstance(self.reset_s, (int, float)) and 0.0 < self.reset_s <= MAX_RESET_S):
            raise ValueError(
                f"temporal_reset_s must be in (0, {MAX_RESET_S:g}] seconds, got {self.reset_s!r}"
            )

    @property
    def enabled(self) -> bool:
        return self.alpha > 0.0


def warmup_frames(alpha: float, tolerance: float = CONVERGENCE) -> int:
    """Frames after which the state no longer depends on where fusion started, to ``tolerance``.

    The fused probabilities are ``(1 - a) p_now + a warp(p_prev)``: a difference in the state
    ``k`` frames back reaches the current frame scaled by at most ``a^k`` (warping is a convex
    combination, the renormalisation divides by a sum near 1), so ``k = ceil(log(tol) /
    log(a))`` frames bring two runs started apart within ``tol``: 28 at ``a = 0.6``, 270 at
    the maximum 0.95; 0 when fusion is off.
    """
    if alpha <= 0.0:
        return 0
    if not 0.0 < tolerance < 1.0:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    return min(MAX_WARMUP, math.ceil(math.log(tolerance) / math.log(alpha)))
