"""SegmenterConfig, dataset presets, vocabulary parsing and the sliding-window geometry."""

import pytest
import torch

from ovseg_ros.segmentation import SegmenterConfig, build_vocabulary, dataset_preset, parse_entries
from ovseg_ros.segmentation.config import FIELD_TYPES, REBUILD_FIELDS, field_specs
from ovseg_ros.segmentation.geometry import (
    grid_to_window,
    rescaled_size,
    stitch_patch_scores,
    stitch_windows,
    window_boxes,
)
from ovseg_ros.segmentation.methods import METHODS, method_spec


def test_defaults_follow_the_papers():
    pearl = SegmenterConfig(method="pearl", device="cpu").resolved()
    assert (pearl.short_side, pearl.clip_pretrained, pearl.tlp, pearl.pixel_refine) == (
        336,
        "openai",
        True,
        False,
    )
    assert (pearl.alpha_kk, pearl.polar_iters, pearl.tlp_grid, pearl.logit_scale) == (
        0.08,
        5,
        80,
        40.0,
    )
    plus = SegmenterConfig(method="lposs_plus", device="cpu").resolved()
    assert (plus.short_side, plus.pixel_refine, plus.lposs_k, plus.pixel_radius) == (
        448,
        True,
        400,
        6,
    )
    assert (plus.lposs_gamma, plus.lposs_sigma, plus.lposs_alpha, plus.pixel_tau) == (
        3.0,
        0.01,
        0.95,
        0.01,
    )
    assert SegmenterConfig(method="lposs", device="cpu").resolved().pixel_refine is False


def test_unknown_keys_and_bad_values_are_errors():
    with pytest.raises(ValueError, match="unknown SegmenterConfig keys: \\['alpha'\\]"):
        SegmenterConfig.from_dict({"alpha": 1})
    with pytest.raises(TypeError):
        SegmenterConfig(alpha=1)
    with pytest.raises(ValueError, match="method"):
        SegmenterConfig(method="sam")
    with pytest.raises(ValueError, match="dtype"):
        SegmenterConfig(dtype="int8")
    with pytest.raises(ValueError, match="window_stride"):
        SegmenterConfig(window_size=100, window_stride=200)
    with pytest.raises(ValueError, match="integer"):
        SegmenterConfig.from_dict({"window_size": 2.5})
    with pytest.raises(ValueError, match="unknown"):
        SegmenterConfig().replace(foo=1)


def test_from_dict_coerces_ros_style_values():
    cfg = SegmenterConfig.from_dict(
        {"short_side": -1, "tlp": "auto", "logit_scale": 40, "use_kk": "false", "lposs_k": 50.0}
    )
    assert cfg.short_side is None and cfg.tlp is None and cfg.use_kk is False
    assert isinstance(cfg.logit_scale, float) and cfg.lposs_k == 50
    assert SegmenterConfig.from_dict({"clip_pretrained": ""}).clip_pretrained is None
    assert SegmenterConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ({"use_kk": 1}, {"lposs_k": "many"}, {"alpha_kk": True}, {"device": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SegmenterConfig.from_dict(bad)


def test_field_specs_carry_type_range_and_rebuild_for_every_field():
    specs = {spec.name: spec for spec in field_specs()}
    assert tuple(specs) == SegmenterConfig.field_names()
    assert all(spec.doc.endswith(".") and spec.type in FIELD_TYPES for spec in specs.values())
    assert all(getattr(SegmenterConfig(), n) == s.default for n, s in specs.items())
    method = specs["method"]
    assert (method.type, method.choices, method.rebuild) == (str, METHODS, True)
    assert (specs["short_side"].type, specs["short_side"].optional) == (int, True)
    assert (specs["short_side"].unset, specs["tlp"].unset, specs["clip_pretrained"].unset) == (
        -1,
        "auto",
        "",
    )
    alpha = specs["lposs_alpha"]
    assert (alpha.type, alpha.minimum, alpha.maximum, alpha.max_open) == (float, 0.0, 1.0, True)
    assert alpha.constraints == "in [0, 1)" and specs["pixel_tau"].constraints == "in (0, 10]"
    assert specs["seed"].constraints == "in [0, 4294967295]"
    assert not specs["alpha_kk"].rebuild and specs["tiny_width"].rebuild
    assert REBUILD_FIELDS == {n for n, s in specs.items() if s.rebuild}
    assert {"method", "device", "clip_weights", "templates"} <= REBUILD_FIELDS
    # The ranges are what the constructor enforces, at their edges.
    SegmenterConfig(lposs_alpha=0.0, prob_threshold=1.0, polar_iters=0)
    for name, value in [("lposs_alpha", 1.0), ("pixel_tau", 0.0), ("window_size", 0)]:
        with pytest.raises(ValueError, match=f"{name} must be"):
            SegmenterConfig(**{name: value})
    with pytest.raises(ValueError, match="one of"):
        SegmenterConfig(procrustes_solver="qr")


def test_method_table_drives_defaults_and_benchmarks():
    assert METHODS == ("pearl", "maskclip", "lposs", "lposs_plus")
    pearl, plus = method_spec("pearl"), method_spec("lposs_plus")
    assert (pearl.needs_dino, pearl.scorer, pearl.refiners, pearl.benchmark) == (
        False,
        "pearl",
        ("tlp",),
        "pearl",
    )
    assert (plus.needs_dino, plus.scorer, plus.refiners, plus.clip_pretrained) == (
        True,
        "maskclip",
        ("pixel_refine",),
        "laion2b_s34b_b88k",
    )
    assert not method_spec("maskclip").needs_dino and method_spec("lposs").refiners == ()
    for name in METHODS:
        resolved = SegmenterConfig(method=name, device="cpu").resolved()
        assert all(getattr(resolved, k) == v for k, v in method_spec(name).defaults.items())
    with pytest.raises(ValueError, match="method must be one of"):
        method_spec("sam")


def _check_documented(specs) -> None:
    """config/segment.yaml holds each spec's parameter with its default and a comment."""
    import re
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[1] / "config" / "segment.yaml"
    text = path.read_text()
    (section,) = yaml.safe_load(text).values()
    params = section["ros__parameters"]
    lines = text.splitlines()
    for spec in specs:
        assert spec.name in params, f"{spec.name} missing from {path.name}"
        expected = spec.unset if spec.default is None else spec.default
        assert params[spec.name] == expected, spec.name
        (index,) = [i for i, ln in enumerate(lines) if re.match(rf"\s+{spec.name}:", ln)]
        documented = "#" in lines[index] or lines[index - 1].strip().startswith("#")
        assert documented, f"{spec.name} has no comment in {path.name}"


def test_segment_yaml_documents_every_engine_field_with_its_default():
    _check_documented(field_specs())


def test_segment_yaml_documents_every_node_parameter_with_its_default():
    pytest.importorskip("rclpy")
    from ovseg_ros.ros.parameters import NODE_SPECS

    _check_documented(NODE_SPECS)


def test_dataset_presets_match_official_configs():
    assert dataset_preset("voc21", "pearl") == {
        "short_side": 336,
        "whole_image": True,
        "prob_threshold": 0.1,
    }
    city = dataset_preset("cityscapes", "pearl")
    assert (city["alpha_kk"], city["tlp_grid"], city["short_side"]) == (0.3, 224, 560)
    assert dataset_preset("ade20k", "pearl")["alpha_kk"] == 0.3
    assert dataset_preset("context60", "pearl")["prob_threshold"] == 0.1
    assert dataset_preset("voc21", "lposs_plus")["short_side"] == 448
    with pytest.raises(ValueError, match="unknown dataset"):
        dataset_preset("kitti", "pearl")
    SegmenterConfig().replace(**dataset_preset("cityscapes", "pearl"))


def test_vocabulary_synonyms_and_colors():
    vocab = build_vocabulary(["background; sky;  wall", "person; man", "chair"], version=3)
    assert vocab.names == ["background", "person", "chair"]
    assert vocab.queries == ["background", "sky", "wall", "person", "man", "chair"]
    assert vocab.query_to_entry == [0, 0, 0, 1, 1, 2]
    assert vocab.index("Man") == 1 and vocab.version == 3
    again = build_vocabulary(["chair", "table"], version=4)
    assert again.entries[0].color == vocab.entries[2].color  # a class keeps its color
    js = vocab.to_json_dict()
    assert js["classes"][1] == {
        "id": 1,
        "name": "person",
        "synonyms": ["person", "man"],
        "color": list(vocab.entries[1].color),
    }


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([], "empty"),
        ("chair", "not a single string"),
        (["chair", "  "], "blank"),
        (["chair; ", "table"], "blank synonym"),
        (["chair", "Chair"], "duplicate"),
        (["person; man", "man"], "duplicate"),
        (["a; a"], "twice"),
        ([3], "expected a string"),
        (["x" * 300], "longer"),
        (["bad\x00name"], "control"),
        (["do\nor"], "control character \\(U\\+000A\\)"),
        (["door", "table\tdesk"], "entry 1 .*control"),
        (["chair; \x7f"], "control"),
        (["bell\x85"], "control"),
        ([f"class {i}" for i in range(5000)], "at most 4096"),
    ],
)
def test_invalid_vocabularies_are_refused_with_a_reason(entries, reason):
    with pytest.raises(ValueError, match=reason):
        parse_entries(entries)


def test_rescaled_size_matches_mmseg_keep_ratio():
    assert rescaled_size(480, 640, 336, 2048) == (336, 448)
    assert rescaled_size(375, 500, 448, 2048) == (448, 597)
    assert rescaled_size(1024, 2048, 560, 2048) == (560, 1120)
    assert rescaled_size(100, 5000, 448, 2048) == (41, 2048)  # long side caps the scale
    assert rescaled_size(1, 9000, 336, 2048) == (1, 2048)  # never zero
    assert rescaled_size(37, 53, 0, 2048) == (37, 53)


@pytest.mark.parametrize(("h", "w"), [(336, 448), (224, 224), (100, 700), (500, 230), (50, 60)])
def test_windows_cover_every_pixel_and_average_exactly(h, w):
    boxes = window_boxes(h, w, 224, 112)
    sizes = {(y2 - y1, x2 - x1) for y1, y2, x1, x2 in boxes}
    assert sizes == {(min(224, h), min(224, w))}
    assert all(0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w for y1, y2, x1, x2 in boxes)
    # Each window carries the true value of the pixels it covers: averaging returns it exactly.
    truth = torch.arange(h * w, dtype=torch.float64).reshape(1, h, w)
    crops = torch.stack([truth[:, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])
    assert torch.equal(stitch_windows(crops, boxes, (h, w))[0], truth)
    count = torch.zeros(h, w)
    for y1, y2, x1, x2 in boxes:
        count[y1:y2, x1:x2] += 1
    assert count.min() >= 1


def test_non_strict_vocabulary_allows_a_name_in_two_entries():
    vocab = build_vocabulary(["background; bed; wall", "bed", "chair"], version=1, strict=False)
    assert vocab.query_to_entry == [0, 0, 0, 1, 2]
    with pytest.raises(ValueError, match="twice"):
        parse_entries(["a; a"], strict=False)


def test_stitching_patch_scores_window_by_window_equals_the_batched_form():
    g = torch.Generator().manual_seed(0)
    boxes = window_boxes(336, 448, 224, 112)
    scores = torch.rand(len(boxes), 14 * 14, 5, generator=g)
    batched = stitch_windows(grid_to_window(scores, (14, 14), (224, 224)), boxes, (336, 448))
    assert torch.allclose(stitch_patch_scores(scores, (14, 14), boxes, (336, 448)), batched)


def test_host_resize_is_opencv_exact_and_the_device_fallback_within_one_level():
    import numpy as np

    from ovseg_ros.segmentation.geometry import resize_image, resize_rgb

    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (5, 5), 0)
    size = rescaled_size(480, 640, 336, 2048)
    expected = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(resize_rgb(rgb, size), expected)
    on_device = resize_image(torch.from_numpy(rgb).permute(2, 0, 1)[None].float(), size)
    diff = np.abs(on_device[0].permute(1, 2, 0).numpy() - expected.astype(np.float32))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.2
