"""Labels leave the device as uint8 when the vocabulary allows: ``label_ids`` is uint8 up to 254
entries (int32 above: 255 is the unlabeled value of mono8) and equal to the int32 ``labels``;
the node's mono8 image is made from it without a copy. (The pinned, non-blocking CUDA copies run
in test_cuda.py's end-to-end tests on a GPU.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovseg_ros.outputs import labels_image
from ovseg_ros.segmentation.postprocess import entry_offsets, reduce_scores, reduce_upsampled
from ovseg_ros.segmentation.result import SegmentationResult, host_maps
from ovseg_ros.segmentation.sync import to_host
from ovseg_ros.segmentation.vocabulary import Vocabulary, VocabularyEntry


def result_for(num_entries: int, seed: int = 0) -> tuple[SegmentationResult, torch.Tensor]:
    rng = torch.Generator().manual_seed(seed)
    scores = torch.randn(num_entries, 6, 8, generator=rng)  # [Q, h, w], one synonym each
    entries = tuple(
        VocabularyEntry(f"c{i}", (f"c{i}",), (i % 256, 0, 0)) for i in range(num_entries)
    )
    offsets = entry_offsets(list(range(num_entries)), num_entries)
    (maps,) = host_maps([reduce_upsampled(scores, (12, 16), offsets)], num_entries)
    result = SegmentationResult(
        maps,
        scores,
        Vocabulary(entries, 1),
        {},
        offsets=offsets,
        query_to_entry=torch.arange(num_entries),
        logit_scale=40.0,
        prob_threshold=0.0,
    )
    return result, scores


@pytest.mark.parametrize(
    ("num_entries", "dtype"), [(5, np.uint8), (254, np.uint8), (255, np.int32), (300, np.int32)]
)
def test_label_ids_are_compact_and_equal_the_labels(num_entries, dtype) -> None:
    result, scores = result_for(num_entries)
    assert result.label_ids.dtype == dtype and result.labels.dtype == np.int32
    np.testing.assert_array_equal(result.label_ids, result.labels)
    upsampled = torch.nn.functional.interpolate(scores[None], size=(12, 16), mode="bilinear")[0]
    expected, confidence, _ = reduce_scores(upsampled, torch.arange(num_entries), num_entries)
    np.testing.assert_array_equal(result.labels, expected.numpy())
    np.testing.assert_allclose(result.confidence, confidence.numpy(), rtol=1e-5)
    assert result.size == (12, 16)


def test_mono8_labels_are_the_device_bytes_without_a_copy() -> None:
    result, _ = result_for(5)
    encoding, image = labels_image(result.label_ids, 5)
    assert encoding == "mono8" and np.shares_memory(image, result.label_ids)


def test_to_host_on_the_cpu_is_a_view() -> None:
    tensor = torch.arange(6, dtype=torch.int32).reshape(2, 3)
    (array,) = to_host(tensor)
    assert np.shares_memory(array, tensor.numpy()) and array.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert to_host() == []
