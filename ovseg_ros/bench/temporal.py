"""``ovseg-bench temporal``: what temporal fusion buys and costs, per method, on the synthetic
video of :mod:`ovseg_ros.bench.temporal_video` (known camera motion, a moving object, sensor
noise, exposure drift).

Per method three passes over the video: the noise-free frames one by one (the reference), the
camera's frames one by one (``temporal_alpha`` 0), and the camera's frames fused (``alpha``).
Measured, over the frames after the first:

- **flicker**: the share of pixels whose label changes from the previous frame, after
  compensating the known camera motion (nearest pixel), over the pixels visible in both and
  off the moving object in both;
- **agreement**: the share of pixels labelled as the noise-free frame is labelled alone;
- **trail**: where the object was two frames earlier and is no longer, the share of pixels
  whose label differs from the noise-free frame's (fusion must not keep the object's label
  there: it should match the unfused trail);
- **cost**: per fused frame, the flow (thumbnail + DIS both ways, waited for in series, as
  on a CPU; on a GPU it overlaps the segmentation) and the fusion on the scores' device.
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
    "flicker change", "noise-free flicker", "agreement off", "agreement on", "trail off",
    "trail on", "flow ms", "fusion ms", "added ms",
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
        f"{percent:+.0f}%", fmt(record["flicker_noise_free"], 4), fmt(record["agreement_off"], 4),
        fmt(record["agreement_on"], 4), fmt(record["trail_off"], 4), fmt(record["trail_on"], 4),
        fmt(record["flow_ms"], 2), fmt(record["fusion_ms"], 2), fmt(record["added_ms"], 2),
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


def _fused(
    segmenter: Segmenter, video: Video, alpha: float
) -> tuple[list[np.ndarray], list[float], list[float], tuple[int, ...]]:
    """The fused labels, per fused frame the flow's and the fusion's seconds (in series: the
    steps of :func:`~ovseg_ros.temporal.segment_frames`, timed one by one), and the shape of
    the scores ``(Q, h, w)``."""
    stage = TemporalFusion(TemporalSettings(alpha, reset_s=60.0))
    labels, flow_s, fusion_s = [], [], []
    for rgb, stamp in zip(video.frames, video.stamps_ns, strict=True):
        batch = segmenter.score_batch([rgb])
        sync(segmenter.device)
        started = time.perf_counter()
        pending = stage.begin(rgb, stamp)
        pending.work.result()
        flowed = time.perf_counter()
        with torch.inference_mode():
            scores = batch.scores[0]
            fused = stage.apply(pending, scores, batch.logit_scale, batch.vocabulary.version)
            batch.scores[0] = fused
        sync(segmenter.device)
        if fused is not scores:
            flow_s.append(flowed - started)
            fusion_s.append(time.perf_counter() - flowed)
        labels.append(segmenter.finish_batch(batch, unlabeled=True)[0].label_ids.copy())
    return labels, flow_s, fusion_s, tuple(scores.shape)


def measure(segmenter: Segmenter, video: Video, alpha: float) -> dict:
    """One method's record (without its identity fields)."""
    clean = _alone(segmenter, video.clean)
    plain = _alone(segmenter, video.frames)
    fused, flow_s, fusion_s, shape = _fused(segmenter, video, alpha)
    off, on = video_metrics(video, plain, clean), video_metrics(video, fused, clean)
    noise_free = video_metrics(video, clean, clean)
    flow_ms = 1000 * statistics.median(flow_s)
    fusion_ms = 1000 * statistics.median(fusion_s)
    return {
        "scores": "x".join(str(n) for n in shape),
        "alpha": alpha,
        "flicker_off": off["flicker"],
        "flicker_on": on["flicker"],
        "flicker_change": on["flicker"] / off["flicker"] - 1 if off["flicker"] else 0.0,
        "flicker_noise_free": noise_free["flicker"],
        "agreement_off": off["agreement"],
        "agreement_on": on["agreement"],
        "trail_off": off["trail"],
        "trail_on": on["trail"],
        "flow_ms": flow_ms,
        "fusion_ms": fusion_ms,
        "added_ms": flow_ms + fusion_ms,
        "frames_fused": len(fusion_s),
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
