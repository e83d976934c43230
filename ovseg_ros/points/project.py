"""Back-projection: depth + labels + confidence + color -> :class:`PointCloudData`.

Every step is an array op over the (strided) depth grid, no Python loop over points: one fused
validity mask, gathers through cached nearest-pixel index maps, and one ``int32 [N, 6]`` block
whose bytes are the cloud. On an accelerator the work runs in torch on the engine's device
(:mod:`.gpu`, one download); on the CPU in numpy (:mod:`.cpu`, which says why).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ovseg_ros.points.cache import ByteLRU
from ovseg_ros.points.camera import CameraModel, ray_table
from ovseg_ros.points.cloud import POINT_FIELDS, POINT_STEP, PointCloudData
from ovseg_ros.points.cpu import numpy_block
from ovseg_ros.points.depth import DepthImage
from ovseg_ros.points.errors import PointsError
from ovseg_ros.points.gpu import torch_block


@dataclass(frozen=True)
class PointsOptions:
    """What goes into a cloud.

    ``stride``: use every stride-th pixel in u and v (>= 1). ``organized``: False = only valid
    points, height 1; True = the strided depth grid, invalid points with NaN x/y/z (label,
    color and confidence of the pixel kept). ``depth_min``/``depth_max``: metres, inclusive.
    ``classes``: label ids to keep, None = all.
    """

    stride: int = 1
    organized: bool = False
    depth_min: float = 0.1
    depth_max: float = 10.0
    classes: frozenset[int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stride, bool) or not isinstance(self.stride, int) or self.stride < 1:
            raise PointsError(f"points_stride must be an integer >= 1, got {self.stride!r}")
        check_depth_range(self.depth_min, self.depth_max)
        if self.classes is not None:
            ids = frozenset(int(c) for c in self.classes)
            if any(c < 0 or c > 65535 for c in ids):
                raise PointsError(f"point class ids must be in 0..65535, got {sorted(ids)}")
            object.__setattr__(self, "classes", ids)


def check_depth_range(depth_min: float, depth_max: float) -> None:
    """:class:`PointsError` unless ``0 <= depth_min < depth_max`` in finite metres (the
    range the cloud and the objects keep)."""
    lo, hi = float(depth_min), float(depth_max)
    if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 <= lo < hi):
        raise PointsError(
            f"need 0 <= depth_min < depth_max (finite metres), got {depth_min}, {depth_max}"
        )


def resize_indices(source: int, target: int, stride: int = 1) -> np.ndarray:
    """``int64 [ceil(target / stride)]``: the source index nearest to target pixels 0, s, 2s ...

    Pixel centres aligned (``floor((t + 0.5) * source / target)``), so registered images of any
    two resolutions map onto each other; the identity when the sizes agree.
    """
    target_idx = np.arange(0, target, stride, dtype=np.int64)
    return np.minimum(((2 * target_idx + 1) * source) // (2 * target), source - 1)


INDEX_CACHE_BYTES = 32 * 2**20  # index maps of recent size pairs (ByteLRU)
_index_cache: ByteLRU[np.ndarray | None] = ByteLRU(INDEX_CACHE_BYTES)


def source_index(
    h: int, w: int, height: int, width: int, stride: int, device: torch.device | None = None
) -> np.ndarray | torch.Tensor | None:
    """Flat index into an ``[h, w]`` image per strided pixel of an ``[height, width]`` grid.

    ``int64 [ceil(height / stride) * ceil(width / stride)]``: a read-only array, or with a
    non-CPU ``device`` a tensor there (uploaded once); cached up to :data:`INDEX_CACHE_BYTES`.
    None when it is the identity (same size, stride 1).
    """
    if (h, w) == (height, width) and stride == 1:
        return None

    def make() -> np.ndarray:
        rows = resize_indices(h, height, stride)
        cols = resize_indices(w, width, stride)
        index = (rows[:, None] * w + cols).reshape(-1)
        index.flags.writeable = False
        return index

    host = _index_cache.get_or_make((h, w, height, width, stride, "cpu"), make)
    if device is None or device.type == "cpu":
        return host
    key = (h, w, height, width, stride, str(device))
    return _index_cache.get_or_make(key, lambda: torch.from_numpy(host.copy()).to(device))


def build_cloud(
    depth: DepthImage,
    model: CameraModel,
    labels: np.ndarray | torch.Tensor,
    confidence: np.ndarray | torch.Tensor,
    rgb: np.ndarray | torch.Tensor,
    options: PointsOptions,
    device: torch.device | str = "cpu",
) -> PointCloudData:
    """Back-project ``depth`` with ``model`` and attach label, confidence and color per point.

    ``depth``: ``[H, W]``, the size ``model`` describes. ``labels``: int ``[h, w]`` (ids
    < 65536); ``confidence``: float ``[h', w']``; ``rgb``: uint8 ``[h'', w'', 3]`` — each
    registered to the depth image (same field of view), any size, sampled at the nearest pixel.
    Point ``(u, v)`` (u, v multiples of the stride) is ``(ray_x * z, ray_y * z, z)`` with the
    cached :func:`ray_table`; depth comparisons are in float32. ``device``: ``cpu`` runs in
    numpy, any other torch device in torch there. Raises :class:`PointsError` on a size
    mismatch with the camera model or arrays of the wrong shape.
    """
    model.check_size(depth.width, depth.height)
    device = torch.device(device)
    inputs = {"labels": (labels, 2), "confidence": (confidence, 2), "rgb": (rgb, 3)}
    sources = {}
    s = options.stride
    for name, (array, ndim) in inputs.items():
        shape = tuple(array.shape)
        if len(shape) != ndim or min(shape[:2]) < 1 or (ndim == 3 and shape[2] != 3):
            raise PointsError(f"{name} has shape {shape}, expected [H, W{', 3' * (ndim == 3)}]")
        flat = array.reshape(shape[0] * shape[1], *shape[2:])
        index = source_index(shape[0], shape[1], depth.height, depth.width, s, device)
        sources[name] = (flat, index)
    rays = ray_table(model, device, s)  # [2, ceil(H / s), ceil(W / s)]
    args = (options.depth_min, options.depth_max, options.classes, options.organized)
    if device.type == "cpu":
        sources = {k: (_host(v[0]), v[1]) for k, v in sources.items()}
        block, num_valid = numpy_block(
            depth.values[::s, ::s], depth.units_per_metre, rays.numpy(), sources, *args
        )
    else:
        block, num_valid = torch_block(
            depth.values[::s, ::s], depth.units_per_metre, rays, sources, *args
        )
    if not np.little_endian:
        block = block.byteswap()  # int32 words -> little-endian bytes
    grid_h, grid_w = rays.shape[1], rays.shape[2]
    height, width = (grid_h, grid_w) if options.organized else (1, num_valid)
    return PointCloudData(
        fields=POINT_FIELDS,
        height=height,
        width=width,
        point_step=POINT_STEP,
        row_step=POINT_STEP * width,
        is_dense=num_valid == height * width,
        is_bigendian=False,
        data=block.view(np.uint8).reshape(-1),
        num_valid=num_valid,
    )


def _host(array: np.ndarray | torch.Tensor) -> np.ndarray:
    return array.cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def class_ids(names: Iterable[str], vocabulary: Any) -> tuple[frozenset[int] | None, list[str]]:
    """``points_classes`` names -> (label ids or None for all, names not in the vocabulary).

    ``vocabulary`` needs ``index(name)`` (entry of a name or synonym, KeyError if absent), as
    :class:`ovseg_ros.segmentation.vocabulary.Vocabulary` has. An empty list keeps all classes;
    a list whose names are all missing keeps none (an empty set), so a planner asking for
    "door" never gets every point by mistake.
    """
    names = [str(n) for n in names]
    if not names:
        return None, []
    ids: set[int] = set()
    missing: list[str] = []
    for name in names:  # a few class names, not points
        try:
            ids.add(int(vocabulary.index(name)))
        except KeyError:
            missing.append(name)
    return frozenset(ids), missing
