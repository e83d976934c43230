"""Benchmark of the segmentation engine: per-stage latency, frame rate and peak memory.

Pipeline mode (default) builds one segmenter per (method, device, dtype), installs a vocabulary
of N synthetic class names and segments a deterministic synthetic frame repeatedly; it reports
the median of every stage the segmenter times (``SegmentationResult.timings``, CUDA-synchronised)
and of the total. ``--components`` times the pure propagation / attention functions on synthetic
tensors of the shapes a frame of the given size produces with ViT-B/16.

    python -m ovseg_ros.tools.bench --preset tiny --devices cpu --quick
    ovseg-bench --methods pearl lposs --sizes 640x480 --classes 20 --json bench.json
    ovseg-bench --components --devices cuda --classes 20 100
    ovseg-bench --params config/segment.yaml --quick   # the node's settings, its method

Each table row is printed as soon as its configuration is measured; a CPU run of the real
architectures first says how long it will take (:mod:`ovseg_ros.tools.bench_estimate`).
No timing is asserted anywhere; the numbers are for reading. Exit status: 0 when every
configuration ran, 1 when some failed (reported, the others still run), 2 for a usage problem
or missing weights.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import numpy as np
import torch

from ovseg_ros.segmentation.config import DTYPES, PRESETS, SegmenterConfig
from ovseg_ros.segmentation.methods import METHODS
from ovseg_ros.segmentation.segmenter import Segmenter, build_segmenter, check_device
from ovseg_ros.segmentation.weights import WeightsNotFoundError
from ovseg_ros.tools.bench_components import COMPONENT_HEADER, bench_components, component_row
from ovseg_ros.tools.bench_estimate import estimate_line
from ovseg_ros.tools.bench_measure import (
    PeakMemory,
    StreamingTable,
    describe,
    median_ms,
    progress_eta,
    size_record,
    synthetic_image,
    synthetic_vocabulary,
    warn,
)
from ovseg_ros.tools.cli import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    UsageError,
    add_params_arguments,
    add_sizes_argument,
    add_weights_arguments,
    fmt,
    positive_int,
    read_params,
    size_arg,
    write_json,
)

SIZES = ("640x480", "1280x720")
CLASS_COUNTS = (5, 20, 100)

# Table columns: header -> the timing stages it shows (first one present wins).
STAGE_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("preprocess", ("preprocess",)),
    ("backbone", ("backbone",)),
    ("attention", ("attention",)),
    ("propagation", ("patch_propagation",)),
    ("stitch", ("stitch",)),
    ("tlp/pixel", ("tlp", "pixel_refine")),
    ("postprocess", ("postprocess",)),
)

# --- pipeline benchmark --------------------------------------------------------------------------


def _config(args: argparse.Namespace, method: str, device: str, dtype: str) -> SegmenterConfig:
    """The params file's settings (``args.base``) with this configuration's method, device,
    dtype, and the weights flags that were given."""
    files = {
        "weights_cache_dir": args.weights_cache_dir,
        "clip_weights": args.clip_weights,
        "dino_weights": args.dino_weights,
    }
    base: SegmenterConfig = args.base
    if method != base.method:  # the file's method-specific choices do not carry over
        base = base.replace(clip_pretrained=None, short_side=None, tlp=None, pixel_refine=None)
    return base.replace(
        method=method,
        preset=args.preset,
        device=device,
        dtype=dtype,
        **{k: v for k, v in files.items() if v},
    )


def check_weights(args: argparse.Namespace) -> None:
    """Fail before any timing if a method's full weights are missing (``WeightsNotFoundError``)."""
    if args.preset != "full":
        return
    from ovseg_ros.segmentation.weights import resolve, sources_for

    for method in args.methods:
        cfg = _config(args, method, "cpu", "fp32")
        for source, local_file, key in sources_for(cfg):
            resolve(source, local_file, cfg.weights_cache_dir, cfg.allow_download, key)


def bench_pipeline(
    args: argparse.Namespace,
    plan: list[tuple[str, str]],
    log: TextIO,
    on_record: Callable[[dict], None] = lambda record: None,
) -> list[dict]:
    """Time ``segment`` for every (method, device, dtype, size, classes); one record each,
    also passed to ``on_record`` as soon as it is measured.

    A configuration that fails (e.g. out of memory) is reported and recorded with an
    ``error``; the others still run. Missing weights abort the run (``WeightsNotFoundError``).
    """
    records: list[dict] = []
    images = {size: synthetic_image(*size) for size in args.sizes}
    cases = [(size, classes) for size in args.sizes for classes in args.classes]
    total = len(args.methods) * len(plan) * len(cases)
    started = time.perf_counter()
    for method in args.methods:
        for device_name, dtype in plan:
            base = {"method": method, "device": device_name, "dtype": dtype}
            start = time.perf_counter()
            try:
                segmenter = build_segmenter(_config(args, method, device_name, dtype))
            except WeightsNotFoundError:
                raise
            except Exception as exc:  # noqa: BLE001 - report, then bench the rest
                warn(log, f"{method} {device_name} {dtype}: build failed: {describe(exc)}")
                error = f"build: {describe(exc)}"
                for size, classes in cases:
                    records.append(
                        {**base, **size_record(*size), "classes": classes, "error": error}
                    )
                    on_record(records[-1])
                continue
            build_s = time.perf_counter() - start
            for size, classes in cases:
                record = {**base, **size_record(*size), "classes": classes, "build_s": build_s}
                label = f"{method} {device_name} {dtype} {record['size']} {classes} classes"
                eta = progress_eta(len(records), total, time.perf_counter() - started)
                print(f"[{len(records) + 1}/{total}] {label}{eta}", file=log, flush=True)
                try:
                    record.update(
                        _time_segmenter(segmenter, images[size], classes, args.warmup, args.repeat)
                    )
                except Exception as exc:  # noqa: BLE001 - e.g. out of memory: go on
                    warn(log, f"{label}: {describe(exc)}")
                    record["error"] = describe(exc)
                records.append(record)
                on_record(record)
            segmenter.release()
            del segmenter
            gc.collect()
    return records


def _time_segmenter(
    segmenter: Segmenter, image: np.ndarray, classes: int, warmup: int, repeat: int
) -> dict[str, Any]:
    """Install ``classes`` names, then the median stage times of ``repeat`` frames (ms)."""
    start = time.perf_counter()
    segmenter.set_vocabulary(synthetic_vocabulary(classes))
    vocab_ms = 1000.0 * (time.perf_counter() - start)
    memory = PeakMemory(segmenter.device)
    memory.start()
    for _ in range(warmup):
        segmenter.segment(image)
    runs = [segmenter.segment(image).timings for _ in range(repeat)]
    peak = memory.peak_mib()
    stages = {stage: median_ms([run[stage] for run in runs]) for stage in runs[0]}
    total_ms = stages["total"]
    return {
        "stages_ms": stages,
        "total_ms": total_ms,
        "fps": 1000.0 / total_ms if total_ms > 0 else None,
        "peak_mib": peak,
        "vocabulary_ms": vocab_ms,
    }


# --- output ---------------------------------------------------------------------------------------


PIPELINE_HEADER: tuple[str, ...] = (
    "method",
    "device",
    "dtype",
    "size",
    "classes",
    *(name for name, _ in STAGE_COLUMNS),
    "total ms",
    "fps",
    "peak MiB",
)


def pipeline_row(rec: dict) -> list[str]:
    """The table cells of one pipeline record (missing stages as ``-``)."""
    row = [rec["method"], rec["device"], rec["dtype"], rec["size"], str(rec["classes"])]
    if "error" in rec:
        return row + ["-"] * len(STAGE_COLUMNS) + ["failed", "-", "-"]
    stages = rec["stages_ms"]
    for _, keys in STAGE_COLUMNS:
        row.append(next((fmt(stages[k]) for k in keys if k in stages), "-"))
    fps = rec["fps"]
    row += [fmt(rec["total_ms"]), fmt(fps, 2 if fps and fps < 10 else 1)]
    return row + [fmt(rec["peak_mib"], 0)]


def _meta(args: argparse.Namespace, plan: list[tuple[str, str]]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "mode": "components" if args.components else "pipeline",
        "preset": args.preset,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "devices_dtypes": [list(p) for p in plan],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    gpu = _gpu_name(plan)
    if gpu:
        meta["gpu"] = gpu
        meta["cuda"] = torch.version.cuda
    return meta


def _gpu_name(plan: list[tuple[str, str]]) -> str:
    """Name of the first CUDA device in the plan ("" when there is none)."""
    cuda = [torch.device(name) for name, _ in plan if name.startswith("cuda")]
    return torch.cuda.get_device_name(cuda[0]) if cuda else ""


# --- command line --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ovseg-bench",
        description="Per-stage latency, fps and peak memory of the segmentation engine "
        "(median over --repeat frames after --warmup frames).",
        epilog="ovseg-bench --node [--rate HZ] [--duration S] [--sizes WxH ...] ...: the node "
        "end to end over DDS against the transport floor (ovseg-bench --node --help). "
        "ovseg-bench --points [--devices ...] [--strides 1 2]: the point-cloud stage alone. "
        "ovseg-bench --cameras 1 2 4 [--methods ...]: N cameras batched vs one by one.",
    )
    add = parser.add_argument
    add(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=None,
        help="default: the params file's method, else all",
    )
    add_sizes_argument(parser, f"{' '.join(SIZES)}; --quick and --components: 640x480")
    add(
        "--classes",
        nargs="+",
        type=positive_int,
        default=None,
        metavar="N",
        help="vocabulary sizes (default: 5 20 100; --quick: 20)",
    )
    add(
        "--devices",
        nargs="+",
        default=None,
        metavar="DEVICE",
        help="torch devices (default: cpu, plus cuda when available)",
    )
    add(
        "--dtypes",
        nargs="+",
        choices=DTYPES,
        default=None,
        help="backbone precisions (default: fp32 on cpu; fp32 fp16 on cuda); given ones run on "
        "every device",
    )
    add(
        "--preset",
        choices=PRESETS,
        default=None,
        help="full: real weights (must be cached); tiny: tiny random models (smoke runs); "
        "random: the real architectures with random weights (timings without weights). "
        "Default: the params file's, else full",
    )
    add_params_arguments(parser)
    add_weights_arguments(parser)
    add("--warmup", type=int, default=None, help="untimed frames per configuration (default 3)")
    add("--repeat", type=positive_int, default=None, help="timed frames (default 10; --quick: 3)")
    add(
        "--json",
        metavar="PATH",
        help="write the records as JSON to PATH ('-': stdout, and the table goes to stderr)",
    )
    add("--quick", action="store_true", help="one size, 20 classes, 1 warmup, 3 repeats")
    add(
        "--components",
        action="store_true",
        help="time the pure functions (procrustes_attention, text_aware_propagation, "
        "patch_propagation, pixel_propagation) instead of the pipeline",
    )
    return parser


def _resolve_args(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Fill the defaults that depend on --quick / --components / --params; the (device,
    dtype) plan."""
    loaded = read_params(args.params, args.params_node)
    args.base = loaded.config
    args.methods = args.methods or ([args.base.method] if args.params else list(METHODS))
    args.preset = args.preset or args.base.preset
    one_size = args.quick or args.components
    args.sizes = args.sizes or [size_arg(s) for s in (SIZES[:1] if one_size else SIZES)]
    args.classes = args.classes or ([20] if args.quick else list(CLASS_COUNTS))
    if args.warmup is None:
        args.warmup = 1 if args.quick else 3
    if args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    args.repeat = args.repeat or (3 if args.quick else 10)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    plan = []
    for name in dict.fromkeys(devices):
        try:
            device = check_device(name)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if device.type not in ("cpu", "cuda"):
            raise UsageError(f"unsupported device {name!r} (cpu or cuda)")
        default = ["fp32", "fp16"] if device.type == "cuda" else ["fp32"]
        plan += [(name, dtype) for dtype in dict.fromkeys(args.dtypes or default)]
    return plan


def main(argv: list[str] | None = None) -> int:
    """``ovseg-bench``: run the benchmark, print a Markdown table, optionally write JSON."""
    from ovseg_ros.tools import node_bench

    argv = sys.argv[1:] if argv is None else list(argv)
    if node_bench.is_node_mode(argv):  # the node end to end over DDS: its own flags
        return node_bench.main(argv)
    from ovseg_ros.tools import bench_points

    if bench_points.is_points_mode(argv):  # the point-cloud stage alone: its own flags
        return bench_points.main(argv)
    from ovseg_ros.tools import bench_cameras

    if bench_cameras.is_cameras_mode(argv):  # N cameras batched vs one by one: its own flags
        return bench_cameras.main(argv)
    args = build_parser().parse_args(argv)
    log = sys.stderr
    try:
        plan = _resolve_args(args)
        if not args.components:
            check_weights(args)
    except UsageError as exc:
        print(f"error: {exc}", file=log)
        return EXIT_USAGE
    except WeightsNotFoundError as exc:
        _missing_weights(exc, args, log)
        return EXIT_USAGE

    json_stdout = args.json == "-"
    out = sys.stderr if json_stdout else sys.stdout
    print(_summary(args, plan), file=out, flush=True)
    if not args.components and any(device.startswith("cpu") for device, _ in plan):
        frames = args.warmup + args.repeat
        line = estimate_line(args.preset, args.methods, args.sizes, args.classes, frames)
        print(line, file=out, flush=True)
    header = COMPONENT_HEADER if args.components else PIPELINE_HEADER
    table = StreamingTable(header, component_row if args.components else pipeline_row, out)
    try:
        if args.components:
            records = bench_components(args, plan, log, table.add)
        else:
            records = bench_pipeline(args, plan, log, table.add)
    except WeightsNotFoundError as exc:
        _missing_weights(exc, args, log)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted (the rows above were measured)", file=log)
        return EXIT_INTERRUPTED

    if args.json:
        document = {"meta": _meta(args, plan), "records": records}
        if not write_json(args.json, document, log):
            return EXIT_USAGE
    failed = sum("error" in rec for rec in records)
    if failed:
        print(f"{failed} configuration(s) failed (see the warnings above)", file=log)
    return EXIT_FAILED if failed else 0


def _summary(args: argparse.Namespace, plan: list[tuple[str, str]]) -> str:
    what = "components" if args.components else f"preset {args.preset}"
    gpu = _gpu_name(plan)
    gpu = f", GPU {gpu}" if gpu else ""
    return (
        f"ovseg-bench: {what}, median of {args.repeat} after {args.warmup} warmup; "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads{gpu}; times in ms"
    )


def _missing_weights(exc: WeightsNotFoundError, args: argparse.Namespace, log: TextIO) -> None:
    print(f"error: {exc}", file=log)
    print(
        "hint: to benchmark without the real weights, run with --preset random (the real "
        "architectures with random weights: the same speed) or --preset tiny (tiny models: "
        "only the stage structure), or name local files with --clip-weights / --dino-weights.",
        file=log,
    )
    frames = args.warmup + args.repeat
    print(
        f"hint: {estimate_line('random', args.methods, args.sizes, args.classes, frames)}",
        file=log,
    )


if __name__ == "__main__":
    raise SystemExit(main())
