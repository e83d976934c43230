"""Frames scored but not yet reduced to labels: ``Segmenter.score_batch``'s output, the input of
``Segmenter.finish_batch``.

The split lets a stage work on the per-query scores at the processing resolution between the
two (temporal fusion, :mod:`ovseg_ros.temporal`) while the engine stays per-frame: the
reduction (synonyms, ``prob_threshold``, the unlabeled value, upsampling to the image) is the
engine's own, whatever the stage did to the scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sync import StageTimer
from .vocabulary import Vocabulary
from .vocabulary_state import PreparedVocabulary


@dataclass
class ScoredBatch:
    """Per-query scores of a batch of frames, with everything their reduction needs.

    ``scores[i]``: ``[Q, h_i, w_i]`` float, frame ``i``'s score per vocabulary query (synonym)
    at its processing resolution, on the segmenter's device. A stage may replace an entry by
    another ``[Q, h', w']`` tensor on the same device (same ``Q``, any ``h', w'``); the
    reduction reads ``softmax(logit_scale * scores)`` over queries, so ``log(p) /
    logit_scale`` of a distribution ``p`` over queries reduces to the labels of ``p``
    (:func:`~.postprocess.scores_from_probabilities`). ``sizes[i]``: ``(H_i, W_i)`` of the
    input image, the size of the labels. ``state``, ``logit_scale`` and ``prob_threshold``
    are those the frames were scored with (a vocabulary or config change in between does
    not mix versions).
    """

    scores: list[torch.Tensor]
    sizes: list[tuple[int, int]]
    state: PreparedVocabulary
    logit_scale: float
    prob_threshold: float
    timer: StageTimer

    @property
    def vocabulary(self) -> Vocabulary:
        """The vocabulary (with its version) the scores' queries belong to."""
        return self.state.vocabulary

    def __len__(self) -> int:
        return len(self.scores)
