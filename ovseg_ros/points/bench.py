"""Benchmark of the points stage: depth message fields -> PointCloud2 bytes.

``python -m ovseg_ros.points.bench`` prints one row per device x stride x layout (``ovseg-bench``
calls :func:`bench_points`). The scene is a 640x480 16UC1 depth image with 10% invalid
pixels, labels/confidence/color at the same size; the ray table is warm (it is cached per
camera), its one-off cost is reported separately.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ovseg_ros.points.camera import CameraModel, ray_table
from ovseg_ros.points.depth import decode_depth
from ovseg_ros.points.project import PointsOptions, build_cloud


def bench_points(
    devices: Sequence[str] | None = None,
    strides: Sequence[int] = (1, 2),
    width: int = 640,
    height: int = 480,
    repeats: int = 30,
    print_fn: Callable[[str], None] | None = print,
) -> list[dict]:
    """Milliseconds (median and min over ``repeats``) of decode + :func:`build_cloud`.

    ``devices``: torch devices (default: ``cpu``, plus ``cuda`` when available). Returns rows
    ``{"device", "stride", "organized", "points", "ms", "min_ms", "ray_table_ms"}``.
    """
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rng = np.random.default_rng(0)
    rows_v = np.linspace(0.5, 4.0, height, dtype=np.float32)[:, None]
    depth_mm = np.broadcast_to(
        rows_v * 1000 + rng.uniform(0, 200, (height, width)), (height, width)
    )
    depth_mm = depth_mm.astype(np.uint16)
    depth_mm[rng.random((height, width)) < 0.1] = 0
    data = depth_mm.tobytes()
    labels = rng.integers(0, 20, (height, width), dtype=np.int64)
    confidence = rng.random((height, width), dtype=np.float32)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    fx = width * 0.8
    k = [fx, 0.0, (width - 1) / 2, 0.0, fx, (height - 1) / 2, 0.0, 0.0, 1.0]
    model = CameraModel.from_fields(k, [0.0] * 5, "plumb_bob", width, height)
    distorted = CameraModel.from_fields(
        k, [0.1, -0.05, 0.001, 0.001, 0.01], "plumb_bob", width, height
    )

    results = []
    for device in devices:
        start = time.perf_counter()
        ray_table(distorted, device)
        ray_ms = (time.perf_counter() - start) * 1000
        for stride in strides:
            for organized in (False, True):
                options = PointsOptions(stride=stride, organized=organized)

                def run(options: PointsOptions = options, device: str = device) -> int:
                    depth = decode_depth("16UC1", height, width, width * 2, data)
                    cloud = build_cloud(depth, model, labels, confidence, rgb, options, device)
                    return cloud.width * cloud.height

                points = run()  # warm: ray table, index maps, CUDA kernels
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - start)
                row = {
                    "device": device,
                    "stride": stride,
                    "organized": organized,
                    "points": points,
                    "ms": float(np.median(times) * 1000),
                    "min_ms": float(np.min(times) * 1000),
                    "ray_table_ms": ray_ms,
                }
                results.append(row)
                if print_fn is not None:
                    layout = "organized" if organized else "unorganized"
                    print_fn(
                        f"points {width}x{height} {device:>5} stride {stride} {layout:>11}:"
                        f" {row['ms']:7.2f} ms median, {row['min_ms']:6.2f} min  ({points} points)"
                    )
        if print_fn is not None:
            print_fn(
                f"ray table with distortion {width}x{height} on {device}: {ray_ms:.1f} ms (once)"
            )
    return results


if __name__ == "__main__":
    bench_points()
