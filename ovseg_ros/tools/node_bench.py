"""``ovseg-bench --node``: the node end to end over real DDS, against the transport floor.

For every (method, device, dtype, size) the node is started in its own process (only its
command line, topics, parameters and ``/diagnostics`` are used). A camera process publishes
frames with a driver's usual QoS (reliable, keep-last 10) at ``--rate`` for ``--duration``
seconds after one second of warm-up; this process subscribes to ``~/labels`` (reliable) and
matches every label to its frame by the header stamp. Then, in the same run, an echo process
subscribed like the node (same reliability and depth) answers each frame with a mono8 label
and a 32FC1 confidence image of the same size, computing nothing: its latency is the
transport floor. Reported per configuration: output rate, end-to-end latency (publish ->
labels received) p50/p90/p99, frames lost in transport (sent - received by the node), frames
dropped by the node (its latest-frame slot), labels later than one camera period, the engine
time (the node's ``inference_p*_ms`` diagnostics) and node overhead = e2e - engine - floor
(p50). Every process runs on a private random ROS domain.

    ovseg-bench --node --preset tiny --devices cpu --methods pearl --duration 5
    ovseg-bench --node --preset random --devices cuda --sizes 640x480 1280x720 --json node.json

The camera, the echo and the listener live in :mod:`ovseg_ros.tools.node_bench_procs`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ovseg_ros.tools.cli import (
    add_sizes_argument,
    add_weights_arguments,
    fmt,
    markdown_table,
    positive_float,
    write_json,
)
from ovseg_ros.tools.node_bench_procs import (
    CAMERA_TOPIC,
    DIAGNOSTICS_PERIOD_S,
    ECHO_IN,
    ECHO_LABELS,
    LABELS_TOPIC,
    NODE_NAME,
    PAUSE_S,
    STARTUP_TIMEOUT_S,
    WARMUP_S,
    Listener,
    Process,
    latencies_ms,
    percentiles,
    wait_for,
)


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``ovseg-bench --node`` (those shared with ``ovseg-bench`` mean the same)."""
    parser = argparse.ArgumentParser(
        prog="ovseg-bench --node",
        description="End-to-end latency of the node over DDS against the transport floor.",
    )
    add = parser.add_argument
    add("--methods", nargs="+", default=None, help="default: the node's (or --params') method")
    add("--devices", nargs="+", default=None, metavar="DEVICE", help="default: the node's")
    add("--dtypes", nargs="+", default=None, help="default: the node's")
    add(
        "--preset",
        choices=("full", "tiny", "random"),
        default=None,
        help="default: the node's (full: real weights)",
    )
    add_sizes_argument(parser, "640x480")
    add("--rate", type=positive_float, default=30.0, help="camera Hz (default 30)")
    add("--duration", type=positive_float, default=5.0, help="measured seconds per size")
    add(
        "--qos",
        choices=("auto", "best_effort", "reliable"),
        default=None,
        help="the node's qos_reliability (default: the node's)",
    )
    add("--threads", type=int, default=None, help="OMP_NUM_THREADS for the node")
    add("--params", default="", metavar="FILE", help="params file for the node")
    add(
        "--node-param",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="extra node parameter (repeatable)",
    )
    add(
        "--dds-profile",
        default="",
        metavar="XML",
        help="Fast DDS profile for every process (e.g. config/fastdds_large_images.xml)",
    )
    add_weights_arguments(parser)  # passed to the node
    add("--json", metavar="PATH", help="write the records as JSON ('-': stdout)")
    return parser


def is_node_mode(argv: list[str]) -> bool:
    """``ovseg-bench --node``: the node end to end over DDS instead of the engine alone."""
    return "--node" in argv


def node_command() -> list[str]:
    """The node's entry point: the new ``ovseg_ros.ros.main`` where present, else the old one."""
    module = "ovseg_ros.ros.main"
    if importlib.util.find_spec("ovseg_ros.ros") is None or not importlib.util.find_spec(module):
        module = "ovseg_ros.segment_node"
    return [sys.executable, "-m", module]


# -- running it ------------------------------------------------------------------------------


def _role(role: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "ovseg_ros.tools.node_bench_procs", role, *args]


def _camera(
    env: dict[str, str], topic: str, size: tuple[int, int], args: argparse.Namespace
) -> dict:
    """Run the camera process to the end; its report (measured stamps, start/end)."""
    width, height = size
    command = _role(
        "camera",
        "--topic",
        topic,
        "--size",
        f"{width}x{height}",
        "--rate",
        str(args.rate),
        "--duration",
        str(args.duration),
    )
    done = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=60 + WARMUP_S + PAUSE_S + args.duration,
    )
    if done.returncode != 0:
        raise RuntimeError(f"camera process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _counters(diag: dict[str, str]) -> dict[str, int]:
    keys = ("frames_received", "frames_processed", "frames_dropped")
    return {k: int(diag.get(k, 0)) for k in keys}


def _engine_ms(diag: dict[str, str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for q in (50, 90, 99):
        try:
            value = float(diag[f"inference_p{q}_ms"])
        except (KeyError, ValueError):
            value = float("nan")
        out[f"p{q}"] = value if np.isfinite(value) else None
    return out


def bench_one(
    listener: Listener, env: dict[str, str], work: Path, case: dict, args: argparse.Namespace
) -> dict:
    """Node phase, then echo phase, for one (method, device, dtype, size)."""
    width, height = case["size_wh"]
    params: dict[str, Any] = {"diagnostics_period": DIAGNOSTICS_PERIOD_S}
    for name, value in (
        ("preset", args.preset),
        ("method", case["method"]),
        ("device", case["device"]),
        ("dtype", case["dtype"]),
        ("qos_reliability", args.qos),
        ("clip_weights", args.clip_weights),
        ("dino_weights", args.dino_weights),
        ("weights_cache_dir", args.weights_cache_dir),
    ):
        if value:  # unset: the node's default (or the params file's)
            params[name] = value
    ros_args = ["--ros-args", "-r", f"image:={CAMERA_TOPIC}"]
    if args.params:
        ros_args += ["--params-file", str(Path(args.params).resolve())]
    for name, value in params.items():
        ros_args += ["-p", f"{name}:={value}"]
    for extra in args.node_param:
        ros_args += ["-p", extra]
    node_env = dict(env)
    if args.threads:
        node_env["OMP_NUM_THREADS"] = node_env["MKL_NUM_THREADS"] = str(args.threads)

    listener.reset()
    node = Process([*node_command(), *ros_args], node_env, work, f"node_{case['key']}")
    try:
        wait_for(
            # Active: its outputs exist. (With qos_reliability auto it may subscribe only once
            # the camera appears; the camera waits for that.)
            lambda: listener.publishers(LABELS_TOPIC) > 0,
            STARTUP_TIMEOUT_S,
            node,
            "the node to start",
        )
        seen: dict[str, int] = {}  # policy -> polls that saw it
        watching = threading.Event()

        def watch() -> None:  # the policy the node holds while the camera publishes
            while not watching.wait(0.1):
                policy = listener.subscriber_reliability(CAMERA_TOPIC, NODE_NAME)
                if policy:
                    seen[policy] = seen.get(policy, 0) + 1

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            shot = _camera(env, CAMERA_TOPIC, (width, height), args)
        finally:
            watching.set()
            watcher.join()
        time.sleep(max(1.0, 3 * DIAGNOSTICS_PERIOD_S))  # last labels and diagnostics
        with listener.lock:
            labels = dict(listener.arrivals[LABELS_TOPIC])
            diags = list(listener.diagnostics)
    finally:
        node.stop()
    # The policy held most of the time: with qos_reliability auto the node subscribes best
    # effort until the camera appears and again once it has gone.
    qos = max(seen, key=seen.__getitem__, default="best_effort")

    before = [d for t, d in diags if t < shot["start_ns"]]
    after = [d for t, d in diags if t > shot["end_ns"]]
    if not before or not after:
        raise RuntimeError("no /diagnostics from the node around the measured frames")
    start, end = _counters(before[-1]), _counters(after[-1])
    delta = {k: max(0, end[k] - start[k]) for k in start}

    echo = Process(_role("echo", "--reliability", qos), env, work, f"echo_{case['key']}")
    try:
        wait_for(
            lambda: (
                listener.subscriber_reliability(ECHO_IN, "ovseg_bench_echo") is not None
                and listener.publishers(ECHO_LABELS) > 0
            ),
            60,
            echo,
            "the echo process",
        )
        floor_shot = _camera(env, ECHO_IN, (width, height), args)
        time.sleep(1.0)
        with listener.lock:
            echoes = dict(listener.arrivals[ECHO_LABELS])
    finally:
        echo.stop()

    sent = shot["stamps"]
    e2e = latencies_ms(sent, labels)
    floor = latencies_ms(floor_shot["stamps"], echoes)
    engine = _engine_ms(after[-1])  # the node's window: warm-up frames are in it too
    e2e_p, floor_p = percentiles(e2e), percentiles(floor)
    parts = (e2e_p["p50"], engine["p50"], floor_p["p50"])
    overhead = None if None in parts else parts[0] - parts[1] - parts[2]
    final = after[-1]
    return {
        "method": case["method"] or final.get("method", "?"),
        "device": case["device"] or final.get("device", "?"),
        "dtype": case["dtype"] or "default",
        "preset": args.preset or final.get("preset", "?"),
        "qos": qos,
        "size": f"{width}x{height}",
        "rate_hz": args.rate,
        "duration_s": args.duration,
        "sent": len(sent),
        "node_received": delta["frames_received"],
        "node_processed": delta["frames_processed"],
        "labelled": int(e2e.size),
        "output_hz": e2e.size * args.rate / max(1, len(sent)),
        "lost_in_transport": max(0, len(sent) - delta["frames_received"]),
        "dropped_by_node": delta["frames_dropped"],
        "late": int((e2e > 1000.0 / args.rate).sum()),
        "e2e_ms": e2e_p,
        "engine_ms": engine,
        "floor_ms": floor_p,
        "floor_delivered": int(floor.size),
        "floor_sent": len(floor_shot["stamps"]),
        "overhead_p50_ms": overhead,
    }


def run(args: argparse.Namespace, log: TextIO) -> list[dict]:
    """Every (method, device, dtype, size) of ``args``; a failed one is recorded with ``error``."""
    domain = random.randint(1, 200)  # Fast DDS refuses ids above 232
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), RCUTILS_LOGGING_BUFFERED_STREAM="0")
    if args.dds_profile:
        for var in ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE"):
            env[var] = os.environ[var] = str(Path(args.dds_profile).resolve())
    cases = [
        {"method": m, "device": d, "dtype": t, "size_wh": s, "key": f"{i}"}
        for i, (m, d, t, s) in enumerate(
            (m, d, t, s)
            for m in (args.methods or [None])
            for d in (args.devices or [None])
            for t in (args.dtypes or [None])
            for s in (args.sizes or [(640, 480)])
        )
    ]
    listener = Listener(domain)
    records = []
    try:
        with tempfile.TemporaryDirectory(prefix="ovseg_node_bench_") as tmp:
            for number, case in enumerate(cases, 1):
                w, h = case["size_wh"]
                label = " ".join(str(case[k]) for k in ("method", "device", "dtype") if case[k])
                label = f"{label or 'node defaults'} {w}x{h}"
                print(f"[{number}/{len(cases)}] node {label}", file=log, flush=True)
                try:
                    records.append(bench_one(listener, env, Path(tmp), case, args))
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                    print(f"warning: {label}: {exc}", file=log, flush=True)
                    records.append(
                        {
                            "method": case["method"] or "default",
                            "device": case["device"] or "default",
                            "dtype": case["dtype"] or "default",
                            "size": f"{w}x{h}",
                            "error": str(exc).splitlines()[0],
                        }
                    )
    finally:
        listener.close()
    return records


def node_table(records: list[dict]) -> str:
    """The Markdown table of ``run``'s records (latencies in ms, ``-`` where unknown)."""

    def trio(values: dict) -> str:
        return "/".join(fmt(values[k], 1) for k in ("p50", "p90", "p99"))

    header = [
        "method",
        "device",
        "dtype",
        "QoS",
        "size",
        "sent",
        "labelled",
        "out Hz",
        "e2e p50/p90/p99",
        "floor p50/p90/p99",
        "engine p50/p90/p99",
        "overhead p50",
        "lost in transport",
        "dropped by node",
        "later than 1 period",
    ]
    rows = []
    for r in records:
        if "error" in r:
            rows.append(
                [r["method"], r["device"], r["dtype"], "-", r["size"], "failed"]
                + ["-"] * (len(header) - 6)
            )
            continue
        rows.append(
            [
                r["method"],
                r["device"],
                r["dtype"],
                r["qos"],
                r["size"],
                r["sent"],
                r["labelled"],
                fmt(r["output_hz"], 1),
                trio(r["e2e_ms"]),
                trio(r["floor_ms"]),
                trio(r["engine_ms"]),
                fmt(r["overhead_p50_ms"], 1),
                r["lost_in_transport"],
                r["dropped_by_node"],
                r["late"],
            ]
        )
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    """``ovseg-bench --node``: run, print the table, optionally write JSON (as the bench does)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args([a for a in argv if a != "--node"])
    log = sys.stderr
    if args.threads is not None and args.threads < 1:
        print("error: --threads must be >= 1", file=log)
        return 2
    for path, what in ((args.params, "--params"), (args.dds_profile, "--dds-profile")):
        if path and not Path(path).is_file():
            print(f"error: {what}: no such file: {path}", file=log)
            return 2
    try:
        records = run(args, log)
    except KeyboardInterrupt:
        print("interrupted", file=log)
        return 130
    summary = (
        f"ovseg-bench --node: preset {args.preset or 'default'}, camera {args.rate:g} Hz reliable, "
        f"{args.duration:g} s per size after {WARMUP_S:g} s warm-up; latencies in ms; "
        "overhead = e2e - engine - floor (p50)"
    )
    json_stdout = args.json == "-"
    out = sys.stderr if json_stdout else sys.stdout
    print(f"\n{summary}\n\n{node_table(records)}", file=out, flush=True)
    if args.json:
        meta = {
            "mode": "node",
            "preset": args.preset,
            "rate_hz": args.rate,
            "duration_s": args.duration,
            "warmup_s": WARMUP_S,
            "node_threads": args.threads,
            "dds_profile": args.dds_profile or None,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if not write_json(args.json, {"meta": meta, "records": records}, log):
            return 2
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
