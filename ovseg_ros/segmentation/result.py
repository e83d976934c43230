"""What ``Segmenter.segment`` returns: labels and confidence at the image size, and per-entry
probabilities computed at the image size only on demand."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np
import torch

from .postprocess import OutputMaps, entry_probability, reduce_scores, upsample_chunk
from .sync import to_host
from .vocabulary import UINT8_LABEL_ENTRIES, Vocabulary


def host_maps(maps: Sequence[OutputMaps], num_entries: int) -> list[OutputMaps]:
    """The frames' labels and confidence ``[H, W]`` copied to the host, all of them with one
    ``to_host`` (one synchronisation per batch); ``max_logit`` and ``norm`` stay where they are.
    Labels leave the device as uint8 for vocabularies of up to 254 entries (a quarter of the
    bytes; their ids and the unlabeled value 255 fit), else int32."""
    compact = num_entries <= UINT8_LABEL_ENTRIES
    ids = [m.labels.to(torch.uint8) if compact else m.labels for m in maps]
    arrays = to_host(*ids, *(m.confidence for m in maps))
    n = len(maps)
    return [
        OutputMaps(torch.from_numpy(labels), torch.from_numpy(confidence), m.max_logit, m.norm)
        for m, labels, confidence in zip(maps, arrays[:n], arrays[n:], strict=True)
    ]


class SegmentationResult:
    """One frame's output. ``labels`` (int32) and ``confidence`` (float32) are numpy ``[H, W]``
    at the input image's size; ``label_ids`` are the same labels as they left the device:
    uint8 for vocabularies of up to 254 entries (a quarter of the bytes), else int32. ``maps``
    come from ``host_maps``: labels and confidence on the host (shared without a copy).
    ``unlabeled_id``: the label of pixels below ``prob_threshold`` when the segmenter was asked
    to mark them (``segment_batch(..., unlabeled=True)``), else None (they are entry 0).

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
        unlabeled_id: int | None = None,
    ) -> None:
        self.unlabeled_id = unlabeled_id
        self.label_ids = maps.labels.numpy()  # [H, W]; a device tensor here is an error
        self.confidence = maps.confidence.numpy()
        self.vocabulary = vocabulary
        self.timings = timings
        self._maps = maps
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
            self._scores,
            self._maps,
            self._offsets,
            index,
            logit_scale=self._logit_scale,
            query_to_entry=self._query_to_entry,
        )
        return probability.cpu().numpy()
