"""``ovseg-replay`` with temporal fusion: a bag labelled in fleet windows (each warmed up on the
frames before it) equals a single run, within the convergence tolerance.

A real rosbag2 bag (mcap) of a slowly panning camera, tiny real models on the CPU, no Ray (the
windows are labelled here and written back in order, as the fleet's driver does).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from bag_helpers import TS, Header, Image, Time, decode, read_bag

from ovseg_ros.bench.scene import synthetic_image
from ovseg_ros.temporal import TemporalSettings
from ovseg_ros.tools.replay.core import run_replay
from ovseg_ros.tools.replay.plan import ReplayOptions
from ovseg_ros.tools.replay.ranges import OrderedBagWriter, label_range, split_ranges
from ovseg_ros.tools.replay.warmup import warmup_count

pytest.importorskip("cv2")
rosbags = pytest.importorskip("rosbags")
from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402 - after the skip

FRAMES, H, W = 16, 40, 56
PERIOD_NS = 50_000_000
CLASSES = ["sky", "person; man", "chair"]
ALPHA = 0.1  # warm-up of 6 frames to 1e-6: windows of 4 frames really start mid-run


def panning_bag(path: Path) -> Path:
    """A camera panning 1 px a frame over a textured scene, with noise; stamps and bag times
    50 ms apart."""
    wide = synthetic_image(W + FRAMES, H, seed=3, regions=8).astype(np.int16)
    rng = np.random.default_rng(0)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        image = writer.add_connection("/cam/image", "sensor_msgs/msg/Image", typestore=TS)
        for t in range(FRAMES):
            rgb = wide[:, t : t + W] + rng.integers(-12, 13, (H, W, 3), dtype=np.int16)
            sec, nanosec = divmod(t * PERIOD_NS, 1_000_000_000)
            msg = Image(
                header=Header(stamp=Time(sec=100 + sec, nanosec=nanosec), frame_id="cam"),
                height=H,
                width=W,
                encoding="rgb8",
                is_bigendian=0,
                step=W * 3,
                data=rgb.clip(0, 255).astype(np.uint8).reshape(-1),
            )
            writer.write(image, 10**18 + t * PERIOD_NS, TS.serialize_cdr(msg, Image.__msgtype__))
    return path


def outputs(path: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The labels and confidence images of a replay output, in order."""
    messages, _ = read_bag(path)

    def arrays(topic: str, dtype) -> list[np.ndarray]:
        images = [decode(raw) for _, raw in messages[topic]]
        return [np.frombuffer(m.data, dtype).reshape(m.height, m.width) for m in images]

    return arrays("/ovseg/labels", np.uint8), arrays("/ovseg/confidence", np.float32)


def fleet_run(options: ReplayOptions, segmenter, path: Path) -> Path:
    options = dataclasses.replace(options, output=path)
    windows = split_ranges(options.input, ["/cam/image"], range_frames=4)
    assert len(windows) == 4
    writer = OrderedBagWriter(path, "mcap", len(windows))
    for window in reversed(windows):
        writer.add(label_range(options, segmenter, window))
    writer.close()
    assert writer.stats.frames_out == FRAMES
    return path


@pytest.mark.slow
def test_fleet_windows_with_warmup_equal_a_single_run(tmp_path):
    from ovseg_ros.segmentation import build_segmenter, tiny_config

    segmenter = build_segmenter(tiny_config("pearl", templates="single", short_side=0))
    segmenter.set_vocabulary(CLASSES)
    bag = panning_bag(tmp_path / "pan")
    options = ReplayOptions(bag, tmp_path / "single", temporal=TemporalSettings(ALPHA))
    assert warmup_count(options) == 6
    stats = run_replay(options, segmenter)
    assert stats.frames_out == FRAMES
    labels, confidence = outputs(options.output)
    _, plain_confidence = outputs(
        run_replay(ReplayOptions(bag, tmp_path / "plain"), segmenter).output
    )
    assert any(not np.array_equal(a, b) for a, b in zip(confidence, plain_confidence, strict=True))

    fleet_labels, fleet_confidence = outputs(fleet_run(options, segmenter, tmp_path / "fleet"))
    for t in range(FRAMES):
        np.testing.assert_allclose(fleet_confidence[t], confidence[t], rtol=0, atol=1e-5)
        assert np.array_equal(fleet_labels[t], labels[t]), t

    # Without the warm-up a window starts from its own first frame: outputs differ.
    cold = dataclasses.replace(options, temporal_warmup=0)
    _, cold_confidence = outputs(fleet_run(cold, segmenter, tmp_path / "cold"))
    worst = max(np.abs(a - b).max() for a, b in zip(cold_confidence, confidence, strict=True))
    assert worst > 1e-3
