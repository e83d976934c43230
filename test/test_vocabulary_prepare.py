"""Vocabulary changes off the frame path: prepare (encode) on one thread, segment on another,
activate atomically; batched text encoding; cancellation and supersession."""

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovseg_ros.segmentation import VocabularyCancelled, build_segmenter, tiny_config
from ovseg_ros.segmentation import clip_backbone as clip

OLD = ["background; sky", "person", "chair"]


def frame(h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(h * w).integers(0, 255, (h, w, 3), dtype=np.uint8)


def many_names(count: int) -> list[str]:
    return [f"object number {i}" for i in range(count)]


@pytest.fixture(scope="module")
def segmenter():
    seg = build_segmenter(tiny_config("maskclip", templates="single"))
    seg.set_vocabulary(OLD)
    return seg


@pytest.mark.slow
def test_frames_use_the_old_vocabulary_while_300_classes_encode(segmenter):
    seg = segmenter
    seg.set_vocabulary(OLD)
    before = seg.vocabulary.version
    seg.text_cache.batch_names = 16  # many forward passes: progress between them
    encoding, frame_done = threading.Event(), threading.Event()
    calls, prepared, errors = [], [], []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        encoding.set()
        frame_done.wait(60)  # hold the encoder mid-way until a frame went through

    def background() -> None:
        try:
            prepared.append(seg.prepare_vocabulary(many_names(300), progress=progress))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=background)
    thread.start()
    assert encoding.wait(60)
    during = seg.segment(frame())  # runs while the new vocabulary is half encoded
    frame_done.set()
    more = [seg.segment(frame(40, 30)) for _ in range(2)]  # and while it finishes
    thread.join(120)
    assert not errors and prepared
    for res in [during, *more]:
        assert res.vocabulary.version == before and len(res.vocabulary) == 3
        assert res.labels.max() < 3 and res.probabilities.shape[0] == 3
    assert seg.vocabulary.version == before  # prepared, not active yet
    assert calls[0] == (16, 300) and calls[-1] == (300, 300)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert prepared[0].encoded == 300 and prepared[0].vocabulary.version == 0

    vocabulary = seg.activate_vocabulary(prepared[0])
    assert vocabulary.version == before + 1 and len(vocabulary) == 300
    after = seg.segment(frame())
    assert after.vocabulary is vocabulary and after.probabilities.shape[0] == 300


def test_segmenting_concurrently_switches_atomically(segmenter):
    """Frames run nonstop on one thread while another prepares and activates: every frame
    belongs entirely to one version, and versions only go up."""
    seg = segmenter
    seg.set_vocabulary(OLD)
    seg.text_cache.batch_names = 8
    stop, results = threading.Event(), []

    def frames() -> None:
        while not stop.is_set():
            results.append(seg.segment(frame(32, 40)))

    thread = threading.Thread(target=frames)
    thread.start()
    names = [f"thing {i}" for i in range(120)]
    new = seg.activate_vocabulary(seg.prepare_vocabulary(names))
    while not any(r.vocabulary.version == new.version for r in results):
        pass
    stop.set()
    thread.join()
    versions = [r.vocabulary.version for r in results]
    assert versions == sorted(versions) and versions[-1] == new.version
    for res in results:
        assert res.probabilities.shape[0] == len(res.vocabulary)
        assert res.labels.max() < len(res.vocabulary)


def test_batched_encoding_equals_one_by_one():
    """Many prompts per forward pass, on a context cut after the longest prompt == each
    prompt alone through open_clip's own ``encode_text`` (full 77-token context)."""
    seg = build_segmenter(tiny_config("pearl"))  # the 80 ImageNet templates
    names = ["chair", "traffic light", "person", "a very long name of a thing " * 3, "cup", "x"]
    templates = clip.prompt_templates("imagenet80")
    seg.text_cache.batch_names = 4  # 4 names x 80 templates per forward pass
    batched = seg.text_cache.get(names)
    model, tokenizer = seg._clip.model, seg._clip.tokenizer
    alone = []
    with torch.no_grad():
        for name in names:
            prompts = [
                F.normalize(model.encode_text(tokenizer([t(name)])).float(), dim=-1)
                for t in templates
            ]
            alone.append(F.normalize(torch.cat(prompts).mean(dim=0), dim=-1))
    assert (batched - torch.stack(alone)).abs().max() <= 1e-6
    assert torch.allclose(batched.norm(dim=-1), torch.ones(len(names)), atol=1e-5)


def test_cancel_stops_between_batches_and_keeps_the_active_vocabulary(segmenter):
    seg = segmenter
    active = seg.set_vocabulary(OLD)
    seg.text_cache.batch_names = 5
    cancel = threading.Event()
    seen = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        cancel.set()

    names = [f"cancelled name {i}" for i in range(20)]
    with pytest.raises(VocabularyCancelled, match="cancelled"):
        seg.prepare_vocabulary(names, progress=progress, cancel=cancel)
    assert seen == [5] and seg.vocabulary is active
    # The batch encoded before the cancel is kept: a retry encodes only the rest.
    seg.prepare_vocabulary(names)
    assert seg.text_cache.last_encoded == names[5:]


def test_a_newer_change_supersedes_a_pending_one(segmenter):
    seg = segmenter
    seg.set_vocabulary(OLD)
    seg.text_cache.batch_names = 4
    newer = []

    def progress(done: int, total: int) -> None:
        if not newer:  # a newer request arrives while the first one encodes
            newer.append(seg.prepare_vocabulary(["door", "window"]))

    with pytest.raises(VocabularyCancelled, match="superseded"):
        seg.prepare_vocabulary([f"slow name {i}" for i in range(12)], progress=progress)
    assert seg.activate_vocabulary(newer[0]).names == ["door", "window"]
    # A prepared change older than the newest request is never activated.
    first = seg.prepare_vocabulary(["lamp"])
    second = seg.prepare_vocabulary(["sofa"])
    with pytest.raises(VocabularyCancelled, match="superseded"):
        seg.activate_vocabulary(first)
    assert seg.vocabulary.names == ["door", "window"]
    assert seg.activate_vocabulary(second).names == ["sofa"]


def test_invalid_vocabulary_is_refused_before_it_supersedes_anything(segmenter):
    seg = segmenter
    pending = seg.prepare_vocabulary(["table"])
    with pytest.raises(ValueError, match="duplicate"):
        seg.prepare_vocabulary(["chair", "chair"])
    assert seg.activate_vocabulary(pending).names == ["table"]
