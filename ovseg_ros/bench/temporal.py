"""``ovseg-bench temporal``: what temporal fusion buys and costs, per method, on the synthetic
video of :mod:`ovseg_ros.bench.temporal_video` (known camera motion, a moving object, sensor
noise, exposure drift).

Per method four passes over the video: the noise-free frames one by one (the reference), the
camera's frames one by one (``temporal_alpha`` 0, "off"), the camera's frames fused (``alpha``,
"on"), and the noise-free frames fused. Measured, over the frames after the first:

- **flicker**: the share of pixels whose label changes from the previous frame, after
  compensating the known camera motion (nearest pixel), over the pixels visible in both and
  off the moving object in both; also of the noise-free video, off and on (what the camera's
  motion alone makes a per-frame method flicker, and what fusion leaves of it);
- **agreement**: the share of pixels labelled as the noise-free frame is labelled alone; also
  of the fused noise-free video ("noise-free on vs off": what holding labels still costs
  against per-frame labels, without any noise) and of the fused camera frames with the fused
  noise-free frames ("on vs noise-free on": noise against no noise, both fused);
- **trail**: where the object was two frames earlier and is no longer, the share of pixels
  whose label differs from the noise-free frame's (fusion must not keep the object's label
  there: it should match the unfused trail);
- **cost**: per fused frame, medians from the stage's counters: the flow (thumbnail, DIS both
  ways, sampling grid) on its thread, started before the engine scores the frame as in the
  node, and the milliseconds fusion adds to the frame path (waiting for the flow if not done,
  the fusion's tensor work, the device synchronised).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

import numpy as np
import torch

from ovseg_ros.bench.measure import describe, size_record, sync, warn
from ovseg_ros.bench.scene import synthetic_vocabulary
from ovseg_ros.bench.temporal_video import Video, correspondence, make_video
from ovseg_ros.segmentation.config import SegmenterConfig
from ovseg_ros.segmentation.segmenter import Segmenter, build_segmenter
from ovseg_ros.segmentation.weights import WeightsNotFoundError
from ovseg_ros.temporal import TemporalFusion, TemporalSettings
from ovseg_ros.tools.cli import fmt

HEADER = (
    "method", "preset", "device", "size", "scores", "alpha", "flicker off", "flicker on",
    "flicker change", "noise-free flicker off", "noise-free flicker on", "agreement off",
    "agreement on", "noise-free on vs off", "on vs noise-free on", "trail off", "trail on",
    "flow ms", "added ms",
)  # fmt: skip


@dataclass(frozen=True)
class TemporalBench:
    """What ``ovseg-bench temporal`` runs."""

    methods: tuple[str, ...]
    preset: str
    device: str
    width: int
    height: int
    classes: int
    frames: int
    alpha: float
    noise: float
    drift: float
    motion: float
    base: SegmenterConfig = SegmenterConfig()
    weights: tuple[tuple[str, str], ...] = ()


def row(record: dict) -> list[str]:
    if "error" in record:
        return [record["method"], record["preset"], record["device"], record["size"], "error"]
    percent = 100 * record["flicker_change"]
    return [
        record["method"], record["preset"], record["device"], record["size"], record["scores"],
        fmt(record["alpha"], 2), fmt(record["flicker_off"], 4), fmt(record["flicker_on"], 4),
        f"{percent:+.0f}%", fmt(record["flicker_noise_free"], 4),
        fmt(record["flicker_noise_free_fused"], 4), fmt(record["agreement_off"], 4),
        fmt(record["agreement_on"], 4), fmt(record["agreement_noise_free_fused"], 4),
        fmt(record["agreement_on_vs_noise_free_fused"], 4), fmt(record["trail_off"], 4),
        fmt(record["trail_on"], 4), fmt(record["flow_ms"], 2), fmt(record["added_ms"], 2),
    ]  # fmt: skip


def video_metrics(video: Video, labels: Sequence[np.ndarray], clean: Sequence[np.ndarray]) -> dict:
    """``flicker``, ``agreement`` and ``trail`` (see the module docstring) of ``labels`` (one
    ``[H, W]`` array per frame) against the noise-free labels ``clean``."""
    flicker, agreement, trail = [], [], []
    objects = video.objects
    for t in range(1, len(labels)):
        rows, cols, visible = correspondence(video, t)
        static = visible & ~objects[t] & ~objects[t - 1][rows, cols]
        flicker.append(float((labels[t] != labels[t - 1][rows, cols])[static].mean()))
        agreement.append(float((labels[t] == clean[t]).mean()))
        if t >= 2:
            back_rows, back_cols, seen = correspondence(video, t, back=2)
            vacated = seen & objects[t - 2][back_rows, back_cols] & ~objects[t]
            if vacated.any():
                trail.append(float((labels[t] != clean[t])[vacated].mean()))
    return {
        "flicker": float(np.mean(flicker)),
        "agreement": float(np.mean(agreement)),
        "trail": float(np.mean(trail)) if trail else float("nan"),
    }


def _alone(segmenter: Segmenter, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [segmenter.segment(rgb, unlabeled=True).label_ids.copy() for rgb in frames]


@dataclass
class _Fused:
    """One fused pass over a video: the labels, per fused frame the flow's milliseconds (on
    its thread) and the frame path's (:meth:`TemporalFusion.apply`), and the scores' shape."""

    labels: list[np.ndarray]
    flow_ms: list[float]
    frame_path_ms: list[float]
    shape: tuple[int, ...]


def _fused(
    segmenter: Segmenter, frames: Sequence[np.ndarray], stamps: Sequence[int], alpha: float
) -> _Fused:
    """``frames`` fused as :func:`~ovseg_ros.temporal.segment_frames` does it in the node: the
    flow starts on its thread before the engine scores the frame (its time from the stage's
    counters); the frame path's time runs from the scores being ready to the fused scores
    being ready (the device synchronised at both ends)."""
    stage = TemporalFusion(TemporalSettings(alpha, reset_s=60.0))
    labels, flow_ms, frame_path_ms, shape = [], [], [], ()
    for rgb, stamp in zip(frames, stamps, strict=True):
        before = stage.counters()
        pending = stage.begin(rgb, stamp)
        batch = segmenter.score_batch([rgb])
        version = batch.vocabulary.version
        sync(segmenter.device)
        started = time.perf_counter()
        with torch.inference_mode():
            scores = batch.scores[0]
            batch.scores[0] = stage.apply(pending, scores, batch.logit_scale, version)
        sync(segmenter.device)
        waited = time.perf_counter() - started
        after = stage.counters()
        if after["frames_fused"] > before["frames_fused"]:
            flow_ms.append((after["flow_time_us"] - before["flow_time_us"]) / 1000)
            frame_path_ms.append(1000 * waited)
        shape = tuple(scores.shape)
        labels.append(segmenter.finish_batch(batch, unlabeled=True)[0].label_ids.copy())
    return _Fused(labels, flow_ms, frame_path_ms, shape)


def measure(segmenter: Segmenter, video: Video, alpha: float) -> dict:
    """One method's record (without its identity fields)."""
    clean = _alone(segmenter, video.clean)
    plain = _alone(segmenter, video.frames)
    fused = _fused(segmenter, video.frames, video.stamps_ns, alpha)
    clean_fused = _fused(segmenter, video.clean, video.stamps_ns, alpha).labels
    off, on = video_metrics(video, plain, clean), video_metrics(video, fused.labels, clean)
    noise_free = video_metrics(video, clean, clean)
    # Fusion on the noise-free video: its flicker, its agreement with the per-frame labels
    # (what holding still costs against a per-frame reference, noise or not), and how well
    # the fused camera frames agree with it (noise against no noise, both fused).
    smoothed = video_metrics(video, clean_fused, clean)
    like_for_like = video_metrics(video, fused.labels, clean_fused)
    flow_ms = statistics.median(fused.flow_ms)
    frame_path_ms = statistics.median(fused.frame_path_ms)  # what a frame waits for
    return {
        "scores": "x".join(str(n) for n in fused.shape),
        "alpha": alpha,
        "flicker_off": off["flicker"],
        "flicker_on": on["flicker"],
        "flicker_change": on["flicker"] / off["flicker"] - 1 if off["flicker"] else 0.0,
        "flicker_noise_free": noise_free["flicker"],
        "flicker_noise_free_fused": smoothed["flicker"],
        "agreement_off": off["agreement"],
        "agreement_on": on["agreement"],
        "agreement_noise_free_fused": smoothed["agreement"],
        "agreement_on_vs_noise_free_fused": like_for_like["agreement"],
        "trail_off": off["trail"],
        "trail_on": on["trail"],
        "flow_ms": flow_ms,
        "added_ms": frame_path_ms,
        "frames_fused": len(fused.frame_path_ms),
    }


def bench_temporal(
    bench: TemporalBench, log: TextIO, on_record: Callable[[dict], None] = lambda record: None
) -> list[dict]:
    """One record per method (``error`` instead of the numbers when one fails; missing weights
    raise :class:`WeightsNotFoundError`)."""
    video = make_video(
        bench.width,
        bench.height,
        bench.frames,
        noise=bench.noise,
        drift=bench.drift,
        motion=bench.motion,
    )
    records = []
    for method in bench.methods:
        record = {
            "method": method,
            "preset": bench.preset,
            "device": bench.device,
            **size_record(bench.width, bench.height),
            "classes": bench.classes,
            "frames": bench.frames,
        }
        segmenter = None
        try:
            config = bench.base.replace(
                method=method, preset=bench.preset, device=bench.device, **dict(bench.weights)
            )
            segmenter = build_segmenter(config)
            segmenter.set_vocabulary(synthetic_vocabulary(bench.classes))
            record.update(measure(segmenter, video, bench.alpha))
        except WeightsNotFoundError:
            raise
        except Exception as exc:  # one method failing must not end the run
            record["error"] = describe(exc)
            warn(log, f"{method}: {record['error']}")
        finally:
            if segmenter is not None:
                segmenter.release()
            del segmenter
            gc.collect()
        records.append(record)
        on_record(record)
    return records
