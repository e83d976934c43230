"""ROS-free segmentation engine: PEARL, MaskCLIP, LPOSS and LPOSS+ behind one facade.

>>> from ovseg_ros.segmentation import SegmenterConfig, build_segmenter
>>> seg = build_segmenter(SegmenterConfig(method="pearl", device="cuda"))
>>> seg.set_vocabulary(["background; sky; wall", "person; man; woman", "chair"])
>>> result = seg.segment(rgb)  # uint8 [H, W, 3] RGB
"""

from .config import DATASETS, METHODS, SegmenterConfig, dataset_preset
from .result import SegmentationResult
from .segmenter import Segmenter, build_segmenter
from .vocabulary import Vocabulary, VocabularyEntry, build_vocabulary, parse_entries
from .vocabulary_state import PreparedVocabulary, VocabularyCancelled
from .weights import WeightsNotFoundError


def tiny_config(method: str = "pearl", **overrides) -> SegmenterConfig:
    """A config with tiny random models of the real architectures (tests, CI, smoke runs)."""
    return SegmenterConfig(method=method, preset="tiny", device="cpu").replace(**overrides)


__all__ = [
    "DATASETS",
    "METHODS",
    "PreparedVocabulary",
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
