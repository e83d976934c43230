"""What one frame costs the engine in working memory, from the settings alone.

The knobs' ranges (``config.py``) bound each knob; their combination is bounded here: the
estimate of a frame's working memory at the largest frame a caller accepts, refused above a
budget with the term that exceeds it and the knob that drives it. The node checks every
configuration and runtime change against its ``max_frame_memory_mb`` before applying it, so
one parameter call cannot make the engine allocate tens of gigabytes.

The terms are the engine's dominant allocations, each an upper bound of what the code holds
at once (float32, the ViT-B/16 sizes of the full preset; the tiny preset is smaller):

- ``windows``: every sliding-window crop of a frame, ``[N, 3, s, s]`` (cropped at once);
- ``window features``: the backbone's per-window outputs kept for stitching / the graph,
  ``[N, T, 768]`` with ``T = (s / 16)^2`` tokens, times CLIP and DINO for LPOSS;
- ``attention``: one forward batch of at most ``MAX_WINDOWS`` windows, ``[B, 12, T, T]``;
- ``class maps``: the stitched scores ``[Q, h, w]`` at the processing size and their
  average (2 copies; later steps work on class chunks or a pooled grid);
- ``patch graph`` (LPOSS): the dense ``N T x N T`` similarity behind the exact kNN;
- ``pixel graph`` (LPOSS+ / ``pixel_refine``): ``2 r (r + 1)`` weight planes ``[h, w]`` and
  the conjugate-gradient vectors ``[Q, h, w]`` of its solve (5 copies);
- stages after the engine that hold more ``[Q, h, w]`` maps (temporal fusion): named by the
  caller with their number of copies (``extra_maps``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .config import SegmenterConfig
from .geometry import rescaled_size, window_boxes
from .methods import method_spec

FLOAT = 4  # bytes
MAX_WINDOWS = 64  # windows per backbone forward pass (segmenter.MAX_WINDOWS)
WIDTH, HEADS, PATCH = 768, 12, 16  # ViT-B/16
CG_VECTORS = 5  # x, r, p, A p and the right-hand side of a batched CG
CLASS_MAP_COPIES = 2  # the stitched sum and the averaged scores


@dataclass(frozen=True)
class FrameCost:
    """The estimate for one frame: processing size, windows and bytes per term."""

    processing: tuple[int, int]  # (h, w) the engine works at
    windows: int
    terms: dict[str, int]  # name -> bytes

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    @property
    def largest(self) -> str:
        return max(self.terms, key=lambda name: self.terms[name])


# The knobs that drive each term: named in a refusal so the user knows what to change.
DRIVERS = {
    "windows": "window_stride / window_size / short_side / max_long_side",
    "window features": "window_stride / window_size / short_side / max_long_side",
    "attention": "window_size",
    "class maps": "the vocabulary size / short_side / max_long_side",
    "patch graph": "window_stride / window_size / short_side (LPOSS)",
    "pixel graph": "pixel_radius / the vocabulary size / short_side / max_long_side",
}


def largest_processing_size(config: SegmenterConfig, max_input_pixels: int) -> tuple[int, int]:
    """The largest ``(h, w)`` the engine works at for inputs of up to ``max_input_pixels``.

    With a short side ``s`` and a long-side bound ``L`` the area is largest for an input of
    aspect ``L / s`` (``s x L``); without resizing (``short_side`` 0) it is the input's own.
    """
    config = config.resolved()
    if not config.short_side:
        side = max(1, math.isqrt(max_input_pixels))
        return side, max(1, max_input_pixels // side)
    short = min(config.short_side, config.max_long_side)
    return rescaled_size(short, config.max_long_side, config.short_side, config.max_long_side)


def frame_cost(
    config: SegmenterConfig,
    height: int,
    width: int,
    queries: int,
    extra_maps: Mapping[str, int] | None = None,
) -> FrameCost:
    """The working-memory estimate of one ``height x width`` frame (already at the processing
    size) with ``queries`` text queries (vocabulary names and synonyms); ``extra_maps``: term
    name -> ``[Q, h, w]`` float maps a later stage holds (e.g. temporal fusion)."""
    config = config.resolved()
    spec = method_spec(config.method)
    if config.whole_image:
        boxes = [(0, height, 0, width)]
        side = max(height, width)
    else:
        boxes = window_boxes(height, width, config.window_size, config.window_stride)
        side = config.window_size
    n = len(boxes)
    tokens = math.ceil(side / PATCH) ** 2
    backbones = 2 if spec.patch_graph else 1
    pixels = height * width
    terms = {
        "windows": n * 3 * side * side * FLOAT,
        "window features": backbones * n * tokens * WIDTH * FLOAT,
        "attention": min(n, MAX_WINDOWS) * HEADS * tokens * tokens * FLOAT,
        "class maps": CLASS_MAP_COPIES * max(queries, 1) * pixels * FLOAT,
    }
    if spec.patch_graph:
        terms["patch graph"] = (n * tokens) ** 2 * FLOAT
    if config.pixel_refine:
        r = config.pixel_radius
        terms["pixel graph"] = (2 * r * (r + 1) + CG_VECTORS * max(queries, 1)) * pixels * FLOAT
    for name, copies in (extra_maps or {}).items():
        terms[name] = copies * max(queries, 1) * pixels * FLOAT
    return FrameCost((height, width), n, terms)


def check_frame_memory(
    config: SegmenterConfig,
    max_input_pixels: int,
    queries: int,
    budget_mb: float,
    extra_maps: Mapping[str, int] | None = None,
) -> FrameCost:
    """The cost of the largest frame (``extra_maps`` as in :func:`frame_cost`); ``ValueError``
    saying which term exceeds the budget and which knobs drive it when the estimate is above
    ``budget_mb``."""
    height, width = largest_processing_size(config, max_input_pixels)
    cost = frame_cost(config, height, width, queries, extra_maps)
    if cost.total > budget_mb * 2**20:
        name = cost.largest
        raise ValueError(
            f"the largest frame ({height}x{width} at the processing size, {cost.windows} "
            f"windows, {queries} text queries) would need about {cost.total / 2**20:.0f} MiB, "
            f"over max_frame_memory_mb {budget_mb:g}; most of it is {name} "
            f"({cost.terms[name] / 2**20:.0f} MiB): change "
            f"{DRIVERS.get(name, 'the vocabulary size / short_side / max_long_side')}"
        )
    return cost
