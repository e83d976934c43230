"""3D objects from a label image and a registered depth image (ROS-free).

Definition (README, "3D objects"): an object is a connected set of pixels of one class with a
valid depth in ``[depth_min, depth_max]``; two 8-neighbours are connected when they have the
same label and their depths differ by at most ``depth_gap`` metres. Sets of fewer than
``min_points`` pixels are dropped. So two chairs side by side at different depths are two
objects, and one class split by an occluder is two objects.

Per object: class id, ``score`` (mean confidence of its pixels), pixel count, 2D box in
label-image pixels, 3D centroid (per-axis median of its points) and an axis-aligned 3D box
whose extent per axis is the 5th..95th percentile of its points (robust to the flying pixels
at depth edges). Points are in the depth image's optical frame (x right, y down, z forward).

How, without a Python loop over pixels or objects (the depth grid, ``N`` pixels):

1. Horizontal runs: consecutive connected pixels of a row form a run (a cumulative sum over
   "not connected to the left neighbour" numbers them).
2. Rows are joined by the down, down-right and down-left neighbour edges, one edge per run
   pair and stretch of columns, so the graph has about as many edges as runs (a few thousand
   at 640x480), not ``4 N``; its connected components (``scipy.sparse.csgraph``) are the
   objects.
3. Counts, confidence sums and 2D boxes are sums / extremes over runs (prefix sums over the
   image). The median and percentiles come from one sort per axis over all objects' points,
   segmented by object. Their number is bounded per frame (:data:`STATISTICS_POINTS`): when
   the objects have more points, each object is sampled at evenly spaced ranks of its pixels
   in raster order (a regular grid over its surface), in proportion to its size and at least
   :data:`MIN_STATISTICS_POINTS` (all of them below that). So the cost does not grow with the
   image, and small objects stay exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ovseg_ros.points.camera import CameraModel, ray_table
from ovseg_ros.points.depth import DepthImage
from ovseg_ros.points.errors import PointsError
from ovseg_ros.points.project import check_depth_range, source_index

# Points per frame that the objects' medians and percentiles are computed from (see the module
# doc): an object gets a share of them in proportion to its size, and at least
# MIN_STATISTICS_POINTS (all of its points when it has fewer).
STATISTICS_POINTS = 8192
MIN_STATISTICS_POINTS = 32
BOX_QUANTILES = (0.05, 0.95)  # the 3D box's extent per axis
MAX_MIN_POINTS = 1 << 24  # objects_min_points bound (a 16-megapixel image is one object)
MAX_DEPTH_GAP = 100.0  # metres; larger is "any depth" and still exact


@dataclass(frozen=True)
class ObjectsOptions:
    """What makes an object: ``min_points`` pixels (>= 1), 8-neighbours ``depth_gap`` metres
    apart at most (> 0), depth in ``[depth_min, depth_max]`` metres, ``classes``: label ids
    to find objects of (None = every class)."""

    min_points: int = 50
    depth_gap: float = 0.15
    depth_min: float = 0.1
    depth_max: float = 10.0
    classes: frozenset[int] | None = None

    def __post_init__(self) -> None:
        points = self.min_points
        if isinstance(points, bool) or not isinstance(points, int):
            raise PointsError(f"objects_min_points must be an integer, got {points!r}")
        if not 1 <= points <= MAX_MIN_POINTS:
            raise PointsError(f"objects_min_points must be in 1..{MAX_MIN_POINTS}, got {points}")
        gap = float(self.depth_gap)
        if not (np.isfinite(gap) and 0.0 < gap <= MAX_DEPTH_GAP):
            raise PointsError(
                f"objects_depth_gap must be in (0, {MAX_DEPTH_GAP:g}] metres, got {self.depth_gap}"
            )
        check_depth_range(self.depth_min, self.depth_max)
        if self.classes is not None:
            object.__setattr__(self, "classes", frozenset(int(c) for c in self.classes))


@dataclass(frozen=True)
class Objects:
    """The objects of one frame, one row each, ordered by class id, then by their first pixel
    in raster order (the order is the ``id`` within the frame).

    ``class_ids``: ``int64 [K]``; ``scores``: ``float64 [K]`` mean confidence; ``pixels``:
    ``int64 [K]`` pixel count (depth grid); ``boxes_2d``: ``int64 [K, 4]``
    ``(u_min, v_min, u_max, v_max)``, inclusive, in label-image pixels; ``centroids``,
    ``box_min``, ``box_max``: ``float64 [K, 3]`` metres in the depth image's optical frame.
    """

    class_ids: np.ndarray
    scores: np.ndarray
    pixels: np.ndarray
    boxes_2d: np.ndarray
    centroids: np.ndarray
    box_min: np.ndarray
    box_max: np.ndarray

    def __len__(self) -> int:
        return int(self.class_ids.shape[0])

    @property
    def box_centers(self) -> np.ndarray:
        """``float64 [K, 3]``: the 3D boxes' centres."""
        return (self.box_min + self.box_max) / 2

    @property
    def box_sizes(self) -> np.ndarray:
        """``float64 [K, 3]``: the 3D boxes' extents (5th..95th percentile per axis)."""
        return self.box_max - self.box_min

    @classmethod
    def empty(cls) -> Objects:
        int_k, float_k3 = np.zeros(0, np.int64), np.zeros((0, 3))
        return cls(
            int_k, np.zeros(0), int_k, np.zeros((0, 4), np.int64), float_k3, float_k3, float_k3
        )


def find_objects(
    depth: DepthImage,
    model: CameraModel,
    labels: np.ndarray,
    confidence: np.ndarray,
    num_classes: int,
    options: ObjectsOptions,
) -> Objects:
    """The objects (module doc) of ``labels`` seen with ``depth``.

    ``depth``: ``[H, W]``, the size ``model`` describes. ``labels``: int ``[h, w]`` label ids,
    values ``>= num_classes`` (the unlabeled value) belong to no object; ``confidence``: float
    ``[h', w']``; both registered to the depth image (same field of view, any size, sampled at
    the nearest pixel as the cloud is). Raises :class:`PointsError` for a size mismatch with
    the camera model or arrays of the wrong shape.
    """
    model.check_size(depth.width, depth.height)
    height, width = depth.height, depth.width
    label_shape = tuple(np.shape(labels))
    labels = _on_depth_grid(np.asarray(labels), "labels", height, width)
    confidence = _on_depth_grid(np.asarray(confidence), "confidence", height, width)
    z = _candidate_depth(depth, labels, num_classes, options)
    runs = _runs(labels, z, options.depth_gap)
    if runs.count == 0:
        return Objects.empty()
    component = _components(labels, z, options.depth_gap, runs)
    return _statistics(
        runs, component, labels, confidence, z, model, options.min_points, label_shape
    )


def _on_depth_grid(array: np.ndarray, name: str, height: int, width: int) -> np.ndarray:
    """``array`` ``[h, w]`` at the depth grid ``[height, width]`` (nearest pixel)."""
    if array.ndim != 2 or min(array.shape) < 1:
        raise PointsError(f"{name} has shape {array.shape}, expected [H, W]")
    index = source_index(array.shape[0], array.shape[1], height, width, 1)
    if index is None:
        return array
    return array.reshape(-1)[index].reshape(height, width)


def _candidate_depth(
    depth: DepthImage, labels: np.ndarray, num_classes: int, options: ObjectsOptions
) -> np.ndarray:
    """``float32 [H, W]`` metres where a pixel may belong to an object, NaN elsewhere (invalid
    or out-of-range depth, unlabeled, a class not asked for): every comparison with NaN is
    false, so NaN pixels connect to nothing."""
    z = depth.metres().copy() if depth.units_per_metre == 1.0 else depth.metres()
    lo, hi = np.float32(options.depth_min), np.float32(options.depth_max)
    keep = (z >= lo) & (z <= hi)  # NaN and inf fail
    if options.classes is None:
        keep &= labels < num_classes
    else:
        wanted = np.zeros(max(int(labels.max()) + 1, num_classes), bool)
        ids = [c for c in options.classes if 0 <= c < num_classes]
        wanted[ids] = True
        keep &= wanted[labels]
    z[~keep] = np.nan
    return z


@dataclass(frozen=True)
class _Runs:
    """Horizontal runs of connected candidate pixels: ``start`` / ``end`` flat pixel indices
    (inclusive, raster order), ``ids`` ``int32 [H * W]`` (the run of each candidate pixel;
    meaningless elsewhere) and ``continues`` ``bool [H, W]``: a candidate pixel in the run of
    its left neighbour."""

    start: np.ndarray
    end: np.ndarray
    ids: np.ndarray
    continues: np.ndarray

    @property
    def count(self) -> int:
        return int(self.start.shape[0])


def _connected(
    labels_a: np.ndarray, labels_b: np.ndarray, z_a: np.ndarray, z_b: np.ndarray, gap: float
) -> np.ndarray:
    """Neighbour pairs that are connected: same label, depths at most ``gap`` apart (NaN: no)."""
    return (labels_a == labels_b) & (np.abs(z_a - z_b) <= np.float32(gap))


def _runs(labels: np.ndarray, z: np.ndarray, gap: float) -> _Runs:
    candidate = ~np.isnan(z)
    right = _connected(labels[:, :-1], labels[:, 1:], z[:, :-1], z[:, 1:], gap)
    continues = np.zeros_like(candidate)
    continues[:, 1:] = right
    starts = candidate & ~continues
    ends = candidate
    ends[:, :-1] &= ~right
    ids = np.cumsum(starts.reshape(-1), dtype=np.int32) - 1
    return _Runs(np.flatnonzero(starts), np.flatnonzero(ends), ids, continues)


# Row r to row r + 1: the column offsets (in row r, in row r + 1) of the down, down-right and
# down-left neighbours; a pair's columns are the slices [first, last) of each row.
_DOWN_EDGES = ((0, 0), (0, 1), (1, 0))


def _components(labels: np.ndarray, z: np.ndarray, gap: float, runs: _Runs) -> np.ndarray:
    """``int64 [runs]``: the connected component of each run."""
    height, width = labels.shape
    sources, targets = [], []
    for upper, lower in _DOWN_EDGES:
        columns = width - (upper != lower)
        a = (slice(None, -1), slice(upper, upper + columns))
        b = (slice(1, None), slice(lower, lower + columns))
        edge = _connected(labels[a], labels[b], z[a], z[b], gap)
        # The same run pair along consecutive columns is one edge: keep the first of a stretch
        # (both pixels continue their left neighbours' runs, which were joined already).
        repeat = edge[:, :-1] & runs.continues[a][:, 1:] & runs.continues[b][:, 1:]
        edge[:, 1:] &= ~repeat
        row, column = np.divmod(np.flatnonzero(edge), columns)
        pixel = row * width + column  # of row r; its neighbour is one row down
        sources.append(runs.ids[pixel + upper])
        targets.append(runs.ids[pixel + width + lower])
    source, target = np.concatenate(sources), np.concatenate(targets)
    graph = coo_matrix(
        (np.ones(source.shape[0], np.int8), (source, target)), shape=(runs.count, runs.count)
    )
    _, component = connected_components(graph, directed=False)
    return component.astype(np.int64)


def _statistics(
    runs: _Runs,
    component: np.ndarray,
    labels: np.ndarray,
    confidence: np.ndarray,
    z: np.ndarray,
    model: CameraModel,
    min_points: int,
    label_shape: tuple[int, int],
) -> Objects:
    length = runs.end - runs.start + 1
    count = np.bincount(component, weights=length).astype(np.int64)
    kept = np.flatnonzero(count >= min_points)
    if kept.size == 0:
        return Objects.empty()
    # All runs of a component have one label (connected pixels share it).
    class_of = np.empty(count.shape[0], np.int64)
    class_of[component] = labels.reshape(-1)[runs.start]
    first_run = np.full(count.shape[0], runs.count, np.int64)  # runs are in raster order
    np.minimum.at(first_run, component, np.arange(runs.count))
    order = kept[np.lexsort((first_run[kept], class_of[kept]))]  # the documented order
    object_of = np.full(count.shape[0], -1, np.int64)
    object_of[order] = np.arange(order.shape[0])
    run_object = object_of[component]
    in_object = run_object >= 0
    run_object = run_object[in_object]
    start, end, length = runs.start[in_object], runs.end[in_object], length[in_object]
    k = order.shape[0]
    pixels = count[order]

    # Mean confidence: each run's sum (the even sections of [start, end + 1, start, ...]).
    padded = np.append(confidence.reshape(-1), np.float32(0))  # end + 1 may be the image's size
    bounds = np.column_stack([start, end + 1]).reshape(-1)
    sums = np.add.reduceat(padded, bounds, dtype=np.float64)[::2]
    scores = np.bincount(run_object, weights=sums, minlength=k) / pixels

    boxes = _boxes_2d(start, end, run_object, k, z.shape, label_shape)
    centroids, box_min, box_max = _point_quantiles(start, length, run_object, pixels, z, model)
    return Objects(
        class_ids=class_of[order],
        scores=scores,
        pixels=pixels,
        boxes_2d=boxes,
        centroids=centroids,
        box_min=box_min,
        box_max=box_max,
    )


def _boxes_2d(
    start: np.ndarray,
    end: np.ndarray,
    run_object: np.ndarray,
    k: int,
    grid: tuple[int, int],
    label_shape: tuple[int, int],
) -> np.ndarray:
    """``int64 [K, 4]`` ``(u_min, v_min, u_max, v_max)`` of each object's runs, in the pixels
    of the label image (``label_shape``) that the depth-grid (``grid``) pixels cover."""
    width = grid[1]
    boxes = np.empty((k, 4), np.int64)
    boxes[:, :2] = np.iinfo(np.int64).max
    boxes[:, 2:] = -1
    np.minimum.at(boxes[:, 0], run_object, start % width)
    np.minimum.at(boxes[:, 1], run_object, start // width)
    np.maximum.at(boxes[:, 2], run_object, end % width)
    np.maximum.at(boxes[:, 3], run_object, end // width)
    if tuple(label_shape) == tuple(grid):
        return boxes
    size = np.array([grid[1], grid[0]] * 2)  # depth grid (W, H, W, H)
    target = np.array([label_shape[1], label_shape[0]] * 2)
    boxes[:, :2] = boxes[:, :2] * target[:2] // size[:2]  # first label pixel covered
    boxes[:, 2:] = -((-(boxes[:, 2:] + 1) * target[2:]) // size[2:]) - 1  # last one covered
    return boxes


def _point_quantiles(
    start: np.ndarray,
    length: np.ndarray,
    run_object: np.ndarray,
    pixels: np.ndarray,
    z: np.ndarray,
    model: CameraModel,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per object ``float64 [K, 3]`` median, 5th and 95th percentile of its points (x, y, z)."""
    k = pixels.shape[0]
    # The runs of each object, in raster order, laid end to end: object i owns positions
    # offsets[i] .. offsets[i] + pixels[i] - 1.
    order = np.argsort(run_object, kind="stable")
    start, length = start[order], length[order]
    run_end = np.cumsum(length)
    offsets = np.concatenate(([0], np.cumsum(pixels)[:-1]))
    share = -(-pixels * STATISTICS_POINTS // max(int(pixels.sum()), 1))  # ceil
    samples = np.minimum(pixels, np.maximum(share, MIN_STATISTICS_POINTS))
    sample_object = np.repeat(np.arange(k), samples)
    sample_offsets = np.concatenate(([0], np.cumsum(samples)[:-1]))
    rank = np.arange(sample_object.shape[0]) - sample_offsets[sample_object]
    # Evenly spaced ranks (every rank when the object is small enough).
    rank = ((2 * rank + 1) * pixels[sample_object]) // (2 * samples[sample_object])
    position = offsets[sample_object] + rank
    run = np.searchsorted(run_end, position, side="right")
    pixel = start[run] + position - (run_end[run] - length[run])

    depth = z.reshape(-1)[pixel].astype(np.float64)
    rays = ray_table(model, "cpu", 1).numpy().reshape(2, -1)
    points = np.stack([rays[0][pixel] * depth, rays[1][pixel] * depth, depth])  # [3, S]
    sorted_points = _sorted_within(points, sample_object)
    quantiles = [
        _quantile(sorted_points, sample_offsets, samples, q)
        for q in (0.5, *BOX_QUANTILES)  # three quantiles, not a loop over objects
    ]
    return quantiles[0], quantiles[1], quantiles[2]


def _sorted_within(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """``values`` ``[A, S]`` sorted along S within each run of equal ``group`` ``[S]``
    (non-decreasing): one sort of ``group * 2 + value in [0, 1]`` per row."""
    lo = values.min(axis=1, keepdims=True)
    span = np.maximum(values.max(axis=1, keepdims=True) - lo, np.finfo(np.float64).tiny)
    key = np.sort(group * 2.0 + (values - lo) / span, axis=1)
    return (key - group * 2.0) * span + lo


def _quantile(
    sorted_values: np.ndarray, offsets: np.ndarray, counts: np.ndarray, q: float
) -> np.ndarray:
    """``[K, A]`` quantile ``q`` of each group of the sorted ``[A, S]`` rows (linear
    interpolation between order statistics, numpy's default)."""
    position = q * (counts - 1)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, counts - 1)
    fraction = position - below
    low = sorted_values[:, offsets + below]
    high = sorted_values[:, offsets + above]
    return (low + fraction * (high - low)).T
