"""How every benchmark measures: the one timing loop (CUDA-synchronised), medians and
percentiles, latencies matched by stamp, peak memory (CUDA allocator or the CPU's resident
set), and the fields and warnings of a benchmark record."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import numpy as np
import torch

# -- timing ----------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(call: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """``(seconds, result)`` of one ``call``, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    result = call()
    sync(device)
    return time.perf_counter() - start, result


def run_timed(
    call: Callable[[], Any], device: torch.device, *, warmup: int, repeat: int
) -> tuple[list[float], list[Any]]:
    """``warmup`` untimed calls, then ``repeat`` timed ones: ``(seconds, results)``."""
    for _ in range(warmup):
        call()
    seconds, results = [], []
    for _ in range(repeat):
        elapsed, result = timed_call(call, device)
        seconds.append(elapsed)
        results.append(result)
    return seconds, results


def median_ms(values: Sequence[float]) -> float:
    """Median of ``values`` (seconds) in milliseconds."""
    return 1000.0 * statistics.median(values)


def percentiles(values: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    """p50 / p90 / p99 of ``values`` (None each when empty)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"p50": None, "p90": None, "p99": None}
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)}


def latencies_ms(sent: Sequence[int], arrivals: Mapping[int, int]) -> np.ndarray:
    """``[K]`` arrival - publish times (ms) of the ``sent`` stamps (ns, the wall clock at
    publishing) that arrived; ``arrivals``: stamp -> arrival wall clock (ns)."""
    return np.array([(arrivals[s] - s) / 1e6 for s in sent if s in arrivals], dtype=np.float64)


# -- memory ----------------------------------------------------------------------------------------


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


# -- records ---------------------------------------------------------------------------------------


def size_record(width: int, height: int) -> dict[str, Any]:
    """The size fields of a benchmark record."""
    return {"size": f"{width}x{height}", "width": width, "height": height}


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def warn(log: TextIO, message: str) -> None:
    print(f"warning: {message}", file=log, flush=True)


def progress_eta(done: int, total: int, elapsed_s: float) -> str:
    """`` (4.2 min so far, ~7.5 min left)`` at the measured pace; ``""`` before the first."""
    if done <= 0 or done >= total:
        return ""
    left = elapsed_s / done * (total - done)
    return f" ({elapsed_s / 60:.1f} min so far, ~{left / 60:.1f} min left)"
