"""Optional acceleration of the backbone's window batch: ``torch.compile`` and CUDA graphs.

The backbone sees a batch of equally sized windows ``[N, 3, S, S]``; ``N`` depends on the
frame size. Both options want one fixed shape, so :class:`BackboneCall` splits the windows
into batches of a fixed size ``B`` (by default the first frame's ``N``, i.e. exact for a
camera of constant size) and pads the last batch with zero windows; the padded rows are
dropped from the outputs. Per window the backbone is independent of the other windows (no
batch statistics), so padding never changes a real window's features.

* ``compile``: ``torch.compile(fn, dynamic=False)``: specialised to the fixed shape, compiled
  on the first call (seconds to minutes), then fused kernels.
* ``cuda_graphs`` (CUDA only): the first call per window shape captures the batch's kernels
  into a CUDA graph reading a static input buffer; later calls copy the windows into that
  buffer and replay the graph, one launch instead of hundreds. The outputs are copied out of
  the graph's static buffers, so results never alias across calls.

Both are off by default. If compiling or capturing fails, the call logs one warning, stays on
eager mode from then on, and returns the eager result: never a failed frame.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

MAX_GRAPHS = 4  # window shapes kept captured; others run eagerly (each graph holds its memory)
_WARMUP_RUNS = 2  # eager runs on a side stream before capture (cuDNN / cuBLAS autotuning)

Outputs = Any  # a Tensor, or a tuple of Tensors and plain values (e.g. the patch grid)


class BackboneCall:
    """``fn(images [N, 3, H, W]) -> outputs`` run eagerly, compiled, or as a CUDA graph.

    ``fn`` must treat windows independently and return a Tensor or a tuple whose Tensor items
    have the batch as their first dimension (other items, e.g. a grid tuple, must depend on
    the window shape only). Thread safe: concurrent calls share one set of static buffers
    under a lock. ``compile_backend``: torch.compile's backend (tests use lighter ones).

    Any error on the accelerated path (compiling, capturing, replaying) switches this call to
    eager mode for good, with one warning; the frame is then run eagerly (an error that eager
    mode raises too, e.g. out of memory, still reaches the caller).
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], Outputs],
        *,
        device: torch.device | str,
        compile: bool = False,
        cuda_graphs: bool = False,
        batch_size: int | None = None,
        compile_backend: str | Callable = "inductor",
        name: str = "backbone",
    ) -> None:
        if batch_size is not None and batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.name = name
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.fallback_reason: str | None = None
        self._eager = fn
        self._fn = fn
        self._compiled = False
        self._graphs: dict[tuple, _CapturedGraph] = {}
        self._pool = None
        self._lock = threading.Lock()
        self.cuda_graphs = False
        if cuda_graphs:
            if self.device.type == "cuda":
                self.cuda_graphs = True
            else:
                self._fall_back(
                    f"cuda_graphs needs a CUDA device, this backbone runs on {self.device}"
                )
        if compile:
            try:
                self._fn = torch.compile(fn, dynamic=False, backend=compile_backend)
                self._compiled = True
            except Exception as exc:  # noqa: BLE001 - e.g. an unknown backend or no compiler
                self._fall_back(f"torch.compile failed: {_describe(exc)}")

    @property
    def mode(self) -> str:
        """``"eager"``, ``"compile"``, ``"cuda_graphs"`` or ``"compile+cuda_graphs"``."""
        flags = (("compile", self._compiled), ("cuda_graphs", self.cuda_graphs))
        parts = [part for part, on in flags if on]
        return "+".join(parts) or "eager"

    @property
    def accelerated(self) -> bool:
        return self._compiled or self.cuda_graphs

    def __call__(self, images: torch.Tensor) -> Outputs:
        """Run ``fn`` on ``images`` ``[N, 3, H, W]``; the same outputs as ``fn(images)``."""
        if not self.accelerated or images.shape[0] == 0:
            return self._eager(images)
        with self._lock:
            if self.batch_size is None:
                self.batch_size = int(images.shape[0])
            try:
                return self._batched(images)
            except Exception as exc:  # noqa: BLE001 - fall back, never fail the frame
                if not self.accelerated:
                    raise
                self._fall_back(f"{self.mode} failed: {_describe(exc)}")
        return self._eager(images)

    def release(self) -> None:
        """Free the captured graphs and their static buffers."""
        with self._lock:
            self._graphs.clear()
            self._pool = None

    # -- internals ------------------------------------------------------------------------------

    def _batched(self, images: torch.Tensor) -> Outputs:
        size = self.batch_size
        n = images.shape[0]
        chunks = []
        for start in range(0, n, size):
            batch = images[start : start + size]
            real = batch.shape[0]
            if real < size:  # pad to the fixed shape with zero windows, dropped below
                pad = batch.new_zeros((size - real, *batch.shape[1:]))
                batch = torch.cat([batch, pad])
            chunks.append((self._run_fixed(batch), real))
        return _concat_outputs(chunks)

    def _run_fixed(self, batch: torch.Tensor) -> Outputs:
        if not self.cuda_graphs:
            return self._fn(batch)
        key = (tuple(batch.shape), batch.dtype)
        graph = self._graphs.get(key)
        if graph is None:
            if len(self._graphs) >= MAX_GRAPHS:
                return self._fn(batch)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = _CapturedGraph(self._fn, batch, self._pool)
            self._graphs[key] = graph
        return graph.replay(batch)

    def _fall_back(self, reason: str) -> None:
        log.warning("%s: %s; running eagerly instead", self.name, reason)
        self.fallback_reason = reason
        self._fn = self._eager
        self._compiled = False
        self.cuda_graphs = False
        self._graphs.clear()
        self._pool = None


class _CapturedGraph:
    """One CUDA graph of ``fn`` on a static input buffer of ``example``'s shape and dtype."""

    def __init__(self, fn: Callable, example: torch.Tensor, pool) -> None:
        self.static_input = example.clone()
        side = torch.cuda.Stream(device=example.device)
        side.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(side):  # warm up off the capture: lazy init, autotuning
            for _ in range(_WARMUP_RUNS):
                fn(self.static_input)
        torch.cuda.current_stream(example.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA work during the capture (e.g. the text encoder
        # of a vocabulary change) neither breaks the capture nor fails there.
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.static_output = fn(self.static_input)

    def replay(self, batch: torch.Tensor) -> Outputs:
        self.static_input.copy_(batch)
        self.graph.replay()
        return _map_tensors(self.static_output, torch.Tensor.clone)


# The factory name callers use; with both options off a call simply runs ``fn``.
wrap = BackboneCall


def _map_tensors(outputs: Outputs, op: Callable[[torch.Tensor], torch.Tensor]) -> Outputs:
    if isinstance(outputs, torch.Tensor):
        return op(outputs)
    if isinstance(outputs, tuple):
        return tuple(op(o) if isinstance(o, torch.Tensor) else o for o in outputs)
    raise TypeError(f"backbone outputs must be a Tensor or a tuple, got {type(outputs).__name__}")


def _concat_outputs(chunks: list[tuple[Outputs, int]]) -> Outputs:
    """Join per-batch outputs along the batch, keeping each batch's ``real`` leading rows."""
    first = chunks[0][0]
    if len(chunks) == 1:
        real = chunks[0][1]
        return _map_tensors(first, lambda t: t[:real])
    if isinstance(first, torch.Tensor):
        return torch.cat([out[:real] for out, real in chunks])
    joined = []
    for i, item in enumerate(first):
        if isinstance(item, torch.Tensor):
            joined.append(torch.cat([out[i][:real] for out, real in chunks]))
        else:
            joined.append(item)
    return tuple(joined)


def _describe(exc: BaseException) -> str:
    """``Type: first line`` of the root cause (compiler errors wrap the real one)."""
    while True:
        inner = exc.__cause__ or getattr(exc, "inner_exception", None)
        if not isinstance(inner, BaseException):
            break
        exc = inner
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
