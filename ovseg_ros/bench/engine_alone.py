"""The engine alone, paced like the node: the process ``ovseg-bench node`` compares the node's
engine time with (``python -m ovseg_ros.bench.engine_alone SPEC.json``).

It builds the segmenter the node built (the same settings, as a JSON config), installs the
node's vocabulary, loads the frame the camera publishes, prints ``ready`` and waits for a
``go`` line on stdin (sent when the camera starts). Then it keeps the camera's schedule:
warm-up frames at the rate, a pause, the measured frames. A frame is segmented when it is
due, exactly as the node's worker does with its latest-frame slot: when a frame takes longer
than the period, the newest frame that fell due meanwhile goes next at once and the ones
before it are skipped. Each frame is timed as the node times it (the wall time of
``segment_batch([rgb])``, untimed stages), and ``report {json}`` gives the seconds.
"""

from __future__ import annotations

import bisect
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ovseg_ros.segmentation.config import SegmenterConfig
from ovseg_ros.segmentation.segmenter import Segmenter, build_segmenter


def paced_seconds(segmenter: Segmenter, frame: np.ndarray, count: int, rate: float) -> list[float]:
    """Segment ``frame`` on a schedule of ``count`` frames at ``rate`` Hz starting now; the
    seconds of each frame segmented (frames that fell due while the engine was busy, other
    than the newest, are skipped, as the node drops them)."""
    start = time.monotonic()
    due = [start + i / rate for i in range(count)]
    seconds = []
    index = 0
    while index < count:
        delay = due[index] - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        began = time.perf_counter()
        segmenter.segment_batch([frame])
        seconds.append(time.perf_counter() - began)
        newest = bisect.bisect_right(due, time.monotonic()) - 1  # the newest frame due by now
        index = newest if newest > index else index + 1
    return seconds


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m ovseg_ros.bench.engine_alone SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    segmenter = build_segmenter(SegmenterConfig.from_dict(spec["config"]))
    segmenter.set_vocabulary(spec["vocabulary"])
    frame = np.load(spec["frame"])
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1  # the parent gave up
    rate = spec["rate"]
    warmup = paced_seconds(segmenter, frame, spec["warmup_frames"], rate)
    if warmup:
        time.sleep(spec["pause_s"])
    measured = paced_seconds(segmenter, frame, spec["frames"], rate)
    report = {
        "warmup_s": warmup,
        "measured_s": measured,
        "device": str(segmenter.device),
        "torch_threads": torch.get_num_threads(),
    }
    print("report " + json.dumps(report), flush=True)
    segmenter.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
