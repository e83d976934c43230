"""The build-time structure check of the open_clip / timm models, and the pinned ranges."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovseg_ros.segmentation import build_segmenter, tiny_config
from ovseg_ros.segmentation.backbone_check import (
    CLIP_PARTS,
    DINO_PARTS,
    SUPPORTED,
    BackboneStructureError,
    check_structure,
    missing_parts,
    package_version,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_models():
    """The real tiny CLIP and DINO our build path makes (random weights)."""
    segmenter = build_segmenter(tiny_config("lposs", text_cache_dir="none"))
    return segmenter._clip.model, segmenter._dino


def test_real_tiny_models_have_every_part(tiny_models):
    clip, dino = tiny_models
    assert missing_parts(clip, CLIP_PARTS) == []
    assert missing_parts(dino, DINO_PARTS) == []
    check_structure(clip, CLIP_PARTS, "open_clip_torch", "CLIP")


def test_a_renamed_part_fails_with_the_package_version_and_what_is_missing(tiny_models):
    clip, dino = tiny_models
    attn = clip.visual.transformer.resblocks[-1].attn
    weight = attn.in_proj_weight
    del attn.in_proj_weight  # as if a release renamed it (a fused qkv, say)
    attn.register_parameter("qkv_weight", weight)
    try:
        with pytest.raises(BackboneStructureError) as info:
            check_structure(clip, CLIP_PARTS, "open_clip_torch", "CLIP ViT-B-16")
    finally:
        del attn.qkv_weight
        attn.register_parameter("in_proj_weight", weight)
    message = str(info.value)
    assert f"open_clip_torch {package_version('open_clip_torch')}" in message
    assert "visual.transformer.resblocks[-1].attn.in_proj_weight" in message
    assert "open_clip_torch>=3.0,<4" in message
    assert missing_parts(clip, CLIP_PARTS) == []  # restored

    blocks = dino.blocks
    del dino.blocks  # as if timm renamed its block list
    try:
        with pytest.raises(BackboneStructureError, match=r"timm .*blocks\[-1\]\.norm1"):
            check_structure(dino, DINO_PARTS, "timm", "DINO")
    finally:
        dino.blocks = blocks


def test_proj_may_be_none_but_must_exist(tiny_models):
    clip, _ = tiny_models
    proj = clip.visual.proj
    clip.visual.proj = None
    try:
        assert missing_parts(clip, CLIP_PARTS) == []
    finally:
        clip.visual.proj = proj


def test_pinned_ranges_match_requirements_and_the_installed_versions():
    from packaging.specifiers import SpecifierSet

    requirements = (ROOT / "requirements.txt").read_text().splitlines()
    for package, spec in SUPPORTED.items():
        assert f"{package}{spec}" in requirements
        assert package_version(package) in SpecifierSet(spec), package
