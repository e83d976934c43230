"""``ovseg-bench components``: the pure propagation / attention functions timed on
synthetic tensors of the shapes a frame of a given size produces with ViT-B/16."""

from __future__ import annotations

import gc
from collections.abc import Callable
from functools import partial
from typing import Any, TextIO

import torch

from ovseg_ros.bench.engine import EngineMatrix
from ovseg_ros.bench.measure import PeakMemory, describe, median_ms, run_timed, size_record, warn
from ovseg_ros.bench.scene import synthetic_image
from ovseg_ros.tools.cli import fmt

# Shapes of the CLIP / DINO ViT-B/16 the full preset runs.
VIT_HEADS, VIT_HEAD_DIM, DINO_DIM, TEXT_DIM, PATCH = 12, 64, 768, 512, 16


Case = tuple[str, str, int | None, Callable[[], object]]  # name, shapes, classes, call


def _attention_cases(size: tuple[int, int], device: torch.device, dtype: str) -> list[Case]:
    """``procrustes_attention`` on the q, k, v of PEARL's windows (short side 336)."""
    from ovseg_ros.segmentation.clip_backbone import _torch_dtype
    from ovseg_ros.segmentation.geometry import rescaled_size, window_boxes
    from ovseg_ros.segmentation.pearl import procrustes_attention

    width, height = size
    pearl_h, pearl_w = rescaled_size(height, width, 336, 2048)
    windows = len(window_boxes(pearl_h, pearl_w, 224, 112))
    shape = (windows * VIT_HEADS, 1 + (224 // PATCH) ** 2, VIT_HEAD_DIM)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=gen).to(device, _torch_dtype(dtype)) for _ in range(3))
    shapes = f"q,k,v {list(shape)} ({windows} windows x {VIT_HEADS} heads)"
    return [("procrustes_attention", shapes, None, lambda: procrustes_attention(q, k, v))]


def _propagation_cases(size: tuple[int, int], classes: int, device: torch.device) -> list[Case]:
    """TLP, LPOSS and LPOSS+ propagation with the inputs a frame of ``size`` gives them.

    Geometry follows the engine's defaults: TLP runs at the input resolution; LPOSS resizes to
    a short side of 448 and cuts 224 px windows at stride 112 (ViT-B/16: 14 x 14 patches each).
    """
    from ovseg_ros.segmentation.clip_backbone import CLIP_MEAN, CLIP_STD
    from ovseg_ros.segmentation.geometry import rescaled_size, window_boxes
    from ovseg_ros.segmentation.lposs import patch_centers, patch_propagation, pixel_propagation
    from ovseg_ros.segmentation.pearl import text_aware_propagation

    width, height = size
    gen = torch.Generator().manual_seed(1)
    frame = torch.from_numpy(synthetic_image(width, height)).permute(2, 0, 1).float() / 255.0

    def colour_scores(image: torch.Tensor) -> torch.Tensor:
        """``[C, H, W]`` scores with image structure: a random colour response per class."""
        response = torch.einsum("cd,dhw->chw", torch.randn(classes, 3, generator=gen), image)
        noise = torch.randn(response.shape, generator=gen)
        return (0.2 + 0.05 * response + 0.01 * noise).to(device)

    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    image = ((frame - mean) / std)[None].to(device)
    logits = colour_scores(frame)[None]
    text = torch.randn(classes, TEXT_DIM, generator=gen).to(device)
    tlp = (
        "text_aware_propagation",
        f"image {list(image.shape)}, logits {list(logits.shape)}",
        classes,
        lambda: text_aware_propagation(image, logits, text),
    )

    lp_h, lp_w = rescaled_size(height, width, 448, 2048)
    boxes = window_boxes(lp_h, lp_w, 224, 112)
    grid = (224 // PATCH, 224 // PATCH)
    centers = patch_centers([(b[0], b[2]) for b in boxes], [grid] * len(boxes), PATCH)
    n = centers.shape[0]
    feats = torch.nn.functional.normalize(torch.randn(n, DINO_DIM, generator=gen), dim=-1)
    feats, centers = feats.to(device), centers.to(device)
    scores = (0.2 + 0.05 * torch.randn(n, classes, generator=gen)).to(device)
    patch = (
        "patch_propagation",
        f"features [{n}, {DINO_DIM}] ({len(boxes)} windows x {grid[0] * grid[1]} patches), "
        f"scores [{n}, {classes}], k=400",
        classes,
        lambda: patch_propagation(feats, scores, centers, k=400),
    )

    small = torch.nn.functional.interpolate(
        frame[None], size=(lp_h, lp_w), mode="bilinear", align_corners=False
    )[0]
    pixel_scores = colour_scores(small)
    small = small.to(device)
    pixel = (
        "pixel_propagation",
        f"image {list(small.shape)}, scores {list(pixel_scores.shape)}",
        classes,
        lambda: pixel_propagation(small, pixel_scores),
    )
    return [tlp, patch, pixel]


def bench_components(
    matrix: EngineMatrix,
    log: TextIO,
    on_record: Callable[[dict], None] = lambda record: None,
) -> list[dict]:
    """Median time of each pure function on each device and size; each record is also passed
    to ``on_record`` as soon as it is measured.

    ``procrustes_attention`` runs once per dtype (its inputs' dtype; it computes in fp32) and
    does not depend on the vocabulary; the propagations run in fp32 (as in the engine) once per
    class count.
    """
    records: list[dict] = []
    devices = list(dict.fromkeys(device for device, _ in matrix.plan))
    for device_name in devices:
        device = torch.device(device_name)
        dtypes = [dtype for name, dtype in matrix.plan if name == device_name]
        for width, height in matrix.sizes:
            size = (width, height)
            # (dtype, cases factory): attention per dtype, propagations per class count.
            jobs = [(dtype, partial(_attention_cases, size, device, dtype)) for dtype in dtypes]
            jobs += [("fp32", partial(_propagation_cases, size, c, device)) for c in matrix.classes]
            for dtype, make_cases in jobs:
                base = {"device": device_name, "dtype": dtype, **size_record(width, height)}
                try:
                    cases = make_cases()
                except Exception as exc:  # noqa: BLE001 - report, then bench the rest
                    warn(log, f"components {device_name} {dtype}: {describe(exc)}")
                    records.append({"component": "setup", **base, "error": describe(exc)})
                    on_record(records[-1])
                    continue
                for name, shapes, classes, call in cases:
                    record = {"component": name, **base, "classes": classes, "shapes": shapes}
                    print(f"{name} {device_name} {dtype} {shapes}", file=log, flush=True)
                    try:
                        record.update(_time_call(call, device, matrix.warmup, matrix.repeat))
                    except Exception as exc:  # noqa: BLE001 - e.g. out of memory: go on
                        warn(log, f"{name} {device_name}: {describe(exc)}")
                        record["error"] = describe(exc)
                    records.append(record)
                    on_record(record)
                del cases
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return records


@torch.inference_mode()
def _time_call(
    call: Callable[[], object], device: torch.device, warmup: int, repeat: int
) -> dict[str, Any]:
    memory = PeakMemory(device)
    memory.start()
    times, _ = run_timed(call, device, warmup=warmup, repeat=repeat)
    return {
        "median_ms": median_ms(times),
        "min_ms": 1000.0 * min(times),
        "peak_mib": memory.peak_mib(),
    }


HEADER: tuple[str, ...] = (
    "component",
    "device",
    "dtype",
    "size",
    "classes",
    "shapes",
    "median ms",
    "min ms",
    "peak MiB",
)


def row(rec: dict) -> list[str]:
    """The table cells of one component record."""
    classes = "-" if rec.get("classes") is None else str(rec["classes"])
    cells = [rec["component"], rec["device"], rec["dtype"], rec["size"], classes]
    cells.append(rec.get("shapes", "-"))
    if "error" in rec:
        return cells + ["failed", "-", "-"]
    return cells + [fmt(rec["median_ms"], 2), fmt(rec["min_ms"], 2), fmt(rec["peak_mib"], 0)]
