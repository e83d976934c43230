"""ovseg_ros.points_stage without ROS: pairing, per-kind throttled warnings, counters, settings,
the republished camera_info, and ``ovseg-bench --points``.

Messages are plain objects with the sensor_msgs attribute names (what rosbags gives replay).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from test_points import H, K, W, _depth_message, _scene

from ovseg_ros.pipeline import CAMERA_INFO, POINTS
from ovseg_ros.points import PointsError
from ovseg_ros.points_stage import SKIP_KINDS, PointsSettings, PointsStage
from ovseg_ros.segmentation.vocabulary import build_vocabulary
from ovseg_ros.tools.bench import main as bench_main

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


def info_msg(k=K, width: int = W, height: int = H):
    return SimpleNamespace(
        header=header(0),
        height=height,
        width=width,
        distortion_model="plumb_bob",
        d=[0.0] * 5,
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


def run(stage: PointsStage, sec: int, nanosec: int = 0, size=(H, W)):
    rgb = np.zeros((*size, 3), np.uint8)
    return stage.outputs(header(sec, nanosec, "color"), rgb, result(*size))


def test_outputs_counters_and_per_kind_throttling():
    clock = Clock()
    stage = PointsStage(0.02, PointsSettings(depth_min=0.5), warn_interval=5.0, clock=clock)
    outputs, warnings = run(stage, 1)  # nothing received yet
    assert outputs == [] and len(warnings) == 1 and "no depth image received" in warnings[0]
    stage.push_depth(depth_msg(2))
    outputs, warnings = run(stage, 2)  # depth, no camera_info
    assert outputs == [] and "no camera_info" in warnings[0]
    stage.push_camera_info(info_msg(k=[0.0] * 9))
    outputs, warnings = run(stage, 2)
    assert [o.kind for o in outputs] == [CAMERA_INFO] and "focal lengths" in warnings[0]
    stage.push_camera_info(info_msg())
    outputs, warnings = run(stage, 2, 15_000_000)  # 15 ms off: paired
    assert [o.kind for o in outputs] == [CAMERA_INFO, POINTS] and warnings == []
    cloud = outputs[1].payload
    assert outputs[1].frame_id == "depth" and cloud.num_valid == cloud.width == H * W
    outputs, warnings = run(stage, 2, 25_000_000)  # 25 ms off: unpaired, throttled already
    assert [o.kind for o in outputs] == [CAMERA_INFO] and warnings == []
    clock.now = 5.1
    outputs, warnings = run(stage, 3)
    assert "depth_sync_tolerance 0.02 s" in warnings[0] and "-1.000 s" in warnings[0]
    stage.push_depth(depth_msg(4, encoding="mono16"))
    assert "unsupported depth encoding" in run(stage, 4)[1][0]  # its own kind: not throttled
    stage.push_depth(depth_msg(5))
    stage.push_camera_info(info_msg(width=W + 2))
    assert "depth image is" in run(stage, 5)[1][0]
    counters = stage.counters()
    assert counters == {
        "depth_received": 3,
        "camera_info_received": 3,
        "depth_paired": 5,
        "depth_unpaired": 3,
        "clouds_published": 1,
        "clouds_skipped_unpaired": 3,
        "clouds_skipped_no_camera_info": 1,
        "clouds_skipped_bad_camera_info": 1,
        "clouds_skipped_bad_depth": 1,
        "clouds_skipped_size_mismatch": 1,
    }
    assert {k[len("clouds_skipped_") :] for k in counters if "skipped" in k} == set(SKIP_KINDS)


def test_class_filter_by_name_and_settings():
    stage = PointsStage(0.02, PointsSettings(classes=("box", "unicorn")))
    stage.push_depth(depth_msg(1))
    stage.push_camera_info(info_msg())
    outputs, warnings = run(stage, 1)
    assert "unicorn" in warnings[0]
    cloud = outputs[-1].payload
    labels = cloud.points["label"]
    assert (labels == 2).all() and cloud.width == H * (W - W // 2)
    stage.set_settings(PointsSettings(stride=2, organized=True))
    cloud = run(stage, 1)[0][-1].payload
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
    outputs, _ = run(stage, 1, size=(H * 2, W * 2))
    info = next(o.payload for o in outputs if o.kind == CAMERA_INFO)
    assert (info["width"], info["height"]) == (W * 2, H * 2)
    expected = [K[0] * 2, 0, (K[2] + 0.5) * 2 - 0.5, 0, K[4] * 2, (K[5] + 0.5) * 2 - 0.5, 0, 0, 1]
    np.testing.assert_allclose(info["k"], expected)
    assert info["d"] == [0.0] * 5 and info["roi"] == (0, 0, 0, 0, False)


def test_bench_points_cli(capsys):
    assert bench_main(["--points", "--size", "64x48", "--repeat", "2", "--json", "-"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert {(r["device"], r["stride"], r["organized"]) for r in rows} >= {
        ("cpu", 1, False),
        ("cpu", 2, True),
    }
    assert all(r["ms"] > 0 for r in rows) and "points 64x48" in captured.err
    assert bench_main(["--points", "--size", "0x3"]) == 2
