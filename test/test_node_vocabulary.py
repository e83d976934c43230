"""Vocabulary changes off the frame path, against ``segment_node`` running as a process.

A ``classes`` change is accepted at once, encoded on its own thread (prompt templates
``imagenet80``: seconds for 257 new names on the CPU) while frames keep being labelled with the
current vocabulary, and takes effect between two frames, published on ``~/vocabulary`` before
the first labels that use it. A newer change supersedes a pending one. ``/diagnostics`` shows
the pending version and its progress; the log says how long encoding took.
"""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest
from node_process import Client, NodeProcess, make_image
from rclpy.parameter import Parameter
from ros_harness import TINY, private_domain_id, ros_context, wait_until

DOMAIN_ID = private_domain_id()
# 80 prompts per name: encoding 257 new names still takes seconds with the smallest tiny
# models (width 32, one layer: a quarter of the default tiny's text work, or less).
# TLP off: it costs seconds per frame with 257 classes on the CPU.
# No disk cache of text embeddings: the random names would pile up in ~/.cache.
PARAMS = {**TINY, "templates": "imagenet80", "tlp": "false", "diagnostics_period": 0.25}
PARAMS.update(tiny_width=32, tiny_layers=1)
PARAMS["text_cache_dir"] = "none"

pytestmark = [pytest.mark.dds, pytest.mark.slow, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def context():
    with ros_context(DOMAIN_ID) as ctx:
        yield ctx


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    process = NodeProcess(DOMAIN_ID, tmp_path_factory.mktemp("node") / "node.log", PARAMS)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(context, node):
    client = Client(context)
    assert wait_until(lambda: client.image_pub.get_subscription_count() > 0, 120), node.log()
    client.stream_until_labels(1)
    yield client
    client.close()


def _new_names(count: int) -> list[str]:
    """Names no cache has seen, so all of them are encoded."""
    token = uuid.uuid4().hex[:8]
    return [f"thing {token} {i}" for i in range(count)]


def _version_of(vocabularies: list[dict], msg) -> int:
    """The valid_from rule: the highest version whose valid_from[""] <= the image's stamp."""
    stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
    latest = {v["version"]: v["valid_from"].get("") for v in vocabularies}
    return max(
        version
        for version, since in latest.items()
        if since is not None and since["sec"] * 10**9 + since["nanosec"] <= stamp
    )


class Camera:
    """Publishes a frame every ``period`` s (new stamps from ``first``) until stopped."""

    def __init__(self, client: Client, first: int, period: float = 0.1) -> None:
        self.client, self.sec, self.period = client, first, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.client.image_pub.publish(make_image(self.sec))
            self.sec += 1
            time.sleep(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_frames_are_labelled_while_a_257_class_vocabulary_encodes(client, node) -> None:
    before = client.vocabularies()[-1]["version"]
    log_start = len(node.log())
    classes = _new_names(257)  # mono16 labels (more than 256), seconds of encoding
    camera = Camera(client, 10_000)
    try:
        requested = time.monotonic()
        (result,) = client.set_parameters(Parameter("classes", value=classes))
        assert result.successful, result.reason
        answered = time.monotonic() - requested
        assert wait_until(lambda: client.vocabularies()[-1]["version"] > before, 240), node.log()
    finally:
        camera.stop()
    vocabulary_arrival = next(
        t for t, m in client.timed("/ovseg/vocabulary") if classes[0] in m.data
    )
    new = client.vocabularies()[-1]
    assert new["version"] == before + 1 and len(new["classes"]) == 257
    # While it was encoding, frames kept being labelled with the old vocabulary (mono8).
    during = [
        m
        for t, m in client.timed("/ovseg/labels")
        if requested < t < vocabulary_arrival and m.header.stamp.sec >= 10_000
    ]
    assert len(during) >= 3, (len(during), answered, vocabulary_arrival - requested)
    vocabularies = client.vocabularies()
    for msg in during:
        assert msg.encoding == "mono8"
        assert _version_of(vocabularies, msg) == before
        assert np.frombuffer(bytes(msg.data), np.uint8).max() < 5
    # Diagnostics showed the pending version and its progress.
    pending = [d for d in client.diagnostics() if d.get("vocabulary_pending_version")]
    assert pending and {d["vocabulary_pending_version"] for d in pending} == {str(before + 1)}
    progress = [tuple(map(int, d["vocabulary_encoding"].split("/"))) for d in pending
                if not d["vocabulary_encoding"].endswith("?")]  # fmt: skip
    assert progress and all(0 < done <= total == 257 for done, total in progress), progress
    # The new vocabulary takes effect afterwards, published before its first labels.
    first = client.stream_until_labels(20_000)
    assert first.encoding == "mono16" and _version_of(client.vocabularies(), first) == before + 1
    first_mono16 = min(t for t, m in client.timed("/ovseg/labels") if m.encoding == "mono16")
    assert vocabulary_arrival <= first_mono16
    assert wait_until(lambda: not client.diagnostics()[-1].get("vocabulary_pending_version"), 5)
    log = node.log()[log_start:]
    assert "vocabulary change #" in log and "encoding in the background" in log
    assert "encoding 257 new names took" in log, log


def test_a_newer_change_supersedes_a_pending_one(client, node) -> None:
    before = client.vocabularies()[-1]["version"]
    log_start = len(node.log())
    slow = _new_names(300)
    seen = len(client.diagnostics())
    (result,) = client.set_parameters(Parameter("classes", value=slow))
    assert result.successful, result.reason

    def encoding_started() -> bool:
        return any(
            d.get("vocabulary_pending_version") == str(before + 1)
            and d["vocabulary_encoding"][0] in "123456789"
            for d in client.diagnostics()[seen:]
        )

    assert wait_until(encoding_started, 60)
    final = ["floor", "door", "wall"]
    (result,) = client.set_parameters(Parameter("classes", value=final))
    assert result.successful, result.reason
    assert wait_until(lambda: client.vocabularies()[-1]["version"] > before, 60)
    labels = client.stream_until_labels(30_000)
    time.sleep(2.0)  # the superseded change must not take effect later either
    versions = [v for v in client.vocabularies() if v["version"] > before]
    assert {v["version"] for v in versions} == {before + 1}
    assert [c["name"] for c in versions[-1]["classes"]] == final
    assert not any(slow[0] in m.data for m in client.messages("/ovseg/vocabulary"))
    assert labels.encoding == "mono8" and np.frombuffer(bytes(labels.data), np.uint8).max() < 3
    assert _version_of(client.vocabularies(), labels) == before + 1
    assert "superseded before it took effect" in node.log()[log_start:]
    assert node.alive()


def test_invalid_classes_are_refused_at_once(client, node) -> None:
    before = client.vocabularies()[-1]["version"]
    (result,) = client.set_parameters(Parameter("classes", value=["door", "do\nor"]))
    assert not result.successful and "control character" in result.reason, result.reason
    (result,) = client.set_parameters(Parameter("classes", value=["door", "door"]))
    assert not result.successful and "duplicate" in result.reason
    client.stream_until_labels(40_000)
    assert client.vocabularies()[-1]["version"] == before
