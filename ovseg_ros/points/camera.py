"""The pinhole camera of a ``sensor_msgs/CameraInfo``: validation, ray table, scaling.

Pixel ``(u, v)`` has its centre at integer coordinates, as in ``image_geometry``. A ray is the
normalised, undistorted ``(x / z, y / z)`` of the point seen at a pixel, so a pixel with depth
``z`` (along the optical axis) back-projects to ``(ray_x * z, ray_y * z, z)`` in the optical frame
(x right, y down, z forward). Without distortion ``ray_x = (u - cx) / fx``,
``ray_y = (v - cy) / fy``. K and D are used (the depth image is registered to the camera's
image as published); R and P, which describe a rectified image, are not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ovseg_ros.points.cache import ByteLRU
from ovseg_ros.points.errors import PointsError

# Distortion models whose non-zero coefficients we undistort (OpenCV's coefficient order).
DISTORTION_MODELS: dict[str, tuple[int, ...]] = {
    "plumb_bob": (4, 5),  # k1 k2 p1 p2 [k3]
    "rational_polynomial": (8,),  # k1 k2 p1 p2 k3 k4 k5 k6
}
# Ray tables of the recent camera models x devices x strides (a multi-camera node needs one per
# camera): 16 of 640x480, or the current one whatever its size (see ByteLRU).
RAY_CACHE_BYTES = 32 * 2**20
MAX_DISTORTION_COEFFICIENTS = 14  # OpenCV's longest model (k1..k6, p1, p2, s1..s4, tx, ty)
# A focal length f gives a field of view 2 atan(size / 2f): [size / 1000, 1000 size] spans
# about 179.9 down to 0.06 degrees, every real lens. Outside it, x / z and y / z overflow or
# collapse to a point: a corrupt or hostile message, not a camera.
FOCAL_RANGE = (1e-3, 1e3)
_UNDISTORT_ITERATIONS = 100
_UNDISTORT_EPS = 1e-24  # squared normalised residual at which Newton has converged


@dataclass(frozen=True)
class CameraModel:
    """An intrinsic camera model, validated and hashable (the ray-table cache key).

    ``k``: row-major 3x3 intrinsics; ``d``: distortion coefficients (empty or all zero = none);
    ``width``/``height``: the image size the model describes.
    """

    k: tuple[float, ...]
    d: tuple[float, ...]
    distortion_model: str
    width: int
    height: int

    @property
    def fx(self) -> float:
        return self.k[0]

    @property
    def fy(self) -> float:
        return self.k[4]

    @property
    def cx(self) -> float:
        return self.k[2]

    @property
    def cy(self) -> float:
        return self.k[5]

    @property
    def distorted(self) -> bool:
        return any(c != 0.0 for c in self.d)

    @classmethod
    def from_fields(
        cls,
        k: Sequence[float],
        d: Sequence[float],
        distortion_model: str,
        width: int,
        height: int,
        binning_x: int = 0,
        binning_y: int = 0,
    ) -> CameraModel:
        """Validate ``sensor_msgs/CameraInfo`` fields; :class:`PointsError` says what is wrong.

        Refused: more than :data:`MAX_DISTORTION_COEFFICIENTS` D values (checked first, before
        any numeric work), K with a zero or non-finite focal length (uncalibrated drivers
        publish all zeros), a focal length outside :data:`FOCAL_RANGE` times the image size or
        a principal point more than one image size outside the image (degenerate), skew, a
        last row other than ``0 0 1``, a zero size, binning, and non-zero distortion of a
        model other than plumb_bob / rational_polynomial.
        """
        if len(d) > MAX_DISTORTION_COEFFICIENTS:
            raise PointsError(
                f"camera_info D has {len(d)} coefficients; no distortion model has more than "
                f"{MAX_DISTORTION_COEFFICIENTS}"
            )
        try:
            k_values = tuple(float(v) for v in np.asarray(k, dtype=np.float64).reshape(-1))
            d_values = tuple(float(v) for v in np.asarray(d, dtype=np.float64).reshape(-1))
        except (TypeError, ValueError) as exc:
            raise PointsError(f"camera_info K/D are not numbers: {exc}") from exc
        if len(k_values) != 9:
            raise PointsError(f"camera_info K must have 9 values, got {len(k_values)}")
        if not all(math.isfinite(v) for v in (*k_values, *d_values)):
            raise PointsError(f"camera_info K or D has a non-finite value: K={k_values}")
        fx, skew, cx, _, fy, cy = k_values[:6]
        if fx <= 0.0 or fy <= 0.0:
            raise PointsError(
                f"camera_info K has focal lengths fx={fx}, fy={fy} (must be > 0; an all-zero K"
                " means the camera is not calibrated)"
            )
        if skew != 0.0 or k_values[3] != 0.0 or k_values[6:] != (0.0, 0.0, 1.0):
            raise PointsError(f"camera_info K must be [fx 0 cx; 0 fy cy; 0 0 1], got {k_values}")
        width, height = int(width), int(height)
        if width <= 0 or height <= 0:
            raise PointsError(f"camera_info has an invalid image size {width}x{height}")
        size = max(width, height)
        low, high = FOCAL_RANGE[0] * size, FOCAL_RANGE[1] * size
        if not (low <= fx <= high and low <= fy <= high):
            raise PointsError(
                f"camera_info K has focal lengths fx={fx:g}, fy={fy:g}: outside [{low:g}, "
                f"{high:g}] pixels for a {width}x{height} image (a degenerate camera model)"
            )
        if not (-width <= cx <= 2 * width and -height <= cy <= 2 * height):
            raise PointsError(
                f"camera_info K has its principal point at ({cx:g}, {cy:g}), more than the "
                f"image size outside the {width}x{height} image (a degenerate camera model)"
            )
        if int(binning_x) > 1 or int(binning_y) > 1:
            raise PointsError(
                f"camera_info binning {binning_x}x{binning_y} is not supported (publish the"
                " camera_info of the binned image)"
            )
        model = str(distortion_model)
        if any(v != 0.0 for v in d_values):
            if model not in DISTORTION_MODELS:
                raise PointsError(
                    f"camera_info distortion model {model!r} with non-zero D is not supported;"
                    f" supported: {', '.join(DISTORTION_MODELS)}"
                )
            if len(d_values) not in DISTORTION_MODELS[model]:
                raise PointsError(
                    f"camera_info {model} needs {' or '.join(map(str, DISTORTION_MODELS[model]))}"
                    f" D coefficients, got {len(d_values)}"
                )
        return cls(k_values, d_values, model, width, height)

    @classmethod
    def from_message(cls, info: Any) -> CameraModel:
        """From any object with CameraInfo's attributes (rclpy or rosbags message)."""
        return cls.from_fields(
            info.k,
            info.d,
            info.distortion_model,
            info.width,
            info.height,
            getattr(info, "binning_x", 0),
            getattr(info, "binning_y", 0),
        )

    def check_size(self, width: int, height: int) -> None:
        """Raise :class:`PointsError` unless the depth image has this model's size."""
        if (int(width), int(height)) != (self.width, self.height):
            raise PointsError(
                f"depth image is {width}x{height} but camera_info describes"
                f" {self.width}x{self.height}"
            )


def undistort_normalized(model: CameraModel, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Undistorted normalised coordinates ``float64 [N, 2]`` of pixels ``u, v`` (``[N]``).

    OpenCV's ``undistortPoints`` (iterated to convergence) when OpenCV is installed; otherwise
    Newton's method in numpy (the tests check both against rays that project, through
    ``cv2.projectPoints``, onto the pixel centres).
    """
    pixels = np.stack([u, v], axis=-1).astype(np.float64)
    if not model.distorted:
        return (pixels - (model.cx, model.cy)) / (model.fx, model.fy)
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        camera = np.asarray(model.k, dtype=np.float64).reshape(3, 3)
        coeffs = np.asarray(model.d, dtype=np.float64)
        # OpenCV stops after 5 iterations by default: 1e-4 off (normalised; 1 mm at 10 m) in
        # the corners of a strong lens, measured. Iterate to a reprojection error < 1e-9 px.
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, _UNDISTORT_ITERATIONS, 1e-9)
        src = pixels.reshape(-1, 1, 2)
        if hasattr(cv2, "undistortPointsIter"):  # OpenCV 4
            out = cv2.undistortPointsIter(src, camera, coeffs, None, None, criteria)
        else:  # OpenCV 5 folded the criteria into undistortPoints
            out = cv2.undistortPoints(src, camera, coeffs, criteria=criteria)
        return out.reshape(-1, 2).astype(np.float64)
    return _undistort_numpy(model, pixels)


def _distort(coeffs: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The forward lens model (OpenCV's order k1 k2 p1 p2 k3 k4 k5 k6) on normalised x, y."""
    k1, k2, p1, p2, k3, k4, k5, k6 = coeffs
    r2 = x * x + y * y
    radial = (1 + ((k3 * r2 + k2) * r2 + k1) * r2) / (1 + ((k6 * r2 + k5) * r2 + k4) * r2)
    return (
        x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
        y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y,
    )


def _undistort_numpy(model: CameraModel, pixels: np.ndarray) -> np.ndarray:
    """Invert the lens model by Newton's method (numeric Jacobian), all pixels at once.

    The plain fixed point (OpenCV's) converges slowly in the corners of a strong lens; Newton
    reaches 1e-12 in a few steps from the distorted coordinates.
    """
    coeffs = np.zeros(8)
    coeffs[: len(model.d)] = model.d
    xd = (pixels[:, 0] - model.cx) / model.fx
    yd = (pixels[:, 1] - model.cy) / model.fy
    x, y = xd.copy(), yd.copy()
    h = 1e-7
    for _ in range(_UNDISTORT_ITERATIONS):
        fx, fy = _distort(coeffs, x, y)
        rx, ry = fx - xd, fy - yd
        if float(np.max(rx * rx + ry * ry)) < _UNDISTORT_EPS:
            break
        ax, ay = _distort(coeffs, x + h, y)
        bx, by = _distort(coeffs, x, y + h)
        j11, j21, j12, j22 = (ax - fx) / h, (ay - fy) / h, (bx - fx) / h, (by - fy) / h
        det = j11 * j22 - j12 * j21
        x = x - (j22 * rx - j12 * ry) / det
        y = y - (j11 * ry - j21 * rx) / det
    return np.stack([x, y], axis=-1)


_ray_cache: ByteLRU[torch.Tensor] = ByteLRU(RAY_CACHE_BYTES)


def ray_table(
    model: CameraModel, device: torch.device | str = "cpu", stride: int = 1
) -> torch.Tensor:
    """``float32 [2, H', W']`` rays (``x / z``, ``y / z``) of pixels ``(s*i, s*j)``, cached.

    ``H' = ceil(H / stride)``, ``W'`` likewise. Computed once per camera model (K, D,
    distortion model, size), device and stride, in float64 on the host, then kept contiguous on
    ``device``; the most recent tables are cached up to :data:`RAY_CACHE_BYTES`.
    """

    def make() -> torch.Tensor:
        v, u = np.mgrid[0 : model.height : stride, 0 : model.width : stride]
        rays = undistort_normalized(model, u.reshape(-1), v.reshape(-1))
        table = np.ascontiguousarray(rays.T.reshape(2, *u.shape), dtype=np.float32)
        return torch.from_numpy(table).to(device)

    return _ray_cache.get_or_make((model, str(torch.device(device)), int(stride)), make)


def scale_camera_info(
    k: Sequence[float],
    p: Sequence[float],
    width: int,
    height: int,
    target_width: int,
    target_height: int,
) -> dict[str, Any]:
    """K, P and size of a CameraInfo for the same view resized to ``target_width x height``.

    Pixel centres stay aligned (a pixel centre ``u`` maps to ``(u + 0.5) * s - 0.5``, as
    OpenCV's and our resizes sample), so ``c' = (c + 0.5) * s - 0.5`` and ``f' = f * s``;
    ``image_proc``'s resize scales ``c`` by ``s`` alone, half a pixel off at s != 1. P's
    ``Tx``/``Ty`` scale with the focal length. D and R do not change. Returns
    ``{"k": [9], "p": [12], "width", "height"}``.
    """
    width, height = int(width), int(height)
    target_width, target_height = int(target_width), int(target_height)
    if min(width, height, target_width, target_height) <= 0:
        raise PointsError(
            f"cannot scale camera_info from {width}x{height} to {target_width}x{target_height}"
        )
    sx, sy = target_width / width, target_height / height
    k_out = [float(v) for v in np.asarray(k, dtype=np.float64).reshape(-1)]
    p_out = [float(v) for v in np.asarray(p, dtype=np.float64).reshape(-1)]
    if len(k_out) != 9 or len(p_out) != 12:
        raise PointsError(f"camera_info K/P need 9/12 values, got {len(k_out)}/{len(p_out)}")
    for matrix, cols in ((k_out, 3), (p_out, 4)):
        matrix[0] *= sx  # fx
        matrix[2] = (matrix[2] + 0.5) * sx - 0.5  # cx
        matrix[cols + 1] *= sy  # fy
        matrix[cols + 2] = (matrix[cols + 2] + 0.5) * sy - 0.5  # cy
    p_out[3] *= sx  # Tx = -fx' * baseline
    p_out[7] *= sy  # Ty
    return {"k": k_out, "p": p_out, "width": target_width, "height": target_height}
