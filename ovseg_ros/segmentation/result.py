"""What ``Segmenter.segment`` returns: labels and confidence at the image size, and per-entry
probabilities computed at the image size only on demand."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np
import torch

from .postprocess import OutputMaps, entry_probability, reduce_scores, upsample_chunk
from .vocabulary import Vocabulary

MONO8_ENTRIES = 256  # vocabularies up to this size have uint8 label ids


def to_host(*tensors: torch.Tensor) -> list[np.ndarray]:
    """The tensors as numpy arrays. On CUDA: non-blocking copies into pinned host memory and
    one synchronisation for all of them (PyTorch's caching host allocator reuses the pinned
    blocks, so a warm frame loop allocates none); elsewhere ``.cpu()`` (a view on the CPU)."""
    if not tensors or any(t.device.type != "cuda" for t in tensors):
        return [t.cpu().numpy() for t in tensors]
    hosts = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
    for host, tensor in zip(hosts, tensors, strict=True):
        host.copy_(tensor, non_blocking=True)
    torch.cuda.current_stream(tensors[0].device).synchronize()
    return [host.numpy() for host in hosts]


class SegmentationResult:
    """One frame's output. ``labels`` (int32) and ``confidence`` (float32) are numpy ``[H, W]``
    at the input image's size; ``label_ids`` are the same labels as they left the device:
    uint8 for vocabularies of up to 256 entries (a quarter of the bytes), else int32.

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
        ids = maps.labels.to(torch.uint8) if len(vocabulary) <= MONO8_ENTRIES else maps.labels
        self.label_ids, self.confidence = to_host(ids, maps.confidence)  # [H, W] each
        self.vocabulary = vocabulary
        self.timings = timings
        # Keep only the host copies of labels and confidence (no second copy on the GPU).
        self._maps = OutputMaps(
            torch.from_numpy(self.label_ids),
            torch.from_numpy(self.confidence),
            maps.max_logit,
            maps.norm,
        )
        self._scores = scores  # [Q, h, w] the scores that are upsampled to the image size
        self._offsets = list(offsets)
        self._query_to_entry = query_to_entry
        self._logit_scale = logit_scale
        self._prob_threshold = prob_threshold

    @cached_property
    def labels(self) -> np.ndarray:
        """``int32 [H, W]`` label ids (widened from ``label_ids`` on first read)."""
        return self.label_ids.astype(np.int32, copy=False)

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the image."""
        return tuple(self.label_ids.shape)

    @cached_property
    def probabilities(self) -> np.ndarray:
        """``float32 [C, H, W]``: per entry, sums to 1 over entries. Costly (see the class)."""
        _, _, probs = reduce_scores(
            upsample_chunk(self._scores, self.size),
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
