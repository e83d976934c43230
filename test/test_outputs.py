"""ovseg_ros.outputs: label encodings, vocabulary JSON, topic names, overlay."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rclpy.validate_full_topic_name import validate_full_topic_name

from ovseg_ros.outputs import (
    confidence_topic_suffix,
    labels_image,
    render_overlay,
    vocabulary_json,
)
from ovseg_ros.segmentation.vocabulary import build_vocabulary, unlabeled_id

ENTRIES = ["background; sky; wall", "person; man; woman", "chair"]


def test_labels_mono8_up_to_254_entries_with_255_unlabeled() -> None:
    labels = np.array([[0, 1], [253, 255]], np.int32)
    for entries in (1, 3, 254):
        expected = np.where(labels == 255, 255, labels % entries)
        encoding, array = labels_image(expected, entries)
        assert encoding == "mono8" and array.dtype == np.uint8
        np.testing.assert_array_equal(array, expected)
        assert unlabeled_id(entries) == 255


def test_labels_mono16_from_255_entries_with_65535_unlabeled() -> None:
    labels = np.array([[0, 256], [299, 65535]], np.int32)
    encoding, array = labels_image(labels, 300)
    assert encoding == "mono16" and array.dtype == np.uint16
    np.testing.assert_array_equal(array, labels)
    # By size, not content: 255 entries need id 254, so 255 cannot mean "unlabeled" in mono8.
    assert labels_image(np.zeros((2, 2), np.int64), 255)[0] == "mono16"
    assert unlabeled_id(255) == 65535


@pytest.mark.parametrize(
    "labels,entries", [(np.zeros(4, np.int32), 3), (np.zeros((2, 2)), 0), (np.zeros((2, 2)), 65536)]
)
def test_labels_image_errors(labels: np.ndarray, entries: int) -> None:
    with pytest.raises(ValueError):
        labels_image(labels, entries)


def test_vocabulary_json() -> None:
    vocab = build_vocabulary(ENTRIES + ["café"], version=7)
    text = vocabulary_json(vocab)
    assert "\n" not in text and "café" in text  # one line, readable
    data = json.loads(text)
    assert data["version"] == 7
    assert [c["id"] for c in data["classes"]] == [0, 1, 2, 3]
    assert data["classes"][1] == {
        "id": 1,
        "name": "person",
        "synonyms": ["person", "man", "woman"],
        "color": list(vocab.entries[1].color),
    }
    assert data == {**vocab.to_json_dict(), "unlabeled_id": 255, "valid_from": {}}
    stamped = json.loads(vocabulary_json(vocab, {"": 0, "left": 12_000_000_345}))
    assert stamped["valid_from"] == {
        "": {"sec": 0, "nanosec": 0},
        "left": {"sec": 12, "nanosec": 345},
    }


@pytest.mark.parametrize(
    "name,token",
    [
        ("person", "person"),
        ("Traffic Light", "traffic_light"),
        ("  chair  ", "chair"),
        ("t-shirt", "t_shirt"),
        ("person (adult)", "person_adult"),
        ("a__b", "a_b"),
        ("3d printer", "class_3d_printer"),
        ("42", "class_42"),
        ("椅子", "class"),
        ("", "class"),
        ("___", "class"),
        ("fire hydrant/valve", "fire_hydrant_valve"),
        ("Ünïcode sign", "unicode_sign"),
        ("café", "cafe"),
    ],
)
def test_confidence_topic_suffix(name: str, token: str) -> None:
    assert confidence_topic_suffix(name) == token
    validate_full_topic_name(f"/ovseg/confidence/{token}")  # raises if invalid


def test_render_overlay_blends_class_colors() -> None:
    vocab = build_vocabulary(ENTRIES, version=1)
    rgb = np.full((4, 5, 3), 100, np.uint8)
    labels = np.array([[0, 1, 2, 0, 1]] * 4, np.int32)
    palette = np.array([e.color for e in vocab.entries], np.int32)

    np.testing.assert_array_equal(render_overlay(rgb, labels, vocab, alpha=0.0), rgb)
    np.testing.assert_array_equal(render_overlay(rgb, labels, vocab, alpha=1.0), palette[labels])
    half = render_overlay(rgb, labels, vocab, alpha=0.5)
    expected = (100 + palette[labels]) / 2
    assert half.dtype == np.uint8 and half.shape == rgb.shape
    assert np.abs(half - expected).max() <= 1


@pytest.mark.parametrize("entries", [3, 300])
def test_render_overlay_keeps_the_camera_color_where_unlabeled(entries: int) -> None:
    vocab = build_vocabulary([f"class {i}" for i in range(entries)], version=1)
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    unlabeled = unlabeled_id(entries)
    labels = np.array([[0, 1, 2, unlabeled, 1]] * 4, np.int32)
    out = render_overlay(rgb, labels, vocab, alpha=1.0)
    palette = np.array([e.color for e in vocab.entries], np.uint8)
    np.testing.assert_array_equal(out[:, 3], rgb[:, 3])  # unlabeled: the camera's color
    np.testing.assert_array_equal(out[:, [0, 1, 2, 4]], palette[labels[:, [0, 1, 2, 4]]])
    with pytest.raises(ValueError, match="outside"):  # any other value above the classes
        render_overlay(rgb, np.full((4, 5), unlabeled - 1, np.int32), vocab)


def test_render_overlay_large_image_is_vectorised() -> None:
    vocab = build_vocabulary([f"class {i}" for i in range(300)], version=1)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (480, 640, 3)).astype(np.uint8)
    labels = rng.integers(0, 300, (480, 640)).astype(np.int32)
    out = render_overlay(rgb, labels, vocab, alpha=0.3)
    palette = np.array([e.color for e in vocab.entries], np.float64)
    expected = 0.7 * rgb + 0.3 * palette[labels]
    assert np.abs(out - expected).max() <= 1.5


@pytest.mark.parametrize(
    "rgb,labels,alpha,match",
    [
        (np.zeros((2, 2, 3), np.uint8), np.zeros((2, 3), np.int32), 0.5, "shape"),
        (np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.int32), 0.5, "rgb"),
        (np.zeros((2, 2, 3), np.float32), np.zeros((2, 2), np.int32), 0.5, "rgb"),
        (np.zeros((2, 2, 3), np.uint8), np.full((2, 2), 3, np.int32), 0.5, "outside"),
        (np.zeros((2, 2, 3), np.uint8), np.full((2, 2), -1, np.int32), 0.5, "outside"),
        (np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.int32), 1.5, "alpha"),
    ],
)
def test_render_overlay_errors(rgb, labels, alpha, match) -> None:
    vocab = build_vocabulary(ENTRIES, version=1)
    with pytest.raises(ValueError, match=match):
        render_overlay(rgb, labels, vocab, alpha=alpha)
