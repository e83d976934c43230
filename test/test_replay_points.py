"""``ovseg-replay --depth-topic --camera-info-topic``: labelled clouds in the output bag.

Real rosbag2 bags (sqlite3 and mcap, written by ``rosbags``) of test_points' scene with a known
3D answer: color, registered depth and camera_info. Some depth frames are recorded after
their color frame, one color frame has no depth partner. The clouds read back from the output
bag must be the analytic points, with the labels of the output label images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from bag_helpers import read_bag
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from test_points import D_PLUMB, H, K, W, _depth_message, _scene

from ovseg_ros.points import CameraModel, decode_depth, read_cloud, unpack_rgb
from ovseg_ros.points.objects import ObjectsOptions, find_objects
from ovseg_ros.tools.replay.bag_io import register_vision_msgs
from ovseg_ros.tools.replay.cli import main

TS = get_typestore(Stores.ROS2_JAZZY)
register_vision_msgs(TS)  # vision_msgs/msg/Detection3DArray, from its definition
Header = TS.types["std_msgs/msg/Header"]
Time = TS.types["builtin_interfaces/msg/Time"]
Image = TS.types["sensor_msgs/msg/Image"]
CameraInfo = TS.types["sensor_msgs/msg/CameraInfo"]
ROI = TS.types["sensor_msgs/msg/RegionOfInterest"]
T0 = 1_700_000_000_000_000_000
CLASSES = ["sky", "person; man", "chair"]
FRAMES = 5
UNPAIRED = 3  # this color frame's depth is stamped 0.3 s later
DEPTH_FIRST = (0, 2)  # these depth frames are recorded before their color frame, others after


def header(sec: int, nanosec: int, frame_id: str):
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def rgb_of(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8)


def camera_info(d: list[float]) -> object:
    """The depth camera's plumb_bob model with distortion ``d`` (its header set per frame)."""
    return CameraInfo(
        header=header(0, 0, "depth_optical"),
        height=H,
        width=W,
        distortion_model="plumb_bob",
        d=np.asarray(d, dtype=np.float64),
        k=np.asarray(K, dtype=np.float64),
        r=np.eye(3).reshape(-1),
        p=np.asarray([K[0], 0, K[2], 0, 0, K[4], K[5], 0, 0, 0, 1, 0], dtype=np.float64),
        binning_x=0,
        binning_y=0,
        roi=ROI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )


def color_frame(i: int) -> object:
    """Color frame ``i`` (stamp 50 + i s + 4 ms)."""
    return Image(
        header=header(50 + i, 4_000_000, "color_optical"),
        height=H,
        width=W,
        encoding="rgb8",
        is_bigendian=0,
        step=W * 3,
        data=rgb_of(i).reshape(-1),
    )


def rgbd_bag(path: Path, storage: str, d: list[float]) -> dict:
    """Color, 16UC1 depth and camera_info of the scene; returns the analytic answer."""
    scene = _scene(d)
    invalid = np.random.default_rng(9).random((H, W)) < 0.05
    step, data = _depth_message(scene["z"], "16UC1", invalid)
    z = np.round(scene["z"] * 1000) / 1000
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    info = camera_info(d)
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        color_c = writer.add_connection("/cam/color", "sensor_msgs/msg/Image", typestore=TS)
        depth_c = writer.add_connection("/cam/depth", "sensor_msgs/msg/Image", typestore=TS)
        info_c = writer.add_connection("/cam/info", "sensor_msgs/msg/CameraInfo", typestore=TS)
        for i in range(FRAMES):
            t = T0 + i * 100_000_000
            color = color_frame(i)
            depth_nanosec = 300_000_000 if i == UNPAIRED else 0
            depth = Image(
                header=header(50 + i, depth_nanosec, "depth_optical"),
                height=H,
                width=W,
                encoding="16UC1",
                is_bigendian=0,
                step=step,
                data=np.frombuffer(data, np.uint8),
            )
            info.header = header(50 + i, 0, "depth_optical")
            writer.write(info_c, t, TS.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
            depth_t = t + (-1000 if i in DEPTH_FIRST else 1000)
            writer.write(depth_c, depth_t, TS.serialize_cdr(depth, "sensor_msgs/msg/Image"))
            writer.write(color_c, t, TS.serialize_cdr(color, "sensor_msgs/msg/Image"))
    xyz = np.concatenate([scene["rays"] * z[..., None], z[..., None]], axis=-1)
    depth = decode_depth("16UC1", H, W, step, data, False)
    return {"xyz": xyz, "valid": ~invalid & (z >= 0.1) & (z <= 10.0), "depth": depth}


@pytest.fixture(scope="module")
def fast(tmp_path_factory) -> list[str]:
    path = tmp_path_factory.mktemp("params") / "segment.yaml"
    params = {"templates": "single", "short_side": 0, "points_stride": 2}
    path.write_text(yaml.safe_dump({"ovseg": {"ros__parameters": params}}))
    return ["--params", str(path), "--preset", "tiny", "--device", "cpu", "--no-progress"]


@pytest.mark.parametrize("storage, distortion", [("sqlite3", "none"), ("mcap", "plumb_bob")])
def test_replay_writes_analytic_clouds(tmp_path, storage, distortion, fast, capsys):
    d = D_PLUMB if distortion == "plumb_bob" else [0.0] * 5
    answer = rgbd_bag(tmp_path / "in", storage, d)
    out = tmp_path / "out"
    args = [str(tmp_path / "in"), str(out), "--classes", *CLASSES, *fast]
    args += ["--image-topic", "/cam/color", "--depth-topic", "/cam/depth"]
    args += ["--camera-info-topic", "cam/info", "--points-stride", "1"]  # flag wins over file
    args += ["--objects", "--objects-min-points", "20"]
    assert main(args) == 0
    summary = capsys.readouterr().out
    assert f"point clouds: {FRAMES - 1} written" in summary and "unpaired: 1" in summary
    assert f"in {FRAMES - 1} frames" in summary

    messages, connections = read_bag(out)
    assert connections["/ovseg/points"].msgtype == "sensor_msgs/msg/PointCloud2"
    labels = [
        TS.deserialize_cdr(raw, "sensor_msgs/msg/Image") for _, raw in messages["/ovseg/labels"]
    ]
    clouds = {
        t: TS.deserialize_cdr(raw, "sensor_msgs/msg/PointCloud2")
        for t, raw in messages["/ovseg/points"]
    }
    infos = [
        TS.deserialize_cdr(raw, "sensor_msgs/msg/CameraInfo")
        for _, raw in messages["/ovseg/camera_info"]
    ]
    assert len(labels) == FRAMES and len(infos) == FRAMES and len(clouds) == FRAMES - 1
    valid, xyz = answer["valid"], answer["xyz"]
    for i, (t, _) in enumerate(messages["/ovseg/labels"]):
        label_msg = labels[i]
        assert infos[i].header.stamp == label_msg.header.stamp
        assert infos[i].header.frame_id == "color_optical"
        np.testing.assert_allclose(infos[i].k, K)
        if i == UNPAIRED:
            assert t not in clouds
            continue
        cloud = clouds[t]  # written at the color frame's bag time
        assert cloud.header.frame_id == "depth_optical"
        assert (cloud.header.stamp.sec, cloud.header.stamp.nanosec) == (50 + i, 4_000_000)
        assert (cloud.height, cloud.width) == (1, valid.sum())
        got = read_cloud(cloud.fields, cloud.data, cloud.point_step, cloud.width, cloud.height)
        points = np.stack([got["x"], got["y"], got["z"]], axis=-1)
        np.testing.assert_allclose(points, xyz[valid], rtol=0, atol=1e-4)
        label_map = label_msg.data.reshape(H, label_msg.step)[:, :W]
        assert np.array_equal(got["label"], label_map[valid])
        assert np.array_equal(unpack_rgb(got["rgb"]), rgb_of(i)[valid])
    check_objects(messages, labels, answer["depth"], d)


def check_objects(messages: dict, labels: list, depth, d: list[float]) -> None:
    """<ns>/objects/markers and <ns>/objects: the objects of the written labels, confidence
    and the bag's depth; the color frame without depth clears the markers only."""
    confidences = [
        TS.deserialize_cdr(raw, "sensor_msgs/msg/Image") for _, raw in messages["/ovseg/confidence"]
    ]
    marker_arrays = [
        TS.deserialize_cdr(raw, "visualization_msgs/msg/MarkerArray")
        for _, raw in messages["/ovseg/objects/markers"]
    ]
    detection_arrays = [
        TS.deserialize_cdr(raw, "vision_msgs/msg/Detection3DArray")
        for _, raw in messages["/ovseg/objects"]
    ]
    assert len(marker_arrays) == len(detection_arrays) == FRAMES
    camera = CameraModel.from_fields(K, d, "plumb_bob", W, H)
    names = [c.split(";")[0] for c in CLASSES]
    total = 0
    for i, (label_msg, markers, detections) in enumerate(
        zip(labels, marker_arrays, detection_arrays, strict=True)
    ):
        assert markers.markers[0].action == 3  # DELETEALL
        assert detections.header.stamp == label_msg.header.stamp
        if i == UNPAIRED:
            assert len(markers.markers) == 1 and not detections.detections
            continue
        assert detections.header.frame_id == "depth_optical"
        label_map = label_msg.data.reshape(H, label_msg.step)[:, :W]
        confidence = confidences[i].data.view("<f4").reshape(H, W)
        found = find_objects(depth, camera, label_map, confidence, 3, ObjectsOptions(min_points=20))
        assert len(markers.markers) == 1 + 2 * len(found) and len(detections.detections) == len(
            found
        )
        total += len(found)
        for k, detection in enumerate(detections.detections):
            name = names[found.class_ids[k]]
            assert detection.id == f"{name}/{k}"
            (result,) = detection.results
            assert (result.hypothesis.class_id, result.hypothesis.score) == (name, found.scores[k])
            position = result.pose.pose.position
            np.testing.assert_allclose([position.x, position.y, position.z], found.centroids[k])
            center, size = detection.bbox.center.position, detection.bbox.size
            np.testing.assert_allclose([center.x, center.y, center.z], found.box_centers[k])
            np.testing.assert_allclose([size.x, size.y, size.z], found.box_sizes[k])
    assert total > 0


def test_depth_topic_errors_exit_2(tmp_path, fast, capsys):
    rgbd_bag(tmp_path / "in", "sqlite3", [0.0] * 5)
    base = [str(tmp_path / "in"), str(tmp_path / "out"), "--classes", *CLASSES, *fast]
    base += ["--image-topic", "/cam/color"]
    far = ["--depth-min", "20"]  # beyond depth_max
    cases = [
        (["--depth-topic", "/cam/depth"], "go together"),
        (["--depth-topic", "/nope", "--camera-info-topic", "/cam/info"], "not in the bag"),
        (["--depth-topic", "/cam/info", "--camera-info-topic", "/cam/info"], "not sensor_msgs"),
        (["--depth-topic", "/cam/depth", "--camera-info-topic", "/cam/info", *far], "depth_min"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        assert message in capsys.readouterr().err, extra


def compressed_rgbd_bag(path: Path, storage: str, encoding: str, codec: str) -> int:
    """Color, camera_info and the same depth twice: raw on /cam/depth and compressedDepth on
    /cam/depth/compressedDepth (for 32FC1 the raw one holds the depth the compressed one
    decodes to, NaN where nothing was measured). Returns the valid depth pixels per frame."""
    from test_compressed_depth import compressed_depth, expected_metres, scene_metres, scene_mm

    compressed_type = "sensor_msgs/msg/CompressedImage"
    CompressedImage = TS.types[compressed_type]
    if encoding == "16UC1":
        sent = scene_mm()
        raw_depth, valid = sent, (sent >= 100) & (sent <= 10000)
    else:
        sent = scene_metres()
        raw_depth = expected_metres(sent)
        with np.errstate(invalid="ignore"):
            valid = (raw_depth >= 0.1) & (raw_depth <= 10.0)
    fmt, data = compressed_depth(sent, codec)
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    info = camera_info([0.0] * 5)
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        color_c = writer.add_connection("/cam/color", "sensor_msgs/msg/Image", typestore=TS)
        depth_c = writer.add_connection("/cam/depth", "sensor_msgs/msg/Image", typestore=TS)
        packed_c = writer.add_connection(
            "/cam/depth/compressedDepth", compressed_type, typestore=TS
        )
        info_c = writer.add_connection("/cam/info", "sensor_msgs/msg/CameraInfo", typestore=TS)
        for i in range(FRAMES):
            t = T0 + i * 100_000_000
            color = color_frame(i)
            depth_header = header(50 + i, 0, "depth_optical")
            depth = Image(
                header=depth_header,
                height=H,
                width=W,
                encoding=encoding,
                is_bigendian=0,
                step=W * raw_depth.itemsize,
                data=raw_depth.astype("<" + raw_depth.dtype.str[1:]).view(np.uint8).reshape(-1),
            )
            packed = CompressedImage(
                header=depth_header, format=fmt, data=np.frombuffer(data, np.uint8)
            )
            info.header = depth_header
            writer.write(info_c, t - 2000, TS.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
            writer.write(depth_c, t - 1000, TS.serialize_cdr(depth, "sensor_msgs/msg/Image"))
            writer.write(packed_c, t - 1000, TS.serialize_cdr(packed, compressed_type))
            writer.write(color_c, t, TS.serialize_cdr(color, "sensor_msgs/msg/Image"))
    return int(valid.sum())


@pytest.mark.parametrize(
    "storage, encoding, codec", [("sqlite3", "16UC1", "png"), ("mcap", "32FC1", "rvl")]
)
def test_compressed_depth_topic_gives_the_clouds_of_raw_depth(
    tmp_path, storage, encoding, codec, fast, capsys
):
    """--depth-topic naming a CompressedImage topic decodes it as compressedDepth: the output
    clouds are byte for byte those of the same depth sent raw."""
    valid = compressed_rgbd_bag(tmp_path / "in", storage, encoding, codec)
    clouds = {}
    for topic in ("/cam/depth", "/cam/depth/compressedDepth"):
        out = tmp_path / topic.strip("/").replace("/", "_")
        args = [str(tmp_path / "in"), str(out), "--classes", *CLASSES, *fast, "--no-copy-input"]
        args += ["--image-topic", "/cam/color", "--depth-topic", topic]
        args += ["--camera-info-topic", "/cam/info", "--points-stride", "1"]
        assert main(args) == 0
        assert f"point clouds: {FRAMES} written" in capsys.readouterr().out
        messages, _ = read_bag(out)
        clouds[topic] = [raw for _, raw in messages["/ovseg/points"]]
    assert len(clouds["/cam/depth"]) == FRAMES
    assert clouds["/cam/depth/compressedDepth"] == clouds["/cam/depth"]
    first = TS.deserialize_cdr(clouds["/cam/depth"][0], "sensor_msgs/msg/PointCloud2")
    assert (first.height, first.width) == (1, valid) and valid > H * W // 2
