"""``ovseg-bench --points``: the labelled point-cloud stage alone (depth -> PointCloud2 bytes).

Runs :func:`ovseg_ros.points.bench.bench_points` (a 640x480 16UC1 depth image by default,
strides 1 and 2, unorganized and organized, on the CPU and on CUDA when present) and prints
one row per case; ``--json FILE`` (``-``: stdout) writes the rows.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ovseg_ros.tools.cli import EXIT_USAGE, write_json

FLAG = "--points"


def is_points_mode(argv: list[str]) -> bool:
    return FLAG in argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ovseg-bench --points",
        description="Milliseconds of the point-cloud stage: decode a depth image and build the "
        "labelled cloud (ray table warm; its one-off cost printed separately).",
    )
    add = parser.add_argument
    add(FLAG, action="store_true", help=argparse.SUPPRESS)
    add("--devices", nargs="+", help="torch devices (default: cpu, and cuda when available)")
    add("--strides", nargs="+", type=int, default=[1, 2], help="points_stride values")
    add("--size", default="640x480", metavar="WxH", help="depth image size (default 640x480)")
    add("--repeat", type=int, default=30, help="timed runs per case (median and min reported)")
    add("--json", metavar="FILE", help="write the rows as JSON (- for stdout)")
    return parser


def main(argv: list[str]) -> int:
    from ovseg_ros.points.bench import bench_points

    args = build_parser().parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
        if width <= 0 or height <= 0 or args.repeat <= 0 or min(args.strides) < 1:
            raise ValueError
    except ValueError:
        print("error: --size WxH, --repeat and --strides must be positive", file=sys.stderr)
        return EXIT_USAGE
    devices = args.devices
    if devices and any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        print("error: CUDA is not available here", file=sys.stderr)
        return EXIT_USAGE
    to_stdout = args.json == "-"
    out = sys.stderr if to_stdout else sys.stdout
    threads = torch.get_num_threads()
    print(f"points stage, {width}x{height} 16UC1, torch threads {threads}", file=out)
    rows = bench_points(
        devices,
        args.strides,
        width,
        height,
        args.repeat,
        print_fn=lambda line: print(line, file=out, flush=True),
    )
    if args.json and not write_json(args.json, rows, sys.stderr):
        return EXIT_USAGE
    return 0
