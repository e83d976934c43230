"""The node's vocabulary updater and per-kind log throttle, without ROS (real tiny models)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from ovseg_ros.image_conversion import ImageConversionError, ImageTooLargeError
from ovseg_ros.log_throttle import KindThrottle, problem_kind, suppressed_note
from ovseg_ros.ros.diagnostics import NodeInfo, segmentation_status
from ovseg_ros.ros.stats import StatsSnapshot
from ovseg_ros.ros.vocabulary_updater import Pending, VocabularyUpdater, pending_info
from ovseg_ros.segmentation import build_segmenter, tiny_config

pytestmark = pytest.mark.timeout(300)


def names(count: int) -> list[str]:
    token = uuid.uuid4().hex[:8]
    return [f"object {token} {i}" for i in range(count)]


@pytest.fixture(scope="module")
def segmenter():
    # 80 prompts per name: a few hundred names take seconds, batches of 8 names report often.
    seg = build_segmenter(tiny_config("maskclip", templates="imagenet80", text_cache_dir="none"))
    seg.text_cache.batch_names = 8
    seg.set_vocabulary(["floor", "door"])
    return seg


class Recorder:
    def __init__(self) -> None:
        self.ready = threading.Event()
        self.logs: list[tuple[str, str]] = []

    def log(self, level: str, message: str) -> None:
        self.logs.append((level, message))


def test_only_the_newest_change_takes_effect(segmenter) -> None:
    recorder = Recorder()
    updater = VocabularyUpdater(lambda: segmenter, recorder.ready.set, recorder.log)
    before = segmenter.vocabulary.version
    slow = names(200)
    first = updater.request(slow)
    assert updater.pending() == Pending(first, 200)
    # Wait for the slow one's first batches, then supersede it.
    assert _wait(lambda: updater.pending().done >= 8)
    assert updater.pending().total == 200
    assert updater.activate(segmenter.activate_vocabulary) is None  # not encoded yet
    second = updater.request(["wall", "window; pane"])
    assert second > first and updater.pending() == Pending(second, 2)
    assert recorder.ready.wait(60)
    activation = updater.activate(segmenter.activate_vocabulary)
    assert activation is not None
    assert activation.vocabulary.names == ["wall", "window"]
    assert activation.vocabulary.version == segmenter.vocabulary.version == before + 1
    assert activation.encoded == 3 and activation.waited_s >= activation.encoding_s >= 0
    assert updater.pending() is None and updater.activate(segmenter.activate_vocabulary) is None
    assert ("info", f"vocabulary change #{first} superseded before it took effect") in recorder.logs
    assert updater.stop(10)


def test_ready_but_not_activated_is_dropped_by_a_newer_request(segmenter) -> None:
    recorder = Recorder()
    updater = VocabularyUpdater(lambda: segmenter, recorder.ready.set, recorder.log)
    updater.request(["lamp"])
    assert recorder.ready.wait(60)
    recorder.ready.clear()
    updater.request(["sofa", "rug"])  # before the worker activated "lamp"
    assert recorder.ready.wait(60)
    activation = updater.activate(segmenter.activate_vocabulary)
    assert activation.vocabulary.names == ["sofa", "rug"]
    assert updater.activate(segmenter.activate_vocabulary) is None
    assert updater.stop(10)


def test_requests_wait_for_a_segmenter_and_cancel_drops_them(segmenter) -> None:
    recorder = Recorder()
    current = [None]  # configure in progress: no segmenter yet
    updater = VocabularyUpdater(lambda: current[0], recorder.ready.set, recorder.log)
    updater.request(["shelf"])
    assert not recorder.ready.wait(0.5)
    current[0] = segmenter
    assert recorder.ready.wait(60)
    updater.cancel()
    assert updater.pending() is None and updater.activate(segmenter.activate_vocabulary) is None
    assert updater.stop(10)


def test_pending_change_in_diagnostics() -> None:
    assert pending_info(None, 4) == {}
    info = pending_info(Pending(7, 300, 96, 300), 4)
    assert info == {"pending_version": 5, "pending_done": 96, "pending_total": 300}

    def values(**pending) -> dict[str, str]:
        node = NodeInfo("n", "active", configured=True, vocabulary_version=4, **pending)
        status = segmentation_status(node, StatsSnapshot(), StatsSnapshot(), 1.0)
        return {kv.key: kv.value for kv in status.values}

    assert values(**info)["vocabulary_pending_version"] == "5"
    assert values(**info)["vocabulary_encoding"] == "96/300"
    assert values(**pending_info(Pending(8, 3), 4))["vocabulary_encoding"] == "0/?"
    idle = values()
    assert idle["vocabulary_pending_version"] == idle["vocabulary_encoding"] == ""


def test_throttle_is_per_key() -> None:
    now = [0.0]
    throttle = KindThrottle(5.0, clock=lambda: now[0])
    assert throttle.admit("size") == 0
    assert throttle.admit("decode") == 0  # another kind is not held back by the first
    assert throttle.admit("size") is None and throttle.admit("size") is None
    now[0] = 4.9
    assert throttle.admit("decode") is None
    now[0] = 5.0
    assert throttle.admit("size") == 2  # two suppressed since the last one
    assert throttle.admit("decode") == 1
    assert throttle.admit("size") is None
    assert suppressed_note(0) == "" and "2 more of this kind" in suppressed_note(2)


def test_problem_kind() -> None:
    assert problem_kind(ImageConversionError("x", kind="decode")) == "decode"
    assert problem_kind(ImageTooLargeError(20000, 20000, 100)) == "limit"
    assert problem_kind(RuntimeError("boom")) == "RuntimeError"


def _wait(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.02)
    return predicate()
