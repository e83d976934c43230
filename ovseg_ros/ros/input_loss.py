"""Frames the camera sent that never arrived, estimated from the stamps of those that did.

A best-effort subscription over Fast DDS can lose most large frames without any error (see
the README, "Large images and DDS"). The camera's header stamps are regular, so a gap of k
camera periods between two arriving frames means k - 1 frames were lost on the way.

The period is estimated from recent stamp deltas. Their median is not enough: when most
frames are lost, most deltas are multiples of the period (2p, 3p, ...). Instead the period is
the largest value of which (nearly) all recent deltas are integer multiples, refined by the
median of delta / multiple. A stream that loses exactly every other frame looks like a camera
at half the rate; no estimator can tell those apart.

Handled: jitter (a delta counts as k periods when nearest to k * p; the period is fitted to
the deltas within ``tolerance`` periods of a multiple); duplicated stamps (ignored); stamps
that jump backwards (a bag loop, a sim-time reset: the sequence restarts, nothing is
counted); long pauses and forward jumps (more than ``max_gap_periods`` periods: a stopped
camera, not loss); rate changes (the period follows within about ``period_history *
(1 - fit_fraction)`` frames; until then a slower camera adds to the running total of lost
frames, while the windowed fraction is recomputed with the new period).

Pure Python and numpy, no ROS: the node feeds it ``header.stamp`` values.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from ovseg_ros.stamps import NS_PER_S


@dataclass(frozen=True)
class InputLossStats:
    """What the estimator knows now.

    received: frames seen (with a usable stamp) since the start or the last ``clear()``.
    lost: frames estimated lost in the same span.
    window_received / window_lost: the same over the last ``window`` deltas.
    loss_fraction: window_lost / (window_lost + window_received); 0.0 before the period is
        known.
    rate_hz: the camera's estimated rate, None until ``min_deltas`` deltas were seen.
    resets: times the stamps jumped backwards; pauses: gaps longer than ``max_gap_periods``;
    duplicates: frames whose stamp equalled the previous one.
    """

    received: int
    lost: int
    window_received: int
    window_lost: int
    loss_fraction: float
    rate_hz: float | None
    resets: int
    pauses: int
    duplicates: int


class InputLossEstimator:
    """Estimates the camera period and the frames lost, from arriving header stamps.

    Thread-safe: the node updates it from subscription callbacks and reads ``stats()`` from
    its diagnostics timer.
    """

    def __init__(
        self,
        window: int = 300,
        period_history: int = 32,
        min_deltas: int = 8,
        fit_fraction: float = 0.75,
        tolerance: float = 0.15,
        max_gap_periods: int = 25,
    ) -> None:
        """
        window: deltas behind ``loss_fraction`` (300 = 10 s at 30 Hz).
        period_history: recent deltas the period is estimated from.
        min_deltas: deltas needed before the period (and any loss) is estimated.
        fit_fraction: share of recent deltas the period must explain as integer multiples.
        tolerance: how far (in periods) a delta may be from k periods and still fit the period
            (counting rounds to the nearest k).
        max_gap_periods: longer gaps are pauses (or forward jumps), not loss.
        """
        if window < 1 or period_history < 2 or not 2 <= min_deltas <= period_history:
            raise ValueError("need window >= 1 and 2 <= min_deltas <= period_history")
        if not 0.5 < fit_fraction <= 1.0 or not 0.0 < tolerance < 0.5:
            raise ValueError("need 0.5 < fit_fraction <= 1 and 0 < tolerance < 0.5")
        if max_gap_periods < 2:
            raise ValueError("max_gap_periods must be at least 2")
        self._lock = threading.Lock()
        self._window: deque[int] = deque(maxlen=window)  # deltas, ns
        self._recent: deque[int] = deque(maxlen=period_history)  # deltas, ns
        self._min_deltas = min_deltas
        self._fit_fraction = fit_fraction
        self._tolerance = tolerance
        self._max_gap = max_gap_periods
        self.clear()

    def clear(self) -> None:
        """Forget everything (a new camera, a restarted subscription)."""
        with self._lock:
            self._window.clear()
            self._recent.clear()
            self._last: int | None = None
            self._period: float | None = None  # ns
            self._received = 0
            self._lost = 0
            self._resets = 0
            self._pauses = 0
            self._duplicates = 0

    def update(self, stamp: int) -> int:
        """Record a frame by its header stamp (ns); return how many frames were newly counted
        lost: those just before it, plus, once the period becomes known, the warm-up's (so the
        returns sum to ``stats().lost``)."""
        with self._lock:
            last, self._last = self._last, stamp
            if last is None:
                self._received += 1
                return 0
            delta = stamp - last
            if delta == 0:
                self._duplicates += 1
                return 0
            self._received += 1
            if delta < 0:  # a new sequence starts here
                self._resets += 1
                return 0
            had_period = self._period is not None
            self._recent.append(delta)
            self._window.append(delta)
            self._period = self._estimate_period()
            if self._period is None:
                return 0
            warmup = 0
            if not had_period:  # count the warm-up deltas too, now that the period is known
                warmup = sum(self._missing(d) for d in list(self._window)[:-1])
                self._lost += warmup
            if self._multiple(delta) > self._max_gap:
                self._pauses += 1
                return warmup
            missing = self._missing(delta)
            self._lost += missing
            return warmup + missing

    @property
    def period_s(self) -> float | None:
        """The camera's estimated period in seconds (None until it is known)."""
        period = self._period
        return period / NS_PER_S if period else None

    def stats(self) -> InputLossStats:
        with self._lock:
            window_lost = sum(self._missing(d) for d in self._window) if self._period else 0
            window_received = len(self._window)
            total = window_lost + window_received
            return InputLossStats(
                received=self._received,
                lost=self._lost,
                window_received=window_received,
                window_lost=window_lost,
                loss_fraction=window_lost / total if total else 0.0,
                rate_hz=NS_PER_S / self._period if self._period else None,
                resets=self._resets,
                pauses=self._pauses,
                duplicates=self._duplicates,
            )

    # -- internals (called with the lock held) ------------------------------------------------

    def _multiple(self, delta: int) -> int:
        """delta in whole periods (0 when much shorter than one)."""
        return int(delta / self._period + 0.5)

    def _missing(self, delta: int) -> int:
        k = self._multiple(delta)
        return k - 1 if 2 <= k <= self._max_gap else 0

    def _estimate_period(self) -> float | None:
        """The largest period that explains fit_fraction of the recent deltas, refined."""
        if len(self._recent) < self._min_deltas:
            return None
        deltas = np.asarray(self._recent, dtype=np.float64)  # [N]
        # Candidates: each delta as 1, 2 or 3 periods, so the true period is among them even
        # when no single-period delta arrived recently.
        candidates = np.unique(np.concatenate([deltas, deltas / 2, deltas / 3]))  # [C]
        multiples = np.floor(deltas[None, :] / candidates[:, None] + 0.5)  # [C, N]
        error = np.abs(deltas[None, :] - multiples * candidates[:, None]) / candidates[:, None]
        fits = (multiples >= 1) & (error <= self._tolerance)
        good = np.flatnonzero(fits.mean(axis=1) >= self._fit_fraction)
        if good.size == 0:  # no regular rate (yet): keep the last estimate
            return self._period
        period = float(candidates[good[-1]])  # candidates are sorted: the largest that fits
        for _ in range(2):  # jitter: the candidate is one noisy delta; use all that fit
            k = np.floor(deltas / period + 0.5)
            ok = (k >= 1) & (np.abs(deltas - k * period) <= self._tolerance * period)
            period = float(np.median(deltas[ok] / k[ok]))
        return period
