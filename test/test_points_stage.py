"""ovseg_ros.points_stage without ROS: pairing, per-kind throttled warnings, counters, settings,
the republished camera_info (``test_bench.py``: ``ovseg-bench points``).

Messages are plain objects with the sensor_msgs attribute names (what rosbags gives replay).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from test_points import H, K, W, _depth_message, _scene

from ovseg_ros.points import PointsError
from ovseg_ros.points_stage import SKIP_KINDS, PointsSettings, PointsStage
from ovseg_ros.segmentation.vocabulary import build_vocabulary

VOCABULARY = build_vocabulary(["floor", "person; man", "box"], version=1)


def stamp(sec: int, nanosec: int = 0):
    return SimpleNamespace(sec=sec, nanosec=nanosec)


def header(sec: int, nanosec: int = 0, frame_id: str = "depth"):
    return SimpleNamespace(stamp=stamp(sec, nanosec), frame_id=frame_id)


def depth_msg(sec: int, nanosec: int = 0, encoding: str = "32FC1"):
    z = _scene([0.0] * 5)["z"]
    step, data = _depth_message(z, encoding, np.zeros((H, W), bool))
    return SimpleNamespace(
        header=header(sec, nanosec),
        encoding=encoding,
        height=H,
        width=W,
        step=step,
        data=data,
        is_bigendian=0,
    )


def info_msg(k=K, width: int = W, height: int = H, d=(0.0,) * 5):
    return SimpleNamespace(
        header=header(0),
        height=height,
        width=width,
        distortion_model="plumb_bob",
        d=list(d),
        k=list(k),
        r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
        p=[K[0], 0, K[2], 0, 0, K[4], K[5], 0, 0, 0, 1, 0],
        binning_x=0,
        binning_y=0,
        roi=SimpleNamespace(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )


def result(height: int = H, width: int = W):
    labels = np.zeros((height, width), np.int32)
    labels[:, width // 2 :] = 2  # right half: box
    return SimpleNamespace(
        labels=labels,
        confidence=np.full((height, width), 0.75, np.float32),
        vocabulary=VOCABULARY,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(stage: PointsStage, sec: int, nanosec: int = 0, size=(H, W), cloud: bool = True):
    """``(cloud or None, camera_info or None, warnings)`` of a color frame at ``sec.nanosec``
    (the camera model at the labels' size, as the frame pipeline publishes it)."""
    rgb = np.zeros((*size, 3), np.uint8)
    out = stage.outputs(header(sec, nanosec, "color"), rgb, result(*size), cloud=cloud)
    return out.cloud, stage.camera_info.scaled(size[1], size[0]), out.warnings


def test_outputs_counters_and_per_kind_throttling():
    clock = Clock()
    stage = PointsStage(0.02, PointsSettings(depth_min=0.5), warn_interval=5.0, clock=clock)
    cloud, info, warnings = run(stage, 1)  # nothing received yet
    assert (cloud, info) == (None, None) and len(warnings) == 1
    assert "no depth image received" in warnings[0]
    stage.push_depth(depth_msg(2))
    cloud, info, warnings = run(stage, 2)  # depth, no camera_info
    assert (cloud, info) == (None, None) and "no camera_info" in warnings[0]
    stage.push_camera_info(info_msg(k=[0.0] * 9))
    cloud, info, warnings = run(stage, 2)
    assert cloud is None and info is None and "focal lengths" in warnings[0]  # never republished
    stage.push_camera_info(info_msg())
    cloud, info, warnings = run(stage, 2, 15_000_000)  # 15 ms off: paired
    assert cloud is not None and info is not None and warnings == []
    assert cloud.frame_id == "depth" and cloud.cloud.num_valid == cloud.cloud.width == H * W
    cloud, info, warnings = run(stage, 2, 25_000_000)  # 25 ms off: unpaired, throttled already
    assert cloud is None and info is not None and warnings == []
    clock.now = 5.1
    _, _, warnings = run(stage, 3)
    assert "depth_sync_tolerance 0.02 s" in warnings[0] and "-1.000 s" in warnings[0]
    stage.push_depth(depth_msg(4, encoding="mono16"))
    assert "unsupported depth encoding" in run(stage, 4)[2][0]  # its own kind: not throttled
    stage.push_depth(depth_msg(5))
    stage.push_camera_info(info_msg(width=W + 2))
    assert "depth image is" in run(stage, 5)[2][0]
    cloud, info, warnings = run(stage, 5, cloud=False)  # nobody listens: nothing built
    assert cloud is None and info is not None and warnings == []
    counters = stage.counters()
    assert counters == {
        "depth_received": 3,
        "depth_refused_too_large": 0,
        "camera_info_received": 3,
        "depth_paired": 5,
        "depth_unpaired": 3,
        "clouds_published": 1,
        "clouds_skipped_unpaired": 3,
        "clouds_skipped_no_camera_info": 1,
        "clouds_skipped_bad_camera_info": 1,
        "clouds_skipped_bad_depth": 1,
        "clouds_skipped_size_mismatch": 1,
        # nobody asked for objects
        "objects_frames": 0,
        "objects_found": 0,
        "objects_time_us": 0,
        **{f"objects_skipped_{kind}": 0 for kind in SKIP_KINDS},
    }
    skipped = {k[len("clouds_skipped_") :] for k in counters if k.startswith("clouds_skipped_")}
    assert skipped == set(SKIP_KINDS)


def test_class_filter_by_name_and_settings():
    stage = PointsStage(0.02, PointsSettings(classes=("box", "unicorn")))
    stage.push_depth(depth_msg(1))
    stage.push_camera_info(info_msg())
    cloud, _, warnings = run(stage, 1)
    assert "unicorn" in warnings[0]
    cloud = cloud.cloud
    labels = cloud.points["label"]
    assert (labels == 2).all() and cloud.width == H * (W - W // 2)
    stage.set_settings(PointsSettings(stride=2, organized=True))
    cloud = run(stage, 1)[0].cloud
    assert (cloud.height, cloud.width) == ((H + 1) // 2, (W + 1) // 2)
    with pytest.raises(PointsError):
        PointsSettings.from_values({"depth_min": 3.0, "depth_max": 2.0})
    with pytest.raises(PointsError):
        PointsSettings.from_values({"points_stride": 0})
    with pytest.raises(PointsError):
        PointsSettings.from_values({"points_classes": "box"})
    assert PointsSettings.from_values({"points_stride": 2.0, "points_classes": [" a ", ""]}) == (
        PointsSettings(stride=2, classes=("a",))
    )


def test_camera_info_scaled_to_the_labels():
    stage = PointsStage()
    stage.push_camera_info(info_msg())
    stage.push_depth(depth_msg(1))
    _, info, _ = run(stage, 1, size=(H * 2, W * 2))
    assert (info.width, info.height) == (W * 2, H * 2)
    expected = [K[0] * 2, 0, (K[2] + 0.5) * 2 - 0.5, 0, K[4] * 2, (K[5] + 0.5) * 2 - 0.5, 0, 0, 1]
    np.testing.assert_allclose(info.k, expected)
    assert info.d == (0.0,) * 5 and info.roi == (0, 0, 0, 0, False)
    _, same, _ = run(stage, 1)  # the labels' own size: the input's model as it is
    assert (same.width, same.height, same.k) == (W, H, tuple(float(v) for v in K))


def test_hostile_inputs_are_refused_before_any_work():
    """A depth image larger than max_pixels (by its declared size), a distortion vector of a
    million entries and degenerate intrinsics: refused and counted; a repeated camera_info is
    validated once."""
    stage = PointsStage(0.02, max_pixels=H * W - 1)
    huge = depth_msg(1)
    stage.push_depth(huge)
    assert stage.counters()["depth_refused_too_large"] == 1
    assert stage.counters()["depth_received"] == 0  # never kept for pairing

    stage = PointsStage(0.02)
    stage.push_depth(depth_msg(1))
    flood = info_msg(d=np.zeros(1_000_000))  # passes every check but its length
    stage.push_camera_info(flood)
    cloud, info, warnings = run(stage, 1)
    assert cloud is None and info is None and "1000000 coefficients" in warnings[0]
    assert stage.camera_info._cache == {}  # not even keyed: refused by its length

    for k, what in (
        ([1e-300, 0, K[2], 0, 1e-300, K[5], 0, 0, 1], "focal lengths"),
        ([K[0], 0, 1e308, 0, K[4], K[5], 0, 0, 1], "principal point"),
        ([K[0], 0, -3 * W, 0, K[4], K[5], 0, 0, 1], "principal point"),
    ):
        stage = PointsStage(0.02)
        stage.push_depth(depth_msg(1))
        stage.push_camera_info(info_msg(k=k))
        cloud, info, warnings = run(stage, 1)
        assert cloud is None and info is None and what in warnings[0], (k, warnings)
        assert "degenerate" in warnings[0]

    stage = PointsStage(0.02)
    stage.push_camera_info(info_msg())
    first = stage.camera_info.latest()
    stage.push_camera_info(info_msg())  # the same content in a new message: not revalidated
    assert stage.camera_info.latest() is first and len(stage.camera_info._cache) == 1
    stage.push_camera_info(info_msg(width=W + 2))  # new content: validated, replaces it
    assert stage.camera_info.latest() is not first and len(stage.camera_info._cache) == 1
    assert stage.camera_info.received == 3
