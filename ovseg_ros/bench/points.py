"""``ovseg-bench points``: the labelled point-cloud stage alone (depth message fields ->
PointCloud2 bytes), and with ``--objects`` the 3D objects stage alone (labels + depth ->
objects, :func:`~ovseg_ros.points.objects.find_objects`).

The cloud's scene: a 16UC1 depth image (ramps from 0.5 to 4 m, 10% invalid pixels), labels,
confidence and colour at the same size, a camera with distortion. The ray table is warm (it
is cached per camera); its one-off cost is a column of its own.

The objects' scene is a segmented view: labels in regions (two per class, Voronoi cells), each
region a tilted plane at its own depth with 3 mm of noise, 1% of the pixels and a few holes
without depth.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ovseg_ros.bench.measure import median_ms, run_timed, size_record
from ovseg_ros.points.camera import CameraModel, ray_table
from ovseg_ros.points.cloud import PointCloudData
from ovseg_ros.points.depth import decode_depth
from ovseg_ros.points.objects import ObjectsOptions, find_objects
from ovseg_ros.points.project import PointsOptions, build_cloud
from ovseg_ros.tools.cli import fmt

HEADER = ("device", "size", "stride", "layout", "points", "median ms", "min ms", "ray table ms")


def bench_points(
    devices: Sequence[str],
    strides: Sequence[int],
    sizes: Sequence[tuple[int, int]],
    repeat: int,
    on_record: Callable[[dict], None] = lambda record: None,
) -> list[dict]:
    """Milliseconds (median and min over ``repeat``) of decode + :func:`build_cloud`, per
    device, size, stride and layout (unorganized, organized). Records ``{"device", "size",
    "width", "height", "stride", "organized", "points", "ms", "min_ms", "ray_table_ms"}``."""
    records = []
    for width, height in sizes:
        scene = _scene(width, height)
        for device in devices:
            start = time.perf_counter()
            ray_table(scene["distorted"], device)
            ray_ms = (time.perf_counter() - start) * 1000
            for stride in strides:
                for organized in (False, True):
                    options = PointsOptions(stride=stride, organized=organized)
                    seconds, clouds = run_timed(
                        lambda o=options, d=device, s=scene: _cloud(s, o, d),
                        torch.device(device),
                        warmup=1,  # the ray table, index maps, CUDA kernels
                        repeat=repeat,
                    )
                    record = {
                        "device": device,
                        **size_record(width, height),
                        "stride": stride,
                        "organized": organized,
                        "points": clouds[0].width * clouds[0].height,
                        "ms": median_ms(seconds),
                        "min_ms": 1000.0 * min(seconds),
                        "ray_table_ms": ray_ms,
                    }
                    records.append(record)
                    on_record(record)
    return records


def _scene(width: int, height: int) -> dict:
    """The depth bytes, labels ``[H, W]``, confidence ``[H, W]``, colour ``[H, W, 3]``, a
    pinhole camera model and one with distortion."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.5, 4.0, height, dtype=np.float32)[:, None]
    depth_mm = (ramp * 1000 + rng.uniform(0, 200, (height, width))).astype(np.uint16)
    depth_mm[rng.random((height, width)) < 0.1] = 0
    fx = width * 0.8
    k = [fx, 0.0, (width - 1) / 2, 0.0, fx, (height - 1) / 2, 0.0, 0.0, 1.0]
    return {
        "width": width,
        "height": height,
        "data": depth_mm.tobytes(),
        "labels": rng.integers(0, 20, (height, width), dtype=np.int64),
        "confidence": rng.random((height, width), dtype=np.float32),
        "rgb": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        "model": CameraModel.from_fields(k, [0.0] * 5, "plumb_bob", width, height),
        "distorted": CameraModel.from_fields(
            k, [0.1, -0.05, 0.001, 0.001, 0.01], "plumb_bob", width, height
        ),
    }


def _cloud(scene: dict, options: PointsOptions, device: str) -> PointCloudData:
    width, height = scene["width"], scene["height"]
    depth = decode_depth("16UC1", height, width, width * 2, scene["data"])
    return build_cloud(
        depth, scene["model"], scene["labels"], scene["confidence"], scene["rgb"], options, device
    )


def row(record: dict) -> list[str]:
    """The table cells of one points record."""
    layout = "organized" if record["organized"] else "unorganized"
    return [
        record["device"],
        record["size"],
        str(record["stride"]),
        layout,
        str(record["points"]),
        fmt(record["ms"]),
        fmt(record["min_ms"]),
        fmt(record["ray_table_ms"], 1),
    ]


OBJECTS_HEADER = ("size", "classes", "objects", "median ms", "min ms")


def bench_objects(
    sizes: Sequence[tuple[int, int]],
    classes: int,
    repeat: int,
    on_record: Callable[[dict], None] = lambda record: None,
) -> list[dict]:
    """Milliseconds (median and min over ``repeat``) of :func:`find_objects` with the default
    options on the host, per size. Records ``{"size", "width", "height", "classes",
    "objects", "ms", "min_ms"}``."""
    records = []
    for width, height in sizes:
        scene = _objects_scene(width, height, classes)
        seconds, found = run_timed(
            lambda s=scene: find_objects(*s, classes, ObjectsOptions()),
            torch.device("cpu"),
            warmup=1,  # the ray table
            repeat=repeat,
        )
        record = {
            **size_record(width, height),
            "classes": classes,
            "objects": len(found[0]),
            "ms": median_ms(seconds),
            "min_ms": 1000.0 * min(seconds),
        }
        records.append(record)
        on_record(record)
    return records


def _objects_scene(width: int, height: int, classes: int) -> tuple:
    """``(depth, camera model, uint8 labels, confidence)`` of a segmented view (module doc)."""
    rng = np.random.default_rng(1)
    regions = 2 * classes
    centres = rng.random((regions, 2)) * (height, width)
    v, u = np.mgrid[0:height, 0:width]
    nearest = np.full((height, width), np.inf)
    region = np.zeros((height, width), np.int64)
    for i, (cy, cx) in enumerate(centres):  # a few dozen regions, once per size
        distance = (v - cy) ** 2 + (u - cx) ** 2
        closer = distance < nearest
        region[closer], nearest[closer] = i, distance[closer]
    base = rng.uniform(0.8, 5.0, regions)[region]
    slope = rng.uniform(-1e-3, 1e-3, (regions, 2))[region]
    metres = base + slope[..., 0] * v + slope[..., 1] * u + rng.normal(0, 0.003, (height, width))
    depth_mm = np.round(metres * 1000).astype(np.uint16)
    depth_mm[rng.random((height, width)) < 0.01] = 0
    for cy, cx in rng.random((6, 2)) * (height, width):  # holes: glass, black surfaces
        depth_mm[int(cy) : int(cy) + height // 20, int(cx) : int(cx) + width // 20] = 0
    fx = width * 0.8
    k = [fx, 0.0, (width - 1) / 2, 0.0, fx, (height - 1) / 2, 0.0, 0.0, 1.0]
    model = CameraModel.from_fields(k, [0.0] * 5, "plumb_bob", width, height)
    depth = decode_depth("16UC1", height, width, width * 2, depth_mm.tobytes())
    labels = (region % classes).astype(np.uint8)
    confidence = rng.random((height, width), dtype=np.float32)
    return depth, model, labels, confidence


def objects_row(record: dict) -> list[str]:
    """The table cells of one objects record."""
    return [
        record["size"],
        str(record["classes"]),
        str(record["objects"]),
        fmt(record["ms"]),
        fmt(record["min_ms"]),
    ]
