"""Readers for the benchmark data sets in their standard MMSegmentation layouts.

Conventions follow the official evaluation configs (PGSmall/PEARL ``configs/cfg_*.py`` and
``custom_datasets.py``; vladan-stojnic/LPOSS ``segmentation/configs/_base_/datasets`` and
``segmentation/datasets``; MMSegmentation's dataset classes):

==============  ===================================  ==========================================
key             root (example)                       layout
==============  ===================================  ==========================================
voc21           VOCdevkit/VOC2012                    JPEGImages/*.jpg, SegmentationClass/*.png
voc20           VOCdevkit/VOC2012                    same, background ignored (reduce_zero_label)
context60       VOCdevkit/VOC2010                    JPEGImages, SegmentationClassContext
context59       VOCdevkit/VOC2010                    same, reduce_zero_label
coco_object     coco_stuff164k                       images/val2017, annotations/val2017/
                                                     *_instanceTrainIds.png
coco_stuff      coco_stuff164k                       images/val2017, annotations/val2017/
                                                     *_labelTrainIds.png
cityscapes      cityscapes                           leftImg8bit/val/*/*_leftImg8bit.png,
                                                     gtFine/val/*/*_gtFine_labelTrainIds.png
ade20k          ADEChallengeData2016                 images/validation/*.jpg,
                                                     annotations/validation/*.png, reduce_zero_label
==============  ===================================  ==========================================

The PASCAL sets read their image list from ``ImageSets/Segmentation/val.txt`` (VOC) or
``ImageSets/SegmentationContext/val.txt`` (Context); the others scan the image folder
recursively and sort, as MMSegmentation does. The root may also be the parent folder
(``VOCdevkit``, the folder holding ``ADEChallengeData2016``...).

Every sample is ``(image RGB uint8 HxWx3, gt uint8 HxW with 255 = ignore, name)``; the gt is
at the image's own resolution (the official pipelines load annotations after resizing the
image, i.e. metrics are computed at the original resolution).

Class names (the vocabulary given to the segmenter) come from ``ovseg_ros/data/classnames``:
``<key>.txt`` are the official PEARL lists (``configs/cls_*.txt``, ``', '`` synonyms written
as ``'; '``), ``lposs_<key>.txt`` the lists the official LPOSS evaluation uses (its dataset
classes, MMSegmentation's names for ADE20K and Cityscapes).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, overload

import numpy as np
from PIL import Image

IGNORE_INDEX = 255
CLASSNAMES_DIR = Path(__file__).resolve().parent.parent / "data" / "classnames"
# Benchmark protocol (``Method.benchmark`` in the method table) -> its class-name file prefix.
_CLASSNAME_PREFIX = {"pearl": "", "lposs": "lposs_"}
VOCABULARIES = tuple(_CLASSNAME_PREFIX)


class DatasetError(FileNotFoundError):
    """The data set root is missing or does not have the expected layout."""


class Sample(NamedTuple):
    image: np.ndarray  # HxWx3 uint8 RGB
    gt: np.ndarray  # HxW uint8, 255 = ignore
    name: str


@dataclass(frozen=True)
class DatasetSpec:
    """Where a benchmark keeps its files and how its labels are encoded."""

    key: str
    title: str
    num_classes: int
    img_dir: str
    ann_dir: str
    img_suffix: str
    ann_suffix: str
    split_file: str | None  # image list (PASCAL); None: scan img_dir recursively
    reduce_zero_label: bool  # 0 -> ignore, other labels - 1
    background: bool  # entry 0 is the background class
    parents: tuple[str, ...]  # sub-folders tried when the root is their parent
    example_root: str
    voc_palette: bool = False  # annotations may be RGB-coloured with the VOC palette


_VOC = {
    "img_dir": "JPEGImages",
    "ann_dir": "SegmentationClass",
    "img_suffix": ".jpg",
    "ann_suffix": ".png",
    "split_file": "ImageSets/Segmentation/val.txt",
    "parents": ("VOC2012",),
    "example_root": "/data/VOCdevkit/VOC2012",
    "voc_palette": True,
}
_CONTEXT = {
    "img_dir": "JPEGImages",
    "ann_dir": "SegmentationClassContext",
    "img_suffix": ".jpg",
    "ann_suffix": ".png",
    "split_file": "ImageSets/SegmentationContext/val.txt",
    "parents": ("VOC2010",),
    "example_root": "/data/VOCdevkit/VOC2010",
}
_COCO = {
    "img_dir": "images/val2017",
    "ann_dir": "annotations/val2017",
    "img_suffix": ".jpg",
    "split_file": None,
    "reduce_zero_label": False,
    "parents": ("coco_stuff164k",),
    "example_root": "/data/coco_stuff164k",
}

SPECS: dict[str, DatasetSpec] = {
    "voc21": DatasetSpec(
        "voc21",
        "PASCAL VOC 2012 val (21 classes, with background)",
        21,
        reduce_zero_label=False,
        background=True,
        **_VOC,
    ),
    "voc20": DatasetSpec(
        "voc20",
        "PASCAL VOC 2012 val (20 classes, background ignored)",
        20,
        reduce_zero_label=True,
        background=False,
        **_VOC,
    ),
    "context60": DatasetSpec(
        "context60",
        "PASCAL Context val (60 classes, with background)",
        60,
        reduce_zero_label=False,
        background=True,
        **_CONTEXT,
    ),
    "context59": DatasetSpec(
        "context59",
        "PASCAL Context val (59 classes, background ignored)",
        59,
        reduce_zero_label=True,
        background=False,
        **_CONTEXT,
    ),
    "coco_object": DatasetSpec(
        "coco_object",
        "COCO-Object val2017 (81 classes, with background)",
        81,
        ann_suffix="_instanceTrainIds.png",
        background=True,
        **_COCO,
    ),
    "coco_stuff": DatasetSpec(
        "coco_stuff",
        "COCO-Stuff-164k val2017 (171 classes)",
        171,
        ann_suffix="_labelTrainIds.png",
        background=False,
        **_COCO,
    ),
    "cityscapes": DatasetSpec(
        "cityscapes",
        "Cityscapes val (19 classes)",
        19,
        img_dir="leftImg8bit/val",
        ann_dir="gtFine/val",
        img_suffix="_leftImg8bit.png",
        ann_suffix="_gtFine_labelTrainIds.png",
        split_file=None,
        reduce_zero_label=False,
        background=False,
        parents=("cityscapes",),
        example_root="/data/cityscapes",
    ),
    "ade20k": DatasetSpec(
        "ade20k",
        "ADE20K val (150 classes)",
        150,
        img_dir="images/validation",
        ann_dir="annotations/validation",
        img_suffix=".jpg",
        ann_suffix=".png",
        split_file=None,
        reduce_zero_label=True,
        background=False,
        parents=("ADEChallengeData2016",),
        example_root="/data/ADEChallengeData2016",
    ),
}
DATASET_KEYS = tuple(SPECS)


# -- class names -----------------------------------------------------------------------------


def read_classnames_file(path: str | Path) -> list[str]:
    """Entries of a class-name file: one per line, synonyms separated by ``;``.

    Blank lines are skipped; synonyms are stripped and re-joined with ``"; "``.
    """
    entries = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        synonyms = [s.strip() for s in line.split(";") if s.strip()]
        if synonyms:
            entries.append("; ".join(synonyms))
    if not entries:
        raise ValueError(f"{path}: no class names")
    return entries


def classnames_path(key: str, vocabulary: str = "pearl") -> Path:
    """Path of the packaged class-name file of ``key`` (``vocabulary``: pearl or lposs)."""
    _spec(key)
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"vocabulary must be one of {list(VOCABULARIES)}, got {vocabulary!r}")
    return CLASSNAMES_DIR / f"{_CLASSNAME_PREFIX[vocabulary]}{key}.txt"


def load_classnames(key: str, vocabulary: str = "pearl") -> list[str]:
    """The official vocabulary entries of a benchmark (see the module docstring)."""
    entries = read_classnames_file(classnames_path(key, vocabulary))
    expected = SPECS[key].num_classes
    if len(entries) != expected:
        raise ValueError(f"{key}: {len(entries)} class names, expected {expected}")
    return entries


def display_names(entries: Sequence[str], background: bool = False) -> list[str]:
    """Short names for tables: the first synonym; ``"background"`` for a background entry."""
    names = [entry.split(";")[0].strip() for entry in entries]
    if background and names:
        names[0] = "background"
    return names


# -- label / image decoding ------------------------------------------------------------------


def voc_colormap(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (``n x 3`` uint8): bits of the index spread over RGB."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def _pack_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _rgb_to_index(rgb: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Map RGB colours to palette indices; colours not in the palette become 255."""
    codes, pal = _pack_rgb(rgb), _pack_rgb(palette)
    order = np.argsort(pal, kind="stable")
    pos = np.clip(np.searchsorted(pal[order], codes), 0, len(pal) - 1)
    found = pal[order][pos] == codes
    return np.where(found, order[pos], IGNORE_INDEX).astype(np.uint8)


def read_label(path: str | Path, voc_palette: bool = False) -> np.ndarray:
    """Read a label PNG as HxW uint8 class indices (palette PNGs give their indices).

    With ``voc_palette`` an RGB-coloured annotation is mapped back through the VOC colour
    map (unknown colours -> 255).
    """
    with Image.open(path) as img:
        mode = img.mode
        arr = np.array(img)
    if mode in ("RGB", "RGBA"):
        if not voc_palette:
            raise DatasetError(f"{path}: expected a single-channel label image, got {mode}")
        return _rgb_to_index(arr[..., :3], voc_colormap())
    if arr.ndim != 2:
        raise DatasetError(f"{path}: expected a single-channel label image, got {mode}")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DatasetError(f"{path}: label values outside 0..255")
        arr = arr.astype(np.uint8)
    return arr


def reduce_zero_label(gt: np.ndarray) -> np.ndarray:
    """MMSegmentation's ``reduce_zero_label``: 0 -> 255 (ignore), others - 1, 255 stays."""
    gt = np.asarray(gt, dtype=np.uint8)
    out = gt - np.uint8(1)  # wraps 0 -> 255
    out[gt == IGNORE_INDEX] = IGNORE_INDEX
    return out


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB (pixels as stored, no EXIF rotation)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


# -- data set --------------------------------------------------------------------------------


def _spec(key: str) -> DatasetSpec:
    if key not in SPECS:
        raise ValueError(f"unknown dataset {key!r}; known: {list(DATASET_KEYS)}")
    return SPECS[key]


def _layout_hint(spec: DatasetSpec) -> str:
    if spec.split_file:  # names listed in the split file
        parts = [
            f"{spec.img_dir}/<name>{spec.img_suffix}",
            f"{spec.ann_dir}/<name>{spec.ann_suffix}",
            spec.split_file,
        ]
    else:  # names found by scanning the image folder
        parts = [f"{spec.img_dir}/**/*{spec.img_suffix}", f"{spec.ann_dir}/**/*{spec.ann_suffix}"]
    return f"{spec.key} expects a root like {spec.example_root} holding " + ", ".join(parts)


def resolve_root(key: str, root: str | Path) -> Path:
    """The folder that holds the set's image folder (``root`` or one of its known children)."""
    spec = _spec(key)
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DatasetError(
            f"dataset root {root} does not exist or is not a folder; " + _layout_hint(spec)
        )
    for candidate in (root, *(root / p for p in spec.parents)):
        if (candidate / spec.img_dir).is_dir():
            return candidate
    raise DatasetError(f"expected folder {root / spec.img_dir} (not found); " + _layout_hint(spec))


class SegmentationDataset(Sequence[Sample]):
    """One benchmark split read from disk; items are :class:`Sample` tuples.

    Files are listed (and every annotation checked to exist) when the object is built, so a
    broken layout fails before a long run starts.
    """

    def __init__(
        self,
        key: str,
        root: str | Path,
        classes: Sequence[str] | None = None,
        vocabulary: str = "pearl",
    ) -> None:
        self.spec = _spec(key)
        self.key = key
        self.root = resolve_root(key, root)
        self.classes: list[str] = (
            list(classes) if classes is not None else load_classnames(key, vocabulary)
        )
        if len(self.classes) != self.spec.num_classes:
            raise ValueError(
                f"{key} has {self.spec.num_classes} classes, got {len(self.classes)} names"
            )
        self.class_names = display_names(self.classes, self.spec.background)
        self.names: list[str] = self._list_names()
        self._check_annotations()

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def image_path(self, index: int) -> Path:
        return self.root / self.spec.img_dir / f"{self.names[index]}{self.spec.img_suffix}"

    def label_path(self, index: int) -> Path:
        return self.root / self.spec.ann_dir / f"{self.names[index]}{self.spec.ann_suffix}"

    def _list_names(self) -> list[str]:
        spec = self.spec
        ann_dir = self.root / spec.ann_dir
        if not ann_dir.is_dir():
            raise DatasetError(
                f"expected annotation folder {ann_dir} (not found); " + _layout_hint(spec)
            )
        if spec.split_file:
            split = self.root / spec.split_file
            if not split.is_file():
                raise DatasetError(
                    f"expected split file {split} (not found); " + _layout_hint(spec)
                )
            names = [ln.strip() for ln in split.read_text().splitlines() if ln.strip()]
            if not names:
                raise DatasetError(f"split file {split} lists no images")
            return names
        img_dir = self.root / spec.img_dir
        names = sorted(
            p.relative_to(img_dir).as_posix()[: -len(spec.img_suffix)]
            for p in img_dir.rglob(f"*{spec.img_suffix}")
            if p.is_file()
        )
        if not names:
            raise DatasetError(
                f"no images matching {img_dir}/**/*{spec.img_suffix}; " + _layout_hint(spec)
            )
        return names

    def _check_annotations(self) -> None:
        listed = self.spec.split_file is not None  # a listed image may be missing too
        missing = [
            path
            for i in range(len(self.names))
            for path in (
                (self.image_path(i), self.label_path(i)) if listed else (self.label_path(i),)
            )
            if not path.is_file()
        ]
        if missing:
            raise DatasetError(
                f"{len(missing)} expected files of {len(self.names)} {self.key} samples are "
                f"missing, e.g. {missing[0]}; " + _layout_hint(self.spec)
            )

    def load(self, index: int) -> Sample:
        """Read sample ``index`` from disk."""
        name = self.names[index]
        image = read_image(self.image_path(index))
        gt = read_label(self.label_path(index), voc_palette=self.spec.voc_palette)
        if self.spec.reduce_zero_label:
            gt = reduce_zero_label(gt)
        if gt.shape != image.shape[:2]:
            raise DatasetError(
                f"{name}: annotation {gt.shape} and image {image.shape[:2]} sizes differ"
            )
        return Sample(image, gt, name)

    def __len__(self) -> int:
        return len(self.names)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self.load(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.load(index)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self.load(i)

    def __repr__(self) -> str:
        return f"SegmentationDataset({self.key!r}, root={str(self.root)!r}, n={len(self)})"


def build_dataset(
    key: str,
    root: str | Path,
    classes: Sequence[str] | None = None,
    vocabulary: str = "pearl",
) -> SegmentationDataset:
    """Open benchmark ``key`` at ``root``; raises :class:`DatasetError` on a bad layout."""
    return SegmentationDataset(key, root, classes=classes, vocabulary=vocabulary)
