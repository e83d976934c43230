"""``ovseg-bench engine`` (also a bare ``ovseg-bench``): per-stage latency, frame rate and
peak memory of ``Segmenter.segment``.

One segmenter per (method, device, dtype) gets a vocabulary of N synthetic class names and
segments the synthetic frame repeatedly with ``timed=True`` (per-stage timings, CUDA events
on a GPU); each record holds the median of every stage and of the total.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
import torch

from ovseg_ros.bench.measure import (
    PeakMemory,
    describe,
    median_ms,
    progress_eta,
    run_timed,
    size_record,
    warn,
)
from ovseg_ros.bench.scene import synthetic_image, synthetic_vocabulary
from ovseg_ros.segmentation.config import SegmenterConfig
from ovseg_ros.segmentation.segmenter import Segmenter, build_segmenter, check_device
from ovseg_ros.segmentation.weights import WeightsNotFoundError
from ovseg_ros.tools.cli import fmt

SIZES = ((640, 480), (1280, 720))
CLASS_COUNTS = (5, 20, 100)

# Table columns: header -> the timing stages it shows (first one present wins).
STAGE_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("preprocess", ("preprocess",)),
    ("backbone", ("backbone",)),
    ("attention", ("attention",)),
    ("propagation", ("patch_propagation",)),
    ("stitch", ("stitch",)),
    ("tlp/pixel", ("tlp", "pixel_refine")),
    ("postprocess", ("postprocess",)),
)


def device_plan(
    devices: Sequence[str] | None, dtypes: Sequence[str] | None
) -> list[tuple[str, str]]:
    """``(device, dtype)`` pairs to measure: ``devices`` (default cpu, plus cuda when
    available) with ``dtypes`` (default fp32 on cpu, fp32 and fp16 on cuda). ``ValueError``
    for a device torch does not know or that is neither cpu nor cuda."""
    names = devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    plan = []
    for name in dict.fromkeys(names):
        device = check_device(name)
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"unsupported device {name!r} (cpu or cuda)")
        default = ["fp32", "fp16"] if device.type == "cuda" else ["fp32"]
        plan += [(name, dtype) for dtype in dict.fromkeys(dtypes or default)]
    return plan


@dataclass(frozen=True)
class EngineMatrix:
    """What an engine (or components) run measures. ``base``: the params file's settings
    (or the defaults); ``weights``: the weights flags that were given."""

    methods: tuple[str, ...]
    plan: tuple[tuple[str, str], ...]  # (device, dtype)
    sizes: tuple[tuple[int, int], ...]
    classes: tuple[int, ...]
    warmup: int
    repeat: int
    preset: str
    base: SegmenterConfig = field(default_factory=SegmenterConfig)
    weights: dict[str, str] = field(default_factory=dict)

    def config(self, method: str, device: str, dtype: str) -> SegmenterConfig:
        """The base settings with this configuration's method, device, dtype and weights."""
        base = self.base
        if method != base.method:  # the file's method-specific choices do not carry over
            base = base.replace(clip_pretrained=None, short_side=None, tlp=None, pixel_refine=None)
        return base.replace(
            method=method, preset=self.preset, device=device, dtype=dtype, **self.weights
        )


def check_weights(matrix: EngineMatrix) -> None:
    """Fail before any timing if a method's full weights are missing (``WeightsNotFoundError``)."""
    if matrix.preset != "full":
        return
    from ovseg_ros.segmentation.weights import resolve, sources_for

    for method in matrix.methods:
        cfg = matrix.config(method, "cpu", "fp32")
        for source, local_file, key in sources_for(cfg):
            resolve(source, local_file, cfg.weights_cache_dir, cfg.allow_download, key)


def bench_engine(
    matrix: EngineMatrix, log: TextIO, on_record: Callable[[dict], None] = lambda record: None
) -> list[dict]:
    """Time ``segment`` for every (method, device, dtype, size, classes); one record each,
    also passed to ``on_record`` as soon as it is measured.

    A configuration that fails (e.g. out of memory) is reported and recorded with an
    ``error``; the others still run. Missing weights abort the run (``WeightsNotFoundError``).
    """
    records: list[dict] = []
    images = {size: synthetic_image(*size) for size in matrix.sizes}
    cases = [(size, classes) for size in matrix.sizes for classes in matrix.classes]
    total = len(matrix.methods) * len(matrix.plan) * len(cases)
    started = time.perf_counter()
    for method in matrix.methods:
        for device_name, dtype in matrix.plan:
            base = {"method": method, "device": device_name, "dtype": dtype}
            start = time.perf_counter()
            try:
                segmenter = build_segmenter(matrix.config(method, device_name, dtype))
            except WeightsNotFoundError:
                raise
            except Exception as exc:  # noqa: BLE001 - report, then bench the rest
                warn(log, f"{method} {device_name} {dtype}: build failed: {describe(exc)}")
                for size, classes in cases:
                    record = {**base, **size_record(*size), "classes": classes}
                    records.append({**record, "error": f"build: {describe(exc)}"})
                    on_record(records[-1])
                continue
            build_s = time.perf_counter() - start
            for size, classes in cases:
                record = {**base, **size_record(*size), "classes": classes, "build_s": build_s}
                label = f"{method} {device_name} {dtype} {record['size']} {classes} classes"
                eta = progress_eta(len(records), total, time.perf_counter() - started)
                print(f"[{len(records) + 1}/{total}] {label}{eta}", file=log, flush=True)
                try:
                    record.update(
                        time_segmenter(
                            segmenter, images[size], classes, matrix.warmup, matrix.repeat
                        )
                    )
                except Exception as exc:  # noqa: BLE001 - e.g. out of memory: go on
                    warn(log, f"{label}: {describe(exc)}")
                    record["error"] = describe(exc)
                records.append(record)
                on_record(record)
            segmenter.release()
            del segmenter
            gc.collect()
    return records


def time_segmenter(
    segmenter: Segmenter, image: np.ndarray, classes: int, warmup: int, repeat: int
) -> dict[str, Any]:
    """Install ``classes`` names, then the median stage times of ``repeat`` frames (ms)."""
    start = time.perf_counter()
    segmenter.set_vocabulary(synthetic_vocabulary(classes))
    vocab_ms = 1000.0 * (time.perf_counter() - start)
    memory = PeakMemory(segmenter.device)
    memory.start()
    _, results = run_timed(
        lambda: segmenter.segment(image, timed=True),
        segmenter.device,
        warmup=warmup,
        repeat=repeat,
    )
    peak = memory.peak_mib()
    runs = [result.timings for result in results]
    stages = {stage: median_ms([run[stage] for run in runs]) for stage in runs[0]}
    total_ms = stages["total"]
    return {
        "stages_ms": stages,
        "total_ms": total_ms,
        "fps": 1000.0 / total_ms if total_ms > 0 else None,
        "peak_mib": peak,
        "vocabulary_ms": vocab_ms,
    }


HEADER: tuple[str, ...] = (
    "method",
    "device",
    "dtype",
    "size",
    "classes",
    *(name for name, _ in STAGE_COLUMNS),
    "total ms",
    "fps",
    "peak MiB",
)


def row(rec: dict) -> list[str]:
    """The table cells of one engine record (missing stages as ``-``)."""
    cells = [rec["method"], rec["device"], rec["dtype"], rec["size"], str(rec["classes"])]
    if "error" in rec:
        return cells + ["-"] * len(STAGE_COLUMNS) + ["failed", "-", "-"]
    stages = rec["stages_ms"]
    for _, keys in STAGE_COLUMNS:
        cells.append(next((fmt(stages[k]) for k in keys if k in stages), "-"))
    fps = rec["fps"]
    cells += [fmt(rec["total_ms"]), fmt(fps, 2 if fps and fps < 10 else 1)]
    return cells + [fmt(rec["peak_mib"], 0)]
