"""ROS-free segmentation engine: PEARL, MaskCLIP, LPOSS and LPOSS+ behind one facade.

>>> from ovseg_ros.segmentation import SegmenterConfig, build_segmenter
>>> seg = build_segmenter(SegmenterConfig(method="pearl", device="cuda"))
>>> seg.set_vocabulary(["background; sky; wall", "person; man; woman", "chair"])
>>> result = seg.segment(rgb)  # uint8 [H, W, 3] RGB
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import DATASETS, METHODS, SegmenterConfig, dataset_preset
from .vocabulary import Vocabulary, VocabularyEntry, build_vocabulary, parse_entries
from .weights import WeightsNotFoundError

# The models' side imports torch (seconds): loaded on first use, so that reading the config
# or a vocabulary (the tools' argument parsing, the demo) does not.
_LAZY = {
    "ScoredBatch": ".scored",
    "SegmentationResult": ".result",
    "Segmenter": ".segmenter",
    "build_segmenter": ".segmenter",
    "PreparedVocabulary": ".vocabulary_state",
    "VocabularyCancelled": ".vocabulary_state",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def tiny_config(method: str = "pearl", **overrides) -> SegmenterConfig:
    """A config with tiny random models of the real architectures (tests, CI, smoke runs)."""
    return SegmenterConfig(method=method, preset="tiny", device="cpu").replace(**overrides)


__all__ = [
    "DATASETS",
    "METHODS",
    "PreparedVocabulary",
    "ScoredBatch",
    "SegmentationResult",
    "Segmenter",
    "SegmenterConfig",
    "Vocabulary",
    "VocabularyCancelled",
    "VocabularyEntry",
    "WeightsNotFoundError",
    "build_segmenter",
    "build_vocabulary",
    "dataset_preset",
    "parse_entries",
    "tiny_config",
]
