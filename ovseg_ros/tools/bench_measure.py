"""Synthetic inputs and measurement helpers of ``ovseg-bench``: class names, a frame with
edges, CUDA-synchronised timing, peak memory (CUDA allocator or the CPU's resident set), and
the table printed row by row as the records come."""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import numpy as np
import torch

from ovseg_ros.tools.cli import markdown_table

# Common object names for realistic vocabularies (COCO's 80 things + indoor/outdoor stuff).
OBJECT_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush", "wall", "floor",
    "ceiling", "sky", "road", "sidewalk", "grass", "tree", "building", "door", "window",
    "shelf", "cabinet", "lamp", "curtain", "pillow", "box", "bag", "mirror", "rug", "stairs",
    "fence", "pole", "sign", "mountain", "water", "sand", "snow", "rock", "bridge", "desk",
    "monitor", "trash can", "bucket", "painting", "towel", "basket", "drawer", "counter",
    "helmet", "glove", "pallet",
)  # fmt: skip

# --- synthetic inputs ----------------------------------------------------------------------------


def synthetic_vocabulary(count: int) -> list[str]:
    """``count`` distinct class names: the common object names first, then ``object i``."""
    names = list(OBJECT_NAMES[:count])
    names += [f"object {i}" for i in range(len(names), count)]
    return names


def synthetic_image(width: int, height: int, *, seed: int = 0, regions: int = 12) -> np.ndarray:
    """A deterministic ``uint8 [H, W, 3]`` RGB frame: smooth colour regions plus noise.

    Voronoi regions of flat colour with a gentle shading gradient give propagation real edges
    to respect; mild Gaussian noise keeps the pixel graph from being trivially uniform. The
    layout is defined in relative coordinates, so every size shows the same scene.
    """
    rng = np.random.default_rng(seed)
    centres = rng.random((regions, 2)).astype(np.float32)  # (y, x) in [0, 1)
    colours = rng.integers(30, 226, size=(regions, 3)).astype(np.float32)
    ys = (np.arange(height, dtype=np.float32) + 0.5) / height
    xs = (np.arange(width, dtype=np.float32) + 0.5) / width
    dist = (ys[None, :, None] - centres[:, 0, None, None]) ** 2
    dist = dist + (xs[None, None, :] - centres[:, 1, None, None]) ** 2
    image = colours[dist.argmin(axis=0)]  # [H, W, 3]
    shade = 20.0 * np.sin(3.0 * np.pi * xs[None, :] + 0.7) * np.cos(2.0 * np.pi * ys[:, None])
    image += shade[..., None]
    image += rng.normal(0.0, 6.0, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).round().astype(np.uint8)


# --- measurement helpers -------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Peak memory of one configuration, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` since ``start`` (models and working memory).
    CPU: growth of the resident set over ``start``: the kernel's RSS high-water mark is reset
    through ``/proc/self/clear_refs`` (Linux); elsewhere the value is unavailable (``None``).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._baseline_kib: int | None = None

    def start(self) -> None:
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")  # resets VmHWM to the current RSS
            self._baseline_kib = _proc_status_kib("VmRSS")
        except OSError:
            self._baseline_kib = None

    def peak_mib(self) -> float | None:
        sync(self.device)
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self._baseline_kib is None:
            return None
        try:
            return max(0, _proc_status_kib("VmHWM") - self._baseline_kib) / 1024
        except OSError:
            return None


def median_ms(values: Sequence[float]) -> float:
    return 1000.0 * statistics.median(values)


def size_record(width: int, height: int) -> dict[str, Any]:
    """The size fields of a benchmark record."""
    return {"size": f"{width}x{height}", "width": width, "height": height}


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def warn(log: TextIO, message: str) -> None:
    print(f"warning: {message}", file=log, flush=True)


# --- output ---------------------------------------------------------------------------------------


class StreamingTable:
    """A Markdown table printed as it grows: the header at once, each row when its record
    arrives (flushed), so a long run shows its results while it goes and keeps them when it
    is interrupted."""

    def __init__(
        self, header: Sequence[str], row: Callable[[dict], Sequence[Any]], out: TextIO
    ) -> None:
        self.header, self.row, self.out = list(header), row, out
        print("\n" + markdown_table(self.header, []), file=out, flush=True)

    def add(self, record: dict) -> None:
        line = markdown_table(self.header, [self.row(record)]).rsplit("\n", 1)[-1]
        print(line, file=self.out, flush=True)


def progress_eta(done: int, total: int, elapsed_s: float) -> str:
    """`` (4.2 min so far, ~7.5 min left)`` at the measured pace; ``""`` before the first."""
    if done <= 0 or done >= total:
        return ""
    left = elapsed_s / done * (total - done)
    return f" ({elapsed_s / 60:.1f} min so far, ~{left / 60:.1f} min left)"
