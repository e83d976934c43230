"""Outputs at the image size with memory linear in pixels: the chunked reduction and the
chunked TLP pooling equal the full-size formulas, and an 8K frame never allocates
classes x pixels."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from ovseg_ros.segmentation.batch import text_aware_refine, upsample_pool
from ovseg_ros.segmentation.pearl import text_aware_propagation
from ovseg_ros.segmentation.postprocess import (
    entry_offsets,
    entry_probability,
    reduce_scores,
    reduce_upsampled,
)


@pytest.mark.parametrize(
    ("mapping", "threshold", "chunk"),
    [
        ([0, 0, 0, 1, 1, 1, 2], 0.0, 1),  # synonyms, one entry per chunk
        ([0, 1, 2, 3, 4], 0.0, 1 << 30),  # all classes in one chunk
        ([0, 0, 1, 2, 2, 3], 0.5, 2 * 97 * 131),  # background threshold, two-entry chunks
        ([0, 1, 2], 0.9, 1),  # most pixels fall back to the background entry
    ],
)
@pytest.mark.parametrize("size", [(97, 131), (13, 17), (5, 301)])
def test_chunked_reduction_equals_full_size_formula(mapping, threshold, chunk, size):
    g = torch.Generator().manual_seed(len(mapping) + size[1])
    entries = max(mapping) + 1
    scores = torch.randn(len(mapping), 13, 17, generator=g) * 0.1
    scores[0, 3, 4] = float("nan")  # a broken score stays harmless
    upsampled = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
    labels, confidence, probs = reduce_scores(
        upsampled, torch.tensor(mapping), entries, logit_scale=40.0, prob_threshold=threshold
    )
    offsets = entry_offsets(mapping, entries)
    maps = reduce_upsampled(
        scores, size, offsets, logit_scale=40.0, prob_threshold=threshold, chunk_elements=chunk
    )
    assert maps.labels.dtype == torch.int32 and torch.equal(maps.labels, labels.int())
    assert (maps.confidence - confidence).abs().max() <= 1e-6
    for entry in range(entries):
        one = entry_probability(scores, maps, offsets, entry, logit_scale=40.0)
        assert (one - probs[entry]).abs().max() <= 1e-6


@pytest.mark.parametrize(("chunk", "unlabeled"), [(1, 255), (1 << 30, 65535)])
def test_unlabeled_pixels_get_the_unlabeled_id_and_the_best_probability(chunk, unlabeled):
    """A robot's entry 0 is a class: below the threshold the label is ``unlabeled_id`` and the
    confidence the best entry's probability; every other pixel is as the papers' convention."""
    mapping, threshold, size = [0, 0, 1, 2, 2, 3], 0.5, (31, 47)
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(len(mapping), 7, 9, generator=g) * 0.05
    upsampled = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
    _, _, probs = reduce_scores(upsampled, torch.tensor(mapping), 4, logit_scale=40.0)
    softmax = torch.softmax(40.0 * upsampled, dim=0)
    best_entry = torch.stack([softmax[[0, 1]].amax(0), softmax[2], softmax[[3, 4]].amax(0),
                              softmax[5]]).amax(0)  # fmt: skip
    below = best_entry < threshold
    assert 0 < below.sum() < below.numel()  # both kinds of pixel are present
    kwargs = dict(logit_scale=40.0, prob_threshold=threshold, chunk_elements=chunk)
    offsets = entry_offsets(mapping, 4)
    marked = reduce_upsampled(scores, size, offsets, unlabeled_id=unlabeled, **kwargs)
    papers = reduce_upsampled(scores, size, offsets, **kwargs)
    assert torch.equal(marked.labels[below], torch.full_like(marked.labels[below], unlabeled))
    assert torch.equal(marked.labels[~below], papers.labels[~below])
    assert torch.equal(papers.labels[below], torch.zeros_like(papers.labels[below]))
    assert (marked.confidence - probs.amax(0)).abs().max() <= 1e-6


def test_entry_offsets_need_grouped_queries():
    assert entry_offsets([0, 0, 1, 2, 2, 2], 3) == [0, 2, 3, 6]
    with pytest.raises(ValueError, match="grouped"):
        entry_offsets([0, 1, 0], 2)
    with pytest.raises(ValueError, match="at least one"):
        entry_offsets([0, 2], 3)


@pytest.mark.parametrize(("size", "grid"), [((400, 531), 80), ((90, 100), 80), ((77, 500), 20)])
def test_chunked_tlp_equals_tlp_on_upsampled_logits(size, grid):
    """TLP on logits upsampled to the image (the official pipeline) == pooling a few
    upsampled classes at a time, solving on the grid, upsampling at the end."""
    g = torch.Generator().manual_seed(size[0])
    image = torch.randn(1, 3, 60, 70, generator=g)
    logits = torch.randn(1, 6, 60, 70, generator=g) * 0.2
    text = torch.randn(6, 16, generator=g)
    full_image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
    full_logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    reference = text_aware_propagation(full_image, full_logits, text, grid=grid)
    (refined,) = text_aware_refine([image], [logits], [size], text, grid=grid, iters=25)
    if refined.shape[-2:] != size:
        refined = F.interpolate(refined, size=size, mode="bilinear", align_corners=False)
    assert torch.equal(refined, reference)


def test_upsample_pool_is_exact_per_chunk():
    x = torch.randn(1, 7, 31, 45)
    full = F.avg_pool2d(F.interpolate(x, size=(301, 455), mode="bilinear"), (7, 9), stride=(7, 9))
    assert torch.equal(upsample_pool(x, (301, 455), (7, 9), chunk_elements=301 * 455), full)


def _peak_growth_mb(method: str, height: int, width: int, classes: int) -> float:
    script = textwrap.dedent(
        f"""
        import resource
        import numpy as np
        from ovseg_ros.segmentation import build_segmenter, tiny_config

        seg = build_segmenter(tiny_config({method!r}, templates="single"))
        seg.set_vocabulary([f"class {{i}}" for i in range({classes})])
        seg.segment(np.zeros((64, 64, 3), np.uint8))
        rgb = np.random.default_rng(0).integers(0, 255, ({height}, {width}, 3), dtype=np.uint8)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        res = seg.segment(rgb)
        assert res.labels.shape == ({height}, {width})
        one = res.probability_of({classes} - 1)
        assert one.shape == ({height}, {width})
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the suite's one thread per process
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env
    )
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_8k_frame_memory_is_linear_in_pixels_not_classes():
    """8K (7680 x 4320) with 20 classes, PEARL (TLP included): one float map of every class at
    that size alone would be 2.65 GB; the whole frame must stay well below that."""
    height, width, classes = 4320, 7680, 20
    growth = _peak_growth_mb("pearl", height, width, classes)
    one_class_map_mb = height * width * 4 / 2**20  # 127 MB
    assert growth < 12 * one_class_map_mb, f"peak grew by {growth:.0f} MB"
