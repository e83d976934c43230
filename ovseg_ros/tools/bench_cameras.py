"""``ovseg-bench --cameras 1 2 4``: frames per second of N cameras segmented together
(``Segmenter.segment_batch``, as the node does with several cameras) vs one by one.

    ovseg-bench --cameras 1 2 4 --methods pearl --preset random --devices cpu
    ovseg-bench --cameras 1 4 --preset tiny --json cameras.json

Each camera has its own deterministic 640x480 frame (``--size``). Per (method, device, dtype)
one segmenter is built; per camera count, one untimed round of each way, then ``--repeat``
timed rounds of each, alternating (CUDA synchronised). No timing is asserted anywhere; the
numbers are for reading.
Exit status: 0, 1 when a configuration failed (the others still run), 2 for a usage problem
or missing weights.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from typing import TextIO

import torch

from ovseg_ros.segmentation.batch_bench import VOCABULARY, camera_frame
from ovseg_ros.segmentation.config import DTYPES, PRESETS, SegmenterConfig
from ovseg_ros.segmentation.methods import METHODS
from ovseg_ros.segmentation.segmenter import Segmenter, build_segmenter, check_device
from ovseg_ros.segmentation.weights import WeightsNotFoundError
from ovseg_ros.tools.bench_measure import StreamingTable, describe, warn
from ovseg_ros.tools.cli import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    fmt,
    positive_int,
    size_arg,
)

FLAG = "--cameras"
HEADER = ["method", "device", "dtype", "cameras", "size", "one by one fps", "batched fps"]
HEADER += ["speedup"]


def is_cameras_mode(argv: list[str]) -> bool:
    return any(arg == FLAG or arg.startswith(f"{FLAG}=") for arg in argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ovseg-bench --cameras",
        description="Frames per second of N cameras segmented together (segment_batch) vs "
        "one by one (segment), per method and device.",
    )
    add = parser.add_argument
    add(FLAG, nargs="+", type=positive_int, required=True, metavar="N", help="camera counts")
    add("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    add(
        "--preset",
        choices=PRESETS,
        default="full",
        help="full: real weights (must be cached); random: real architectures, random weights "
        "(the same speed); tiny: tiny random models",
    )
    add("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    add("--dtype", choices=DTYPES, default="fp32", help="backbone precision (default fp32)")
    add("--size", type=size_arg, default=(640, 480), metavar="WxH", help="every camera's frame")
    add("--repeat", type=positive_int, default=3, help="timed rounds per camera count (default 3)")
    add("--json", metavar="PATH", help="also write the records as JSON to PATH")
    return parser


def measure(segmenter: Segmenter, cameras: int, width: int, height: int, repeat: int) -> dict:
    """Frames per second of ``cameras`` frames (each its own scene) through ``segment_batch``
    vs ``segment`` one by one. The two ways alternate round by round (after one untimed round
    of each), so a machine whose load drifts during the run biases neither."""
    frames = [camera_frame(height, width, seed) for seed in range(cameras)]
    device = segmenter.device

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def one_by_one() -> None:
        for frame in frames:
            segmenter.segment(frame)

    def batched() -> None:
        segmenter.segment_batch(frames)

    seconds = {one_by_one: 0.0, batched: 0.0}
    for round_index in range(repeat + 1):
        for way in (one_by_one, batched) if round_index % 2 else (batched, one_by_one):
            sync()
            started = time.perf_counter()
            way()
            sync()
            if round_index:  # round 0 warms up
                seconds[way] += time.perf_counter() - started
    alone, together = seconds[one_by_one], seconds[batched]
    return {
        "cameras": cameras,
        "size": f"{width}x{height}",
        "one_by_one_fps": cameras * repeat / alone,
        "batched_fps": cameras * repeat / together,
        "speedup": alone / together,
    }


def run(
    configs: list[SegmenterConfig],
    counts: list[int],
    size: tuple[int, int],
    repeat: int,
    log: TextIO,
    on_record: Callable[[dict], None],
) -> list[dict]:
    """One record per (config, camera count): ``method device dtype cameras size
    one_by_one_fps batched_fps speedup``, or ``error`` when the configuration failed."""
    width, height = size
    records: list[dict] = []
    for config in configs:
        base = {"method": config.method, "device": config.device, "dtype": config.dtype}
        try:
            segmenter = build_segmenter(config)
            segmenter.set_vocabulary(list(VOCABULARY))
            rows = [measure(segmenter, n, width, height, repeat) for n in counts]
        except WeightsNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: report, go on
            warn(log, f"{config.method} {config.device} {config.dtype}: {describe(exc)}")
            rows = [
                {"cameras": n, "size": f"{width}x{height}", "error": describe(exc)} for n in counts
            ]
        else:
            segmenter.release()
            del segmenter
            gc.collect()
        for row in rows:
            record = {**row, **base}
            records.append(record)
            on_record(record)
    return records


def _row(record: dict) -> list[str]:
    row = [record["method"], record["device"], record["dtype"], str(record["cameras"])]
    row.append(record["size"])
    if "error" in record:
        return row + ["failed", "-", "-"]
    return row + [
        fmt(record["one_by_one_fps"]),
        fmt(record["batched_fps"]),
        f"{record['speedup']:.2f}x",
    ]


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    log = sys.stderr
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    try:
        for name in devices:
            check_device(name)
    except ValueError as exc:
        print(f"error: {exc}", file=log)
        return EXIT_USAGE
    configs = [
        SegmenterConfig(method=m, preset=args.preset, device=d, dtype=args.dtype)
        for m in args.methods
        for d in dict.fromkeys(devices)
    ]
    print(
        f"{len(configs)} configuration(s), cameras {args.cameras}, preset {args.preset}, "
        f"{args.repeat} timed rounds, torch threads {torch.get_num_threads()}",
        flush=True,
    )
    table = StreamingTable(HEADER, _row, sys.stdout)
    try:
        records = run(configs, args.cameras, args.size, args.repeat, log, table.add)
    except WeightsNotFoundError as exc:
        print(f"error: {exc}\nhint: --preset random times the real architectures", file=log)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted (the rows above were measured)", file=log)
        return EXIT_INTERRUPTED
    if args.json:
        try:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump({"preset": args.preset, "records": records}, handle, indent=2)
        except OSError as exc:
            print(f"error: cannot write {args.json}: {exc}", file=log)
            return EXIT_USAGE
    return EXIT_FAILED if any("error" in r for r in records) else 0
