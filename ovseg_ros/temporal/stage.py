"""One camera's temporal fusion: the state it keeps between frames, when it drops it, and the
fusion stage between the engine's scoring and its reduction to labels.

Per frame (:func:`segment_frames` runs the steps for a batch of cameras):

1. :meth:`TemporalFusion.begin` (before the engine runs): the grey thumbnail and the optical
   flow against the previous frame's are computed on a worker thread, overlapping the
   segmentation; a size change, a stamp going backwards or a gap over ``reset_s`` is decided
   here (then no flow is computed).
2. :meth:`TemporalFusion.apply` (after ``Segmenter.score_batch``): with a state of the same
   vocabulary version and processing size and no scene cut, the distribution over queries
   ``p_now = softmax(logit_scale * scores)`` is fused with the previous one warped by the flow:
   ``normalise((1 - alpha) p_now + alpha warp(p_prev))`` where the flow is consistent, ``p_now``
   elsewhere; the fused distribution is the new state and goes back as scores
   (``log(p) / logit_scale``). Otherwise the state is dropped (a *reset*, counted by reason),
   the frame is used alone (its scores unchanged) and starts the new state.
3. ``Segmenter.finish_batch`` turns the scores into labels and confidence as for any frame: the
   synonym reduction, ``prob_threshold`` and the unlabeled value apply unchanged.

Fusion works on the distribution over the vocabulary's queries (synonyms), the one the
engine's reduction reads, rather than on the per-entry probabilities: that keeps the
reduction, and with it the unlabeled rule, exactly the engine's; with fusion off or after a
reset a frame's result is the engine's own, bit for bit.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ovseg_ros.segmentation.postprocess import query_probabilities, scores_from_probabilities
from ovseg_ros.temporal.flow import Motion, MotionEstimator, sampling_grid, thumbnail
from ovseg_ros.temporal.fusion import fuse, warp_probabilities
from ovseg_ros.temporal.settings import TemporalSettings

NS_PER_S = 1_000_000_000
# Why a state was dropped, in the order they are checked (the counters' names).
RESET_REASONS = ("vocabulary", "size", "backwards", "gap", "cut", "flow")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _flow_pool() -> ThreadPoolExecutor:
    """The one thread every camera's flow runs on (OpenCV releases the GIL meanwhile)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ovseg-flow")
        return _pool


@dataclass
class _State:
    """What the previous frame left: its fused distribution ``[Q, h, w]`` on the device."""

    probabilities: torch.Tensor
    thumbnail: np.ndarray  # uint8 [fh, fw]
    stamp_ns: int
    image_size: tuple[int, int]
    version: int  # the vocabulary's


@dataclass
class PendingFrame:
    """A frame between :meth:`TemporalFusion.begin` and :meth:`TemporalFusion.apply`."""

    stamp_ns: int
    image_size: tuple[int, int]
    work: Future  # -> (thumbnail, Motion | None, (grid, valid) at the state's size | None)
    reset: str | None  # decided before the engine ran


class TemporalFusion:
    """The fusion state of one camera (see the module docstring). Thread safety: ``begin`` and
    ``apply`` run on the frame path; ``set_settings``, ``clear`` and ``counters`` may be
    called from any thread."""

    def __init__(self, settings: TemporalSettings | None = None) -> None:
        self._lock = threading.Lock()
        self._settings = settings or TemporalSettings()
        self._state: _State | None = None
        self._estimator: MotionEstimator | None = None
        self._counts: Counter[str] = Counter()
        self.last_flow_error = ""  # why the flow last failed (reset "flow")

    @property
    def settings(self) -> TemporalSettings:
        return self._settings

    @property
    def enabled(self) -> bool:
        return self._settings.enabled

    def set_settings(self, settings: TemporalSettings) -> None:
        """New settings from the next frame on; turning fusion off drops the state."""
        with self._lock:
            self._settings = settings
            if not settings.enabled:
                self._state = None

    def clear(self) -> None:
        """Drop the state (not counted as a reset): the next frame starts afresh."""
        with self._lock:
            self._state = None

    def counters(self) -> dict[str, int]:
        """Since construction: ``frames_fused``, ``frames_alone`` (first frames and resets),
        ``resets_<reason>`` for every reason in :data:`RESET_REASONS`, and the microseconds
        spent: ``flow_time_us`` on the flow thread (thumbnail, flow, sampling grid; overlapping
        the segmentation) and ``fusion_time_us`` on the frame path (:meth:`apply`: waiting for
        the flow if it is not done, then the fusion's tensor work as the host sees it; on a GPU
        without waiting for the device)."""
        with self._lock:
            counts = dict(self._counts)
        keys = [
            "frames_fused",
            "frames_alone",
            *(f"resets_{r}" for r in RESET_REASONS),
            "flow_time_us",
            "fusion_time_us",
        ]
        return {key: counts.get(key, 0) for key in keys}

    # -- the frame path --------------------------------------------------------------------------

    def begin(self, rgb: np.ndarray, stamp_ns: int) -> PendingFrame:
        """Start a frame ``uint8 [H, W, 3]`` stamped ``stamp_ns``: its thumbnail, and the flow
        from the previous frame when there is one to fuse with, on the flow thread."""
        state = self._state
        size = (int(rgb.shape[0]), int(rgb.shape[1]))
        reset = None
        if state is not None:
            if size != state.image_size:
                reset = "size"
            elif stamp_ns < state.stamp_ns:
                reset = "backwards"
            elif stamp_ns - state.stamp_ns > self._settings.reset_s * NS_PER_S:
                reset = "gap"
        if state is None or reset is not None:
            work = _flow_pool().submit(self._motion, rgb, None, None)
        else:
            # The sampling grid is made at the state's processing size, on the flow thread too
            # (a different size at apply is a reset anyway).
            grid_size = tuple(state.probabilities.shape[-2:])
            work = _flow_pool().submit(self._motion, rgb, state.thumbnail, grid_size)
        return PendingFrame(stamp_ns, size, work, reset)

    def _motion(
        self, rgb: np.ndarray, previous: np.ndarray | None, grid_size: tuple[int, int] | None
    ) -> tuple[np.ndarray, Motion | None, tuple[np.ndarray, np.ndarray] | None]:
        started = time.perf_counter()
        try:
            current = thumbnail(rgb)
            if previous is None or grid_size is None:
                return current, None, None
            if self._estimator is None:
                self._estimator = MotionEstimator()
            motion = self._estimator.estimate(previous, current)
            return current, motion, sampling_grid(motion.flow, motion.valid, grid_size)
        finally:
            self._count_time("flow_time_us", started)

    def _count_time(self, key: str, started: float) -> None:
        with self._lock:
            self._counts[key] += round(1e6 * (time.perf_counter() - started))

    def apply(
        self, pending: PendingFrame, scores: torch.Tensor, logit_scale: float, version: int
    ) -> torch.Tensor:
        """The frame's scores ``[Q, h, w]`` after fusion (the same tensor when the frame is
        used alone); ``version``: the vocabulary version the scores belong to."""
        started = time.perf_counter()
        try:
            return self._apply(pending, scores, logit_scale, version)
        finally:
            self._count_time("fusion_time_us", started)

    def _apply(
        self, pending: PendingFrame, scores: torch.Tensor, logit_scale: float, version: int
    ) -> torch.Tensor:
        try:
            current, motion, sampling = pending.work.result()
        except Exception as exc:  # noqa: BLE001 - a frame the flow cannot take: no state
            with self._lock:
                self._state = None
                self._counts["frames_alone"] += 1
                self._counts["resets_flow"] += 1
                self.last_flow_error = f"{type(exc).__name__}: {exc}"
            return scores
        now = query_probabilities(scores, logit_scale)
        with self._lock:
            state, alpha = self._state, self._settings.alpha
        reason = pending.reset if state is not None else None
        if state is not None and reason is None:
            reason = _late_reset(state, now, version, motion)
        if state is None or reason is not None or alpha <= 0.0:
            self._commit(now, current, pending, version, "frames_alone", reason)
            return scores
        grid, valid = (torch.from_numpy(a).to(scores.device) for a in sampling)
        warped = warp_probabilities(state.probabilities, grid)
        fused = fuse(now, warped, valid, alpha)
        self._commit(fused, current, pending, version, "frames_fused", None)
        return scores_from_probabilities(fused, logit_scale)

    def _commit(
        self,
        probabilities: torch.Tensor,
        current: np.ndarray,
        pending: PendingFrame,
        version: int,
        kind: str,
        reason: str | None,
    ) -> None:
        with self._lock:
            self._counts[kind] += 1
            if reason is not None:
                self._counts[f"resets_{reason}"] += 1
            if not self._settings.enabled:  # turned off while this frame was in flight
                self._state = None
                return
            self._state = _State(
                probabilities, current, pending.stamp_ns, pending.image_size, version
            )


def _late_reset(
    state: _State, now: torch.Tensor, version: int, motion: Motion | None
) -> str | None:
    """The reasons to drop the state known only once the engine ran, or None."""
    if version != state.version:
        return "vocabulary"
    if tuple(now.shape) != tuple(state.probabilities.shape) or motion is None:
        return "size"  # the processing size (or the thumbnail's) changed
    if motion.cut:
        return "cut"
    return None


def segment_frames(
    segmenter: Any,
    images: Sequence[np.ndarray],
    stages: Sequence[TemporalFusion | None],
    stamps: Sequence[int],
    *,
    unlabeled: bool = True,
) -> list[Any]:
    """``segmenter.segment_batch(images, unlabeled=...)`` with each frame's fusion stage.

    ``stages[i]``: frame ``i``'s camera's :class:`TemporalFusion` (None, or disabled: the frame
    alone); ``stamps[i]``: its stamp in nanoseconds. Without an enabled stage this is exactly
    ``segment_batch``; otherwise the flows run while the engine scores the batch, and each
    enabled stage fuses its frame's scores before the reduction to labels.
    """
    active = [stage if stage is not None and stage.enabled else None for stage in stages]
    if not any(active):
        return segmenter.segment_batch(images, unlabeled=unlabeled)
    pending = [
        stage.begin(rgb, stamp) if stage is not None else None
        for stage, rgb, stamp in zip(active, images, stamps, strict=True)
    ]
    batch = segmenter.score_batch(images)
    version = batch.vocabulary.version
    with torch.inference_mode():  # the scores are inference tensors
        for index, (stage, frame) in enumerate(zip(active, pending, strict=True)):
            if stage is not None:
                scores = batch.scores[index]
                batch.scores[index] = stage.apply(frame, scores, batch.logit_scale, version)
    batch.timer.lap("temporal")
    return segmenter.finish_batch(batch, unlabeled=unlabeled)
