"""Component benchmark: several cameras segmented together (``segment_batch``) vs one by one.

For the bench command line (``ovseg-bench --cameras 1 2 4``) and by hand:

    python -m ovseg_ros.segmentation.batch_bench pearl lposs --cameras 1 2 4

prints, per method and camera count, frames per second both ways. No timing is asserted
anywhere; the numbers are for reading.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .segmenter import Segmenter

VOCABULARY = ("background; sky; wall", "person", "chair", "table", "door", "floor", "car")


def camera_frame(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic ``uint8 [H, W, 3]`` frame of flat regions plus noise (one per camera)."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.uint8)
    rows = np.linspace(0, height, 4, dtype=int)
    cols = np.linspace(0, width, 5, dtype=int)
    for r0, r1 in zip(rows[:-1], rows[1:], strict=True):
        for c0, c1 in zip(cols[:-1], cols[1:], strict=True):
            image[r0:r1, c0:c1] = rng.integers(0, 256, 3)
    noise = rng.integers(-12, 13, image.shape)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_cameras(
    segmenter: Segmenter,
    cameras: Sequence[int] = (1, 2, 4),
    *,
    height: int = 480,
    width: int = 640,
    repeats: int = 3,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Frames per second for ``n`` cameras of ``height x width``: ``segment_batch`` of the
    ``n`` frames vs ``segment`` on each, after one untimed warm-up round of each.

    The segmenter needs a vocabulary. ``on_row`` gets each row as soon as it is measured.
    Returns rows ``{"method", "device", "cameras", "size", "one_by_one_fps", "batched_fps",
    "speedup"}``.
    """
    if segmenter.vocabulary is None:
        raise RuntimeError("the segmenter needs a vocabulary: call set_vocabulary() first")
    device = segmenter.device
    rows = []
    for count in cameras:
        frames = [camera_frame(height, width, seed) for seed in range(count)]
        segmenter.segment_batch(frames)
        for frame in frames:
            segmenter.segment(frame)
        _sync(device)
        started = time.perf_counter()
        for _ in range(repeats):
            for frame in frames:
                segmenter.segment(frame)
        _sync(device)
        alone = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(repeats):
            segmenter.segment_batch(frames)
        _sync(device)
        batched = time.perf_counter() - started
        row = {
            "method": segmenter.config.method,
            "device": str(device),
            "cameras": count,
            "size": f"{width}x{height}",
            "one_by_one_fps": count * repeats / alone,
            "batched_fps": count * repeats / batched,
            "speedup": alone / batched,
        }
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def format_row(row: dict) -> str:
    return (
        f"{row['method']:<11} {row['device']:<6} {row['cameras']} x {row['size']}: "
        f"one by one {row['one_by_one_fps']:6.2f} fps, batched {row['batched_fps']:6.2f} fps "
        f"({row['speedup']:.2f}x)"
    )


def main(argv: list[str] | None = None) -> int:
    """``[methods...] [--cameras N ...] [--preset tiny|random] [--device cpu|cuda]``."""
    from .config import SegmenterConfig
    from .segmenter import build_segmenter

    args = list(sys.argv[1:] if argv is None else argv)
    options = {"--cameras": ["1", "2", "4"], "--preset": ["tiny"], "--device": ["cpu"]}
    methods: list[str] = []
    key = None
    for arg in args:
        if arg in options:
            key, options[arg] = arg, []
        elif key is not None:
            options[key].append(arg)
        else:
            methods.append(arg)
    cameras = [int(n) for n in options["--cameras"]]
    for method in methods or ["pearl", "maskclip", "lposs", "lposs_plus"]:
        config = SegmenterConfig(
            method=method, preset=options["--preset"][0], device=options["--device"][0]
        )
        segmenter = build_segmenter(config)
        segmenter.set_vocabulary(list(VOCABULARY))
        bench_cameras(segmenter, cameras, on_row=lambda row: print(format_row(row), flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
