"""Input-loss estimation from header stamps: synthetic camera streams with known losses."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ovseg_ros.ros.input_loss import InputLossEstimator
from ovseg_ros.stamps import NS_PER_S, split_ns, stamp_ns, stamp_text

PERIOD_30HZ = NS_PER_S // 30


def camera(count: int, period: int = PERIOD_30HZ, start: int = 1_700_000_000 * NS_PER_S):
    """Stamps of `count` frames at a fixed period."""
    return [start + i * period for i in range(count)]


def feed(estimator: InputLossEstimator, stamps) -> list[int]:
    return [estimator.update(int(s)) for s in stamps]


def true_lost(kept: np.ndarray) -> int:
    """Frames withheld between the first and the last kept frame."""
    indices = np.flatnonzero(kept)
    return int(indices[-1] - indices[0] + 1 - indices.size)


def test_stamp_ns():
    assert stamp_ns(SimpleNamespace(sec=3, nanosec=25)) == 3 * NS_PER_S + 25
    assert split_ns(3 * NS_PER_S + 25) == (3, 25)
    assert stamp_text(3 * NS_PER_S + 500) == "3.000000500"


def test_regular_stream_loses_nothing():
    est = InputLossEstimator()
    assert max(feed(est, camera(200))) == 0
    stats = est.stats()
    assert (stats.received, stats.lost, stats.window_lost) == (200, 0, 0)
    assert stats.loss_fraction == 0.0
    assert stats.rate_hz == pytest.approx(30.0, rel=1e-6)


def test_no_estimate_before_enough_frames():
    est = InputLossEstimator(min_deltas=8)
    feed(est, camera(5))
    assert est.stats().rate_hz is None
    assert est.stats().loss_fraction == 0.0


def test_withheld_frames_are_counted_exactly():
    stamps = camera(300)
    kept = np.ones(300, bool)
    kept[50::7] = False  # one frame in seven
    kept[120:124] = False  # a burst of four
    est = InputLossEstimator(window=1000)
    reported = feed(est, np.array(stamps)[kept])
    stats = est.stats()
    assert stats.lost == true_lost(kept) == sum(reported) == 39
    assert stats.received == kept.sum()
    # The window holds deltas: every kept frame but the first.
    assert stats.window_received == kept.sum() - 1
    assert stats.loss_fraction == pytest.approx(39 / (39 + 260))
    assert stats.rate_hz == pytest.approx(30.0, rel=1e-3)


def test_most_frames_lost_still_finds_the_camera_rate():
    """28% delivered, the measured best-effort case: most deltas are multiples of the period,
    so their median is not the period (it would read about 15 Hz and count far too few)."""
    rng = np.random.default_rng(1)
    stamps = np.array(camera(600, period=NS_PER_S // 10))
    kept = rng.random(600) < 0.28
    runs = np.diff(np.flatnonzero(kept))
    assert runs.max() <= 25  # no gap long enough to count as a pause
    est = InputLossEstimator(window=2000)
    feed(est, stamps[kept])
    stats = est.stats()
    assert np.median(runs) >= 2  # the naive estimate would be wrong here
    assert stats.rate_hz == pytest.approx(10.0, rel=1e-3)
    assert stats.lost == true_lost(kept)
    assert stats.loss_fraction == pytest.approx(1 - kept.sum() / 600, abs=0.01)


def test_losses_during_warm_up_are_counted():
    stamps = camera(60)
    kept = np.ones(60, bool)
    kept[[1, 3, 4, 40]] = False  # three of them before the period is known
    est = InputLossEstimator()
    feed(est, np.array(stamps)[kept])
    assert est.stats().lost == 4


@pytest.mark.parametrize("jitter", [0.05, 0.1])
def test_jittered_stamps(jitter: float):
    """A driver stamping on the host: each stamp off by up to `jitter` periods."""
    rng = np.random.default_rng(3)
    base = np.array(camera(600))
    stamps = base + (rng.uniform(-jitter, jitter, 600) * PERIOD_30HZ).astype(np.int64)
    kept = rng.random(600) < 0.8
    est = InputLossEstimator(window=1000)
    feed(est, stamps[kept])
    stats = est.stats()
    assert stats.lost == true_lost(kept)
    assert stats.rate_hz == pytest.approx(30.0, rel=0.02)


def test_stamps_jumping_backwards_restart_the_sequence():
    """A bag played in a loop: stamps jump back; nothing is lost at the jump."""
    loop = camera(100)
    est = InputLossEstimator()
    feed(est, loop + loop)
    stats = est.stats()
    assert (stats.resets, stats.lost, stats.received) == (1, 0, 200)
    # Loss after the reset is still counted.
    feed(est, [loop[-1] + 3 * PERIOD_30HZ])
    assert est.stats().lost == 2


def test_pause_is_not_loss():
    stamps = camera(100)
    resumed = [s + 5 * NS_PER_S for s in camera(100, start=stamps[-1])][1:]
    est = InputLossEstimator()
    feed(est, stamps + resumed)
    stats = est.stats()
    assert (stats.pauses, stats.lost) == (1, 0)


def test_duplicate_stamps_are_ignored():
    stamps = camera(50)
    est = InputLossEstimator()
    feed(est, stamps[:20] + [stamps[19]] + stamps[20:])
    stats = est.stats()
    assert (stats.duplicates, stats.lost, stats.received) == (1, 0, 50)


def test_faster_camera_causes_no_false_loss():
    slow = camera(100, period=NS_PER_S // 15)
    fast = camera(200, period=NS_PER_S // 30, start=slow[-1])[1:]
    est = InputLossEstimator()
    feed(est, slow + fast)
    stats = est.stats()
    assert stats.lost == 0
    assert stats.rate_hz == pytest.approx(30.0, rel=1e-3)


def test_slower_camera_is_followed():
    """30 -> 15 Hz looks like every other frame lost until the period follows; the running
    total counts that transient, the windowed fraction recovers once the window holds the
    new rate only."""
    fast = camera(200)
    slow = camera(400, period=NS_PER_S // 15, start=fast[-1])[1:]
    est = InputLossEstimator(window=300, period_history=32, fit_fraction=0.75)
    feed(est, fast + slow)
    stats = est.stats()
    assert stats.rate_hz == pytest.approx(15.0, rel=1e-3)
    assert stats.lost <= 32 * 0.75 + 1  # the transient: at most the frames needed to follow
    assert stats.window_lost == 0 and stats.loss_fraction == 0.0


def test_no_regular_rate_keeps_counting_nothing():
    rng = np.random.default_rng(0)
    stamps = np.cumsum(rng.integers(1, 10**9, 100))  # no common period
    est = InputLossEstimator()
    feed(est, stamps)
    assert est.stats().rate_hz is None
    assert est.stats().lost == 0


def test_clear_forgets():
    est = InputLossEstimator()
    feed(est, camera(50)[::2])
    est.clear()
    stats = est.stats()
    assert (stats.received, stats.lost, stats.rate_hz) == (0, 0, None)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": 0},
        {"min_deltas": 1},
        {"min_deltas": 40, "period_history": 32},
        {"fit_fraction": 0.5},
        {"tolerance": 0.5},
        {"max_gap_periods": 1},
    ],
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        InputLossEstimator(**kwargs)
