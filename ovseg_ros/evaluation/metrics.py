"""Semantic segmentation metrics accumulated over a data set.

- Confusion matrix (rows: ground truth, columns: prediction) with an ignore label, built with
  one ``np.bincount`` per image.
- mIoU, per-class IoU, pixel accuracy (aAcc) and mean class accuracy (mAcc), computed the
  way MMSegmentation's ``IoUMetric`` does: areas are summed over the whole set first, a class
  whose union (IoU) or ground-truth area (Acc) is zero over the set is NaN and left out of
  the mean.
- Boundary IoU (Cheng et al., CVPR'21) as the LPOSS evaluation uses it: per image and per
  class present in the ground truth or the prediction, the boundary of a binary mask is the
  mask minus its erosion by ``d = max(1, round(0.02 * diagonal))`` iterations of a 3x3
  erosion, the mask being padded by one zero pixel so that the image border counts as
  boundary; prediction pixels where the ground truth is ignored are ignored first.
  Intersections and unions of boundary pixels are summed per class over the set, and
  ``mBIoU`` is the mean of their ratios.

Values reported by :class:`MetricResult` are percentages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

IGNORE_INDEX = 255
DEFAULT_DILATION_RATIO = 0.02
BACKENDS = ("auto", "cv2", "numpy")


# -- confusion matrix ------------------------------------------------------------------------


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}")
    return pred, gt


def _confusion_with_miss(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int
) -> tuple[np.ndarray, int]:
    """``(C, C + 1)`` counts (last column: predictions outside ``[0, C)``) and the number
    of ground-truth pixels outside ``[0, C)`` that are not ``ignore_index`` (skipped)."""
    pred, gt = _check_pair(pred, gt)
    gt = gt.reshape(-1).astype(np.int64, copy=False)
    pred = pred.reshape(-1).astype(np.int64, copy=False)
    in_range = (gt >= 0) & (gt < num_classes)
    invalid_gt = int(np.count_nonzero(~in_range & (gt != ignore_index)))
    gt, pred = gt[in_range], pred[in_range]
    pred = np.where((pred >= 0) & (pred < num_classes), pred, num_classes)
    width = num_classes + 1
    counts = np.bincount(gt * width + pred, minlength=num_classes * width)
    return counts.reshape(num_classes, width), invalid_gt


def confusion_matrix(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """``(C, C)`` int64 matrix; entry ``[g, p]`` counts pixels of class ``g`` predicted ``p``.

    Pixels whose ground truth is ``ignore_index`` (or outside ``[0, C)``) are skipped;
    predictions outside ``[0, C)`` are counted in no column.
    """
    counts, _ = _confusion_with_miss(pred, gt, num_classes, ignore_index)
    return counts[:, :num_classes]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` as float64 with NaN where ``den == 0``."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(values: np.ndarray | None) -> float:
    if values is None or not np.any(np.isfinite(values)):
        return math.nan
    return float(np.nanmean(values))


def iou_from_confusion(cm: np.ndarray, gt_area: np.ndarray | None = None) -> np.ndarray:
    """Per-class IoU (fraction, NaN where the union is empty) from a ``(C, C)`` matrix.

    ``gt_area`` overrides the row sums (it also counts pixels predicted out of range).
    """
    cm = np.asarray(cm)
    inter = np.diag(cm)
    label = cm.sum(axis=1) if gt_area is None else np.asarray(gt_area)
    union = label + cm.sum(axis=0) - inter
    return _ratio(inter, union)


# -- boundary IoU ----------------------------------------------------------------------------


def boundary_dilation(height: int, width: int, ratio: float = DEFAULT_DILATION_RATIO) -> int:
    """Erosion iterations ``d = max(1, round(ratio * image diagonal))``."""
    return max(1, int(round(ratio * math.sqrt(height**2 + width**2))))


def _cv2() -> Any | None:
    try:
        import cv2
    except ImportError:  # the numpy path covers it
        return None
    return cv2


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "cv2" if _cv2() is not None else "numpy"
    if backend == "cv2" and _cv2() is None:
        raise ImportError("backend='cv2' needs opencv-python (pip install opencv-python-headless)")
    return backend


def _erode_numpy(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``iterations`` 3x3 erosions = one erosion by a ``(2d+1)`` square; pixels outside the
    array do not erode (OpenCV's default border). A pixel survives iff its window holds no
    zero, counted with an integral image of the zeros: O(H*W) whatever ``d``."""
    h, w = mask.shape
    d = int(iterations)
    k = 2 * d + 1
    dtype = np.int32 if (h + k) * (w + k) < 2**31 else np.int64
    zeros = np.zeros((h + 2 * d + 1, w + 2 * d + 1), dtype=dtype)  # outside: no zeros
    zeros[d + 1 : d + 1 + h, d + 1 : d + 1 + w] = ~mask
    np.cumsum(zeros, axis=0, out=zeros)
    np.cumsum(zeros, axis=1, out=zeros)
    count = zeros[k:, k:] - zeros[:-k, k:] - zeros[k:, :-k] + zeros[:-k, :-k]
    return count == 0


def erode(mask: np.ndarray, iterations: int, backend: str = "auto") -> np.ndarray:
    """Binary erosion by ``iterations`` passes of a 3x3 square; the outside does not erode.

    ``backend``: ``"cv2"`` (``cv2.erode``), ``"numpy"`` (integral-image fallback, no extra
    dependency) or ``"auto"`` (cv2 when importable). Returns a bool array.
    """
    mask = np.asarray(mask).astype(bool, copy=False)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    if iterations <= 0:
        return mask.copy()
    if _resolve_backend(backend) == "cv2":
        cv2 = _cv2()
        kernel = np.ones((3, 3), dtype=np.uint8)
        out = cv2.erode(mask.astype(np.uint8), kernel, iterations=int(iterations))
        return out.astype(bool)
    return _erode_numpy(mask, iterations)


def mask_boundary(
    mask: np.ndarray,
    dilation_ratio: float = DEFAULT_DILATION_RATIO,
    backend: str = "auto",
    iterations: int | None = None,
) -> np.ndarray:
    """Inner boundary band of a binary mask: the mask minus its erosion.

    The mask is padded with one zero pixel so that a mask cut by the image border has a
    boundary there. ``iterations`` defaults to :func:`boundary_dilation` of the mask's size.
    """
    mask = np.asarray(mask).astype(bool, copy=False)
    h, w = mask.shape
    d = boundary_dilation(h, w, dilation_ratio) if iterations is None else int(iterations)
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    inner = erode(padded, d, backend)[1 : h + 1, 1 : w + 1]
    return mask & ~inner


def boundary_iou_stats(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    dilation_ratio: float = DEFAULT_DILATION_RATIO,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class boundary intersection and union pixel counts ``(C,), (C,)`` for one image."""
    pred, gt = _check_pair(pred, gt)
    if pred.ndim != 2:
        raise ValueError(f"expected 2-D label maps, got shape {pred.shape}")
    pred = np.where(gt == ignore_index, ignore_index, pred)
    inter = np.zeros(num_classes, dtype=np.int64)
    union = np.zeros(num_classes, dtype=np.int64)
    d = boundary_dilation(*gt.shape, dilation_ratio)
    present = np.union1d(np.unique(gt), np.unique(pred))
    for cls in present[(present >= 0) & (present < num_classes)]:
        gt_b = mask_boundary(gt == cls, backend=backend, iterations=d)
        pred_b = mask_boundary(pred == cls, backend=backend, iterations=d)
        inter[cls] = np.count_nonzero(gt_b & pred_b)
        union[cls] = np.count_nonzero(gt_b | pred_b)
    return inter, union


# -- accumulation over a set -----------------------------------------------------------------


@dataclass(frozen=True)
class MetricResult:
    """Metrics over a set; all values in percent, NaN where a class has no support."""

    num_images: int
    iou: np.ndarray  # (C,) per-class IoU
    acc: np.ndarray  # (C,) per-class accuracy (recall)
    boundary_iou: np.ndarray | None  # (C,) per-class Boundary IoU, None when not measured
    gt_area: np.ndarray  # (C,) ground-truth pixels per class
    pred_area: np.ndarray  # (C,) predicted pixels per class (where the gt is valid)
    aacc: float  # pixel accuracy over all valid pixels
    invalid_gt_pixels: int = 0  # gt values outside [0, C) other than the ignore label

    @property
    def num_classes(self) -> int:
        return int(self.iou.shape[0])

    @property
    def miou(self) -> float:
        return _nanmean(self.iou)

    @property
    def macc(self) -> float:
        return _nanmean(self.acc)

    @property
    def mbiou(self) -> float:
        return _nanmean(self.boundary_iou)

    def summary(self) -> dict[str, float]:
        """``{"mIoU", "aAcc", "mAcc"[, "mBIoU"]}`` in percent."""
        out = {"mIoU": self.miou, "aAcc": self.aacc, "mAcc": self.macc}
        if self.boundary_iou is not None:
            out["mBIoU"] = self.mbiou
        return out

    def per_class(self, class_names: list[str] | None = None) -> list[dict[str, Any]]:
        """One row per class: id, name, IoU, Acc, BIoU, gt/pred pixel counts (NaN -> None)."""
        rows = []
        for c in range(self.num_classes):
            row: dict[str, Any] = {
                "id": c,
                "name": class_names[c] if class_names else str(c),
                "IoU": _finite_or_none(self.iou[c]),
                "Acc": _finite_or_none(self.acc[c]),
            }
            if self.boundary_iou is not None:
                row["BIoU"] = _finite_or_none(self.boundary_iou[c])
            row["gt_pixels"] = int(self.gt_area[c])
            row["pred_pixels"] = int(self.pred_area[c])
            rows.append(row)
        return rows


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


class SegmentationMetric:
    """Accumulates the confusion matrix (and Boundary IoU counts) over a set of images.

    >>> metric = SegmentationMetric(num_classes=21)
    >>> metric.update(pred, gt)          # HxW label maps, gt uses 255 as ignore
    >>> result = metric.compute()        # MetricResult, percentages
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        boundary: bool = True,
        dilation_ratio: float = DEFAULT_DILATION_RATIO,
        backend: str = "auto",
    ) -> None:
        if num_classes <= 0:
            raise ValueError(f"num_classes must be > 0, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.boundary = bool(boundary)
        self.dilation_ratio = float(dilation_ratio)
        self.backend = _resolve_backend(backend)
        self.reset()

    def reset(self) -> None:
        c = self.num_classes
        self._counts = np.zeros((c, c + 1), dtype=np.int64)
        self.boundary_intersection = np.zeros(c, dtype=np.int64)
        self.boundary_union = np.zeros(c, dtype=np.int64)
        self.invalid_gt_pixels = 0
        self.num_images = 0

    @property
    def confusion(self) -> np.ndarray:
        """``(C, C)`` confusion matrix accumulated so far (rows: gt, columns: prediction)."""
        return self._counts[:, : self.num_classes].copy()

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image: ``pred`` and ``gt`` are HxW integer label maps of the same shape."""
        counts, invalid = _confusion_with_miss(pred, gt, self.num_classes, self.ignore_index)
        self._counts += counts
        self.invalid_gt_pixels += invalid
        if self.boundary:
            inter, union = boundary_iou_stats(
                pred, gt, self.num_classes, self.ignore_index, self.dilation_ratio, self.backend
            )
            self.boundary_intersection += inter
            self.boundary_union += union
        self.num_images += 1

    def merge(self, other: SegmentationMetric) -> None:
        """Add the counts ``other`` accumulated (the same classes), e.g. one worker's share:
        the merged metric equals one that saw every image."""
        if other.num_classes != self.num_classes or other.boundary != self.boundary:
            raise ValueError("cannot merge metrics of different classes or boundary settings")
        self._counts += other._counts  # (C, C+1): confusion matrix and missed-pixel column
        self.boundary_intersection += other.boundary_intersection
        self.boundary_union += other.boundary_union
        self.invalid_gt_pixels += other.invalid_gt_pixels
        self.num_images += other.num_images

    def compute(self) -> MetricResult:
        cm = self._counts[:, : self.num_classes]
        inter = np.diag(cm)
        gt_area = self._counts.sum(axis=1)
        pred_area = cm.sum(axis=0)
        total = gt_area.sum()
        biou = None
        if self.boundary:
            biou = 100.0 * _ratio(self.boundary_intersection, self.boundary_union)
        return MetricResult(
            num_images=self.num_images,
            iou=100.0 * iou_from_confusion(cm, gt_area),
            acc=100.0 * _ratio(inter, gt_area),
            boundary_iou=biou,
            gt_area=gt_area,
            pred_area=pred_area,
            aacc=100.0 * float(inter.sum()) / float(total) if total else math.nan,
            invalid_gt_pixels=self.invalid_gt_pixels,
        )
