"""What ``Segmenter.segment`` returns: labels and confidence at the image size, and per-entry
probabilities computed at the image size only on demand."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from .postprocess import OutputMaps, entry_probability, reduce_scores
from .vocabulary import Vocabulary


class SegmentationResult:
    """One frame's output. ``labels`` (int32) and ``confidence`` (float32) are numpy ``[H, W]``
    at the input image's size.

    Memory is linear in pixels: the per-query scores stay at the processing resolution
    (``[Q, h, w]``, on the device) with two ``[H, W]`` normaliser maps, and a class's
    probability map at the image size is computed when asked for (``probability_of``).
    ``probabilities`` (all classes, ``C x H x W``) is computed on first read and costs
    ``C x H x W`` floats plus the temporaries of the softmax: for evaluation, not for a robot's
    frame loop.
    """

    def __init__(
        self,
        maps: OutputMaps,
        scores: torch.Tensor,
        vocabulary: Vocabulary,
        timings: dict[str, float],
        *,
        offsets: Sequence[int],
        query_to_entry: torch.Tensor,
        logit_scale: float,
        prob_threshold: float,
    ) -> None:
        self.labels: np.ndarray = maps.labels.cpu().numpy()
        self.confidence: np.ndarray = maps.confidence.cpu().numpy()
        self.vocabulary = vocabulary
        self.timings = timings
        # Keep only the host copies of labels and confidence (no second copy on the GPU).
        self._maps = OutputMaps(
            torch.from_numpy(self.labels),
            torch.from_numpy(self.confidence),
            maps.max_logit,
            maps.norm,
        )
        self._scores = scores  # [Q, h, w] the scores that are upsampled to the image size
        self._offsets = list(offsets)
        self._query_to_entry = query_to_entry
        self._logit_scale = logit_scale
        self._prob_threshold = prob_threshold

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the image."""
        return tuple(self.labels.shape)

    @cached_property
    def probabilities(self) -> np.ndarray:
        """``float32 [C, H, W]``: per entry, sums to 1 over entries. Costly (see the class)."""
        upsampled = self._scores[None]
        if tuple(upsampled.shape[-2:]) != self.size:
            upsampled = F.interpolate(
                upsampled, size=self.size, mode="bilinear", align_corners=False
            )
        _, _, probs = reduce_scores(
            upsampled[0],
            self._query_to_entry,
            len(self.vocabulary),
            logit_scale=self._logit_scale,
            prob_threshold=self._prob_threshold,
        )
        return probs.float().cpu().numpy()

    def probability_of(self, index: int) -> np.ndarray:
        """``float32 [H, W]`` probability of entry ``index``; memory of one class, not ``C``."""
        probability = entry_probability(
            self._scores, self._maps, self._offsets, index, logit_scale=self._logit_scale
        )
        return probability.cpu().numpy()
