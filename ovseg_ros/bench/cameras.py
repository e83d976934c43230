"""``ovseg-bench cameras 1 2 4``: frames per second of N cameras segmented together
(``Segmenter.segment_batch``, as the node does with several cameras) vs one by one.

Each camera has its own scene (the synthetic frame with the camera's index as seed); per
(method, device, dtype) one segmenter is built with a vocabulary of :data:`CLASSES` names.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import TextIO

from ovseg_ros.bench.engine import EngineMatrix
from ovseg_ros.bench.measure import describe, size_record, timed_call, warn
from ovseg_ros.bench.scene import synthetic_image, synthetic_vocabulary
from ovseg_ros.segmentation.segmenter import Segmenter, build_segmenter
from ovseg_ros.segmentation.weights import WeightsNotFoundError
from ovseg_ros.tools.cli import fmt

CLASSES = 20  # as the engine benchmark's --quick run

HEADER = ("method", "device", "dtype", "cameras", "size", "one by one fps", "batched fps")
HEADER += ("speedup",)


def measure(segmenter: Segmenter, cameras: int, width: int, height: int, repeat: int) -> dict:
    """Frames per second of ``cameras`` frames through ``segment_batch`` vs ``segment`` one
    by one. The two ways alternate round by round (after one untimed round of each), so a
    machine whose load drifts during the run biases neither."""
    frames = [synthetic_image(width, height, seed=seed) for seed in range(cameras)]

    def one_by_one() -> None:
        for frame in frames:
            segmenter.segment(frame)

    def batched() -> None:
        segmenter.segment_batch(frames)

    seconds = {one_by_one: 0.0, batched: 0.0}
    for round_index in range(repeat + 1):
        for way in (one_by_one, batched) if round_index % 2 else (batched, one_by_one):
            elapsed, _ = timed_call(way, segmenter.device)
            if round_index:  # round 0 warms up
                seconds[way] += elapsed
    alone, together = seconds[one_by_one], seconds[batched]
    return {
        "cameras": cameras,
        **size_record(width, height),
        "one_by_one_fps": cameras * repeat / alone,
        "batched_fps": cameras * repeat / together,
        "speedup": alone / together,
    }


def bench_cameras(
    matrix: EngineMatrix,
    counts: Sequence[int],
    log: TextIO,
    on_record: Callable[[dict], None] = lambda record: None,
) -> list[dict]:
    """One record per (method, device, dtype, size, camera count): ``one_by_one_fps
    batched_fps speedup``, or ``error`` when the configuration failed."""
    records: list[dict] = []
    for method in matrix.methods:
        for device, dtype in matrix.plan:
            base = {"method": method, "device": device, "dtype": dtype}
            cases = [(size, n) for size in matrix.sizes for n in counts]
            try:
                segmenter = build_segmenter(matrix.config(method, device, dtype))
                segmenter.set_vocabulary(synthetic_vocabulary(CLASSES))
                rows = [measure(segmenter, n, *size, matrix.repeat) for size, n in cases]
            except WeightsNotFoundError:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory: report, go on
                warn(log, f"{method} {device} {dtype}: {describe(exc)}")
                rows = [
                    {"cameras": n, **size_record(*size), "error": describe(exc)}
                    for size, n in cases
                ]
            else:
                segmenter.release()
                del segmenter
                gc.collect()
            for fields in rows:
                record = {**base, **fields}
                records.append(record)
                on_record(record)
    return records


def row(record: dict) -> list[str]:
    """The table cells of one cameras record."""
    cells = [record["method"], record["device"], record["dtype"], str(record["cameras"])]
    cells.append(record["size"])
    if "error" in record:
        return cells + ["failed", "-", "-"]
    return cells + [
        fmt(record["one_by_one_fps"]),
        fmt(record["batched_fps"]),
        f"{record['speedup']:.2f}x",
    ]
