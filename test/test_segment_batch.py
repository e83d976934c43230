"""Segmenter.segment_batch: several frames of different sizes through one model equal
segmenting each frame alone, for every method."""

import numpy as np
import pytest
import torch

from ovseg_ros.segmentation import build_segmenter, tiny_config
from ovseg_ros.segmentation.batch import batched_windows, group_by_shape

VOCAB = ["background; sky; wall", "person; man", "chair", "door"]


def scene(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = rng.integers(0, 255, 3)
    img[h // 2 :, : w // 3] = rng.integers(0, 255, 3)
    img[h // 2 :, w // 3 :] = rng.integers(0, 255, 3)
    return np.clip(img + rng.integers(-25, 25, img.shape), 0, 255).astype(np.uint8)


# Two frames share a size (their propagation is batched), the others differ.
SIZES = [(96, 128), (120, 90), (96, 128), (61, 203)]


@pytest.mark.parametrize("method", ["pearl", "maskclip", "lposs", "lposs_plus"])
def test_batch_equals_each_frame_alone(method):
    # LPOSS at a short side of 224 instead of 448: still several windows per frame (and one
    # joint patch graph over them), a quarter of the pixel graph to refine.
    extra = {"short_side": 224} if method.startswith("lposs") else {}
    seg = build_segmenter(tiny_config(method, **extra))
    seg.set_vocabulary(VOCAB)
    frames = [scene(h, w, seed) for seed, (h, w) in enumerate(SIZES)]
    batch = seg.segment_batch(frames)
    assert len(batch) == len(frames)
    for image, res in zip(frames, batch, strict=True):
        alone = seg.segment(image)
        assert res.labels.shape == image.shape[:2] and res.vocabulary is alone.vocabulary
        assert np.abs(res.probabilities - alone.probabilities).max() <= 1e-5
        assert np.abs(res.confidence - alone.confidence).max() <= 1e-5
        # Labels can only differ where two entries are tied to rounding.
        top2 = np.sort(alone.probabilities, axis=0)[-2:]
        differ = res.labels != alone.labels
        assert np.all(top2[1][differ] - top2[0][differ] <= 2e-5)
        assert differ.mean() < 1e-3


def test_batch_of_small_windows_and_chunked_forward_passes():
    """Frames narrower than a window (whole-image crops of different sizes) and a forward
    batch smaller than the number of windows."""
    seg = build_segmenter(tiny_config("pearl", whole_image=True, short_side=0))
    seg.set_vocabulary(VOCAB)
    seg.max_windows = 1
    frames = [scene(40, 56, 1), scene(33, 47, 2), scene(40, 56, 3)]
    for image, res in zip(frames, seg.segment_batch(frames), strict=True):
        alone = seg.segment(image)
        assert np.abs(res.probabilities - alone.probabilities).max() <= 1e-5


def test_empty_batch_and_bad_frame():
    seg = build_segmenter(tiny_config("maskclip"))
    seg.set_vocabulary(VOCAB)
    assert seg.segment_batch([]) == []
    with pytest.raises(ValueError, match="frame 1: image must be uint8"):
        seg.segment_batch([scene(20, 20, 0), np.zeros((20, 20, 3), np.float32)])


def test_grouping_and_window_batching_keep_frame_order():
    assert group_by_shape([(1, 2), (3, 4), (1, 2)]) == [[0, 2], [1]]
    layout = [(2, 4), (3, 5), (1, 4)]  # (windows, side) per frame
    crops = [torch.full((n, 3, s, s), float(i)) for i, (n, s) in enumerate(layout)]
    calls = []

    def fn(x):
        calls.append(x.shape[0])
        return x.mean(dim=(1, 2, 3)), x.shape[-1]

    out = batched_windows(fn, crops, max_batch=2)
    assert calls == [2, 1, 2, 1]  # frames 0 and 2 share passes; at most 2 windows each
    for i, (values, side) in enumerate(out):
        assert values.tolist() == [float(i)] * crops[i].shape[0] and side == crops[i].shape[-1]
