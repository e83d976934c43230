"""ovseg_ros.points: labelled clouds of a synthetic scene whose 3D answer is known.

The scene is a tilted plane with a box in front of it, seen by a known K, with and without lens
distortion. Every pixel's analytic 3D point is the intersection of its viewing ray with the
scene; with distortion the ray is found by Newton's method on the distortion model and checked
with ``cv2.projectPoints`` (the point projects onto the pixel centre), independent of the
undistortion code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovseg_ros.points import (
    POINT_DTYPE,
    POINT_FIELDS,
    CameraModel,
    DepthPairer,
    PointsError,
    PointsOptions,
    build_cloud,
    class_ids,
    decode_depth,
    pack_rgb,
    ray_table,
    read_cloud,
    scale_camera_info,
    unpack_rgb,
)
from ovseg_ros.points.camera import _undistort_numpy
from ovseg_ros.points.cpu import numpy_block
from ovseg_ros.points.gpu import torch_block
from ovseg_ros.points.project import source_index

H, W = 96, 128
K = [118.0, 0.0, 63.2, 0.0, 121.5, 47.7, 0.0, 0.0, 1.0]
D_PLUMB = [-0.21, 0.07, 0.0012, -0.0008, -0.011]
D_RATIONAL = [0.35, -0.12, 0.0009, 0.0011, 0.02, 0.62, -0.08, 0.04]
PLANE_N = np.array([0.15, -0.25, 1.0])  # plane n . X = 2.5, tilted about both axes
PLANE_D = 2.5
BOX_Z = 1.2  # front face of the box, fronto-parallel
BOX_PIXELS = (slice(30, 60), slice(40, 90))  # rows, cols the box covers
LABEL_PLANE, LABEL_BOX = 3, 7
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _distort(x: np.ndarray, y: np.ndarray, d: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's forward model (plumb_bob / rational_polynomial) on normalised coordinates."""
    k1, k2, p1, p2, k3, k4, k5, k6 = (list(d) + [0.0] * 8)[:8]
    r2 = x * x + y * y
    radial = (1 + k1 * r2 + k2 * r2**2 + k3 * r2**3) / (1 + k4 * r2 + k5 * r2**2 + k6 * r2**3)
    return (
        x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
        y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y,
    )


def _rays(d: list[float]) -> np.ndarray:
    """float64 [H, W, 2] undistorted rays of the pixel centres, by Newton's method."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    xd, yd = (u - K[2]) / K[0], (v - K[5]) / K[4]
    x, y = xd.copy(), yd.copy()
    eps = 1e-7
    for _ in range(30):
        fx, fy = _distort(x, y, d)
        rx, ry = fx - xd, fy - yd
        ax, ay = _distort(x + eps, y, d)
        bx, by = _distort(x, y + eps, d)
        j11, j21, j12, j22 = (ax - fx) / eps, (ay - fy) / eps, (bx - fx) / eps, (by - fy) / eps
        det = j11 * j22 - j12 * j21
        x, y = x - (j22 * rx - j12 * ry) / det, y - (j11 * ry - j21 * rx) / det
    if any(d):
        cv2 = pytest.importorskip("cv2")
        points = np.stack([x, y, np.ones_like(x)], axis=-1).reshape(-1, 1, 3)
        camera = np.asarray(K, dtype=np.float64).reshape(3, 3)
        pixels, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), camera, np.asarray(d))
        assert np.abs(pixels.reshape(H, W, 2) - np.stack([u, v], axis=-1)).max() < 1e-8
    return np.stack([x, y], axis=-1)


def _scene(d: list[float]) -> dict[str, np.ndarray]:
    """Analytic depth [H, W], 3D points [H, W, 3] and labels [H, W] of plane + box."""
    rays = _rays(d)
    homogeneous = np.concatenate([rays, np.ones((H, W, 1))], axis=-1)
    z = PLANE_D / (homogeneous @ PLANE_N)
    labels = np.full((H, W), LABEL_PLANE, dtype=np.int64)
    z[BOX_PIXELS] = BOX_Z
    labels[BOX_PIXELS] = LABEL_BOX
    labels[::7, ::5] = 1  # a sprinkle of a third class
    return {"z": z, "rays": rays, "labels": labels}


def _depth_message(z: np.ndarray, encoding: str, invalid: np.ndarray) -> tuple[int, bytes]:
    """(step, data) with 4 bytes of row padding; invalid pixels get 0 / NaN / inf."""
    if encoding == "16UC1":
        values = np.round(z * 1000).astype("<u2")
        values[invalid] = 0
    else:
        values = z.astype("<f4")
        bad = np.flatnonzero(invalid)
        values.reshape(-1)[bad[0::3]] = 0.0
        values.reshape(-1)[bad[1::3]] = np.nan
        values.reshape(-1)[bad[2::3]] = np.inf
    rows = values.view(np.uint8).reshape(H, -1)
    padded = np.concatenate([rows, np.full((H, 4), 0xCD, np.uint8)], axis=1)
    return padded.shape[1], padded.tobytes()


def _nearest(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel-centre-aligned nearest resize, written out: src = floor((dst + 0.5) * in / out)."""
    rows = np.floor((np.arange(height) + 0.5) * image.shape[0] / height).astype(int)
    cols = np.floor((np.arange(width) + 0.5) * image.shape[1] / width).astype(int)
    return image[rows[:, None], cols[None, :]]


def _inputs(labels_full: np.ndarray, size: tuple[int, int]):
    """Label / confidence / color images at ``size`` (h, w), made from the depth-size labels."""
    rng = np.random.default_rng(size[0])
    labels = _nearest(labels_full, *size) if size != (H, W) else labels_full
    confidence = rng.random(size, dtype=np.float32)
    rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    return labels, confidence, rgb


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("distortion", ["none", "plumb_bob", "rational_polynomial"])
@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
@pytest.mark.parametrize("organized", [False, True])
def test_cloud_matches_analytic_scene(device, distortion, encoding, organized):
    d = {"none": [0.0] * 5, "plumb_bob": D_PLUMB, "rational_polynomial": D_RATIONAL}[distortion]
    scene = _scene(d)
    rng = np.random.default_rng(1)
    invalid = rng.random((H, W)) < 0.08
    # What the message carries: whole millimetres, or float32 metres (compared as float32).
    z32 = scene["z"].astype(np.float32)
    z_true = np.round(scene["z"] * 1000) / 1000 if encoding == "16UC1" else z32.astype(np.float64)
    step, data = _depth_message(scene["z"], encoding, invalid)
    depth = decode_depth(encoding, H, W, step, data)
    model_name = "plumb_bob" if distortion == "none" else distortion
    model = CameraModel.from_fields(K, d, model_name, W, H)
    # Labels larger than the depth image, confidence smaller, color at an odd ratio.
    labels, _, _ = _inputs(scene["labels"], (H * 2, W * 2))
    _, confidence, _ = _inputs(scene["labels"], (H // 2, W // 2))
    _, _, rgb = _inputs(scene["labels"], (75, 101))
    options = PointsOptions(stride=1, organized=organized, depth_min=1.0, depth_max=3.0)
    cloud = build_cloud(depth, model, labels, confidence, rgb, options, device)

    in_range = (z_true >= 1.0) & (z_true <= 3.0)
    assert not in_range.all()  # the far corner of the plane is beyond depth_max
    valid = ~invalid & in_range
    points = np.concatenate([scene["rays"] * z_true[..., None], z_true[..., None]], axis=-1)
    got = read_cloud(cloud.fields, cloud.data, cloud.point_step, cloud.width, cloud.height)
    if organized:
        assert (cloud.height, cloud.width) == (H, W) and not cloud.is_dense
        got = {name: values.reshape(H, W) for name, values in got.items()}
        assert np.isnan(got["x"][~valid]).all() and np.isnan(got["z"][~valid]).all()
        got = {name: values[valid] for name, values in got.items()}
    else:
        assert cloud.height == 1 and cloud.width == valid.sum() and cloud.is_dense
    assert cloud.num_valid == valid.sum()
    xyz = np.stack([got["x"], got["y"], got["z"]], axis=-1)
    np.testing.assert_allclose(xyz, points[valid], rtol=0, atol=1e-4)
    assert np.array_equal(got["label"], scene["labels"][valid])  # 2x up, then nearest down
    assert np.array_equal(got["label"], _nearest(labels, H, W)[valid])
    assert np.array_equal(got["confidence"], _nearest(confidence, H, W)[valid])
    assert np.array_equal(unpack_rgb(got["rgb"]), _nearest(rgb, H, W)[valid])


def test_nearest_resize_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(5)
    for shape in [(75, 101), (H * 2, W * 2), (H // 3, W // 3), (H, W)]:
        labels = rng.integers(0, 200, shape, dtype=np.uint8)
        expected = cv2.resize(labels, (W, H), interpolation=cv2.INTER_NEAREST_EXACT)
        assert np.array_equal(_nearest(labels, H, W), expected)
        index = source_index(shape[0], shape[1], H, W, 1)
        got = labels.reshape(-1) if index is None else labels.reshape(-1)[index]
        assert np.array_equal(got.reshape(H, W), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [2, 3])
@pytest.mark.parametrize("organized", [False, True])
def test_stride_range_and_class_filters(device, stride, organized):
    scene = _scene([0.0] * 5)
    invalid = np.zeros((H, W), bool)
    invalid[5:9, :] = True
    step, data = _depth_message(scene["z"], "32FC1", invalid)
    depth = decode_depth("32FC1", H, W, step, data)
    model = CameraModel.from_fields(K, [], "", W, H)
    labels, confidence, rgb = _inputs(scene["labels"], (H, W))
    options = PointsOptions(stride, organized, depth_min=1.1, depth_max=2.6, classes={LABEL_BOX, 1})
    cloud = build_cloud(depth, model, labels, confidence, rgb, options, device)

    z = scene["z"].astype(np.float32)
    valid = ~invalid & (z >= np.float32(1.1)) & (z <= np.float32(2.6))
    valid &= np.isin(scene["labels"], [LABEL_BOX, 1])
    grid = valid[::stride, ::stride]
    assert 0 < grid.sum() < grid.size
    got = read_cloud(cloud.fields, cloud.data, cloud.point_step, cloud.width, cloud.height)
    points = np.concatenate([scene["rays"] * scene["z"][..., None], scene["z"][..., None]], -1)
    points = points[::stride, ::stride]
    if organized:
        assert (cloud.height, cloud.width) == grid.shape
        z_got = got["z"].reshape(grid.shape)
        assert np.array_equal(~np.isnan(z_got), grid)
        np.testing.assert_allclose(
            got["x"].reshape(grid.shape)[grid], points[grid][:, 0], atol=1e-4
        )
        assert np.array_equal(got["label"].reshape(grid.shape), labels[::stride, ::stride])
    else:
        assert cloud.width == grid.sum() == cloud.num_valid
        xyz = np.stack([got["x"], got["y"], got["z"]], axis=-1)
        np.testing.assert_allclose(xyz, points[grid], atol=1e-4)
        assert set(np.unique(got["label"])) == {LABEL_BOX, 1}


def test_empty_cloud_and_no_class_matches():
    model = CameraModel.from_fields(K, [], "", W, H)
    zeros = decode_depth("16UC1", H, W, W * 2, bytes(H * W * 2))
    labels = np.zeros((H, W), np.uint8)
    conf, rgb = np.ones((H, W), np.float32), np.zeros((H, W, 3), np.uint8)
    cloud = build_cloud(zeros, model, labels, conf, rgb, PointsOptions())
    assert (cloud.height, cloud.width, cloud.num_valid, cloud.data.size) == (1, 0, 0, 0)
    ones = decode_depth("32FC1", H, W, W * 4, np.ones((H, W), "<f4").tobytes())
    cloud = build_cloud(ones, model, labels, conf, rgb, PointsOptions(classes=frozenset()))
    assert cloud.width == 0


def test_torch_builder_equals_numpy_builder():
    """The accelerator path (torch, here on CPU tensors) writes the same bytes as numpy."""
    scene = _scene(D_PLUMB)
    invalid = np.random.default_rng(2).random((H, W)) < 0.1
    step, data = _depth_message(scene["z"], "16UC1", invalid)
    depth = decode_depth("16UC1", H, W, step, data)
    model = CameraModel.from_fields(K, D_PLUMB, "plumb_bob", W, H)
    labels, confidence, rgb = _inputs(scene["labels"], (H * 2, W * 2))
    for stride, organized, classes in [
        (1, False, None),
        (2, True, frozenset({3})),
        (3, False, {7}),
    ]:
        sources = {
            "labels": (labels.reshape(-1), source_index(H * 2, W * 2, H, W, stride)),
            "confidence": (confidence.reshape(-1), source_index(H * 2, W * 2, H, W, stride)),
            "rgb": (rgb.reshape(-1, 3), source_index(H * 2, W * 2, H, W, stride)),
        }
        rays = ray_table(model, "cpu", stride)
        args = (0.1, 10.0, classes, organized)
        values = depth.values[::stride, ::stride]
        ref, n_ref = numpy_block(values, depth.units_per_metre, rays.numpy(), sources, *args)
        got, n_got = torch_block(values, depth.units_per_metre, rays, sources, *args)
        assert n_ref == n_got
        assert np.array_equal(ref.view(np.uint8), got.view(np.uint8))


def test_ray_table_cached_and_fallback_undistortion():
    model = CameraModel.from_fields(K, D_RATIONAL, "rational_polynomial", W, H)
    table = ray_table(model, "cpu")
    assert ray_table(model, "cpu") is table  # computed once per camera model
    other = CameraModel.from_fields(K, D_PLUMB, "plumb_bob", W, H)
    assert ray_table(other, "cpu") is not table
    expected = _rays(D_RATIONAL)
    np.testing.assert_allclose(table.numpy().transpose(1, 2, 0), expected, atol=1e-6)
    # The numpy Newton solver used where OpenCV is absent agrees with the analytic rays too.
    v, u = np.mgrid[0:H, 0:W]
    pixels = np.stack([u.reshape(-1), v.reshape(-1)], axis=-1).astype(np.float64)
    fallback = _undistort_numpy(model, pixels).reshape(H, W, 2)
    np.testing.assert_allclose(fallback, expected, atol=1e-9)
    plain = CameraModel.from_fields(K, [0.0] * 5, "plumb_bob", W, H)
    rays = ray_table(plain, "cpu", 2).numpy()
    assert rays.shape == (2, H // 2, W // 2)
    assert rays[0, 0, 3] == np.float32((6 - K[2]) / K[0])  # pixel centres at integer u, v
    assert rays[1, 4, 0] == np.float32((8 - K[5]) / K[4])


def test_depth_decoding():
    mm = np.array([[0, 1000, 65535], [250, 1, 2]], dtype=np.uint16)
    for order, flag in (("<", 0), (">", 1)):
        rows = mm.astype(order + "u2").view(np.uint8)  # 6 bytes per row, step 8: padded
        data = np.concatenate([rows, np.full((2, 2), 0xEE, np.uint8)], axis=1).tobytes()
        depth = decode_depth("16UC1", 2, 3, 8, data, flag)
        assert np.array_equal(depth.values, mm) and depth.units_per_metre == 1000
        assert np.array_equal(depth.metres(), (mm / 1000).astype(np.float32))
    metres = np.array([[0.5, np.nan], [np.inf, 2.25]], dtype="<f4")
    depth = decode_depth("32FC1", 2, 2, 8, bytearray(metres.tobytes()))
    assert np.array_equal(depth.metres(), metres, equal_nan=True) and depth.units_per_metre == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (("mono8", 2, 2, 2, bytes(4)), "unsupported depth encoding 'mono8'"),
        (("16SC1", 2, 2, 4, bytes(8)), "unsupported depth encoding '16SC1'"),
        (("16UC1", 2, 2, 3, bytes(8)), "depth step 3 is invalid"),
        (("32FC1", 2, 2, 6, bytes(12)), "depth step 6 is invalid"),
        (("16UC1", 2, 2, 4, bytes(7)), "depth data has 7 bytes, expected"),
        (("16UC1", 0, 2, 4, b""), "invalid size"),
        (("32FC1", 2, 2, 8, ["a", "b"]), "depth image data is not a byte buffer"),
    ],
)
def test_depth_errors(fields, message):
    with pytest.raises(PointsError, match=message.replace("(", r"\(")):
        decode_depth(*fields)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([0.0] * 9, [], "plumb_bob", W, H), "focal lengths fx=0.0, fy=0.0"),
        (([118, 0, 63, 0, -5, 47, 0, 0, 1], [], "", W, H), "fy=-5.0"),
        (([118, 0.5, 63, 0, 120, 47, 0, 0, 1], [], "", W, H), "must be \\[fx 0 cx"),
        (([118, 0, 63, 0, 120, 47, 0, 0], [], "", W, H), "K must have 9 values, got 8"),
        (([118, 0, np.nan, 0, 120, 47, 0, 0, 1], [], "", W, H), "non-finite"),
        ((K, [0.1, 0, 0, 0], "equidistant", W, H), "'equidistant' with non-zero D"),
        ((K, [0.1, 0, 0, 0, 0, 0], "plumb_bob", W, H), "plumb_bob needs 4 or 5 D coefficients"),
        ((K, [0.1] * 5, "rational_polynomial", W, H), "needs 8 D coefficients, got 5"),
        ((K, [], "", 0, 0), "invalid image size 0x0"),
    ],
)
def test_camera_model_errors(args, message):
    with pytest.raises(PointsError, match=message):
        CameraModel.from_fields(*args)


def test_camera_model_accepts_zero_distortion_of_any_model_and_binning_is_refused():
    model = CameraModel.from_fields(K, [0.0] * 4, "equidistant", W, H)
    assert not model.distorted
    with pytest.raises(PointsError, match="binning 2x2"):
        CameraModel.from_fields(K, [], "", W, H, 2, 2)


def test_build_cloud_errors():
    model = CameraModel.from_fields(K, [], "", W, H)
    depth = decode_depth("16UC1", H, W // 2, W, bytes(H * W))
    labels, conf, rgb = np.zeros((H, W), int), np.zeros((H, W), np.float32), np.zeros((H, W, 3))
    with pytest.raises(PointsError, match=f"depth image is {W // 2}x{H} but camera_info"):
        build_cloud(depth, model, labels, conf, rgb, PointsOptions())
    depth = decode_depth("16UC1", H, W, W * 2, bytes(H * W * 2))
    with pytest.raises(PointsError, match="rgb has shape"):
        build_cloud(depth, model, labels, conf, rgb[..., :2], PointsOptions())
    with pytest.raises(PointsError, match="labels has shape"):
        build_cloud(depth, model, labels[None], conf, rgb, PointsOptions())
    for kwargs, message in [
        ({"stride": 0}, "points_stride must be an integer >= 1"),
        ({"stride": 1.5}, "points_stride"),
        ({"depth_min": 2.0, "depth_max": 1.0}, "depth_min < depth_max"),
        ({"depth_max": float("inf")}, "finite"),
        ({"classes": {70000}}, "0..65535"),
    ]:
        with pytest.raises(PointsError, match=message):
            PointsOptions(**kwargs)


def test_reader_round_trip_and_layout():
    assert POINT_DTYPE.itemsize == 24
    assert [f[1] for f in POINT_FIELDS] == [0, 4, 8, 12, 16, 20]
    rng = np.random.default_rng(4)
    points = np.zeros(50, POINT_DTYPE)
    for name in ("x", "y", "z", "confidence"):
        points[name] = rng.normal(size=50)
    points["label"] = rng.integers(0, 65536, 50)
    colors = rng.integers(0, 256, (50, 3), dtype=np.uint8)
    points["rgb"] = pack_rgb(colors)
    assert np.array_equal(unpack_rgb(points["rgb"]), colors)
    assert pack_rgb(np.array([1, 2, 3], np.uint8)).view("<u4") == 0x010203  # 0x00RRGGBB
    got = read_cloud(POINT_FIELDS, points.tobytes(), 24, 50)
    for name in POINT_DTYPE.names:
        assert np.array_equal(got[name], points[name])
    swapped = points.astype(POINT_DTYPE.newbyteorder(">"))  # a big-endian publisher
    got = read_cloud(POINT_FIELDS, swapped.tobytes(), 24, 10, 5, is_bigendian=True)
    assert np.array_equal(got["label"], points["label"])
    with pytest.raises(PointsError, match="cloud data has"):
        read_cloud(POINT_FIELDS, points.tobytes()[:-1], 24, 50)


def test_pairing_nearest_within_tolerance():
    pairer = DepthPairer(tolerance=0.02, capacity=3)
    ms = 1_000_000
    base = 1_700_000_000 * 10**9
    assert pairer.pair(base) is None  # no depth yet
    for t in (0, 33, 66):
        pairer.push(base + t * ms, f"depth{t}")
    assert pairer.pair(base + 35 * ms) == "depth33"
    assert pairer.pair(base + 50 * ms) == "depth66"  # 16 ms beats 17 ms
    assert pairer.pair(base + 86 * ms) == "depth66"  # exactly at the tolerance
    assert pairer.pair(base + 87 * ms) is None
    assert pairer.pair(base + 10 * ms) == "depth0"
    pairer.push(base + 99 * ms, "depth99")  # pushes depth0 out (capacity 3): no backlog
    assert pairer.pair(base + 10 * ms) is None  # 23 ms from depth33
    stats = pairer.stats_dict()
    assert stats == {
        "depth_received": 4,
        "paired": 4,
        "unpaired": 3,
        "no_depth": 1,
    }
    with pytest.raises(PointsError, match="depth_sync_tolerance"):
        DepthPairer(tolerance=-1.0)


def test_scale_camera_info_keeps_pixel_centres():
    p = [K[0], 0, K[2], -0.05 * K[0], 0, K[4], K[5], 0, 0, 0, 1, 0]
    out = scale_camera_info(K, p, W, H, W // 2, H // 2)
    assert (out["width"], out["height"]) == (W // 2, H // 2)
    point = np.array([0.3, -0.2, 1.7])
    u = K[0] * point[0] / point[2] + K[2]
    v = K[4] * point[1] / point[2] + K[5]
    u2 = out["k"][0] * point[0] / point[2] + out["k"][2]
    v2 = out["k"][4] * point[1] / point[2] + out["k"][5]
    assert u2 == pytest.approx((u + 0.5) * 0.5 - 0.5) and v2 == pytest.approx((v + 0.5) * 0.5 - 0.5)
    assert out["p"][3] == pytest.approx(-0.05 * K[0] * 0.5)
    assert out["p"][0] == out["k"][0] and out["p"][6] == out["k"][5]
    with pytest.raises(PointsError):
        scale_camera_info(K, p, W, H, 0, H)


def test_class_ids_from_vocabulary():
    from ovseg_ros.segmentation.vocabulary import build_vocabulary

    vocab = build_vocabulary(["background; wall", "door", "chair; stool"], 1)
    assert class_ids([], vocab) == (None, [])
    assert class_ids(["Stool", "door", "window"], vocab) == (frozenset({1, 2}), ["window"])
    assert class_ids(["window"], vocab) == (frozenset(), ["window"])


def test_pointcloud2_message_read_back():
    """The node's adapter: rclpy message (both builders) read back field by field."""
    pytest.importorskip("sensor_msgs.msg")
    from std_msgs.msg import Header

    from ovseg_ros.ros.output_messages import cloud_message

    scene = _scene([0.0] * 5)
    step, data = _depth_message(scene["z"], "32FC1", np.zeros((H, W), bool))
    depth = decode_depth("32FC1", H, W, step, data)
    model = CameraModel.from_fields(K, [], "", W, H)
    labels, confidence, rgb = _inputs(scene["labels"], (H, W))
    try:
        from sensor_msgs_py import point_cloud2
    except ImportError:
        point_cloud2 = None
    for organized in (False, True):
        cloud = build_cloud(depth, model, labels, confidence, rgb, PointsOptions(2, organized))
        expected = cloud.points
        for use_py in (False, True):
            msg = cloud_message(cloud, Header(frame_id="camera_depth_optical_frame"), use_py)
            assert (msg.height, msg.width, msg.point_step) == (cloud.height, cloud.width, 24)
            assert msg.row_step == 24 * msg.width and msg.header.frame_id.endswith("optical_frame")
            got = read_cloud(msg.fields, msg.data, msg.point_step, msg.width, msg.height)
            for name in POINT_DTYPE.names:
                assert np.array_equal(got[name], expected[name], equal_nan=True)
            if point_cloud2 is not None:
                read = point_cloud2.read_points(msg)
                for name in POINT_DTYPE.names:
                    assert np.array_equal(read[name], expected[name], equal_nan=True)


def test_size_tables_are_bounded_in_bytes_not_entries():
    """A camera changing size every frame must not pile up ray tables / index maps: the
    caches drop their oldest entries past a byte bound, keep the newest whatever its size,
    and serve a hit without rebuilding it."""
    from ovseg_ros.points.cache import ByteLRU

    cache: ByteLRU[np.ndarray] = ByteLRU(max_bytes=1000)
    made = []

    def make(n: int):
        return lambda: made.append(n) or np.zeros(n, np.uint8)

    first = cache.get_or_make("a", make(400))
    assert cache.get_or_make("a", make(400)) is first and made == [400]  # a hit: not rebuilt
    cache.get_or_make("b", make(400))
    cache.get_or_make("c", make(400))  # 1200 bytes: the oldest ("a") goes
    assert (len(cache), cache.bytes) == (2, 800)
    cache.get_or_make("huge", make(5000))  # larger than the bound: kept alone
    assert (len(cache), cache.bytes) == (1, 5000)
    cache.get_or_make("d", make(10))
    assert (len(cache), cache.bytes) == (1, 10)

    model = CameraModel.from_fields(K, [0.0] * 5, "plumb_bob", W, H)
    from ovseg_ros.points import camera as camera_module

    for width in range(W, W + 40):  # a size storm
        ray_table(CameraModel.from_fields(K, [0.0] * 5, "plumb_bob", width, H), "cpu")
    assert camera_module._ray_cache.bytes <= camera_module.RAY_CACHE_BYTES
    assert ray_table(model, "cpu").shape == (2, H, W)


def test_cloud_layout_matches_pcl_point_xyzrgbl():
    """PCL matches field names and datatypes exactly: x y z rgb as FLOAT32 and label as
    UINT32 (pcl::PointXYZRGBL), so PCL consumers keep our labels; confidence follows."""
    float32, uint32 = 7, 6  # sensor_msgs/PointField constants
    fields = {name: (offset, datatype, count) for name, offset, datatype, count in POINT_FIELDS}
    pcl = {"x": float32, "y": float32, "z": float32, "rgb": float32, "label": uint32}
    assert {name: fields[name][1] for name in pcl} == pcl
    assert all(fields[name][2] == 1 for name in fields)
    assert [fields[n][0] for n in ("x", "y", "z", "rgb", "label", "confidence")] == [
        0, 4, 8, 12, 16, 20
    ]  # fmt: skip
    # The unlabeled values (255, 65535) survive the UINT32 field, read back field by field.
    depth = decode_depth("16UC1", 2, 2, 4, np.full((2, 2), 1000, "<u2").tobytes())
    model = CameraModel.from_fields([2.0, 0, 0.5, 0, 2.0, 0.5, 0, 0, 1], [], "plumb_bob", 2, 2)
    labels = np.array([[0, 255], [65535, 7]], np.int32)
    cloud = build_cloud(
        depth, model, labels, np.ones((2, 2), np.float32), np.zeros((2, 2, 3), np.uint8),
        PointsOptions(depth_min=0.1, depth_max=5.0),
    )  # fmt: skip
    read = read_cloud(cloud.fields, cloud.data, cloud.point_step, cloud.width, cloud.height)
    assert read["label"].dtype == np.uint32 and sorted(read["label"]) == [0, 7, 255, 65535]
