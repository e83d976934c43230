"""Vocabulary changes in two steps: prepare (validate + encode, any thread, may take long) and
activate (an atomic swap between frames)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .vocabulary import Vocabulary


class VocabularyCancelled(Exception):
    """A vocabulary change stopped before taking effect: cancelled by its caller, or superseded
    by a newer change."""


@dataclass(frozen=True)
class PreparedVocabulary:
    """A validated and encoded vocabulary, ready for ``Segmenter.activate_vocabulary``.

    ``vocabulary.version`` is 0 until activation assigns the real one. ``request`` orders the
    changes: a prepared vocabulary older than the newest request is never activated. Once
    activated (with its version) it is also the state the frame path reads (one attribute
    read: atomic).
    """

    vocabulary: Vocabulary
    text: torch.Tensor  # [Q, D] on the device, one row per synonym
    query_to_entry: torch.Tensor  # [Q] long, on the device
    offsets: tuple[int, ...]  # [C + 1] first query of each entry (queries grouped by entry)
    request: int
    encoded: int  # names the text model had to encode (the others came from the cache)
    seconds: float  # time spent preparing


def as_cancel_check(cancel: object) -> Callable[[], bool] | None:
    """``None``, a ``threading.Event``-like object (``is_set``) or a callable -> a callable."""
    if cancel is None:
        return None
    if hasattr(cancel, "is_set"):
        return cancel.is_set
    if callable(cancel):
        return cancel
    raise TypeError(f"cancel must be an Event or a callable, got {type(cancel).__name__}")
