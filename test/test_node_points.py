"""segment_node with depth:=true over real DDS: labelled clouds of a scene with a known 3D answer.

A second node plays an RGB-D camera on a private domain: color (rgb8), registered depth
(16UC1 or 32FC1) and camera_info of test_points' scene (a tilted plane and a box seen by a
known K, with and without distortion). Every published point must be the analytic point of its
pixel within 1e-4 m, carry the label of the published label image at that pixel and the color
of the sent image, and the counts must be the valid pixels after the stride, range and class
filters. Bad inputs leave the labels flowing and the cloud skipped, counted in /diagnostics.
Tiny random models on the CPU; nothing mocked.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import SetParameters
from rclpy.context import Context
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_harness import (
    TINY,
    private_domain_id,
    ros_context,
    segment_node,
    spin_in_thread,
    spin_segment_node,
    stop_node,
    wait_until,
)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from test_compressed_depth import compressed_depth, expected_metres
from test_points import D_PLUMB, H, K, W, _depth_message, _nearest, _scene
from visualization_msgs.msg import Marker, MarkerArray

from ovseg_ros.points import CameraModel, decode_depth, read_cloud, unpack_rgb
from ovseg_ros.points.objects import ObjectsOptions, find_objects
from ovseg_ros.ros.parameters import DEFAULT_CLASSES

DOMAIN_ID = private_domain_id()
DEPTH = {"depth": True, "depth_min": 1.0, "depth_max": 3.0, "depth_sync_tolerance": 0.02}
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
DEPTH_FRAME = "depth_optical"
COLOR_FRAME = "color_optical"
NAMES = [c.split(";")[0].strip() for c in DEFAULT_CLASSES]
MARKERS = "/ovseg/objects/markers"

pytestmark = [pytest.mark.dds, pytest.mark.slow, pytest.mark.timeout(300)]


def color_pixels(height: int, width: int, seed: int) -> np.ndarray:
    """uint8 [h, w, 3]: red left, blue right, noise (two classes even for tiny models)."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.int16)
    image[:, : width // 2] = (200, 40, 40)
    image[:, width // 2 :] = (40, 40, 200)
    image += rng.integers(-20, 21, image.shape, dtype=np.int16)
    return image.clip(0, 255).astype(np.uint8)


def stamp_of(sec: int, nanosec: int = 0):
    from builtin_interfaces.msg import Time

    return Time(sec=sec, nanosec=nanosec)


def image_msg(sec: int, nanosec: int, frame_id: str, encoding: str, h: int, w: int, step, data):
    msg = Image(height=h, width=w, encoding=encoding, step=step)
    msg.header.stamp = stamp_of(sec, nanosec)
    msg.header.frame_id = frame_id
    msg.data = data
    return msg


def info_msg(k=K, d=(0.0,) * 5, width: int = W, height: int = H) -> CameraInfo:
    msg = CameraInfo(height=height, width=width, distortion_model="plumb_bob")
    msg.header.frame_id = DEPTH_FRAME
    msg.k, msg.d = [float(v) for v in k], [float(v) for v in d]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [k[0], 0.0, k[2], 0.0, 0.0, k[4], k[5], 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


class Frame:
    """One RGB-D frame of the scene: what is sent and the analytic answer."""

    def __init__(
        self, sec: int, encoding: str, d=(0.0,) * 5, color_size=(H, W), image_seed: int = -1
    ) -> None:
        """``image_seed``: the color image's seed (default ``sec``: every frame differs)."""
        self.sec, self.encoding = sec, encoding
        scene = _scene(list(d))
        rng = np.random.default_rng(sec)
        self.invalid = rng.random((H, W)) < 0.08
        step, data = _depth_message(scene["z"], encoding, self.invalid)
        self.depth = image_msg(sec, 0, DEPTH_FRAME, encoding, H, W, step, data)
        if encoding == "16UC1":
            z = np.round(scene["z"] * 1000) / 1000
        else:
            z = scene["z"].astype(np.float32).astype(np.float64)
        self.z = z
        self.xyz = np.concatenate([scene["rays"] * z[..., None], z[..., None]], axis=-1)
        self.in_range = (z >= 1.0) & (z <= 3.0)
        self.rgb = color_pixels(*color_size, seed=sec if image_seed < 0 else image_seed)
        h, w = color_size
        self.color = image_msg(sec, 5_000_000, COLOR_FRAME, "rgb8", h, w, w * 3, self.rgb.tobytes())

    def valid(self) -> np.ndarray:
        return ~self.invalid & self.in_range


class Harness:
    """The camera + observer node on its own executor thread."""

    def __init__(self, context: Context) -> None:
        self.node = rclpy.create_node("rgbd_camera", context=context)
        self.lock = threading.Lock()
        self.received: dict[str, list] = {}
        self.color_pub = self.node.create_publisher(Image, "/image", RELIABLE)
        self.depth_pub = self.node.create_publisher(Image, "/depth", RELIABLE)
        self.info_pub = self.node.create_publisher(CameraInfo, "/camera_info", RELIABLE)
        for msg_type, topic in (
            (Image, "/ovseg/labels"),
            (PointCloud2, "/ovseg/points"),
            (CameraInfo, "/ovseg/camera_info"),
            (DiagnosticArray, "/diagnostics"),
            (MarkerArray, MARKERS),
        ):
            self.received[topic] = []
            self.node.create_subscription(
                msg_type, topic, lambda m, t=topic: self._store(t, m), RELIABLE
            )
        self.set_params = self.node.create_client(SetParameters, "/ovseg/set_parameters")
        self.executor = spin_in_thread(self.node, context)

    def _store(self, topic: str, msg) -> None:
        with self.lock:
            self.received[topic].append(msg)

    def by_stamp(self, topic: str, sec: int) -> list:
        with self.lock:
            return [m for m in self.received[topic] if _header(m).stamp.sec == sec]

    def set_parameters(self, **values) -> list:
        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        )
        assert self.set_params.wait_for_service(timeout_sec=15)
        future = self.set_params.call_async(request)
        assert wait_until(future.done)
        return future.result().results

    def points_diagnostics(self) -> dict[str, str]:
        with self.lock:
            arrays = list(self.received["/diagnostics"])
        for array in reversed(arrays):
            for status in array.status:
                if status.name == "ovseg: points":
                    return {kv.key: kv.value for kv in status.values}
        return {}

    def send(self, frame: Frame, info: CameraInfo | None, depth: bool = True, tries: int = 8):
        """Publish camera_info, depth, then color until the frame's labels arrive; returns
        ``(labels msg, cloud msg or None, camera_info msg or None)`` of that stamp.

        Latest-frame input may drop a frame while the worker is busy: re-send (same stamp).
        """
        for _ in range(tries):
            if info is not None:
                self.info_pub.publish(info)
            if depth:
                self.depth_pub.publish(frame.depth)
            time.sleep(0.05)  # depth first, as a driver's aligned depth usually is
            self.color_pub.publish(frame.color)
            if wait_until(lambda: self.by_stamp("/ovseg/labels", frame.sec), 3.0):
                break
        labels = self.by_stamp("/ovseg/labels", frame.sec)
        assert labels, f"no labels for stamp {frame.sec}"
        wait_until(lambda: self.by_stamp("/ovseg/points", frame.sec), 2.0)
        wait_until(lambda: self.by_stamp("/ovseg/camera_info", frame.sec), 2.0)
        clouds = self.by_stamp("/ovseg/points", frame.sec)
        infos = self.by_stamp("/ovseg/camera_info", frame.sec)
        return labels[0], clouds[0] if clouds else None, infos[0] if infos else None

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def _header(msg):
    """A message's header; a MarkerArray's is its first marker's (every array has one)."""
    return msg.markers[0].header if isinstance(msg, MarkerArray) else msg.header


def labels_array(msg: Image) -> np.ndarray:
    assert msg.encoding == "mono8"
    rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)
    return rows[:, : msg.width]


def read_back(msg: PointCloud2) -> dict[str, np.ndarray]:
    """Field by field from the message bytes (and through sensor_msgs_py when importable)."""
    got = read_cloud(msg.fields, msg.data, msg.point_step, msg.width, msg.height, msg.is_bigendian)
    assert msg.row_step == msg.point_step * msg.width
    assert len(msg.data) == msg.row_step * msg.height
    try:
        from sensor_msgs_py import point_cloud2
    except ImportError:
        return got
    names = [f.name for f in msg.fields]
    points = point_cloud2.read_points(msg, field_names=names, skip_nans=False)
    for name in names:
        np.testing.assert_array_equal(np.asarray(points[name]).reshape(-1), got[name])
    return got


def check_cloud(
    cloud: PointCloud2,
    labels: np.ndarray,
    frame: Frame,
    stride: int = 1,
    organized: bool = False,
    classes: set[int] | None = None,
) -> None:
    """Every point analytic within 1e-4 m, label / color of its pixel, the expected count."""
    assert cloud.header.frame_id == DEPTH_FRAME
    assert (cloud.header.stamp.sec, cloud.header.stamp.nanosec) == (frame.sec, 5_000_000)
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb", "label", "confidence"]
    label_grid = _nearest(labels, H, W).astype(np.int64)  # labels at the depth pixels
    rgb_grid = _nearest(frame.rgb, H, W)
    valid = frame.valid()
    if classes is not None:
        valid &= np.isin(label_grid, sorted(classes))
    sub = (slice(None, None, stride), slice(None, None, stride))
    valid, xyz = valid[sub], frame.xyz[sub]
    label_grid, rgb_grid = label_grid[sub], rgb_grid[sub]
    got = read_back(cloud)
    if organized:
        assert (cloud.height, cloud.width) == valid.shape
        grid = {name: values.reshape(valid.shape) for name, values in got.items()}
        assert np.isnan(grid["z"][~valid]).all() and np.isnan(grid["x"][~valid]).all()
        assert np.array_equal(grid["label"], label_grid)  # every grid pixel keeps its label
        got = {name: values[valid] for name, values in grid.items()}
    else:
        assert cloud.height == 1 and cloud.width == valid.sum()
    assert valid.sum() > 0
    points = np.stack([got["x"], got["y"], got["z"]], axis=-1)
    np.testing.assert_allclose(points, xyz[valid], rtol=0, atol=1e-4)
    assert np.array_equal(got["label"], label_grid[valid])
    assert np.array_equal(unpack_rgb(got["rgb"]), rgb_grid[valid])
    assert ((got["confidence"] > 0) & (got["confidence"] <= 1)).all()


@pytest.fixture(scope="module")
def context():
    with ros_context(DOMAIN_ID) as ctx:
        yield ctx


def _start_node(
    context: Context, name: str = "ovseg", remap: tuple[str, ...] = (), **extra
) -> tuple:
    """A depth-enabled node (tiny models) spinning on 4 threads: ``(node, executor)``."""
    remaps = [a for r in remap for a in ("-r", r)]
    node = segment_node(context, {**TINY, **DEPTH, **extra}, *remaps, node_name=name)
    assert node.state_label == "active" and not node.autostart_failed
    return node, spin_segment_node(node, context)


@pytest.fixture(scope="module")
def ovseg(context):
    node, executor = _start_node(context)
    yield node
    stop_node(node, executor)


@pytest.fixture(scope="module")
def camera(context, ovseg):
    harness = Harness(context)
    assert wait_until(lambda: ovseg.count_subscribers("/ovseg/points") > 0)
    assert wait_until(lambda: harness.node.count_subscribers("/depth") > 0)
    yield harness
    harness.close()


@pytest.fixture
def restore(camera):
    yield
    camera.set_parameters(points_stride=1, points_organized=False, points_classes=[""])


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
@pytest.mark.parametrize("distortion", ["none", "plumb_bob"])
def test_cloud_is_the_analytic_scene(camera, encoding, distortion):
    d = D_PLUMB if distortion == "plumb_bob" else (0.0,) * 5
    sec = 100 + 10 * ["16UC1", "32FC1"].index(encoding) + (distortion == "plumb_bob")
    frame = Frame(sec, encoding, d)
    labels, cloud, info = camera.send(frame, info_msg(d=d))
    assert cloud is not None, "no cloud"
    check_cloud(cloud, labels_array(labels), frame)
    # ~/camera_info: the camera model for the labels, with their header.
    assert info is not None and info.header == labels.header
    assert info.header.frame_id == COLOR_FRAME
    np.testing.assert_allclose(info.k, K)
    np.testing.assert_allclose(info.d, d)
    assert (info.width, info.height) == (W, H)


def test_stride_organized_and_classes_change_at_runtime(camera, restore):
    results = camera.set_parameters(points_stride=2, points_organized=True)
    assert all(r.successful for r in results)
    frame = Frame(200, "16UC1")
    labels, cloud, _ = camera.send(frame, info_msg())
    assert cloud is not None
    labels = labels_array(labels)
    check_cloud(cloud, labels, frame, stride=2, organized=True)

    # Keep only the most frequent class of the last frame (the model is random).
    common = int(np.bincount(labels.reshape(-1)).argmax())
    results = camera.set_parameters(
        points_stride=3, points_organized=False, points_classes=[NAMES[common]]
    )
    assert all(r.successful for r in results)
    frame = Frame(201, "32FC1", image_seed=200)  # frame 200's image: its labels, that class
    labels, cloud, _ = camera.send(frame, info_msg())
    assert cloud is not None
    check_cloud(cloud, labels_array(labels), frame, stride=3, classes={common})


def test_invalid_cloud_parameters_are_refused(camera):
    (result,) = camera.set_parameters(depth_min=5.0)  # above depth_max 3.0
    assert not result.successful and "depth_min" in result.reason
    (result,) = camera.set_parameters(points_stride=0)
    assert not result.successful


def test_labels_at_another_size_scale_camera_info(camera):
    frame = Frame(300, "16UC1", color_size=(H // 2, W // 2))
    labels, cloud, info = camera.send(frame, info_msg())
    assert (labels.height, labels.width) == (H // 2, W // 2)
    assert cloud is not None
    check_cloud(cloud, labels_array(labels), frame)  # labels sampled at the nearest pixel
    assert info is not None and (info.width, info.height) == (W // 2, H // 2)
    np.testing.assert_allclose(
        info.k, [K[0] / 2, 0, (K[2] + 0.5) / 2 - 0.5, 0, K[4] / 2, (K[5] + 0.5) / 2 - 0.5, 0, 0, 1]
    )


def _no_cloud(camera: Harness, frame: Frame, info, counter: str, depth: bool = True) -> None:
    before = int(camera.points_diagnostics().get(counter, 0))
    labels, cloud, _ = camera.send(frame, info, depth=depth)
    assert labels is not None and cloud is None
    assert wait_until(lambda: int(camera.points_diagnostics().get(counter, 0)) > before, 5.0)


def test_bad_inputs_skip_the_cloud_and_are_counted(camera):
    good = info_msg()
    # Depth of another encoding.
    frame = Frame(400, "16UC1")
    frame.depth.encoding = "mono16"
    _no_cloud(camera, frame, good, "clouds_skipped_bad_depth")
    # Depth size differs from camera_info's.
    frame = Frame(401, "16UC1")
    _no_cloud(camera, frame, info_msg(width=W * 2, height=H * 2), "clouds_skipped_size_mismatch")
    # Uncalibrated camera: K all zeros.
    _no_cloud(camera, Frame(402, "16UC1"), info_msg(k=[0.0] * 9), "clouds_skipped_bad_camera_info")
    # Depth stamps far from the color stamp: unpaired.
    frame = Frame(403, "16UC1")
    frame.depth.header.stamp = stamp_of(403, 500_000_000)
    _no_cloud(camera, frame, good, "clouds_skipped_unpaired")
    # The node recovers with good input.
    labels, cloud, _ = camera.send(Frame(404, "32FC1"), good)
    assert cloud is not None
    values = camera.points_diagnostics()
    assert int(values["depth_unpaired"]) >= 1 and int(values["clouds_published"]) >= 1


def expected_objects(frame: Frame, labels: np.ndarray, **options):
    """The definition applied to what a planner has: the published labels, the sent depth
    and K (confidence is not compared here: test_objects checks the score)."""
    depth = decode_depth(frame.encoding, H, W, frame.depth.step, bytes(frame.depth.data), False)
    camera = CameraModel.from_fields(K, [0.0] * 5, "plumb_bob", W, H)
    options = ObjectsOptions(depth_min=1.0, depth_max=3.0, **options)
    ones = np.ones(labels.shape, np.float32)
    return find_objects(depth, camera, labels, ones, len(NAMES), options)


def markers_at(camera: Harness, sec: int) -> list:
    assert wait_until(lambda: camera.by_stamp(MARKERS, sec), 5.0), f"no markers for {sec}"
    return camera.by_stamp(MARKERS, sec)[0].markers


@pytest.fixture
def objects_on(camera):
    results = camera.set_parameters(objects=True, objects_min_points=20)
    assert all(r.successful for r in results), results
    assert wait_until(lambda: camera.node.count_publishers(MARKERS) > 0)
    yield
    camera.set_parameters(objects=False, objects_classes=[""], objects_min_points=50)


def test_objects_over_dds(camera, objects_on):
    """~/objects/markers read as a planner would: DELETEALL, then a box and a label per
    object of the published labels + sent depth; the class filter and bad input."""
    frame = Frame(800, "16UC1")
    labels, _, _ = camera.send(frame, info_msg())
    markers = markers_at(camera, 800)
    assert markers[0].action == Marker.DELETEALL
    assert all(m.header.frame_id == DEPTH_FRAME for m in markers)
    assert all((m.header.stamp.sec, m.header.stamp.nanosec) == (800, 5_000_000) for m in markers)
    found = expected_objects(frame, labels_array(labels), min_points=20)
    cubes, texts = markers[1::2], markers[2::2]
    assert len(cubes) == len(texts) == len(found) > 0
    assert [m.type for m in cubes] == [Marker.CUBE] * len(found)
    assert [m.type for m in texts] == [Marker.TEXT_VIEW_FACING] * len(found)
    assert [(m.ns, m.id) for m in cubes] == [(NAMES[c], i) for i, c in enumerate(found.class_ids)]
    for i, cube in enumerate(cubes):
        position = cube.pose.position
        np.testing.assert_allclose([position.x, position.y, position.z], found.box_centers[i])
        record = json.loads(cube.text)
        assert (record["pixels"], record["box_2d"]) == (found.pixels[i], found.boxes_2d[i].tolist())
        assert cube.color.a == pytest.approx(0.5)
        assert texts[i].text == f"{NAMES[found.class_ids[i]]} {record['score']:.2f}"

    # One class only, at runtime.
    common = int(np.bincount(found.class_ids).argmax())
    assert camera.set_parameters(objects_classes=[NAMES[common]])[0].successful
    labels, _, _ = camera.send(Frame(801, "16UC1", image_seed=800), info_msg())
    cubes = markers_at(camera, 801)[1::2]
    assert cubes and {m.ns for m in cubes} == {NAMES[common]}

    # No depth for this frame: the labels flow, the markers only clear RViz; counted.
    labels, _, _ = camera.send(Frame(802, "16UC1"), info_msg(), depth=False)
    assert [m.action for m in markers_at(camera, 802)] == [Marker.DELETEALL]
    assert wait_until(lambda: int(camera.points_diagnostics().get("objects_skipped_unpaired", 0)))
    assert int(camera.points_diagnostics()["objects_frames"]) >= 2
    with camera.lock:  # a period with objects gave their number and time per frame
        periods = [
            {kv.key for kv in status.values}
            for array in camera.received["/diagnostics"]
            for status in array.status
            if status.name == "ovseg: points"
        ]
    assert any({"objects_per_frame", "objects_ms_per_frame"} <= keys for keys in periods)

    for bad in ({"objects_min_points": 0}, {"objects_depth_gap": -1.0}):
        (result,) = camera.set_parameters(**bad)
        assert not result.successful


def test_objects_need_depth_at_configure(context):
    node = segment_node(context, {**TINY, "objects": True}, node_name="ovseg_objects_flat")
    try:
        assert node.autostart_failed and node.segmenter is None
        assert "objects: true needs depth: true" in node._failure
    finally:
        node.destroy_node()


def test_no_camera_info_ever_received(context, camera):
    # A second node whose camera_info topic nobody publishes.
    node, executor = _start_node(context, "ovseg_blind", ("camera_info:=/nobody/camera_info",))
    try:
        received: list = []
        sub = camera.node.create_subscription(
            PointCloud2, "/ovseg_blind/points", received.append, RELIABLE
        )
        got_labels: list = []
        labels_sub = camera.node.create_subscription(
            Image, "/ovseg_blind/labels", got_labels.append, RELIABLE
        )
        assert wait_until(lambda: node.count_subscribers("/ovseg_blind/labels") > 0)
        frame = Frame(500, "16UC1")
        for _ in range(8):
            camera.info_pub.publish(info_msg())  # on /camera_info: not what it listens to
            camera.depth_pub.publish(frame.depth)
            time.sleep(0.05)
            camera.color_pub.publish(frame.color)
            if wait_until(lambda: got_labels, 3.0):
                break
        assert got_labels
        time.sleep(0.5)
        assert not received
        depth = node.cameras[0].depth
        assert wait_until(lambda: depth.counters()["clouds_skipped_no_camera_info"] > 0)
        camera.node.destroy_subscription(sub)
        camera.node.destroy_subscription(labels_sub)
    finally:
        stop_node(node, executor)


def _record_points_and_labels(camera, node_name: str, keys: tuple[str, ...]) -> dict[str, list]:
    """Subscribe ``/<node_name>/<key>/points`` and ``.../labels`` of every camera key; the
    messages received per ``"<key>/points"`` / ``"<key>/labels"``."""
    got: dict[str, list] = {}
    for kind, msg_type in (("points", PointCloud2), ("labels", Image)):
        for key in keys:
            topic = f"{key}/{kind}"
            got[topic] = []
            camera.node.create_subscription(
                msg_type, f"/{node_name}/{topic}", got[topic].append, RELIABLE
            )
    return got


def test_every_camera_has_its_own_depth_inputs(context, camera):
    """With cameras, camera c pairs c/depth + c/camera_info with c/image into ~/c/points."""
    node, executor = _start_node(
        context, "ovseg_duo", cameras=["left", "right"], objects=True, objects_min_points=20
    )
    try:
        pubs = {
            (cam, kind): camera.node.create_publisher(msg_type, f"/{cam}/{kind}", RELIABLE)
            for cam in ("left", "right")
            for kind, msg_type in (("image", Image), ("depth", Image), ("camera_info", CameraInfo))
        }
        got = _record_points_and_labels(camera, "ovseg_duo", ("left", "right"))
        for key in ("left", "right"):  # objects per camera: ~/<camera>/objects/markers
            got[f"{key}/markers"] = []
            camera.node.create_subscription(
                MarkerArray, f"/ovseg_duo/{key}/objects/markers", got[f"{key}/markers"].append,
                RELIABLE,
            )  # fmt: skip
        assert wait_until(lambda: node.count_subscribers("/ovseg_duo/right/labels") > 0)
        assert wait_until(lambda: camera.node.count_subscribers("/left/depth") > 0)
        frame = Frame(600, "32FC1")
        for _ in range(8):
            pubs["left", "camera_info"].publish(info_msg())
            pubs["left", "depth"].publish(frame.depth)  # the right camera gets no depth
            time.sleep(0.05)
            pubs["left", "image"].publish(frame.color)
            pubs["right", "image"].publish(frame.color)
            if wait_until(lambda: got["left/points"] and got["right/labels"], 3.0):
                break
        assert got["left/points"] and got["left/labels"] and got["right/labels"]
        left_labels = labels_array(got["left/labels"][0])
        check_cloud(got["left/points"][0], left_labels, frame)
        assert wait_until(lambda: got["left/markers"] and got["right/markers"])
        found = expected_objects(frame, left_labels, min_points=20)
        assert len(got["left/markers"][0].markers) == 1 + 2 * len(found)
        assert [m.action for m in got["right/markers"][0].markers] == [Marker.DELETEALL]
        time.sleep(0.3)
        assert not got["right/points"]
        right = next(c for c in node.cameras if c.key == "right").depth
        assert right.counters()["clouds_skipped_unpaired"] > 0
        assert wait_until(
            lambda: any(
                status.name == "ovseg_duo: points right"
                for array in list(camera.received["/diagnostics"])
                for status in array.status
            )
        )
    finally:
        stop_node(node, executor)


def compressed_frame(sec: int, encoding: str, codec: str) -> tuple[Frame, CompressedImage]:
    """A :class:`Frame` whose depth goes as compressedDepth (built from the format's
    definition in test_compressed_depth); for 32FC1 the answer is the depth it decodes to."""
    frame = Frame(sec, encoding)
    scene = _scene([0.0] * 5)
    if encoding == "16UC1":
        sent = np.round(scene["z"] * 1000).astype(np.uint16)
        sent[frame.invalid] = 0
    else:
        sent = scene["z"].astype(np.float32)
        sent[frame.invalid] = np.nan
        frame.z = expected_metres(sent).astype(np.float64)  # within 0.9 mm of the scene's z
        frame.xyz = np.concatenate([scene["rays"] * frame.z[..., None], frame.z[..., None]], -1)
        frame.in_range = (frame.z >= 1.0) & (frame.z <= 3.0)  # NaN: out
    fmt, data = compressed_depth(sent, codec)
    msg = CompressedImage(format=fmt)
    msg.header = frame.depth.header
    msg.data = data
    return frame, msg


def test_compressed_depth_transport_per_camera(context, camera):
    """depth_transport compressedDepth: each camera subscribes only <resolved depth>/
    compressedDepth (following a remap of its depth topic), pairs and decodes it into the
    cloud of the raw path (16UC1 png exact, 32FC1 rvl as it decodes); a truncated one is
    skipped as bad depth while the labels keep flowing."""
    node, executor = _start_node(
        context,
        "ovseg_packed",
        ("a/depth:=/cam_a/depth",),
        cameras=["a", "b"],
        depth_transport="compressedDepth",
    )
    try:
        topics = {s.topic_name for c in node.cameras for s, _ in c.adaptive()}
        assert {"/cam_a/depth/compressedDepth", "/b/depth/compressedDepth"} <= topics
        assert not topics & {"/cam_a/depth", "/a/depth", "/b/depth"}
        depth_topics = {"a": "/cam_a/depth/compressedDepth", "b": "/b/depth/compressedDepth"}
        pubs = {
            (cam, kind): camera.node.create_publisher(msg_type, topic, RELIABLE)
            for cam in ("a", "b")
            for kind, msg_type, topic in (
                ("image", Image, f"/{cam}/image"),
                ("depth", CompressedImage, depth_topics[cam]),
                ("camera_info", CameraInfo, f"/{cam}/camera_info"),
            )
        }
        got = _record_points_and_labels(camera, "ovseg_packed", ("a", "b"))
        assert wait_until(lambda: node.count_subscribers("/ovseg_packed/b/labels") > 0)
        assert wait_until(lambda: camera.node.count_subscribers(depth_topics["b"]) > 0)
        frames = {
            "a": compressed_frame(700, "16UC1", "png"),
            "b": compressed_frame(700, "32FC1", "rvl"),
        }
        wanted = ("a/points", "b/points", "a/labels", "b/labels")
        for _ in range(8):
            for cam, (_, packed) in frames.items():
                pubs[cam, "camera_info"].publish(info_msg())
                pubs[cam, "depth"].publish(packed)
            time.sleep(0.05)
            for cam, (frame, _) in frames.items():
                pubs[cam, "image"].publish(frame.color)
            if wait_until(lambda: all(got[t] for t in wanted), 3.0):
                break
        for cam, (frame, _) in frames.items():
            assert got[f"{cam}/points"], f"no cloud for camera {cam}"
            check_cloud(got[f"{cam}/points"][0], labels_array(got[f"{cam}/labels"][0]), frame)

        b = next(c for c in node.cameras if c.key == "b").depth
        frame, packed = compressed_frame(701, "16UC1", "png")
        packed.data = bytes(packed.data)[: len(packed.data) // 2]  # a truncated PNG
        for _ in range(8):
            pubs["b", "depth"].publish(packed)
            time.sleep(0.05)
            pubs["b", "image"].publish(frame.color)
            if wait_until(lambda: b.counters()["clouds_skipped_bad_depth"] > 0, 3.0):
                break
        assert b.counters()["clouds_skipped_bad_depth"] > 0
        assert wait_until(lambda: any(m.header.stamp.sec == 701 for m in got["b/labels"]), 3.0)
    finally:
        stop_node(node, executor)
