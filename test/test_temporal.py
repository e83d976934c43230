"""Temporal fusion (``ovseg_ros.temporal``), in this process on tiny arrays.

The fusion math against a hand-computed case, warping by a known flow, the engine's way back
from fused probabilities to labels, every reset condition, a moving object's trail, one state
per camera with batching unchanged, runtime settings, and a missing OpenCV. Real OpenCV flow on
real (small, synthetic) images; the models, where used, are the tiny random ones.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import pytest
import torch

from ovseg_ros.bench.scene import synthetic_image
from ovseg_ros.segmentation.postprocess import (
    entry_offsets,
    query_probabilities,
    reduce_upsampled,
    scores_from_probabilities,
)
from ovseg_ros.temporal import (
    TemporalFusion,
    TemporalSettings,
    opencv_problem,
    segment_frames,
    warmup_frames,
)
from ovseg_ros.temporal.flow import MotionEstimator, sampling_grid, thumbnail
from ovseg_ros.temporal.fusion import fuse, warp_probabilities

pytest.importorskip("cv2")

SCALE = 40.0
MS = 1_000_000  # ns
H, W = 48, 64


def distributions(q: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """``[q, h, w]`` random distributions over ``q``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(q, h, w, generator=generator), dim=0)


# -- the math ------------------------------------------------------------------------------------


def test_fuse_matches_a_hand_computed_case():
    now = torch.tensor([[[0.8, 0.3]], [[0.2, 0.7]]])  # [Q=2, h=1, w=2]
    warped = torch.tensor([[[0.4, 0.5]], [[0.6, 0.5]]])
    valid = torch.tensor([[True, False]])
    fused = fuse(now, warped, valid, 0.5)
    # pixel 0: (0.5 * 0.8 + 0.5 * 0.4, 0.5 * 0.2 + 0.5 * 0.6) = (0.6, 0.4); pixel 1: now alone
    expected = torch.tensor([[[0.6, 0.3]], [[0.4, 0.7]]])
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-7)
    # the mix is renormalised: halves that do not sum to 1 still give a distribution
    fused = fuse(now, 2 * warped, valid, 0.25)  # (0.75 * 0.8 + 0.25 * 0.8, 0.15 + 0.3) / 1.25
    assert fused[:, 0, 0].tolist() == pytest.approx([0.8 / 1.25, 0.45 / 1.25], abs=1e-7)


@pytest.mark.parametrize("size", [(8, 16), (12, 20)])
def test_warping_by_a_known_flow_shifts_the_probabilities(size):
    h, w = size
    previous = distributions(3, h, w)
    flow = np.zeros((h, w, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3.0, -2.0  # each pixel was 3 right and 2 up in the previous frame
    grid, valid = sampling_grid(flow, np.ones((h, w), bool), size)
    warped = warp_probabilities(previous, torch.from_numpy(grid))
    expected_valid = np.zeros((h, w), bool)
    expected_valid[2:, : w - 3] = True  # the others come from outside the previous frame
    assert np.array_equal(valid, expected_valid)
    shifted = previous[:, : h - 2, 3:]  # previous[:, y - 2, x + 3]
    if (h & (h - 1), w & (w - 1)) == (0, 0):  # power-of-two sizes: the sampling grid is exact
        assert torch.equal(warped[:, 2:, : w - 3], shifted)
    else:
        torch.testing.assert_close(warped[:, 2:, : w - 3], shifted, rtol=0, atol=2e-6)


def test_thumbnail_motion_is_scaled_to_the_processing_resolution():
    flow = np.zeros((6, 8, 2), np.float32)
    flow[..., 0], flow[..., 1] = 1.0, -0.5  # thumbnail pixels
    reliable = np.ones((6, 8), bool)
    reliable[:, :2] = False
    grid, valid = sampling_grid(flow, reliable, (12, 16))
    assert grid.shape == (12, 16, 2) and valid.shape == (12, 16)
    source_x = ((grid[..., 0] + 1) * 16 - 1) / 2  # back to processing pixels
    source_y = ((grid[..., 1] + 1) * 12 - 1) / 2
    np.testing.assert_allclose(source_x - np.arange(16)[None, :], 2.0, atol=1e-5)
    np.testing.assert_allclose(source_y - np.arange(12)[:, None], -1.0, atol=1e-5)
    assert not valid[:, :3].any() and not valid[0].any()  # unreliable; above the frame
    assert valid[1:, 5:14].all()


def test_fused_probabilities_reduce_like_the_scores_they_came_from():
    """The engine's way back: ``scores_from_probabilities(softmax(s))`` gives the labels and
    confidence of ``s`` at the image size, synonyms, threshold and unlabeled value included."""
    generator = torch.Generator().manual_seed(3)
    scores = 0.1 * torch.randn(5, 6, 8, generator=generator)  # 5 queries
    offsets = entry_offsets([0, 0, 1, 2, 2], 3)  # entries with synonyms
    for threshold, unlabeled in ((0.0, None), (0.45, 255), (0.45, None)):
        kwargs = {"logit_scale": SCALE, "prob_threshold": threshold, "unlabeled_id": unlabeled}
        direct = reduce_upsampled(scores, (13, 17), offsets, **kwargs)
        again = scores_from_probabilities(query_probabilities(scores, SCALE), SCALE)
        back = reduce_upsampled(again, (13, 17), offsets, **kwargs)
        assert torch.equal(direct.labels, back.labels)
        torch.testing.assert_close(direct.confidence, back.confidence, rtol=0, atol=1e-5)


def test_settings_and_warmup():
    assert warmup_frames(0.0) == 0
    assert warmup_frames(0.6) == 28 == math.ceil(math.log(1e-6) / math.log(0.6))
    assert 0.6**28 <= 1e-6 < 0.6**27
    assert warmup_frames(0.95) == 270
    assert not TemporalSettings().enabled and TemporalSettings(0.6).enabled
    for bad in ({"alpha": 0.96}, {"alpha": -0.1}, {"alpha": float("nan")}, {"reset_s": 0.0}):
        with pytest.raises(ValueError, match="temporal_"):
            TemporalSettings(**bad)


def test_fusion_memory_counts_in_the_frame_budget():
    from ovseg_ros.segmentation.budget import check_frame_memory
    from ovseg_ros.segmentation.config import SegmenterConfig
    from ovseg_ros.temporal import MEMORY_CLASS_MAPS, MEMORY_TERM

    config, pixels, queries = SegmenterConfig(method="lposs_plus"), 1920 * 1080, 300
    fusion = {MEMORY_TERM: MEMORY_CLASS_MAPS}
    alone = check_frame_memory(config, pixels, queries, 1e6).total
    fused = check_frame_memory(config, pixels, queries, 1e6, fusion).total
    assert fused > alone
    budget_mb = (alone + fused) / 2 / 2**20
    check_frame_memory(config, pixels, queries, budget_mb)  # fits without fusion
    # refused with fusion, naming it: its class maps are the largest term here
    with pytest.raises(ValueError, match=r"temporal fusion \(temporal_alpha\)"):
        check_frame_memory(config, pixels, queries, budget_mb, fusion)


# -- a camera's state ----------------------------------------------------------------------------


def scene(seed: int = 0, shift: int = 0, size: tuple[int, int] = (H, W)) -> np.ndarray:
    """A textured frame; ``shift``: the camera panned by that many pixels."""
    h, w = size
    wide = synthetic_image(w + 16, h, seed=seed, regions=8)
    return np.ascontiguousarray(wide[:, 8 + shift : 8 + shift + w])


class Camera:
    """Feeds one :class:`TemporalFusion` frames with made-up scores, as the pipeline does."""

    def __init__(self, alpha: float = 0.6, reset_s: float = 0.5) -> None:
        self.stage = TemporalFusion(TemporalSettings(alpha, reset_s))

    def frame(self, rgb, stamp_ms, scores=None, version=1):
        scores = scores if scores is not None else torch.log(distributions(3, 12, 16)) / SCALE
        with torch.inference_mode():
            pending = self.stage.begin(rgb, stamp_ms * MS)
            return scores, self.stage.apply(pending, scores, SCALE, version)

    def resets(self) -> dict[str, int]:
        return {k: v for k, v in self.stage.counters().items() if k.startswith("resets_") and v}


def test_first_frame_alone_then_fused():
    camera = Camera()
    scores, out = camera.frame(scene(), 0)
    assert out is scores  # alone: the engine's own scores
    scores, out = camera.frame(scene(shift=1), 50)
    assert out is not scores
    counters = camera.stage.counters()
    assert (counters["frames_alone"], counters["frames_fused"]) == (1, 1)
    assert camera.resets() == {}
    assert torch.softmax(out * SCALE, 0).sum(0).sub(1).abs().max() < 1e-5


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"version": 2}, "vocabulary"),
        ({"rgb": scene(size=(H, W + 8))}, "size"),
        ({"scores": torch.zeros(3, 10, 16)}, "size"),  # the processing size
        ({"stamp_ms": 40}, "backwards"),
        ({"stamp_ms": 50 + 501}, "gap"),
        ({"rgb": scene(seed=7)}, "cut"),
    ],
)
def test_each_reset_drops_the_state_and_uses_the_frame_alone(change, reason):
    camera = Camera(reset_s=0.5)
    camera.frame(scene(), 0)
    camera.frame(scene(shift=1), 50)
    frame = {"rgb": scene(shift=2), "stamp_ms": 100, "scores": None, "version": 1} | change
    scores, out = camera.frame(**frame)
    assert out is scores, reason
    assert camera.resets() == {f"resets_{reason}": 1}
    # the frame started a new state: the next one fuses with it
    follow = {**frame, "stamp_ms": frame["stamp_ms"] + 50}  # the same sizes, version, scene
    if reason == "cut":
        follow["rgb"] = scene(seed=7, shift=1)
    scores, out = camera.frame(**follow)
    assert out is not scores and camera.stage.counters()["frames_fused"] == 2


def test_a_frame_the_flow_cannot_take_is_used_alone():
    camera = Camera()
    camera.frame(scene(), 0)
    odd = scene(shift=1).astype(np.float64)  # OpenCV's colour conversion refuses float64
    scores, out = camera.frame(odd, 50)
    assert out is scores and camera.resets() == {"resets_flow": 1}
    assert "error" in camera.stage.last_flow_error
    scores, out = camera.frame(scene(shift=2), 100)  # a fresh start
    assert out is scores and camera.stage.counters()["frames_alone"] == 3


def test_a_gap_within_reset_s_fuses():
    camera = Camera(reset_s=0.5)
    camera.frame(scene(), 0)
    scores, out = camera.frame(scene(shift=1), 450)
    assert out is not scores and camera.resets() == {}


def test_runtime_settings():
    camera = Camera(alpha=0.6)
    camera.frame(scene(), 0)
    camera.stage.set_settings(TemporalSettings(0.0))  # off: the state is dropped
    assert not camera.stage.enabled
    camera.stage.set_settings(TemporalSettings(0.3, 0.5))
    scores, out = camera.frame(scene(shift=1), 50)
    assert out is scores  # a fresh start, not a reset
    assert camera.resets() == {}
    scores, out = camera.frame(scene(shift=2), 100)
    assert out is not scores and camera.stage.settings.alpha == 0.3


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (1, 200), (300, 2), (16, 160), (20, 640)])
def test_tiny_and_thin_frames_fuse(size):
    """DIS refuses tiny images and crashes on thin ones: the thumbnails are padded for it."""
    rgb = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    camera = Camera()
    scores = torch.zeros(3, 4, 4)
    camera.frame(rgb, 0, scores)
    _, out = camera.frame(rgb, 50, scores)
    assert out is not scores and camera.resets() == {}


def test_scene_cut_residual_separates_motion_from_a_new_scene():
    estimator = MotionEstimator()
    first = thumbnail(scene())
    assert not estimator.estimate(first, thumbnail(scene(shift=2))).cut
    assert estimator.estimate(first, thumbnail(scene(seed=7))).cut


def test_a_moving_object_leaves_no_trail():
    """A square moves 3 px a frame over a static textured background. The scores are made
    from the true masks, uncertain (object 0.8 where it is, background 0.6 elsewhere): trusting
    the warped past where the object left would keep its label there for 2 more frames; the
    flow's consistency check returns those pixels to the background within 2 frames."""
    h, w, side, step = 64, 96, 16, 3
    background = scene(size=(h, w))
    camera = Camera(alpha=0.6)
    masks, trails = [], []
    for t in range(8):
        rgb = background.copy()
        mask = np.zeros((h, w), bool)
        mask[24 : 24 + side, 10 + step * t : 10 + step * t + side] = True
        rgb[mask] = (235, 30, 200)
        p_object = torch.from_numpy(np.where(mask, 0.8, 0.4)).float()
        scores = torch.log(torch.stack([1 - p_object, p_object])) / SCALE
        _, out = camera.frame(rgb, 50 * t, scores)
        labels = out.argmax(0).numpy()
        masks.append(mask)
        if t >= 2:  # left by the object 2 frames ago, not covered since
            vacated = masks[t - 2] & ~masks[t - 1] & ~mask
            trails.append(labels[vacated].mean())
    assert camera.stage.counters()["frames_fused"] == 7
    assert max(trails) <= 0.05, trails


def test_labels_reaching_beyond_a_moving_object_leave_no_trail():
    """As above, but the object's label reaches ``HALO`` px beyond its pixels (as a method that
    labels by patches does), onto background whose grey level does not change: the flow is
    reliable there, and only the margin around changed content (``CONTENT_MARGIN``) returns
    those pixels to the background within 2 frames."""
    import cv2

    h, w, side, step, halo = 64, 96, 16, 3, 2
    background = scene(size=(h, w))
    camera = Camera(alpha=0.6)
    reach, trails = [], []
    for t in range(8):
        rgb = background.copy()
        mask = np.zeros((h, w), np.uint8)
        mask[24 : 24 + side, 10 + step * t : 10 + step * t + side] = 1
        rgb[mask > 0] = (235, 30, 200)
        labelled = cv2.dilate(mask, np.ones((2 * halo + 1,) * 2, np.uint8)) > 0
        p_object = torch.from_numpy(np.where(labelled, 0.8, 0.4)).float()
        scores = torch.log(torch.stack([1 - p_object, p_object])) / SCALE
        _, out = camera.frame(rgb, 50 * t, scores)
        labels = out.argmax(0).numpy()
        reach.append(labelled)
        if t >= 2:  # labelled as the object 2 frames ago, background since
            vacated = reach[t - 2] & ~reach[t - 1] & ~labelled
            trails.append(labels[vacated].mean())
    assert camera.stage.counters()["frames_fused"] == 7
    assert max(trails) <= 0.05, trails


# -- through the engine ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segmenter():
    from ovseg_ros.segmentation import build_segmenter, tiny_config

    seg = build_segmenter(tiny_config("pearl", templates="single", short_side=0))
    seg.set_vocabulary(["sky", "person; man", "chair", "door"])
    return seg


def test_one_state_per_camera_and_batching_unchanged(segmenter):
    """Two cameras of unrelated scenes segmented together: each fuses with its own past (no
    cut resets), and each result equals that camera run on its own."""
    frames = {"front": [scene(0, s) for s in range(3)], "left": [scene(5, s) for s in range(3)]}
    together = {key: TemporalFusion(TemporalSettings(0.6)) for key in frames}
    alone = {key: TemporalFusion(TemporalSettings(0.6)) for key in frames}
    for t in range(3):
        images = [frames[key][t] for key in frames]
        stamps = [50 * MS * t] * 2
        batch = segment_frames(segmenter, images, list(together.values()), stamps)
        for key, result in zip(frames, batch, strict=True):
            (single,) = segment_frames(segmenter, [frames[key][t]], [alone[key]], stamps[:1])
            assert np.array_equal(result.label_ids, single.label_ids)
            np.testing.assert_allclose(result.confidence, single.confidence, atol=1e-5)
    for stage in together.values():
        counters = stage.counters()
        assert (counters["frames_fused"], counters["frames_alone"]) == (2, 1), counters


def test_off_or_first_frame_is_the_engine_bit_for_bit(segmenter):
    images = [scene(0), scene(5)]
    plain = segmenter.segment_batch(images, unlabeled=True)
    stages = [TemporalFusion(TemporalSettings(0.6)), None]
    for candidate in (
        segment_frames(segmenter, images, [None, None], [0, 0]),
        segment_frames(segmenter, images, [TemporalFusion(), TemporalFusion()], [0, 0]),
        segment_frames(segmenter, images, stages, [0, 0]),  # camera 0's first frame
    ):
        for a, b in zip(plain, candidate, strict=True):
            assert np.array_equal(a.label_ids, b.label_ids)
            assert np.array_equal(a.confidence, b.confidence)
    # a static camera: fusing a frame with itself changes no label
    (again,) = segment_frames(segmenter, images[:1], stages[:1], [50 * MS])
    assert np.array_equal(again.label_ids, plain[0].label_ids)
    np.testing.assert_allclose(again.confidence, plain[0].confidence, atol=1e-4)
    assert stages[0].counters()["frames_fused"] == 1


# -- without OpenCV ------------------------------------------------------------------------------


def test_without_opencv_fusion_is_refused_in_one_line(monkeypatch):
    from ovseg_ros.tools.replay.plan import ReplayError
    from ovseg_ros.tools.replay.settings import temporal_settings

    assert opencv_problem() == ""
    monkeypatch.setitem(sys.modules, "cv2", None)  # "import cv2" now fails, as where absent
    problem = opencv_problem()
    assert "\n" not in problem and "opencv-python-headless" in problem
    assert "python3-opencv" in problem
    args = argparse.Namespace(temporal_alpha=0.6, temporal_reset_s=None, temporal_warmup=None)
    with pytest.raises(ReplayError, match="needs OpenCV"):
        temporal_settings(args, {})
    off = argparse.Namespace(temporal_alpha=None, temporal_reset_s=None, temporal_warmup=None)
    assert not temporal_settings(off, {}).enabled  # off: no OpenCV needed
