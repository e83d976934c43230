"""The evaluation loop: segment a data set's images, add them to the metrics, time the engine.

The segmenter is passed in (anything with ``segment(rgb, timed=True)`` returning labels and
stage timings), so nothing here imports the engine; progress is a callback. ``ovseg-evaluate`` runs
:func:`evaluate` in one process; its Ray mode (:mod:`ovseg_ros.tools.fleet`) runs
:func:`score_sample` on the actors and sums their metrics with
:meth:`~ovseg_ros.evaluation.metrics.SegmentationMetric.merge`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from ovseg_ros.evaluation.datasets import Sample, SegmentationDataset
from ovseg_ros.evaluation.metrics import MetricResult, SegmentationMetric


def prefetch(dataset: SegmentationDataset, count: int, depth: int = 2) -> Iterator[Sample]:
    """Yield ``dataset[0:count]`` in order, decoding up to ``depth`` samples ahead (image
    decoding overlaps segmentation)."""
    with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="ovseg-eval-io") as pool:
        pending: deque[Future[Any]] = deque()
        next_index = 0
        try:
            while next_index < count or pending:
                while next_index < count and len(pending) < depth:
                    pending.append(pool.submit(dataset.__getitem__, next_index))
                    next_index += 1
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def score_sample(
    segmenter: Any, sample: Any, metric: SegmentationMetric, stages: dict[str, float]
) -> float:
    """Segment ``sample.image``, add the labels vs ``sample.gt`` [H, W] to ``metric`` and the
    engine's stage timings to ``stages``; returns the seconds ``segment`` took."""
    started = time.perf_counter()
    result = segmenter.segment(sample.image, timed=True)  # per-stage times for the report
    seconds = time.perf_counter() - started
    labels = np.asarray(result.labels)
    if labels.shape != sample.gt.shape:
        raise RuntimeError(
            f"{sample.name}: predicted labels {labels.shape} do not match the image "
            f"size {sample.gt.shape}"
        )
    metric.update(labels, sample.gt)
    for stage, stage_s in (getattr(result, "timings", None) or {}).items():
        stages[stage] = stages.get(stage, 0.0) + float(stage_s)
    return seconds


def evaluate(
    segmenter: Any,
    dataset: SegmentationDataset,
    limit: int | None = None,
    boundary: bool = True,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[MetricResult, dict[str, Any], bool]:
    """Segment the first ``limit`` images; returns (metrics, timing, interrupted).

    ``on_progress(1)`` after every image. Ctrl-C stops the loop: the metrics then cover the
    images scored so far and ``interrupted`` is True.
    """
    count = len(dataset) if limit is None else min(limit, len(dataset))
    metric = SegmentationMetric(dataset.num_classes, boundary=boundary)
    stage_sums: dict[str, float] = {}
    segment_s = 0.0
    start = time.perf_counter()
    interrupted = False
    try:
        for sample in prefetch(dataset, count):
            segment_s += score_sample(segmenter, sample, metric, stage_sums)
            if on_progress is not None:
                on_progress(1)
    except KeyboardInterrupt:
        interrupted = True
    timing = run_timing(time.perf_counter() - start, metric.num_images, segment_s, stage_sums)
    return metric.compute(), timing, interrupted


def run_timing(
    wall_s: float, images: int, segment_s: float, stages: dict[str, float]
) -> dict[str, Any]:
    """The ``timing`` of a report: frames per second overall and in ``segment`` alone, and
    the engine's mean seconds per stage, from the totals of ``images`` images."""
    n = images
    return {
        "wall_s": wall_s,
        "frames_per_s": n / wall_s if wall_s > 0 and n else math.nan,
        "segment_frames_per_s": n / segment_s if segment_s > 0 and n else math.nan,
        "mean_stage_s": {k: v / n for k, v in stages.items()} if n else {},
    }
