"""``ovseg-bench``: the benchmarks' command line, one argparse tree with a subcommand each.

    ovseg-bench --preset tiny --devices cpu --quick      # no subcommand: engine
    ovseg-bench engine --methods pearl lposs --sizes 640x480 --classes 20 --json bench.json
    ovseg-bench engine --params config/segment.yaml --quick   # the node's settings and method
    ovseg-bench components --devices cuda --classes 20 100
    ovseg-bench cameras 1 2 4 --methods pearl --preset random --devices cpu
    ovseg-bench points --devices cpu cuda --strides 1 2
    ovseg-bench node --preset tiny --devices cpu --methods pearl --duration 5
    ovseg-bench temporal --preset tiny --alpha 0.6         # temporal fusion: gain and cost

Every subcommand prints a Markdown table row by row as its records are measured (an
interrupted run keeps its rows); ``--json PATH`` also writes ``{"meta", "records"}`` (``-``:
to stdout, the table then goes to stderr). Exit status: 0 when every configuration ran, 1
when some failed (reported, the others still run), 2 for a usage problem or missing weights,
130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from ovseg_ros.bench import cameras, components, engine, points
from ovseg_ros.bench.estimate import estimate_line
from ovseg_ros.segmentation.config import DTYPES, PRESETS, SegmenterConfig
from ovseg_ros.segmentation.methods import METHODS
from ovseg_ros.segmentation.segmenter import check_device
from ovseg_ros.segmentation.weights import WeightsNotFoundError
from ovseg_ros.tools.cli import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    UsageError,
    add_params_arguments,
    add_sizes_argument,
    add_weights_arguments,
    markdown_table,
    positive_float,
    positive_int,
    read_params,
    size_arg,
    write_json,
)

PROG = "ovseg-bench"
SUBCOMMANDS = ("engine", "components", "cameras", "points", "node", "temporal")
QUICK = {"sizes": engine.SIZES[:1], "classes": (20,), "warmup": 1, "repeat": 3}


# -- the argparse tree -------------------------------------------------------------------------


def _parents() -> dict[str, argparse.ArgumentParser]:
    """The argument groups several subcommands share, as argparse parent parsers."""

    def parent() -> argparse.ArgumentParser:
        return argparse.ArgumentParser(add_help=False)

    output, devices, dtypes, methods, timing, weights = (parent() for _ in range(6))
    output.add_argument(
        "--json",
        metavar="PATH",
        help="also write the records as JSON to PATH ('-': stdout, and the table goes to stderr)",
    )
    devices.add_argument(
        "--devices",
        nargs="+",
        metavar="DEVICE",
        help="torch devices (default: cpu, plus cuda when available)",
    )
    dtypes.add_argument(
        "--dtypes",
        nargs="+",
        choices=DTYPES,
        help="backbone precisions, each on every device (default: fp32 on cpu; fp32 fp16 on cuda)",
    )
    methods.add_argument("--methods", nargs="+", choices=METHODS, help="default: all")
    methods.add_argument(
        "--preset",
        choices=PRESETS,
        help="full: real weights (must be cached); random: the real architectures with random "
        "weights (the same speed, no weights needed); tiny: tiny random models (smoke runs). "
        "Default: full",
    )
    timing.add_argument("--warmup", type=int, help="untimed runs first (default 3; --quick: 1)")
    timing.add_argument(
        "--repeat", type=positive_int, help="timed runs, medians reported (default 10; --quick: 3)"
    )
    timing.add_argument(
        "--quick", action="store_true", help="one size, 20 classes, 1 warmup, 3 repeats"
    )
    add_weights_arguments(weights)
    return {
        "output": output,
        "devices": devices,
        "dtypes": dtypes,
        "methods": methods,
        "timing": timing,
        "weights": weights,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Benchmarks of ovseg_ros: the engine, its components, several cameras, "
        "the point-cloud stage, and the node end to end over DDS. Without a subcommand: engine "
        f"(`{PROG} --preset tiny --quick` is `{PROG} engine --preset tiny --quick`).",
    )
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    p = _parents()

    add = sub.add_parser(
        "engine",
        parents=[p["methods"], p["devices"], p["dtypes"], p["timing"], p["weights"], p["output"]],
        help="per-stage latency, fps and peak memory of the segmentation engine",
        description="Per-stage latency, fps and peak memory of Segmenter.segment (median over "
        "--repeat frames after --warmup frames) for every method, device, dtype, size and "
        "vocabulary size.",
    )
    add_sizes_argument(add, "640x480 1280x720; --quick: 640x480")
    add.add_argument(
        "--classes",
        nargs="+",
        type=positive_int,
        metavar="N",
        help="vocabulary sizes (default: 5 20 100; --quick: 20)",
    )
    add_params_arguments(add)
    add.set_defaults(run=run_engine)

    add = sub.add_parser(
        "components",
        parents=[p["devices"], p["dtypes"], p["timing"], p["output"]],
        help="the pure attention / propagation functions on frame-sized tensors",
        description="Median time of procrustes_attention, text_aware_propagation, "
        "patch_propagation and pixel_propagation on synthetic tensors of the shapes a frame "
        "of each size gives them with ViT-B/16.",
    )
    add_sizes_argument(add, "640x480")
    add.add_argument(
        "--classes",
        nargs="+",
        type=positive_int,
        metavar="N",
        help="class counts of the propagations (default: 5 20 100; --quick: 20)",
    )
    add.set_defaults(run=run_components)

    add = sub.add_parser(
        "cameras",
        parents=[p["methods"], p["devices"], p["dtypes"], p["weights"], p["output"]],
        help="N cameras segmented together (segment_batch) vs one by one",
        description="Frames per second of N cameras segmented together (segment_batch, as the "
        "node does with several cameras) vs one by one, per method, device and dtype "
        "(default fp32).",
    )
    add.add_argument("counts", nargs="+", type=positive_int, metavar="N", help="camera counts")
    add_sizes_argument(add, "640x480; every camera's frame")
    add.add_argument(
        "--repeat", type=positive_int, default=3, help="timed rounds per count (default 3)"
    )
    add.set_defaults(run=run_cameras)

    add = sub.add_parser(
        "points",
        parents=[p["devices"], p["output"]],
        help="the point-cloud stage alone: depth image -> labelled PointCloud2",
        description="Milliseconds of the point-cloud stage: decode a 16UC1 depth image and "
        "build the labelled cloud (ray table warm; its one-off cost in a column of its own).",
    )
    add_sizes_argument(add, "640x480")
    add.add_argument(
        "--strides", nargs="+", type=positive_int, default=[1, 2], help="points_stride values"
    )
    add.add_argument(
        "--repeat", type=positive_int, default=30, help="timed runs per case (default 30)"
    )
    add.add_argument(
        "--objects",
        action="store_true",
        help="also time the 3D objects stage (labels + depth -> objects, on the host)",
    )
    add.add_argument(
        "--classes",
        type=positive_int,
        default=20,
        help="classes of the objects scene (default 20)",
    )
    add.set_defaults(run=run_points)

    add = sub.add_parser(
        "node",
        parents=[p["weights"], p["output"]],
        help="the node end to end over DDS against the transport floor and the engine alone",
        description="End-to-end latency of the node over DDS against the transport floor (an "
        "echo process) and against the engine alone (a separate process with the same "
        "settings, frames, vocabulary, pacing, threads and device).",
    )
    add.add_argument("--methods", nargs="+", choices=METHODS, help="default: the node's")
    add.add_argument("--devices", nargs="+", metavar="DEVICE", help="default: the node's")
    add.add_argument("--dtypes", nargs="+", choices=DTYPES, help="default: the node's")
    add.add_argument("--preset", choices=PRESETS, help="default: the node's (full: real weights)")
    add_sizes_argument(add, "640x480")
    add.add_argument("--rate", type=positive_float, default=30.0, help="camera Hz (default 30)")
    add.add_argument(
        "--duration", type=positive_float, default=5.0, help="measured seconds per size"
    )
    add.add_argument(
        "--qos",
        choices=("auto", "best_effort", "reliable"),
        help="the node's qos_reliability (default: the node's)",
    )
    add.add_argument(
        "--threads", type=positive_int, help="OMP_NUM_THREADS of the node and the engine alone"
    )
    add.add_argument("--params", default="", metavar="FILE", help="params file for the node")
    add.add_argument(
        "--node-param",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="extra node parameter (repeatable)",
    )
    add.add_argument(
        "--dds-profile",
        default="",
        metavar="XML",
        help="Fast DDS profile for every process (e.g. config/fastdds_large_images.xml)",
    )
    add.set_defaults(run=run_node)
    _add_temporal_parser(sub, p)
    return parser


def _add_temporal_parser(sub: Any, p: dict[str, argparse.ArgumentParser]) -> None:
    add = sub.add_parser(
        "temporal",
        parents=[p["weights"], p["output"]],
        help="temporal fusion on a synthetic video: flicker, agreement, trail and added ms",
        description="Per method: label flicker (after compensating the known camera motion), "
        "agreement with the noise-free frames' labels and the moving object's trail, with "
        "temporal fusion off and at --alpha (also on the noise-free video), the flow's "
        "milliseconds on its thread and those fusion adds to the frame path, on a synthetic "
        "video of a slowly panning, zooming camera with a moving object, sensor noise and an "
        "exposure drift.",
    )
    add.add_argument("--methods", nargs="+", choices=METHODS, help="default: all")
    add.add_argument("--preset", choices=PRESETS, default="tiny", help="default: tiny")
    add.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    add.add_argument("--size", type=size_arg, default=(640, 480), metavar="WxH")
    add.add_argument("--classes", type=positive_int, default=20, help="vocabulary size")
    add.add_argument("--frames", type=positive_int, default=24, help="video length (20 Hz)")
    add.add_argument("--alpha", type=float, default=0.6, help="temporal_alpha (default 0.6)")
    add.add_argument("--noise", type=float, default=8.0, help="sensor noise sigma, grey levels")
    add.add_argument(
        "--drift", type=float, default=0.05, help="exposure gain drift over the video (0.05: +5%%)"
    )
    add.add_argument(
        "--motion", type=float, default=1.0, help="camera motion scale (1: pan 6%% width/s)"
    )
    add.set_defaults(run=run_temporal)


def main(argv: Sequence[str] | None = None) -> int:
    """``ovseg-bench [SUBCOMMAND] ...``; a bare ``ovseg-bench ...`` runs ``engine``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*SUBCOMMANDS, "-h", "--help"):
        argv.insert(0, "engine")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (2) and --help (0) as exit statuses
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted (the rows above were measured)", file=sys.stderr)
        return EXIT_INTERRUPTED


# -- output ------------------------------------------------------------------------------------


class StreamingTable:
    """A Markdown table printed as it grows: the header at once, each row when its record
    arrives (flushed), so a long run shows its results while it goes and keeps them when it
    is interrupted."""

    def __init__(
        self, header: Sequence[str], row: Callable[[dict], Sequence[Any]], out: TextIO
    ) -> None:
        self.header, self.row, self.out = list(header), row, out
        print("\n" + markdown_table(self.header, []), file=out, flush=True)

    def add(self, record: dict) -> None:
        line = markdown_table(self.header, [self.row(record)]).rsplit("\n", 1)[-1]
        print(line, file=self.out, flush=True)


def _out(args: argparse.Namespace) -> TextIO:
    """Where the tables go: stdout, unless the JSON does."""
    return sys.stderr if args.json == "-" else sys.stdout


def _meta(mode: str, **extra: Any) -> dict[str, Any]:
    return {
        "mode": mode,
        **extra,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _finish(args: argparse.Namespace, meta: dict[str, Any], records: list[dict]) -> int:
    """Write the JSON if asked; the exit status (1 when a configuration failed)."""
    if args.json and not write_json(args.json, {"meta": meta, "records": records}, sys.stderr):
        return EXIT_USAGE
    failed = sum("error" in record for record in records)
    if failed:
        print(f"{failed} configuration(s) failed (see the warnings above)", file=sys.stderr)
    return EXIT_FAILED if failed else 0


def _plan(devices: Sequence[str] | None, dtypes: Sequence[str] | None) -> list[tuple[str, str]]:
    try:
        return engine.device_plan(devices, dtypes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _gpu_name(plan: Sequence[tuple[str, str]]) -> str:
    """Name of the first CUDA device in the plan ("" when there is none)."""
    cuda = [torch.device(name) for name, _ in plan if name.startswith("cuda")]
    return torch.cuda.get_device_name(cuda[0]) if cuda else ""


def _gpu_meta(plan: Sequence[tuple[str, str]]) -> dict[str, Any]:
    gpu = _gpu_name(plan)
    return {"gpu": gpu, "cuda": torch.version.cuda} if gpu else {}


def _missing_weights(exc: WeightsNotFoundError, hint_line: str) -> int:
    print(f"error: {exc}", file=sys.stderr)
    print(
        "hint: to benchmark without the real weights, run with --preset random (the real "
        "architectures with random weights: the same speed) or --preset tiny (tiny models: "
        "only the stage structure), or name local files with --clip-weights / --dino-weights.",
        file=sys.stderr,
    )
    if hint_line:
        print(f"hint: {hint_line}", file=sys.stderr)
    return EXIT_USAGE


def _weights(args: argparse.Namespace) -> dict[str, str]:
    given = {
        "weights_cache_dir": args.weights_cache_dir,
        "clip_weights": args.clip_weights,
        "dino_weights": args.dino_weights,
    }
    return {k: v for k, v in given.items() if v}


# -- the subcommands -----------------------------------------------------------------------------


def engine_matrix(args: argparse.Namespace) -> engine.EngineMatrix:
    """The engine run ``args`` ask for, defaults filled (--quick, the params file)."""
    base = read_params(args.params, args.params_node).config
    if args.warmup is not None and args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    quick = args.quick
    return engine.EngineMatrix(
        methods=tuple(args.methods or ([base.method] if args.params else METHODS)),
        plan=tuple(_plan(args.devices, args.dtypes)),
        sizes=tuple(args.sizes or (QUICK["sizes"] if quick else engine.SIZES)),
        classes=tuple(args.classes or (QUICK["classes"] if quick else engine.CLASS_COUNTS)),
        warmup=args.warmup if args.warmup is not None else (QUICK["warmup"] if quick else 3),
        repeat=args.repeat or (QUICK["repeat"] if quick else 10),
        preset=args.preset or base.preset,
        base=base,
        weights=_weights(args),
    )


def run_engine(args: argparse.Namespace) -> int:
    matrix = engine_matrix(args)
    frames = matrix.warmup + matrix.repeat
    estimate = estimate_line("random", matrix.methods, matrix.sizes, matrix.classes, frames)
    try:
        engine.check_weights(matrix)
    except WeightsNotFoundError as exc:
        return _missing_weights(exc, estimate)
    out = _out(args)
    gpu = _gpu_name(matrix.plan)
    print(
        f"{PROG}: preset {matrix.preset}, median of {matrix.repeat} after {matrix.warmup} warmup;"
        f" torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", GPU {gpu}" if gpu else "")
        + "; times in ms",
        file=out,
        flush=True,
    )
    if any(device.startswith("cpu") for device, _ in matrix.plan):
        line = estimate_line(matrix.preset, matrix.methods, matrix.sizes, matrix.classes, frames)
        print(line, file=out, flush=True)
    table = StreamingTable(engine.HEADER, engine.row, out)
    try:
        records = engine.bench_engine(matrix, sys.stderr, table.add)
    except WeightsNotFoundError as exc:
        return _missing_weights(exc, estimate)
    meta = _meta(
        "engine",
        preset=matrix.preset,
        warmup=matrix.warmup,
        repeat=matrix.repeat,
        devices_dtypes=[list(p) for p in matrix.plan],
        **_gpu_meta(matrix.plan),
    )
    return _finish(args, meta, records)


def run_components(args: argparse.Namespace) -> int:
    if args.warmup is not None and args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    quick = args.quick
    matrix = engine.EngineMatrix(
        methods=(),
        plan=tuple(_plan(args.devices, args.dtypes)),
        sizes=tuple(args.sizes or QUICK["sizes"]),
        classes=tuple(args.classes or (QUICK["classes"] if quick else engine.CLASS_COUNTS)),
        warmup=args.warmup if args.warmup is not None else (QUICK["warmup"] if quick else 3),
        repeat=args.repeat or (QUICK["repeat"] if quick else 10),
        preset="",
    )
    out = _out(args)
    print(
        f"{PROG} components: median of {matrix.repeat} after {matrix.warmup} warmup; torch "
        f"{torch.__version__}, {torch.get_num_threads()} CPU threads; times in ms",
        file=out,
        flush=True,
    )
    table = StreamingTable(components.HEADER, components.row, out)
    records = components.bench_components(matrix, sys.stderr, table.add)
    meta = _meta(
        "components",
        warmup=matrix.warmup,
        repeat=matrix.repeat,
        devices_dtypes=[list(p) for p in matrix.plan],
        **_gpu_meta(matrix.plan),
    )
    return _finish(args, meta, records)


def run_cameras(args: argparse.Namespace) -> int:
    matrix = engine.EngineMatrix(
        methods=tuple(args.methods or METHODS),
        plan=tuple(_plan(args.devices, args.dtypes or ["fp32"])),
        sizes=tuple(args.sizes or QUICK["sizes"]),
        classes=(cameras.CLASSES,),
        warmup=1,
        repeat=args.repeat,
        preset=args.preset or "full",
        base=SegmenterConfig(),
        weights=_weights(args),
    )
    out = _out(args)
    print(
        f"{PROG} cameras {' '.join(map(str, args.counts))}: preset {matrix.preset}, "
        f"{matrix.repeat} timed rounds, torch threads {torch.get_num_threads()}",
        file=out,
        flush=True,
    )
    table = StreamingTable(cameras.HEADER, cameras.row, out)
    try:
        records = cameras.bench_cameras(matrix, args.counts, sys.stderr, table.add)
    except WeightsNotFoundError as exc:
        return _missing_weights(exc, "")
    meta = _meta("cameras", preset=matrix.preset, repeat=matrix.repeat, **_gpu_meta(matrix.plan))
    return _finish(args, meta, records)


def run_points(args: argparse.Namespace) -> int:
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    for name in devices:
        try:
            device = check_device(name)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError("CUDA is not available here")
    sizes = args.sizes or QUICK["sizes"]
    out = _out(args)
    print(
        f"{PROG} points: 16UC1 depth, median of {args.repeat}, torch threads "
        f"{torch.get_num_threads()}; times in ms",
        file=out,
        flush=True,
    )
    table = StreamingTable(points.HEADER, points.row, out)
    records = points.bench_points(devices, args.strides, sizes, args.repeat, table.add)
    if args.objects:
        print(f"\n3D objects (default options, {args.classes} classes, host)", file=out)
        table = StreamingTable(points.OBJECTS_HEADER, points.objects_row, out)
        found = points.bench_objects(sizes, args.classes, args.repeat, table.add)
        records += [{"stage": "objects", **record} for record in found]
    return _finish(args, _meta("points", repeat=args.repeat), records)


def run_node(args: argparse.Namespace) -> int:
    for path, what in ((args.params, "--params"), (args.dds_profile, "--dds-profile")):
        if path and not Path(path).is_file():
            raise UsageError(f"{what}: no such file: {path}")
    for extra in args.node_param:
        if ":=" not in extra:
            raise UsageError(f"--node-param must be NAME:=VALUE, got {extra!r}")
    # rclpy only here: every other subcommand runs without ROS.
    from ovseg_ros.bench import node

    settings = node.NodeBenchSettings(
        methods=tuple(args.methods or [None]),
        devices=tuple(args.devices or [None]),
        dtypes=tuple(args.dtypes or [None]),
        sizes=tuple(args.sizes or QUICK["sizes"]),
        preset=args.preset,
        rate=args.rate,
        duration=args.duration,
        qos=args.qos,
        threads=args.threads,
        params_file=args.params,
        node_params=tuple(args.node_param),
        dds_profile=args.dds_profile,
        weights=_weights(args),
    )
    records = node.run(settings, sys.stderr)
    out = _out(args)
    print(
        f"\n{PROG} node: preset {args.preset or 'default'}, camera {args.rate:g} Hz reliable, "
        f"{args.duration:g} s per size after {node.WARMUP_S:g} s warm-up; latencies in ms; "
        "overhead = e2e - engine alone - floor (p50)",
        file=out,
    )
    print("\n" + markdown_table(node.HEADER, [node.row(r) for r in records]), file=out, flush=True)
    meta = _meta(
        "node",
        preset=args.preset,
        rate_hz=args.rate,
        duration_s=args.duration,
        warmup_s=node.WARMUP_S,
        node_threads=args.threads,
        dds_profile=args.dds_profile or None,
    )
    return _finish(args, meta, records)


def run_temporal(args: argparse.Namespace) -> int:
    from ovseg_ros.bench import temporal  # OpenCV and the video only here
    from ovseg_ros.temporal import MAX_ALPHA, opencv_problem

    if not 0.0 < args.alpha <= MAX_ALPHA:
        raise UsageError(f"--alpha must be in (0, {MAX_ALPHA}], got {args.alpha}")
    if args.frames < 3:
        raise UsageError(f"--frames must be >= 3, got {args.frames}")
    if opencv_problem():
        raise UsageError(opencv_problem())
    try:
        check_device(args.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    width, height = args.size
    bench = temporal.TemporalBench(
        methods=tuple(args.methods or METHODS),
        preset=args.preset,
        device=args.device,
        width=width,
        height=height,
        classes=args.classes,
        frames=args.frames,
        alpha=args.alpha,
        noise=args.noise,
        drift=args.drift,
        motion=args.motion,
        weights=tuple(_weights(args).items()),
    )
    out = _out(args)
    print(
        f"{PROG} temporal: {args.frames} frames {width}x{height} at 20 Hz, noise sigma "
        f"{args.noise:g}, exposure drift {args.drift:+.0%}, motion x{args.motion:g}; "
        f"{args.classes} classes; torch threads {torch.get_num_threads()}; per fused frame, "
        "ms: flow on its thread (overlapping the segmentation, as in the node), added: what "
        "the frame waits for after scoring (the fusion, and the flow if not done)",
        file=out,
        flush=True,
    )
    table = StreamingTable(temporal.HEADER, temporal.row, out)
    try:
        records = temporal.bench_temporal(bench, sys.stderr, table.add)
    except WeightsNotFoundError as exc:
        return _missing_weights(exc, "")
    meta = _meta(
        "temporal",
        preset=args.preset,
        frames=args.frames,
        alpha=args.alpha,
        noise=args.noise,
        drift=args.drift,
        motion=args.motion,
    )
    return _finish(args, meta, records)


if __name__ == "__main__":
    sys.exit(main())
