"""The node's ROS-free parts: latest-frame slots per camera, the worker thread, pending
parameter changes, vocabulary versions (valid_from) and the diagnostics levels."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus

from ovseg_ros.ros.diagnostics import NodeInfo, segmentation_status
from ovseg_ros.ros.stats import Stats, StatsSnapshot, combined
from ovseg_ros.ros.versions import VersionLog
from ovseg_ros.ros.worker import Changes, Frame, FrameSlots, PendingChanges, Worker
from ovseg_ros.segmentation.vocabulary import build_vocabulary

pytestmark = pytest.mark.timeout(60)


class Job:
    """A worker job (the interface of the node's RoundJob) calling ``process(frame)`` for each
    frame of a round and collecting the errors it is told about."""

    def __init__(self, process=lambda frame: None) -> None:
        self._process, self.errors = process, []

    def between_rounds(self) -> None:
        pass

    def process(self, frames: list[Frame]) -> None:
        for frame in frames:
            self._process(frame)

    def on_error(self, message: str) -> None:
        self.errors.append(message)


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


# -- slots -------------------------------------------------------------------------------------


def test_slot_keeps_the_latest_frame_per_camera() -> None:
    slots = FrameSlots()
    assert not slots.put(Frame("left", 1, False))
    assert slots.put(Frame("left", 2, False))  # replaced 1
    assert not slots.put(Frame("right", 10, True))
    assert slots.put(Frame("left", 3, False))
    frames = slots.take_round(timeout=0.0)
    assert [(f.camera, f.message) for f in frames] == [("right", 10), ("left", 3)]
    assert slots.take_round(timeout=0.0) == []


def test_a_second_slot_absorbs_a_burst_without_building_a_lag() -> None:
    slots = FrameSlots()
    assert not slots.put(Frame("", 1, False), depth=2)
    assert not slots.put(Frame("", 2, False), depth=2)  # a burst: both wait
    assert slots.put(Frame("", 3, False), depth=2)  # never more than two: 1 goes
    assert [f.message for f in slots.take_round(timeout=0.0)] == [2]  # oldest first
    assert [f.message for f in slots.take_round(timeout=0.0)] == [3]
    assert slots.take_round(timeout=0.0) == []


def test_slot_depth_follows_engine_time_against_the_camera_period() -> None:
    stats = Stats()
    worker = Worker(stats)
    assert worker._slot_depth(Frame("", 0, False, period_s=0.2)) == 1  # engine time unknown
    for _ in range(5):
        stats.record_frame("", inference_s=0.07, latency_s=None)
    assert worker._slot_depth(Frame("", 0, False, period_s=0.2)) == 2  # 2 x 70 ms < 200 ms
    assert worker._slot_depth(Frame("", 0, False, period_s=0.1)) == 1  # 140 ms > 100 ms
    assert worker._slot_depth(Frame("", 0, False)) == 1  # camera period unknown


def test_take_round_waits_and_wakes() -> None:
    slots = FrameSlots()
    started = time.monotonic()
    threading.Timer(0.05, slots.wake).start()
    assert slots.take_round(timeout=10.0) == []
    assert time.monotonic() - started < 5.0  # woken, not timed out
    threading.Timer(0.05, lambda: slots.put(Frame("", "x", False))).start()
    assert [f.message for f in slots.take_round(timeout=10.0)] == ["x"]


def test_clear_drops_waiting_frames() -> None:
    slots = FrameSlots()
    slots.put(Frame("", 1, False))
    slots.clear()
    assert slots.take_round(timeout=0.0) == []


# -- stats -------------------------------------------------------------------------------------


def test_stats_per_camera_and_combined() -> None:
    stats = Stats()
    stats.count("left", "received", 3)
    stats.count("right", "received")
    stats.count("left", "dropped")
    stats.record_frame("left", 0.1, 0.3)
    stats.record_frame("right", 0.2, None)  # unstamped: no latency sample
    stats.record_error("right", "boom")
    snap = stats.snapshot()
    assert (snap["left"].received, snap["left"].dropped, snap["left"].processed) == (3, 1, 1)
    assert snap["right"].errors == 1 and snap["right"].last_error == "boom"
    total = combined(snap)
    assert (total.received, total.processed, total.errors) == (4, 2, 1)
    assert sorted(total.inference.tolist()) == [0.1, 0.2]
    assert total.latency.tolist() == [0.3]
    assert stats.total("received") == 4
    assert combined({}).received == 0 and combined({}).latency.size == 0
    with pytest.raises(KeyError):
        stats.count("", "nonsense")


# -- the worker ----------------------------------------------------------------------------------


def test_worker_drops_stale_frames_and_processes_every_camera() -> None:
    stats = Stats()
    processed: list[tuple[str, int]] = []
    gate, entered = threading.Event(), threading.Event()

    def process(frame: Frame) -> None:
        entered.set()
        gate.wait(5)
        processed.append((frame.camera, frame.message))

    worker = Worker(stats)
    worker.start(Job(process))
    try:
        worker.submit(Frame("a", 0, False))
        assert entered.wait(5)
        # While frame 0 is in progress: three frames of a (two dropped), one of b.
        for i in (1, 2, 3):
            worker.submit(Frame("a", i, False))
        worker.submit(Frame("b", 100, False))
        gate.set()
        assert wait_until(lambda: len(processed) == 3)
        assert processed == [("a", 0), ("a", 3), ("b", 100)]
        snap = stats.snapshot()
        assert (snap["a"].received, snap["a"].dropped) == (4, 2)
        assert (snap["b"].received, snap["b"].dropped) == (1, 0)
    finally:
        assert worker.stop(5)


def test_worker_survives_errors_and_counts_them() -> None:
    stats = Stats()
    done: list[int] = []

    def process(frame: Frame) -> None:
        if frame.message == "bad":
            raise RuntimeError("broken frame")
        done.append(frame.message)

    worker = Worker(stats)
    job = Job(process)
    errors = job.errors
    worker.start(job)
    try:
        worker.submit(Frame("cam", "bad", False))
        assert wait_until(lambda: stats.total("errors") == 1)
        worker.submit(Frame("cam", 7, False))
        assert wait_until(lambda: done == [7])
        assert "RuntimeError: broken frame" in errors[0] and "Traceback" in errors[0]
        assert stats.snapshot()["cam"].last_error == "RuntimeError: broken frame"
    finally:
        assert worker.stop(5)


def test_drain_waits_for_the_frame_in_progress() -> None:
    release, entered, finished = threading.Event(), threading.Event(), threading.Event()

    def process(frame: Frame) -> None:
        entered.set()
        release.wait(5)
        finished.set()

    worker = Worker(Stats())
    worker.start(Job(process))
    try:
        worker.submit(Frame("", 1, False))
        assert entered.wait(5)
        assert not worker.drain(0.05)  # still inside the round
        threading.Timer(0.05, release.set).start()
        assert worker.drain(5) and finished.is_set()
    finally:
        assert worker.stop(5)


def test_worker_hands_over_whole_rounds() -> None:
    """The job gets one list per round, one (newest) frame per camera; an exception counts an
    error for every camera of the round and the worker goes on."""
    rounds: list[list[tuple[str, int]]] = []
    entered, release = threading.Event(), threading.Event()

    def process(frames: list[Frame]) -> None:
        if not rounds:
            entered.set()
            release.wait(10)  # hold the first round while the others queue up
        rounds.append([(f.camera, f.message) for f in frames])
        if any(f.message == "bad" for f in frames):
            raise RuntimeError("engine failed")

    stats = Stats()
    worker = Worker(stats)
    job = Job()
    job.process = process  # the whole round
    worker.start(job)
    try:
        worker.submit(Frame("front", 0, False))
        assert entered.wait(10)  # the worker holds round 1
        for n in range(1, 6):  # front floods; left and right send one each
            worker.submit(Frame("front", n, False))
        worker.submit(Frame("left", 100, False))
        worker.submit(Frame("right", 200, False))
        release.set()
        assert wait_until(lambda: len(rounds) == 2, 20)
        assert rounds == [[("front", 0)], [("front", 5), ("left", 100), ("right", 200)]]
        assert stats.snapshot()["front"].dropped == 4
        worker.submit(Frame("left", "bad", False))
        worker.submit(Frame("right", 201, False))
        assert wait_until(lambda: len(rounds) == 3, 20)
        assert wait_until(lambda: stats.total("errors") == 2, 20)
        snapshot = stats.snapshot()
        assert (snapshot["left"].errors, snapshot["right"].errors) == (1, 1)
        worker.submit(Frame("right", 202, False))  # still running
        assert wait_until(lambda: len(rounds) == 4, 20)
    finally:
        release.set()
        worker.stop(5)


def test_pending_changes_collapse_until_taken() -> None:
    pending = PendingChanges()
    assert not pending.add(Changes())
    assert pending.add(Changes(confidence=["a"], knobs={"tlp": False}))
    assert pending.add(Changes(confidence=["b"], overlay_alpha=0.0, knobs={"logit_scale": 2.0}))
    assert pending.add(Changes(overlay_alpha=0.3))
    taken = pending.take()
    assert (taken.confidence, taken.overlay_alpha, taken.points) == (["b"], 0.3, None)
    assert taken.knobs == {"tlp": False, "logit_scale": 2.0}
    assert not pending.take()
    assert pending.add(Changes(confidence=[]))  # an empty list is a change (no per-class topics)
    assert pending.take().confidence == []
    assert pending.add(Changes(overlay_alpha=0.0))  # 0 is a value, not "unchanged"


# -- vocabulary versions -----------------------------------------------------------------------


def _version_of(messages: list[dict], camera: str, stamp: int) -> int:
    """The rule from the README: the highest version whose valid_from[camera] <= stamp."""
    latest = {m["version"]: m for m in messages}  # the last message of each version
    candidates = [
        version
        for version, m in latest.items()
        if camera in m["valid_from"]
        and m["valid_from"][camera]["sec"] * 10**9 + m["valid_from"][camera]["nanosec"] <= stamp
    ]
    return max(candidates)


def test_valid_from_maps_every_frame_to_its_version() -> None:
    log = VersionLog()
    messages = [json.loads(log.new_version(build_vocabulary(["a"], 1), ["", "aux"]))]
    assert messages[0]["valid_from"] == {
        "": {"sec": 0, "nanosec": 0},
        "aux": {"sec": 0, "nanosec": 0},
    }
    truth: list[tuple[str, int, int]] = []  # (camera, stamp, version that labelled it)
    rng = np.random.default_rng(0)
    stamps = {"": 5_000_000_000, "aux": 5_000_000_100}
    for step in range(60):
        if rng.random() < 0.3:  # a vocabulary change between frames
            vocab = build_vocabulary([f"class {step}"], log.vocabulary.version + 1)
            messages.append(json.loads(log.new_version(vocab, ["", "aux"])))
        camera = "" if rng.random() < 0.6 else "aux"
        stamps[camera] += int(rng.integers(1, 50_000_000))
        update = log.frames({camera: stamps[camera]})
        if update is not None:
            messages.append(json.loads(update))
        truth.append((camera, stamps[camera], log.version))
    assert len({v for _, _, v in truth}) > 5
    for camera, stamp, version in truth:
        assert _version_of(messages, camera, stamp) == version


def test_versions_continue_after_release_and_loops_restamp() -> None:
    log = VersionLog()
    log.new_version(build_vocabulary(["a"], 1), [""])
    log.new_version(build_vocabulary(["b"], 2), [""])
    assert log.frames({"": 100}) is not None and log.frames({"": 200}) is None
    # A round of two cameras: one message when either entry changes, none when neither does.
    both = json.loads(log.frames({"": 150, "aux": 400}))["valid_from"]
    assert both == {"": {"sec": 0, "nanosec": 100}, "aux": {"sec": 0, "nanosec": 400}}
    assert log.frames({"": 500, "aux": 600}) is None
    log.release()
    first = json.loads(log.new_version(build_vocabulary(["c"], 1), [""]))
    assert first["version"] == 3 and first["valid_from"] == {}  # not 0: older images exist
    assert json.loads(log.frames({"": 300}))["valid_from"] == {"": {"sec": 0, "nanosec": 300}}
    # A bag played in a loop: stamps go back; the entry follows so new images map here.
    assert json.loads(log.frames({"": 50}))["valid_from"] == {"": {"sec": 0, "nanosec": 50}}


# -- diagnostics -------------------------------------------------------------------------------

INFO = NodeInfo(name="ovseg: segmentation", state="active", configured=True, device="cpu")


def _snap(**counters) -> StatsSnapshot:
    return StatsSnapshot(**counters)


@pytest.mark.parametrize(
    "info,now,level,message",
    [
        (INFO, _snap(received=10, processed=10), DiagnosticStatus.OK, "active, 5.0 Hz"),
        (INFO, _snap(received=0), DiagnosticStatus.WARN, "no input frames"),
        (INFO, _snap(received=10, invalid=3), DiagnosticStatus.WARN, "3 invalid input frames"),
        (
            INFO,
            _snap(received=10, invalid=3, errors=1, last_error="RuntimeError: x"),
            DiagnosticStatus.WARN,
            "inference errors: RuntimeError: x",
        ),
        (
            NodeInfo(name="n", state="unconfigured", failure="clip_weights missing"),
            _snap(),
            DiagnosticStatus.ERROR,
            "not configured: clip_weights missing",
        ),
        (NodeInfo(name="n", state="inactive", configured=True), _snap(), DiagnosticStatus.OK, ""),
    ],
)
def test_diagnostics_levels(info, now, level, message) -> None:
    status = segmentation_status(info, now, StatsSnapshot(), elapsed_s=2.0)
    assert status.level == level
    assert status.message == (message or info.state)


def test_diagnostics_values() -> None:
    now = StatsSnapshot(
        received=12, processed=10, dropped=2, latency=np.array([0.01, 0.03]), inference=np.zeros(0)
    )
    previous = StatsSnapshot(received=2, processed=0)
    status = segmentation_status(INFO, now, previous, elapsed_s=4.0)
    values = {kv.key: kv.value for kv in status.values}
    assert values["rate_hz"] == "2.50"
    assert values["frames_dropped"] == "2" and values["frames_received"] == "12"
    assert values["latency_p50_ms"] == "20.0" and values["inference_p50_ms"] == "nan"
    assert status.hardware_id == "cpu" and status.name == "ovseg: segmentation"
    # Only new errors since the last status warn: an old one does not.
    again = segmentation_status(
        INFO,
        StatsSnapshot(received=13, errors=1),
        StatsSnapshot(received=12, errors=1),
        elapsed_s=1.0,
    )
    assert again.level == DiagnosticStatus.OK


class RecordingCamera:
    """A camera of the round job (its ``Camera`` protocol) that records what it is given."""

    def __init__(self, key: str) -> None:
        self.key, self.input_topic = key, f"{key}/image"
        self.plan, self.depth, self.camera_info = None, None, None
        self.frames: list = []
        self.label_infos: list[tuple[int, int | None, float]] = []

    def listening(self) -> frozenset[str]:
        return frozenset()

    def set_plan(self, class_topics, overlay_alpha) -> None:
        from ovseg_ros.pipeline import OutputPlan

        self.plan = OutputPlan(dict(class_topics), overlay_alpha)

    def set_objects(self, enabled: bool) -> None: ...

    def publish(self, frame) -> None:
        self.frames.append(frame)

    def publish_objects(self, frame) -> None: ...

    def log_warnings(self, warnings) -> None: ...

    def publish_label_info(self, vocabulary, valid_from, threshold) -> None:
        if vocabulary is not None and valid_from is not None:
            self.label_infos.append((vocabulary.version, valid_from, threshold))


class _Logger:
    def info(self, text: str) -> None: ...

    def warning(self, text: str) -> None: ...

    def error(self, text: str) -> None: ...


class _Clock:
    def now(self):
        class Now:
            nanoseconds = time.time_ns()

        return Now()


def test_label_info_follows_each_cameras_valid_from_and_the_threshold() -> None:
    """What ~/label_info carries (where vision_msgs imports): the first version from stamp 0,
    a new version from each camera's first frame labelled with it, and a threshold change;
    only the labels are made for cameras nobody listens to."""
    from ovseg_ros.harness.frames import stamped_frame
    from ovseg_ros.ros.vocabulary_updater import VocabularyUpdater
    from ovseg_ros.ros.worker import FrameSettings, RoundJob
    from ovseg_ros.segmentation import build_segmenter, tiny_config

    segmenter = build_segmenter(tiny_config(templates="single", short_side=0))
    segmenter.set_vocabulary(["floor", "door"])
    cameras = [RecordingCamera("a"), RecordingCamera("b")]
    versions, published = VersionLog(), []
    published.append(versions.new_version(segmenter.vocabulary, ["a", "b"]))
    ready = threading.Event()
    updater = VocabularyUpdater(lambda: segmenter, ready.set, lambda level, text: None)
    pending = PendingChanges()
    job = RoundJob(
        segmenter, cameras, settings=FrameSettings([], 0.5, 10**7), stats=Stats(),
        versions=versions, publish_vocabulary=published.append, vocabulary=updater,
        changes=pending, logger=_Logger(), clock=_Clock(),
    )  # fmt: skip
    assert [c.label_infos for c in cameras] == [[(1, 0, 0.0)], [(1, 0, 0.0)]]

    updater.request(["floor", "door", "chair"])
    assert ready.wait(60)
    job.between_rounds()
    assert versions.version == 2 and all(len(c.label_infos) == 1 for c in cameras)
    frame = lambda key, sec: Frame(key, stamped_frame(sec, 32, 24), False)  # noqa: E731
    job.process([frame("a", 7)])  # camera a's first frame of version 2: valid from 7 s
    assert cameras[0].label_infos[-1] == (2, 7 * 10**9, 0.0) and len(cameras[1].label_infos) == 1
    job.process([frame("a", 8), frame("b", 9)])
    assert cameras[0].label_infos[-1] == (2, 7 * 10**9, 0.0)
    assert cameras[1].label_infos[-1] == (2, 9 * 10**9, 0.0)
    assert [f.output_kinds() for f in cameras[1].frames] == [["labels"]]  # nobody listens

    pending.add(Changes(knobs={"prob_threshold": 0.4}))
    job.between_rounds()
    assert [c.label_infos[-1][2] for c in cameras] == [0.4, 0.4]
    updater.stop(5.0)
