"""``ovseg-bench temporal``: the synthetic video's known motion, the metrics, and a tiny run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ovseg_ros.bench import cli
from ovseg_ros.bench.temporal import video_metrics
from ovseg_ros.bench.temporal_video import (
    EXPOSURE_DRIFT,
    NOISE_SIGMA,
    correspondence,
    make_video,
)

pytest.importorskip("cv2")


def test_video_motion_is_known_and_metrics_follow_it():
    video = make_video(64, 48, 4, noise=0.0, drift=0.0)
    assert video.size == (48, 64) and len(video.frames) == 4
    assert all(np.array_equal(a, b) for a, b in zip(video.frames, video.clean, strict=True))
    assert all(mask.any() for mask in video.objects)  # the object is in view
    rows, cols, visible = correspondence(video, 2)
    assert visible.mean() > 0.9
    # Labels painted on the scene itself (stripes 16 scene pixels wide) move with the camera:
    # they change only where rounding to the nearest pixel crosses a stripe's edge.
    ys, xs = np.mgrid[0:48, 0:64]
    pixels = np.stack([xs, ys, np.ones_like(xs)], axis=-1).astype(np.float64)
    labels = []
    for homography in video.homographies:
        scene = pixels @ homography.T
        labels.append(np.floor(scene[..., 0] / scene[..., 2] / 16).astype(np.int64) % 5)
    metrics = video_metrics(video, labels, labels)
    assert metrics["agreement"] == 1.0 and metrics["flicker"] < 0.1
    shuffled = [np.roll(label, 7, axis=1) if t % 2 else label for t, label in enumerate(labels)]
    assert video_metrics(video, shuffled, labels)["flicker"] > 0.2


@pytest.mark.slow
def test_temporal_subcommand_runs_and_reports(capsys):
    argv = ["temporal", "--methods", "pearl", "--frames", "4", "--size", "64x48", "--classes", "3"]
    argv += ["--json", "-"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    (record,) = json.loads(captured.out)["records"]
    assert (record["method"], record["preset"], record["size"]) == ("pearl", "tiny", "64x48")
    assert record["frames_fused"] == 3 and record["added_ms"] > 0 and record["flow_ms"] > 0
    for key in ("flicker_on", "flicker_noise_free_fused", "agreement_on"):
        assert 0.0 <= record[key] <= 1.0, key
    for key in ("agreement_noise_free_fused", "agreement_on_vs_noise_free_fused"):
        assert 0.0 <= record[key] <= 1.0, key
    assert "| pearl | tiny | cpu | 64x48 |" in captured.err
    # the video's defaults are the command's
    parser = cli.build_parser()
    defaults = parser.parse_args(["temporal"])
    assert (defaults.noise, defaults.drift) == (NOISE_SIGMA, EXPOSURE_DRIFT)
    assert cli.main(["temporal", "--alpha", "0.99"]) == 2
    assert cli.main(["temporal", "--frames", "2"]) == 2
