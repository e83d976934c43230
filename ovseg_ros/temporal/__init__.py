"""Temporal fusion: class probabilities that hold still across a camera's frames (opt-in).

Each camera keeps its previous frame's distribution over the vocabulary's queries at the
processing resolution; dense optical flow on small grey thumbnails (OpenCV DIS) warps it onto
the current frame, where it is mixed with the current one (``temporal_alpha``) wherever the flow
is forward-backward consistent. The state is dropped on a vocabulary or size change, a stamp
gap or a stamp going backwards, and a scene cut. The engine stays per-frame: fusion sits between
``Segmenter.score_batch`` and ``Segmenter.finish_batch`` (:func:`segment_frames`), for every
method. No ROS here; OpenCV is needed only once fusion is switched on (:func:`opencv_problem`).
"""

from ovseg_ros.temporal.flow import CUT_RESIDUAL, FLOW_LONG_SIDE, OpenCVMissing, opencv_problem
from ovseg_ros.temporal.settings import (
    CONVERGENCE,
    DEFAULT_RESET_S,
    MAX_ALPHA,
    MAX_RESET_S,
    MAX_WARMUP,
    MEMORY_CLASS_MAPS,
    MEMORY_TERM,
    TemporalSettings,
    warmup_frames,
)
from ovseg_ros.temporal.stage import RESET_REASONS, TemporalFusion, segment_frames

__all__ = [
    "CONVERGENCE",
    "CUT_RESIDUAL",
    "DEFAULT_RESET_S",
    "FLOW_LONG_SIDE",
    "MAX_ALPHA",
    "MAX_RESET_S",
    "MAX_WARMUP",
    "MEMORY_CLASS_MAPS",
    "MEMORY_TERM",
    "RESET_REASONS",
    "OpenCVMissing",
    "TemporalFusion",
    "TemporalSettings",
    "opencv_problem",
    "segment_frames",
    "warmup_frames",
]
