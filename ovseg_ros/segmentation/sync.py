"""Where the engine waits for the device on purpose: once per ``segment_batch`` call.

On CUDA the host only queues work and waits once, when the labels and confidence of all
frames are copied to the host (``to_host``: one stream synchronisation). Per-stage timings
are made only when asked for (``StageTimer(timed=True)``: CUDA events, read after that copy,
so no wait of their own). ``is_async`` and ``pinned_empty`` are the two device questions
these ask; tests point them at CUDA on the CPU and count the waits with fakes of
``torch.cuda``.
"""

from __future__ import annotations

import time
from itertools import pairwise

import numpy as np
import torch


def is_async(device: torch.device) -> bool:
    """Whether work on ``device`` is queued (CUDA), not done when the call returns."""
    return device.type == "cuda"


def pinned_empty(like: torch.Tensor) -> torch.Tensor:
    """An uninitialised page-locked host tensor of ``like``'s shape and dtype (PyTorch's caching
    host allocator reuses freed blocks, so a warm frame loop allocates none)."""
    return torch.empty(like.shape, dtype=like.dtype, pin_memory=True)


def to_host(*tensors: torch.Tensor) -> list[np.ndarray]:
    """The tensors (all on one device) as numpy arrays. Queued device: non-blocking copies
    into pinned memory and one synchronisation of the current stream for all of them;
    elsewhere ``.cpu()`` (a view on the CPU)."""
    if not tensors or not is_async(tensors[0].device):
        return [t.cpu().numpy() for t in tensors]
    hosts = [pinned_empty(t) for t in tensors]
    for host, tensor in zip(hosts, tensors, strict=True):
        host.copy_(tensor, non_blocking=True)
    torch.cuda.current_stream(tensors[0].device).synchronize()
    return [host.numpy() for host in hosts]


class StageTimer:
    """Seconds per stage of one ``segment_batch`` call, only when asked for.

    ``timed=False`` (production): ``lap`` does nothing and ``finish`` gives ``{"total": s}``,
    the wall time from construction to ``finish``. ``timed=True``: also each stage, the time
    from the previous ``lap`` (or construction) to its own; stages lapped twice add up. On a
    queued device a stage is measured between CUDA events on the current stream (when the
    device reached the marks, so no synchronisation per stage); they are read in ``finish``,
    which the caller runs after ``to_host`` has waited for the stream (the events are then
    complete: no further wait). Elsewhere ``time.perf_counter``.
    """

    def __init__(self, device: torch.device, *, timed: bool = False) -> None:
        self._timed = timed
        self._events = timed and is_async(device)
        self._device = device
        self._marks: list[tuple[str, object]] = []
        self._start = time.perf_counter()
        if timed:
            self._marks.append(("", self._mark()))

    def _mark(self) -> object:
        if not self._events:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self._device))
        return event

    def lap(self, stage: str) -> None:
        """End ``stage`` here (no-op unless timed)."""
        if self._timed:
            self._marks.append((stage, self._mark()))

    def finish(self) -> dict[str, float]:
        """``{"total": s}``, plus ``{stage: s}`` when timed."""
        total = time.perf_counter() - self._start
        timings: dict[str, float] = {}
        if self._events and len(self._marks) > 1:
            last = self._marks[-1][1]
            if not last.query():  # complete after to_host's synchronisation
                last.synchronize()
        for (_, before), (stage, after) in pairwise(self._marks):
            if self._events:
                seconds = before.elapsed_time(after) / 1000.0  # milliseconds
            else:
                seconds = after - before
            timings[stage] = timings.get(stage, 0.0) + seconds
        timings["total"] = total
        return timings
