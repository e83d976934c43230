"""One wait for the device per frame: on CUDA a ``segment`` / ``segment_batch`` call
synchronises once, when labels and confidence are copied to the host; per-stage timings are
made only when asked for, with CUDA events that cost no wait of their own.

Counted on the CPU: ``sync.is_async`` says "CUDA" while the tensors stay on the CPU, and
``torch.cuda``'s synchronising calls are fakes that count (the CUDA branches of the timer
and of the host copy run as they would on a GPU). The old timer synchronised after every
stage: 5 to 7 waits per frame.
"""

from __future__ import annotations

import collections
import itertools
import time
import warnings

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ovseg_ros.segmentation import SegmenterConfig, build_segmenter, sync

METHODS = ("pearl", "maskclip", "lposs", "lposs_plus")
VOCAB = ["background; sky; wall", "person; man", "chair"]


def frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module", params=METHODS)
def segmenter(request):
    # short_side=0: frames processed at their own (small) size; the waits do not depend on it.
    cfg = SegmenterConfig(
        method=request.param, preset="tiny", device="cpu", templates="single", short_side=0
    )
    seg = build_segmenter(cfg)
    seg.set_vocabulary(VOCAB)
    return seg


class FakeCuda:
    """``torch.cuda``'s stream, events and synchronisations on the CPU, in queue order: an
    event is complete once a synchronisation came after its ``record``."""

    def __init__(self) -> None:
        self.syncs: list[str] = []  # what waited: "device", "stream", "event"
        self.events: list = []  # every Event made
        self._order = itertools.count()
        self._done = -1  # every mark up to this one has been reached by the "device"
        fake = self

        class Stream:
            def synchronize(self) -> None:
                fake.wait("stream")

        class Event:
            def __init__(self, enable_timing: bool = False, **_: object) -> None:
                self.enable_timing, self.mark, self.at = enable_timing, None, None
                fake.events.append(self)

            def record(self, stream: object = None) -> None:
                self.mark, self.at = next(fake._order), time.perf_counter()

            def query(self) -> bool:
                return self.mark is not None and self.mark <= fake._done

            def synchronize(self) -> None:
                fake.wait("event")

            def elapsed_time(self, end: Event) -> float:
                if not (self.enable_timing and self.query() and end.query()):
                    raise RuntimeError("elapsed_time of an event that is not complete")
                return 1000.0 * (end.at - self.at)

        self.stream, self.Event = Stream(), Event

    def wait(self, what: str) -> None:
        self.syncs.append(what)
        self._done = next(self._order)


@pytest.fixture
def fake_cuda(monkeypatch) -> FakeCuda:
    fake = FakeCuda()
    monkeypatch.setattr(sync, "is_async", lambda device: True)
    monkeypatch.setattr(sync, "pinned_empty", torch.empty_like)  # pinning needs a driver
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: fake.wait("device"))
    if hasattr(torch, "accelerator"):
        monkeypatch.setattr(torch.accelerator, "synchronize", lambda *a: fake.wait("device"))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: fake.stream)
    monkeypatch.setattr(torch.cuda, "default_stream", lambda device=None: fake.stream)
    monkeypatch.setattr(torch.cuda, "Event", fake.Event)
    return fake


def test_a_frame_waits_once_for_its_host_copy(segmenter, fake_cuda):
    image = frame(48, 64)
    result = segmenter.segment(image)
    assert fake_cuda.syncs == ["stream"]
    assert not fake_cuda.events and set(result.timings) == {"total"}
    assert result.timings["total"] > 0
    with pytest.MonkeyPatch.context() as undo:  # the CUDA branch copied the right arrays
        undo.setattr(sync, "is_async", lambda device: False)
        plain = segmenter.segment(image)
    np.testing.assert_array_equal(result.label_ids, plain.label_ids)
    np.testing.assert_array_equal(result.confidence, plain.confidence)


def test_a_batch_waits_once_for_all_its_frames(segmenter, fake_cuda):
    results = segmenter.segment_batch([frame(48, 64), frame(40, 40, 1), frame(48, 64, 2)])
    assert fake_cuda.syncs == ["stream"] and len(results) == 3
    assert all(set(r.timings) == {"total"} for r in results)
    assert [r.labels.shape for r in results] == [(48, 64), (40, 40), (48, 64)]


def test_timed_stages_are_read_from_events_after_the_host_copy(segmenter, fake_cuda):
    result = segmenter.segment(frame(48, 64), timed=True)
    # The events were recorded before the copy's synchronisation: complete, no extra wait.
    assert fake_cuda.syncs == ["stream"]
    stages = set(result.timings) - {"total"}
    assert {"preprocess", "backbone", "stitch", "postprocess"} <= stages
    assert len(fake_cuda.events) >= len(stages) + 1  # a start mark, one per lap
    assert all(event.enable_timing for event in fake_cuda.events)
    assert all(seconds >= 0 for seconds in result.timings.values())


def test_the_timer_waits_for_an_event_only_if_it_is_not_complete(fake_cuda):
    timer = sync.StageTimer(torch.device("cuda"), timed=True)
    timer.lap("a")
    timer.lap("b")
    timer.lap("a")  # a stage lapped twice adds up
    timings = timer.finish()
    assert fake_cuda.syncs == ["event"] and set(timings) == {"a", "b", "total"}
    untimed = sync.StageTimer(torch.device("cuda"))
    untimed.lap("a")
    assert set(untimed.finish()) == {"total"} and fake_cuda.syncs == ["event"]


class HostReads(TorchDispatchMode):
    """Counts the operators that read a tensor's value on the host (on CUDA each waits for
    the device: ``bool(t)``, ``t.item()``, data-dependent shapes)."""

    WATCH = frozenset({"_local_scalar_dense", "is_nonzero", "item", "nonzero", "masked_select"})

    def __init__(self) -> None:
        super().__init__()
        self.reads: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.WATCH:
            self.reads[name] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("segmenter", ["pearl", "maskclip"], indirect=True)
def test_no_hidden_waits_on_the_pearl_and_maskclip_path(segmenter):
    """No host read of a device value per frame (the host copy aside). LPOSS's kNN graph has
    data-dependent sizes (sparse coalescing, masking), which read the device by nature."""
    with HostReads() as mode:
        segmenter.segment_batch([frame(48, 64), frame(40, 40, 1)])
    assert not mode.reads


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
@pytest.mark.parametrize("method", ["pearl", "maskclip"])
def test_on_a_gpu_a_frame_waits_at_most_once(method):
    """The real thing, as PyTorch's sync debug mode reports it: ``.item()``, ``bool(t)``, a
    pageable host-to-device copy or ``torch.cuda.synchronize`` would each add one report."""
    cfg = SegmenterConfig(
        method=method, preset="tiny", device="cuda", templates="single", short_side=0
    )
    seg = build_segmenter(cfg)
    seg.set_vocabulary(VOCAB)
    image = frame(48, 64)
    seg.segment(image)  # warm: lazy initialisation, pinned host blocks
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = seg.segment(image)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    reports = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(reports) <= 1, reports  # the host copy's wait (if the mode reports it)
    assert set(result.timings) == {"total"}
    timed = seg.segment(image, timed=True).timings
    assert {"preprocess", "backbone", "stitch", "postprocess"} <= set(timed)
    assert all(seconds >= 0 for seconds in timed.values())
