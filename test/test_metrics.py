"""Segmentation metrics: confusion matrix, mIoU/aAcc/mAcc, Boundary IoU."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ovseg_ros.evaluation.metrics import (
    SegmentationMetric,
    boundary_dilation,
    boundary_iou_stats,
    confusion_matrix,
    erode,
    iou_from_confusion,
    mask_boundary,
)

try:
    import cv2  # noqa: F401

    HAVE_CV2 = True
except ImportError:
    HAVE_CV2 = False

BACKENDS = ["numpy"] + (["cv2"] if HAVE_CV2 else [])


# -- brute-force references (explicit per-pixel loops, on purpose) ---------------------------


def ref_confusion(pred, gt, num_classes, ignore=255):
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist(), strict=True):
        if g == ignore or not 0 <= g < num_classes:
            continue
        if 0 <= p < num_classes:
            cm[g, p] += 1
    return cm


def ref_erode_once(m):
    """One 3x3 erosion; neighbours outside the array do not erode."""
    h, w = m.shape
    out = np.zeros_like(m)
    for i in range(h):
        for j in range(w):
            keep = True
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    ii, jj = i + di, j + dj
                    if 0 <= ii < h and 0 <= jj < w and not m[ii, jj]:
                        keep = False
            out[i, j] = keep
    return out


def ref_boundary(mask, ratio=0.02):
    h, w = mask.shape
    d = int(round(ratio * math.sqrt(h * h + w * w)))
    d = max(d, 1)
    padded = np.zeros((h + 2, w + 2), dtype=bool)
    for i in range(h):
        for j in range(w):
            padded[i + 1, j + 1] = bool(mask[i, j])
    for _ in range(d):
        padded = ref_erode_once(padded)
    out = np.zeros((h, w), dtype=bool)
    for i in range(h):
        for j in range(w):
            out[i, j] = bool(mask[i, j]) and not padded[i + 1, j + 1]
    return out


def ref_boundary_stats(pred, gt, num_classes, ignore=255, ratio=0.02):
    h, w = gt.shape
    pred = pred.copy()
    for i in range(h):
        for j in range(w):
            if gt[i, j] == ignore:
                pred[i, j] = ignore
    inter = np.zeros(num_classes, dtype=np.int64)
    union = np.zeros(num_classes, dtype=np.int64)
    classes = (set(gt.ravel().tolist()) | set(pred.ravel().tolist())) - {ignore}
    for c in sorted(classes):
        if not 0 <= c < num_classes:
            continue
        gb = ref_boundary(gt == c, ratio)
        pb = ref_boundary(pred == c, ratio)
        for i in range(h):
            for j in range(w):
                inter[c] += bool(gb[i, j] and pb[i, j])
                union[c] += bool(gb[i, j] or pb[i, j])
    return inter, union


def blobs(rng, shape, num_classes, ignore_frac=0.0):
    """Blocky random label map (upsampled noise) so classes form regions with boundaries."""
    h, w = shape
    coarse = rng.integers(0, num_classes, size=((h + 3) // 4, (w + 3) // 4))
    labels = np.kron(coarse, np.ones((4, 4), dtype=np.int64))[:h, :w]
    noise = rng.random(shape) < 0.05
    labels[noise] = rng.integers(0, num_classes, size=int(noise.sum()))
    if ignore_frac:
        labels[rng.random(shape) < ignore_frac] = 255
    return labels.astype(np.uint8)


# -- confusion matrix and IoU ----------------------------------------------------------------

GT = np.array([[0, 0, 1], [1, 2, 255]], dtype=np.uint8)
PRED = np.array([[0, 1, 1], [1, 0, 2]], dtype=np.uint8)


def test_confusion_matrix_hand_computed():
    cm = confusion_matrix(PRED, GT, num_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert cm.dtype == np.int64


def test_miou_aacc_macc_exact():
    metric = SegmentationMetric(3, boundary=False)
    metric.update(PRED, GT)
    res = metric.compute()
    # IoU: c0 1/(2+2-1), c1 2/(2+3-2), c2 0/(1+0-0); Acc: 1/2, 2/2, 0/1
    np.testing.assert_allclose(res.iou, [100 / 3, 200 / 3, 0.0])
    np.testing.assert_allclose(res.acc, [50.0, 100.0, 0.0])
    assert res.miou == pytest.approx(100 / 3)
    assert res.aacc == pytest.approx(60.0)
    assert res.macc == pytest.approx(50.0)
    assert res.boundary_iou is None and "mBIoU" not in res.summary()
    assert res.gt_area.tolist() == [2, 2, 1]
    assert res.pred_area.tolist() == [2, 3, 0]


def test_iou_from_confusion_matches_metric():
    cm = confusion_matrix(PRED, GT, 3)
    np.testing.assert_allclose(iou_from_confusion(cm), [1 / 3, 2 / 3, 0.0])


def test_ignore_label_pixels_do_not_count():
    gt = np.full((4, 5), 255, dtype=np.uint8)
    gt[0, 0] = 1
    pred = np.zeros((4, 5), dtype=np.uint8)  # wrong everywhere under the ignore label
    pred[0, 0] = 1
    metric = SegmentationMetric(2)
    metric.update(pred, gt)
    res = metric.compute()
    assert metric.confusion.sum() == 1
    assert math.isnan(res.iou[0]) and res.iou[1] == 100.0  # class 0 never in gt nor pred
    assert res.miou == 100.0 and res.aacc == 100.0 and res.macc == 100.0


def test_absent_class_is_nan_and_left_out_of_the_mean():
    gt = np.array([[0, 0], [1, 1]], dtype=np.uint8)
    metric = SegmentationMetric(4, boundary=False)
    metric.update(gt.copy(), gt)
    res = metric.compute()
    assert np.isnan(res.iou[2:]).all() and np.isnan(res.acc[2:]).all()
    assert res.miou == 100.0
    rows = res.per_class(["a", "b", "c", "d"])
    assert rows[2]["IoU"] is None and rows[0]["IoU"] == 100.0 and rows[1]["name"] == "b"


def test_false_positive_class_scores_zero_iou_and_nan_accuracy():
    gt = np.zeros((2, 2), dtype=np.uint8)
    pred = np.array([[0, 0], [0, 1]], dtype=np.uint8)
    metric = SegmentationMetric(2, boundary=False)
    metric.update(pred, gt)
    res = metric.compute()
    assert res.iou[1] == 0.0 and math.isnan(res.acc[1])
    assert res.iou[0] == pytest.approx(75.0)
    assert res.miou == pytest.approx(37.5)
    assert res.macc == pytest.approx(75.0)


def test_out_of_range_prediction_is_a_miss_and_bad_gt_is_counted():
    gt = np.array([[0, 1, 7]], dtype=np.uint8)  # 7: not a class, not the ignore label
    pred = np.array([[0, 9, 0]], dtype=np.int64)  # 9: predicted a non-class
    metric = SegmentationMetric(2, boundary=False)
    metric.update(pred, gt)
    res = metric.compute()
    assert metric.confusion.tolist() == [[1, 0], [0, 0]]
    assert res.gt_area.tolist() == [1, 1]
    assert res.iou.tolist() == [100.0, 0.0]
    assert res.aacc == pytest.approx(50.0)
    assert res.invalid_gt_pixels == 1


@pytest.mark.parametrize("boundary", [True, False])
def test_perfect_prediction_scores_100(boundary):
    rng = np.random.default_rng(0)
    metric = SegmentationMetric(5, boundary=boundary)
    for _ in range(3):
        gt = blobs(rng, (24, 31), 5, ignore_frac=0.1)
        pred = np.where(gt == 255, 3, gt)  # anything under the ignore label
        metric.update(pred, gt)
    s = metric.compute().summary()
    assert s["mIoU"] == 100.0 and s["aAcc"] == 100.0 and s["mAcc"] == 100.0
    if boundary:
        assert s["mBIoU"] == 100.0


def test_vectorised_confusion_matches_per_pixel_loop_and_accumulates():
    rng = np.random.default_rng(1)
    metric = SegmentationMetric(6, boundary=False)
    total = np.zeros((6, 6), dtype=np.int64)
    for shape in [(13, 17), (20, 9), (5, 31)]:
        gt = blobs(rng, shape, 6, ignore_frac=0.15)
        pred = rng.integers(0, 6, size=shape)
        ref = ref_confusion(pred, gt, 6)
        np.testing.assert_array_equal(confusion_matrix(pred, gt, 6), ref)
        metric.update(pred, gt)
        total += ref
    np.testing.assert_array_equal(metric.confusion, total)
    assert metric.num_images == 3


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 3)), np.zeros((3, 2)), 2)


# -- Boundary IoU ----------------------------------------------------------------------------


def test_boundary_dilation():
    assert boundary_dilation(64, 80) == 2  # 0.02 * 102.4 = 2.05
    assert boundary_dilation(10, 10) == 1  # rounds to 0 -> at least 1
    assert boundary_dilation(512, 683) == 17
    assert boundary_dilation(1024, 2048) == 46


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("iterations", [1, 2, 4])
def test_erode_matches_brute_force(backend, iterations):
    rng = np.random.default_rng(iterations)
    mask = blobs(rng, (14, 19), 2) == 1
    ref = mask.copy()
    for _ in range(iterations):
        ref = ref_erode_once(ref)
    np.testing.assert_array_equal(erode(mask, iterations, backend=backend), ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ratio", [0.02, 0.1, 0.2])
def test_mask_boundary_matches_brute_force(backend, ratio):
    rng = np.random.default_rng(7)
    mask = blobs(rng, (16, 21), 3) == 2
    np.testing.assert_array_equal(
        mask_boundary(mask, ratio, backend=backend), ref_boundary(mask, ratio)
    )


def test_full_mask_boundary_is_the_image_border_band():
    mask = np.ones((12, 15), dtype=bool)
    band = mask_boundary(mask, 0.02)  # d = 1
    assert band[0].all() and band[-1].all() and band[:, 0].all() and band[:, -1].all()
    assert not band[1:-1, 1:-1].any()
    band3 = mask_boundary(mask, dilation_ratio=0.0, iterations=3)
    assert band3.sum() == 12 * 15 - 6 * 9


@pytest.mark.skipif(not HAVE_CV2, reason="opencv not installed")
def test_cv2_and_numpy_erosion_agree_on_larger_masks():
    rng = np.random.default_rng(3)
    for shape, iterations in [((64, 80), 2), ((97, 131), 5), ((40, 300), 9), ((7, 5), 12)]:
        mask = blobs(rng, shape, 3) > 0
        np.testing.assert_array_equal(
            erode(mask, iterations, "cv2"), erode(mask, iterations, "numpy")
        )
        np.testing.assert_array_equal(
            mask_boundary(mask, backend="cv2"), mask_boundary(mask, backend="numpy")
        )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ratio", [0.02, 0.15])
def test_boundary_iou_stats_match_brute_force(backend, ratio):
    rng = np.random.default_rng(11)
    gt = blobs(rng, (15, 22), 4, ignore_frac=0.1)
    pred = blobs(rng, (15, 22), 5)  # class 4 is not a class of the set: skipped
    inter, union = boundary_iou_stats(pred, gt, 4, dilation_ratio=ratio, backend=backend)
    ref_inter, ref_union = ref_boundary_stats(pred, gt, 4, ratio=ratio)
    np.testing.assert_array_equal(inter, ref_inter)
    np.testing.assert_array_equal(union, ref_union)


def test_boundary_iou_accumulates_over_the_set():
    rng = np.random.default_rng(5)
    metric = SegmentationMetric(3, dilation_ratio=0.1)
    inter = np.zeros(3, dtype=np.int64)
    union = np.zeros(3, dtype=np.int64)
    for shape in [(12, 16), (18, 11)]:
        gt = blobs(rng, shape, 3, ignore_frac=0.05)
        pred = blobs(rng, shape, 3)
        metric.update(pred, gt)
        i, u = ref_boundary_stats(pred, gt, 3, ratio=0.1)
        inter += i
        union += u
    res = metric.compute()
    expected = 100.0 * inter / union
    np.testing.assert_allclose(res.boundary_iou, expected)
    assert res.mbiou == pytest.approx(expected.mean())
    np.testing.assert_array_equal(metric.boundary_intersection, inter)


def test_boundary_ignores_predictions_under_the_ignore_label():
    gt = np.zeros((10, 10), dtype=np.uint8)
    gt[:, 5:] = 255
    pred = np.zeros((10, 10), dtype=np.uint8)
    pred[:, 5:] = 1  # hidden by the ignore label: class 1 must not appear
    inter, union = boundary_iou_stats(pred, gt, 2)
    assert inter[1] == 0 and union[1] == 0
    assert inter[0] == union[0] > 0


def test_bad_backend_name():
    with pytest.raises(ValueError, match="backend"):
        SegmentationMetric(2, backend="scipy")


def test_merged_metrics_equal_one_metric_over_every_image():
    """Workers (Ray actors) each score a share of the images; merging their metrics must give
    the single-process metric count for count, invalid pixels and boundary sums included."""
    rng = np.random.default_rng(3)
    images = [(rng.integers(0, 5, (17, 23)), rng.integers(0, 5, (17, 23))) for _ in range(6)]
    for _, gt in images[:2]:
        gt[0, :3] = 255  # ignored
        gt[1, :2] = 9  # out of range: counted as invalid
    whole = SegmentationMetric(4, boundary=True)
    parts = [SegmentationMetric(4, boundary=True) for _ in range(3)]
    for i, (pred, gt) in enumerate(images):
        whole.update(pred, gt)
        parts[i % 3].update(pred, gt)
    merged = SegmentationMetric(4, boundary=True)
    for part in parts:
        merged.merge(part)
    np.testing.assert_array_equal(merged.confusion, whole.confusion)
    np.testing.assert_array_equal(merged.boundary_intersection, whole.boundary_intersection)
    np.testing.assert_array_equal(merged.boundary_union, whole.boundary_union)
    assert (merged.num_images, merged.invalid_gt_pixels) == (6, whole.invalid_gt_pixels)
    assert merged.compute().summary() == whole.compute().summary()
    with pytest.raises(ValueError):
        merged.merge(SegmentationMetric(5, boundary=True))
