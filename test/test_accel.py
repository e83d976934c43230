"""Acceleration options of the backbone (accel.py) on the CPU: same results as eager mode,
fixed batch shape, and a clear fallback where an option cannot work.

``compile`` runs torch.compile with its default backend (inductor: generated C++ built with
the machine's compiler) end to end through the Segmenter. The batching tests use a backend
that only records the traced shapes, so they stay fast. CUDA graphs are tested on a GPU in
test_cuda.py; here only that the option is refused clearly on the CPU.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from test_segmenter import VOCAB, scene

from ovseg_ros.segmentation import accel, build_segmenter, tiny_config
from ovseg_ros.segmentation import clip_backbone as clip
from ovseg_ros.segmentation.dino_backbone import dino_value_features


def assert_same_segmentation(expected, actual, *, prob_atol: float, margin: float) -> None:
    """Probabilities within ``prob_atol``; labels identical wherever ``expected``'s top-two
    probability margin exceeds ``margin`` (a near tie may flip under reordered float sums)."""
    assert actual.labels.shape == expected.labels.shape
    diff = np.abs(actual.probabilities - expected.probabilities).max()
    assert diff <= prob_atol, f"probabilities differ by up to {diff:.2e} (allowed {prob_atol})"
    top2 = np.sort(expected.probabilities, axis=0)[-2:]
    decided = (top2[1] - top2[0]) > margin
    flipped = int(((actual.labels != expected.labels) & decided).sum())
    assert flipped == 0, f"{flipped} clearly decided pixels changed label"


@pytest.fixture(scope="module")
def tiny_pearl():
    seg = build_segmenter(tiny_config("pearl"))
    seg.set_vocabulary(VOCAB)
    return seg


class ShapeRecorder:
    """A torch.compile backend that records each compiled graph's input shapes, runs eagerly."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, graph_module, example_inputs):
        self.shapes.append(tuple(next(t for t in example_inputs if t.ndim == 4).shape))
        return graph_module.forward


def _broken_backend(graph_module, example_inputs):
    raise RuntimeError("no compiler on this machine")


def test_window_batches_are_padded_to_one_fixed_shape(tiny_pearl):
    visual = tiny_pearl._clip.model.visual

    def backbone(images):
        return clip.tokens_before_last_block(visual, images, pearl_style=True)

    recorder = ShapeRecorder()
    torch._dynamo.reset()
    call = accel.wrap(backbone, device="cpu", compile=True, compile_backend=recorder, batch_size=4)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for n in (5, 2, 11, 4):
            images = torch.randn(n, 3, 224, 224, generator=g)
            tokens, grid = call(images)
            expected, expected_grid = backbone(images)
            assert tokens.shape == expected.shape and grid == expected_grid == (14, 14)
            assert torch.allclose(tokens, expected, atol=1e-5)
    assert call.mode == "compile" and call.fallback_reason is None
    assert recorder.shapes == [(4, 3, 224, 224)]  # compiled once, for the fixed batch


def test_first_batch_size_becomes_the_fixed_size(tiny_pearl):
    dino = build_segmenter(tiny_config("lposs"))._dino
    recorder = ShapeRecorder()
    torch._dynamo.reset()
    call = accel.wrap(
        lambda x: dino_value_features(dino, x), device="cpu", compile=True, compile_backend=recorder
    )
    with torch.inference_mode():
        feats, grid = call(torch.rand(3, 3, 224, 224))
        more, _ = call(torch.rand(7, 3, 224, 224))
    assert call.batch_size == 3 and recorder.shapes == [(3, 3, 224, 224)]
    assert feats.shape == (3, 196, 64) and more.shape == (7, 196, 64) and grid == (14, 14)


def test_failed_compile_falls_back_to_eager_with_one_warning(tiny_pearl, caplog):
    visual = tiny_pearl._clip.model.visual

    def backbone(images):
        return clip.maskclip_patch_features(visual, images)

    torch._dynamo.reset()
    call = accel.wrap(backbone, device="cpu", compile=True, compile_backend=_broken_backend)
    images = torch.rand(2, 3, 224, 224)
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        first, _ = call(images)
        second, _ = call(images)
        expected, _ = backbone(images)
    warnings = [r for r in caplog.records if r.name == accel.__name__]
    assert len(warnings) == 1 and "no compiler on this machine" in warnings[0].getMessage()
    assert call.mode == "eager" and "no compiler" in call.fallback_reason
    assert torch.equal(first, expected) and torch.equal(second, expected)


def test_cuda_graphs_are_refused_on_the_cpu_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING):
        call = accel.wrap(lambda x: x * 2, device="cpu", cuda_graphs=True)
    assert call.mode == "eager" and not call.accelerated
    assert "needs a CUDA device" in call.fallback_reason
    assert [r.getMessage() for r in caplog.records if r.name == accel.__name__] == [
        "backbone: cuda_graphs needs a CUDA device, this backbone runs on cpu; "
        "running eagerly instead"
    ]
    assert torch.equal(call(torch.ones(2, 3)), torch.full((2, 3), 2.0))


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="batch_size"):
        accel.wrap(lambda x: x, device="cpu", batch_size=0)
    call = accel.wrap(lambda x: [x], device="cpu", compile=True, compile_backend="eager")
    # A list is not a supported output; the accelerated path reports it and falls back.
    assert call(torch.ones(1, 2))[0].shape == (1, 2) and call.mode == "eager"


def test_options_need_a_new_segmenter(tiny_pearl):
    for option in ("compile", "cuda_graphs"):
        with pytest.raises(ValueError, match="cannot change at runtime"):
            tiny_pearl.update_config(**{option: True})


def test_cuda_graphs_option_on_a_cpu_segmenter_runs_eagerly(tiny_pearl, caplog):
    with caplog.at_level(logging.WARNING):
        seg = build_segmenter(tiny_config("pearl", cuda_graphs=True))
    assert "needs a CUDA device" in caplog.text and seg._clip_call.mode == "eager"
    seg.set_vocabulary(VOCAB)
    frame = scene(90, 120)
    assert np.array_equal(seg.segment(frame).labels, tiny_pearl.segment(frame).labels)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pearl", "lposs"])
def test_compiled_backbone_gives_the_eager_labels(method):
    """Inductor end to end: CLIP's PEARL path; CLIP's MaskCLIP path and DINO (LPOSS). About
    20 s per compiled backbone on 2 idle cores (inductor builds C++ with the system's gcc)."""
    frame = scene(240, 320, seed=3)
    torch._dynamo.reset()
    results = {}
    for on in (False, True):
        # short_side 224: two windows per frame, so the fixed batch is 2.
        seg = build_segmenter(tiny_config(method, compile=on, short_side=224))
        seg.set_vocabulary(VOCAB)
        results[on] = [seg.segment(frame), seg.segment(scene(200, 300, seed=4))]
        calls = [seg._clip_call, seg._dino_call] if method == "lposs" else [seg._clip_call]
        assert all(c.mode == ("compile" if on else "eager") for c in calls)
    for eager, compiled in zip(results[False], results[True], strict=True):
        # Inductor fuses and reorders float sums; softmax(40 x) turns ~1e-6 into ~1e-4.
        assert_same_segmentation(eager, compiled, prob_atol=1e-3, margin=1e-3)
