"""How long an ``ovseg-bench`` run takes on a CPU, said before it starts.

The real architectures (presets ``full`` and ``random``: the same networks, so the same
speed) take seconds per frame on a CPU, and a vocabulary of N names costs N * templates text
forward passes. The estimate adds up the work of the requested matrix from reference costs
measured with ``ovseg-bench``'s own inputs on a 2-core x86 CPU (torch 2 threads), as process
CPU time (all threads together): a 2-core machine takes between half of it (both cores busy)
and all of it (one); more cores take less.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CpuCost:
    """Reference CPU seconds of one method (real architecture, fp32, default settings)."""

    build_s: float  # model construction
    name_s: float  # text encoding per class name (all prompt templates)
    frame_s_per_mpx: float  # segment() per megapixel of input frame, 100 classes
    frame_base_s: float  # segment()'s part that does not grow with the frame


# Measured on the 2-core x86 development machine (torch 2.15 CPU, 2 threads, shared with other
# jobs, hence CPU time rather than wall time): build, set_vocabulary of the synthetic names, and
# the second segment() of synthetic_image at 640x480 and 1280x720 with 100 classes, fitted as
# base + per-megapixel (fewer classes run somewhat faster).
REFERENCE_CPU: dict[str, CpuCost] = {
    "pearl": CpuCost(build_s=2.6, name_s=1.21, frame_s_per_mpx=6.9, frame_base_s=2.6),
    "maskclip": CpuCost(build_s=0.6, name_s=1.09, frame_s_per_mpx=6.3, frame_base_s=6.4),
    "lposs": CpuCost(build_s=2.4, name_s=1.10, frame_s_per_mpx=11.4, frame_base_s=13.7),
    "lposs_plus": CpuCost(build_s=2.5, name_s=1.05, frame_s_per_mpx=32.3, frame_base_s=35.2),
}


def cpu_seconds(
    methods: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    classes: Sequence[int],
    frames_per_case: int,
) -> float:
    """Reference CPU seconds of a pipeline run: per method one build, each distinct class
    name encoded once (the segmenter caches embeddings), ``frames_per_case`` frames (warmup +
    repeat) per (size, class count)."""
    total = 0.0
    for method in methods:
        cost = REFERENCE_CPU[method]
        total += cost.build_s + cost.name_s * max(classes, default=0)
        for width, height in sizes:
            frame = cost.frame_base_s + cost.frame_s_per_mpx * width * height / 1e6
            total += frame * frames_per_case * len(classes)
    return total


def estimate_line(
    preset: str,
    methods: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    classes: Sequence[int],
    frames_per_case: int,
) -> str:
    """One line for the top of a CPU run: the expected duration of this matrix."""
    if preset == "tiny":
        return "tiny preset on CPU: seconds per configuration (tiny models: a smoke run)"
    seconds = cpu_seconds(methods, sizes, classes, frames_per_case)
    low, high = seconds / 2 / 60, seconds / 60
    return (
        f"{preset} preset on CPU: ~{_minutes(low)}-{_minutes(high)} min for this matrix on a "
        f"2-core CPU (less with more cores); --methods, --sizes, --classes or --quick shorten it"
    )


def _minutes(value: float) -> str:
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"
