"""Benchmark readers on tiny synthetic data sets written in the real on-disk layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovseg_ros.evaluation.datasets import (
    DATASET_KEYS,
    SPECS,
    DatasetError,
    build_dataset,
    classnames_path,
    display_names,
    load_classnames,
    read_classnames_file,
    read_label,
    reduce_zero_label,
    voc_colormap,
)


def _rng_image(rng, h, w):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _labels(rng, h, w, values):
    gt = rng.choice(np.asarray(values, dtype=np.uint8), size=(h, w))
    gt[0, :4] = values[0]  # make sure the first and the last value are present
    gt[-1, -4:] = values[-1]
    return gt


def _palette_png(labels: np.ndarray, path: Path) -> None:
    img = Image.fromarray(labels, mode="P")
    img.putpalette(voc_colormap().reshape(-1).tolist())
    img.save(path)


def write_voc(
    root: Path,
    names,
    h=24,
    w=32,
    seed=0,
    split="Segmentation",
    ann="SegmentationClass",
    values=(0, 1, 15, 20, 255),
):
    """VOC-style layout: JPEGImages, palette PNG annotations, ImageSets/<split>/val.txt."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True)
    (root / ann).mkdir()
    (root / "ImageSets" / split).mkdir(parents=True)
    gts = {}
    for name in names:
        Image.fromarray(_rng_image(rng, h, w)).save(root / "JPEGImages" / f"{name}.jpg")
        gts[name] = _labels(rng, h, w, values)
        _palette_png(gts[name], root / ann / f"{name}.png")
    (root / "ImageSets" / split / "val.txt").write_text("\n".join(names) + "\n")
    return gts


def write_cityscapes(root: Path, files, h=16, w=24, seed=0):
    """Cityscapes layout: leftImg8bit/val/<city>/*_leftImg8bit.png + gtFine labelTrainIds."""
    rng = np.random.default_rng(seed)
    out = {}
    for city, stem in files:
        (root / "leftImg8bit" / "val" / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / "val" / city).mkdir(parents=True, exist_ok=True)
        image = _rng_image(rng, h, w)
        gt = _labels(rng, h, w, (0, 7, 13, 18, 255))
        Image.fromarray(image).save(root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png")
        Image.fromarray(gt, mode="L").save(
            root / "gtFine" / "val" / city / f"{stem}_gtFine_labelTrainIds.png"
        )
        out[f"{city}/{stem}"] = (image, gt)
    return out


# -- PASCAL VOC ------------------------------------------------------------------------------


def test_voc21_reads_palette_png_indices(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    gts = write_voc(root, ["2007_000033", "2007_000042"])
    ds = build_dataset("voc21", root)
    assert len(ds) == 2 and ds.num_classes == 21 and len(ds.classes) == 21
    assert ds.names == ["2007_000033", "2007_000042"]  # the order of val.txt
    image, gt, name = ds[1]
    assert name == "2007_000042"
    assert image.dtype == np.uint8 and image.shape == (24, 32, 3)
    assert gt.dtype == np.uint8 and gt.shape == (24, 32)
    np.testing.assert_array_equal(gt, gts[name])
    assert ds.class_names[0] == "background" and ds.class_names[1] == "aeroplane"


def test_voc20_reduces_zero_label(tmp_path):
    root = tmp_path / "VOC2012"
    gts = write_voc(root, ["a"])
    gt = build_dataset("voc20", root)[0].gt
    raw = gts["a"]
    assert (gt[raw == 0] == 255).all()  # background -> ignore
    assert (gt[raw == 255] == 255).all()  # ignore stays ignore
    assert (gt[raw == 1] == 0).all() and (gt[raw == 20] == 19).all()
    assert set(np.unique(gt).tolist()) == {0, 14, 19, 255}


def test_root_may_be_the_parent_folder(tmp_path):
    write_voc(tmp_path / "VOCdevkit" / "VOC2012", ["x"])
    ds = build_dataset("voc21", tmp_path / "VOCdevkit")
    assert ds.root == tmp_path / "VOCdevkit" / "VOC2012"


def test_rgb_coloured_voc_annotation_is_mapped_through_the_palette(tmp_path):
    labels = np.array([[0, 1, 15], [20, 255, 7]], dtype=np.uint8)
    rgb = voc_colormap()[labels]
    rgb[0, 0] = (1, 2, 3)  # not a VOC colour -> ignore
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    expected = labels.copy()
    expected[0, 0] = 255
    np.testing.assert_array_equal(read_label(tmp_path / "rgb.png", voc_palette=True), expected)
    with pytest.raises(DatasetError, match="single-channel"):
        read_label(tmp_path / "rgb.png")


def test_context_layout_and_reduce_zero_label(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2010"
    gts = write_voc(
        root,
        ["2008_000002"],
        split="SegmentationContext",
        ann="SegmentationClassContext",
        values=(0, 1, 33, 59),
    )
    ds60 = build_dataset("context60", tmp_path / "VOCdevkit")
    np.testing.assert_array_equal(ds60[0].gt, gts["2008_000002"])
    assert ds60.class_names[0] == "background" and ds60.num_classes == 60
    gt59 = build_dataset("context59", root)[0].gt
    np.testing.assert_array_equal(gt59, reduce_zero_label(gts["2008_000002"]))
    assert 58 in gt59 and 255 in gt59


# -- Cityscapes, COCO, ADE20K ----------------------------------------------------------------


def test_cityscapes_layout(tmp_path):
    root = tmp_path / "cityscapes"
    files = [
        ("munster", "munster_000000_000019"),
        ("frankfurt", "frankfurt_000000_000294"),
        ("frankfurt", "frankfurt_000000_000576"),
    ]
    written = write_cityscapes(root, files)
    ds = build_dataset("cityscapes", root)
    assert ds.names == sorted(written)  # scanned recursively and sorted, as mmseg does
    for image, gt, name in ds:
        np.testing.assert_array_equal(image, written[name][0])  # PNG: lossless
        np.testing.assert_array_equal(gt, written[name][1])
    assert ds.label_path(0).name == "frankfurt_000000_000294_gtFine_labelTrainIds.png"
    assert ds.class_names[:2] == ["road", "sidewalk"]


def _write_scan_layout(root, img_dir, ann_dir, names, ann_suffix, values, h=10, w=14):
    rng = np.random.default_rng(3)
    (root / img_dir).mkdir(parents=True)
    (root / ann_dir).mkdir(parents=True)
    gts = {}
    for name in names:
        Image.fromarray(_rng_image(rng, h, w)).save(root / img_dir / f"{name}.jpg")
        gts[name] = _labels(rng, h, w, values)
        Image.fromarray(gts[name], mode="L").save(root / ann_dir / f"{name}{ann_suffix}")
    return gts


def test_coco_object_and_stuff_pick_their_annotation_suffix(tmp_path):
    root = tmp_path / "coco_stuff164k"
    obj = _write_scan_layout(
        root,
        "images/val2017",
        "annotations/val2017",
        ["000000000285", "000000000139"],
        "_instanceTrainIds.png",
        (0, 1, 80),
    )
    ds = build_dataset("coco_object", root)
    assert ds.names == ["000000000139", "000000000285"]
    np.testing.assert_array_equal(ds[0].gt, obj["000000000139"])
    assert ds.num_classes == 81 and ds.class_names[0] == "background"
    with pytest.raises(DatasetError, match="_labelTrainIds.png"):
        build_dataset("coco_stuff", root)  # only the object annotations exist
    for name in obj:
        Image.fromarray(np.full((10, 14), 170, np.uint8), mode="L").save(
            root / "annotations/val2017" / f"{name}_labelTrainIds.png"
        )
    stuff = build_dataset("coco_stuff", tmp_path)  # parent folder works too
    assert stuff.num_classes == 171 and (stuff[1].gt == 170).all()


def test_ade20k_reduce_zero_label_and_parent_root(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    gts = _write_scan_layout(
        root,
        "images/validation",
        "annotations/validation",
        ["ADE_val_00000001"],
        ".png",
        (0, 1, 150),
    )
    ds = build_dataset("ade20k", tmp_path)
    gt = ds[0].gt
    raw = gts["ADE_val_00000001"]
    assert (gt[raw == 0] == 255).all() and (gt[raw == 1] == 0).all()
    assert (gt[raw == 150] == 149).all()
    assert ds.num_classes == 150 and ds.class_names[0] == "wall"


# -- errors ----------------------------------------------------------------------------------


def test_missing_root_says_what_was_expected(tmp_path):
    with pytest.raises(DatasetError, match="does not exist") as info:
        build_dataset("voc21", tmp_path / "nope")
    assert "JPEGImages" in str(info.value) and "val.txt" in str(info.value)


def test_wrong_layout_names_the_missing_folder_or_file(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(DatasetError, match="SegmentationClass"):
        build_dataset("voc21", tmp_path)
    (tmp_path / "SegmentationClass").mkdir()
    with pytest.raises(DatasetError, match=r"ImageSets/Segmentation/val\.txt"):
        build_dataset("voc21", tmp_path)
    with pytest.raises(DatasetError, match="leftImg8bit/val"):
        build_dataset("cityscapes", tmp_path)


def test_missing_annotation_is_reported_before_reading(tmp_path):
    root = tmp_path / "VOC2012"
    write_voc(root, ["a", "b"])
    (root / "SegmentationClass" / "b.png").unlink()
    with pytest.raises(DatasetError, match="b.png"):
        build_dataset("voc21", root)


def test_empty_image_folder(tmp_path):
    (tmp_path / "leftImg8bit" / "val").mkdir(parents=True)
    (tmp_path / "gtFine" / "val").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        build_dataset("cityscapes", tmp_path)


def test_unknown_dataset_key():
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("kitti", "/tmp")


# -- indexing, labels, class names -----------------------------------------------------------


def test_sequence_protocol(tmp_path):
    write_voc(tmp_path, ["a", "b", "c"])
    ds = build_dataset("voc21", tmp_path)
    assert ds[-1].name == "c"
    assert [s.name for s in ds[1:]] == ["b", "c"]
    with pytest.raises(IndexError):
        ds[3]


def test_reduce_zero_label_semantics():
    gt = np.array([0, 1, 2, 150, 254, 255], dtype=np.uint8)
    assert reduce_zero_label(gt).tolist() == [255, 0, 1, 149, 253, 255]


@pytest.mark.parametrize("vocabulary", ["pearl", "lposs"])
@pytest.mark.parametrize("key", DATASET_KEYS)
def test_packaged_class_names(key, vocabulary):
    entries = load_classnames(key, vocabulary)
    assert len(entries) == SPECS[key].num_classes
    for entry in entries:
        assert entry == entry.strip() and ", " not in entry and ";;" not in entry
        assert all(s.strip() for s in entry.split(";"))


def test_class_names_follow_the_official_lists():
    voc21 = load_classnames("voc21")
    assert voc21[0].startswith("sky; wall; tree; wood") and voc21[0].endswith("rail; fence")
    assert voc21[15].startswith("person; person in shirt")
    assert voc21[4] == "ship"  # PEARL's cls_voc21.txt renames boat
    assert load_classnames("voc21", "lposs")[4] == "boat"
    assert load_classnames("coco_object")[1].endswith("person in jacket; body")
    assert load_classnames("context60")[0] == "background"
    assert load_classnames("cityscapes", "lposs")[6] == "traffic light"


def test_read_classnames_file_and_display_names(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("sky ;wall\n\n person;  man \nchair\n")
    entries = read_classnames_file(path)
    assert entries == ["sky; wall", "person; man", "chair"]
    assert display_names(entries) == ["sky", "person", "chair"]
    assert display_names(entries, background=True)[0] == "background"
    assert classnames_path("voc21").name == "voc21.txt"
    assert classnames_path("voc21", "lposs").name == "lposs_voc21.txt"


def test_every_method_has_its_benchmark_class_lists():
    from ovseg_ros.evaluation.datasets import VOCABULARIES
    from ovseg_ros.segmentation.methods import METHOD_TABLE

    assert {m.benchmark for m in METHOD_TABLE.values()} == set(VOCABULARIES)
    for vocabulary in VOCABULARIES:
        for key in DATASET_KEYS:
            assert len(load_classnames(key, vocabulary)) == SPECS[key].num_classes
