"""``ovseg-bench node``: the node end to end over real DDS, against the transport floor and
against the engine alone.

For every (method, device, dtype, size), on a private random ROS domain (:mod:`ovseg_ros.harness`):

1. Node phase: the node runs in its own process (only its command line, topics, parameters
   and ``/diagnostics`` are used). A camera process publishes the synthetic frame with a
   driver's QoS (reliable, keep-last 10) at ``--rate``: warm-up frames for a second, a pause,
   then ``--duration`` seconds of measured frames. This process receives ``~/labels``
   (reliable) and matches each to its frame by the header stamp: end-to-end latency. The
   node's ``/diagnostics`` before and after give its counters and the engine time inside it
   (``inference_p*_ms``). The node is stopped.
2. Floor phase: an echo process subscribed like the node answers each frame with a label and
   a confidence image of its size, computing nothing (the transport floor), while a separate
   process segments the same frame with the same settings, vocabulary (the node's, read from
   its ``~/vocabulary``), torch threads, device and pacing (:mod:`.engine_alone`): the engine
   alone, under the same load of camera, echo and listener.

Reported: output rate, e2e / floor / engine-alone / engine-in-node p50, p90, p99, the ratio
engine in node / engine alone (p50), overhead = e2e - engine alone - floor (p50: what the
node adds, including any slowdown of its own engine), frames lost in transport, dropped by
the node, labels later than one period. The engine-in-node percentiles are the node's own
window, which includes the warm-up frames; the engine-alone ones are over the same schedule.

The harness stays out of the measured window: the graph is queried only before it, the
camera reports its phases through a pipe, the subscription's reliability comes from the
node's log afterwards, and nothing polls.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import yaml

from ovseg_ros.bench.measure import latencies_ms, percentiles
from ovseg_ros.bench.scene import synthetic_image
from ovseg_ros.harness.client import NodeClient, counters
from ovseg_ros.harness.domain import child_env, private_domain_id
from ovseg_ros.harness.peers import ECHO_NODE, run_camera, start_echo
from ovseg_ros.harness.process import ChildProcess, HarnessError, NodeProcess, wait_for
from ovseg_ros.params import load_params
from ovseg_ros.segmentation.config import SegmenterConfig
from ovseg_ros.tools.cli import fmt

NODE_NAME = "ovseg"  # the default name: a params file's section applies
CAMERA_TOPIC = "/ovseg_bench/camera/image"
LABELS_TOPIC = f"/{NODE_NAME}/labels"
ECHO_IN = "/ovseg_bench/echo/image"
ECHO_LABELS, ECHO_CONFIDENCE = "/ovseg_bench/echo/labels", "/ovseg_bench/echo/confidence"
WARMUP_S = 1.0  # frames before the measured ones (first-inference costs)
PAUSE_S = 1.0  # between warm-up and measurement: the counters settle
DIAGNOSTICS_PERIOD_S = 0.25
STARTUP_TIMEOUT_S = 300.0  # model build; the random preset on a slow CPU takes a while
PROFILE_VARS = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")


@dataclass(frozen=True)
class NodeBenchSettings:
    """What ``ovseg-bench node`` runs; ``None`` / empty: the node's default (or the params
    file's). ``node_params``: extra ``name:=value`` parameters, applied last."""

    methods: tuple[str | None, ...] = (None,)
    devices: tuple[str | None, ...] = (None,)
    dtypes: tuple[str | None, ...] = (None,)
    sizes: tuple[tuple[int, int], ...] = ((640, 480),)
    preset: str | None = None
    rate: float = 30.0
    duration: float = 5.0
    qos: str | None = None
    threads: int | None = None
    params_file: str = ""
    node_params: tuple[str, ...] = ()
    dds_profile: str = ""
    weights: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    method: str | None
    device: str | None
    dtype: str | None
    size: tuple[int, int]
    key: str

    @property
    def label(self) -> str:
        named = " ".join(v for v in (self.method, self.device, self.dtype) if v)
        return f"{named or 'node defaults'} {self.size[0]}x{self.size[1]}"


def cases(settings: NodeBenchSettings) -> list[Case]:
    combos = [
        (m, d, t, s)
        for m in settings.methods
        for d in settings.devices
        for t in settings.dtypes
        for s in settings.sizes
    ]
    return [Case(m, d, t, s, str(i)) for i, (m, d, t, s) in enumerate(combos)]


def node_params(settings: NodeBenchSettings, case: Case) -> dict[str, Any]:
    """The ``-p`` parameters of the node for ``case`` (before ``settings.node_params``)."""
    params: dict[str, Any] = {"diagnostics_period": DIAGNOSTICS_PERIOD_S}
    for name, value in (
        ("preset", settings.preset),
        ("method", case.method),
        ("device", case.device),
        ("dtype", case.dtype),
        ("qos_reliability", settings.qos),
        *settings.weights.items(),
    ):
        if value:  # unset: the node's default (or the params file's)
            params[name] = value
    return params


def engine_config(settings: NodeBenchSettings, case: Case) -> SegmenterConfig:
    """The engine settings the node builds for ``case``: the params file, then the ``-p``
    parameters in the node's order, each value read as YAML as ROS reads it."""
    overrides = node_params(settings, case)
    for extra in settings.node_params:
        name, _, text = extra.partition(":=")
        overrides[name.strip()] = yaml.safe_load(text)
    fields = set(SegmenterConfig.field_names())
    engine = {k: v for k, v in overrides.items() if k in fields}
    return load_params(settings.params_file or None, node=NODE_NAME, overrides=engine).config


def _ros_args(settings: NodeBenchSettings) -> list[str]:
    ros_args = ["-r", f"image:={CAMERA_TOPIC}"]
    if settings.params_file:
        ros_args += ["--params-file", str(Path(settings.params_file).resolve())]
    for extra in settings.node_params:
        ros_args += ["-p", extra]
    return ros_args


# The node's log lines that say its image subscription's reliability: a fixed setting when it
# activates, and with qos_reliability auto each choice as publishers come and go.
_POLICY_LINE = re.compile(
    r"\[(\d+)\.(\d+)\] \[[^]]*\]: "
    r"(?:\S+: (?:subscribed|switched to) |active: segmenting .*\()(reliable|best_effort)\b"
)


def subscription_policy(log: str, before_ns: int) -> str:
    """The reliability the node's image subscription had at ``before_ns`` (wall clock), from
    its log: read after the run rather than polling the graph during it (a retired
    subscription also lingers in the graph for a moment after a switch)."""
    policy = "unknown"
    for sec, fraction, name in _POLICY_LINE.findall(log):
        if int(sec) * 10**9 + int(fraction.ljust(9, "0")[:9]) < before_ns:
            policy = name
    return policy


def _engine_ms(values: dict[str, str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for q in (50, 90, 99):
        try:
            value = float(values[f"inference_p{q}_ms"])
        except (KeyError, ValueError):
            value = float("nan")
        out[f"p{q}"] = value if np.isfinite(value) else None
    return out


def _vocabulary_entries(client: NodeClient) -> list[str]:
    """The node's current vocabulary as entries (``"name; synonym; ..."``)."""
    vocabularies = client.vocabularies()
    if not vocabularies:
        raise HarnessError("the node published no vocabulary")
    return ["; ".join(c["synonyms"]) for c in vocabularies[-1]["classes"]]


def _read_line(process: ChildProcess, prefix: str, timeout: float) -> str:
    """The rest of ``process``'s first stdout line that starts with ``prefix`` (blocking, a
    watchdog kills it after ``timeout``)."""
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    try:
        for line in process.stdout:
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
    finally:
        watchdog.cancel()
    raise HarnessError(f"{process.name} ended without '{prefix.strip()}':\n{process.tail(30)}")


def node_phase(
    client: NodeClient, env: dict[str, str], work: Path, case: Case, settings: NodeBenchSettings
) -> dict[str, Any]:
    """The node with the camera: latencies, counters, engine time, policy, vocabulary."""
    client.reset()
    frame = work / f"frame_{case.key}.npy"
    np.save(frame, synthetic_image(*case.size))
    params = node_params(settings, case)
    with NodeProcess(env, work / f"node_{case.key}.log", params, _ros_args(settings)) as node:
        wait_for(
            # Active: its outputs exist. (With qos_reliability auto it may subscribe only once
            # the camera appears; the camera waits for that.)
            lambda: client.publisher_count(LABELS_TOPIC) > 0,
            STARTUP_TIMEOUT_S,
            "the node to start",
            node,
        )
        shot = run_camera(
            env,
            work / f"camera_{case.key}.log",
            CAMERA_TOPIC,
            case.size,
            settings.rate,
            settings.duration,
            warmup_s=WARMUP_S,
            pause_s=PAUSE_S,
            frame=frame,
        )
        after = client.settled_diagnostics(time.time_ns())
        labels = client.arrivals(LABELS_TOPIC)
        entries = _vocabulary_entries(client)
    before = [v for t, v in client.timed_diagnostics() if t < shot.start_ns]
    if not before:
        raise HarnessError("no /diagnostics from the node before the measured frames")
    start, end = counters(before[-1]), counters(after)
    return {
        "shot": shot,
        "labels": labels,
        "delta": {k: max(0, end[k] - start[k]) for k in start},
        "engine_ms": _engine_ms(after),
        "final": after,
        "policy": subscription_policy(node.log(), shot.start_ns),
        "vocabulary": entries,
        "frame": frame,
    }


def floor_phase(
    client: NodeClient,
    env: dict[str, str],
    work: Path,
    case: Case,
    settings: NodeBenchSettings,
    node: dict[str, Any],
) -> dict[str, Any]:
    """The echo with the camera (the transport floor) while the engine runs alone."""
    spec = work / f"engine_{case.key}.json"
    spec.write_text(
        json.dumps(
            {
                "config": engine_config(settings, case).to_dict(),
                "vocabulary": node["vocabulary"],
                "frame": str(node["frame"]),
                "rate": settings.rate,
                "warmup_frames": max(1, round(WARMUP_S * settings.rate)),
                "pause_s": PAUSE_S,
                "frames": max(1, round(settings.duration * settings.rate)),
            }
        )
    )
    # The echo subscribes as the node did (best effort, the default's start, if unknown).
    policy = node["policy"] if node["policy"] in ("reliable", "best_effort") else "best_effort"
    with contextlib.ExitStack() as running:  # both stopped however this ends
        engine = running.enter_context(
            ChildProcess(
                [sys.executable, "-m", "ovseg_ros.bench.engine_alone", str(spec)],
                env,
                work / f"engine_{case.key}.log",
                name="engine alone",
                capture_stdout=True,
                stdin=True,
            )
        )
        echo = running.enter_context(
            start_echo(
                env, work / f"echo_{case.key}.log", policy, ECHO_IN, ECHO_LABELS, ECHO_CONFIDENCE
            )
        )
        _read_line(engine, "ready", STARTUP_TIMEOUT_S)
        wait_for(
            lambda: (
                client.subscription_reliability(ECHO_IN, ECHO_NODE) is not None
                and client.publisher_count(ECHO_LABELS) > 0
            ),
            60,
            "the echo process",
            echo,
        )

        def on_event(phase: str) -> None:
            if phase == "warmup":  # the engine keeps the camera's schedule from now on
                engine.stdin.write("go\n")
                engine.stdin.flush()

        shot = run_camera(
            env,
            work / f"floor_camera_{case.key}.log",
            ECHO_IN,
            case.size,
            settings.rate,
            settings.duration,
            warmup_s=WARMUP_S,
            pause_s=PAUSE_S,
            frame=node["frame"],
            on_event=on_event,
        )
        schedule_s = WARMUP_S + PAUSE_S + settings.duration
        alone = json.loads(_read_line(engine, "report ", 120 + schedule_s))
        time.sleep(0.5)  # the last echoes
        echoes = client.arrivals(ECHO_LABELS)
    return {"shot": shot, "echoes": echoes, "alone": alone}


def bench_case(
    client: NodeClient, env: dict[str, str], work: Path, case: Case, settings: NodeBenchSettings
) -> dict:
    """The node phase, then the floor phase, of one (method, device, dtype, size)."""
    node = node_phase(client, env, work, case, settings)
    floor = floor_phase(client, env, work, case, settings, node)
    shot, delta, final = node["shot"], node["delta"], node["final"]
    sent = shot.stamps
    e2e = latencies_ms(sent, node["labels"])
    floor_ms = latencies_ms(floor["shot"].stamps, floor["echoes"])
    alone_s = floor["alone"]["warmup_s"] + floor["alone"]["measured_s"]
    e2e_p, floor_p, in_node = percentiles(e2e), percentiles(floor_ms), node["engine_ms"]
    alone = percentiles(1000.0 * np.asarray(alone_s))
    width, height = case.size
    return {
        "method": case.method or final.get("method", "?"),
        "device": case.device or final.get("device", "?"),
        "dtype": case.dtype or "default",
        "preset": settings.preset or final.get("preset", "?"),
        "qos": node["policy"],
        "size": f"{width}x{height}",
        "rate_hz": settings.rate,
        "duration_s": settings.duration,
        "sent": len(sent),
        "node_received": delta["frames_received"],
        "node_processed": delta["frames_processed"],
        "labelled": int(e2e.size),
        "output_hz": e2e.size * settings.rate / max(1, len(sent)),
        "lost_in_transport": max(0, len(sent) - delta["frames_received"]),
        "dropped_by_node": delta["frames_dropped"],
        "late": int((e2e > 1000.0 / settings.rate).sum()),
        "e2e_ms": e2e_p,
        "floor_ms": floor_p,
        "floor_delivered": int(floor_ms.size),
        "floor_sent": len(floor["shot"].stamps),
        "engine_in_node_ms": in_node,
        "engine_alone_ms": alone,
        "engine_alone_frames": len(alone_s),
        "engine_alone_threads": floor["alone"]["torch_threads"],
        "engine_ratio_p50": _ratio(in_node["p50"], alone["p50"]),
        "overhead_p50_ms": _difference(e2e_p["p50"], alone["p50"], floor_p["p50"]),
        "overhead_beside_engine_p50_ms": _difference(e2e_p["p50"], in_node["p50"], floor_p["p50"]),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _difference(total: float | None, *parts: float | None) -> float | None:
    if total is None or any(p is None for p in parts):
        return None
    return total - sum(parts)


def run(settings: NodeBenchSettings, log: TextIO) -> list[dict]:
    """Every case of ``settings``; a failed one is recorded with ``error``."""
    domain = private_domain_id()
    profile = {}
    if settings.dds_profile:
        path = str(Path(settings.dds_profile).resolve())
        profile = {var: path for var in PROFILE_VARS}
        os.environ.update(profile)  # this process's participant too (read at rclpy init)
    env = child_env(domain, extra=profile)
    if settings.threads:
        threads = str(settings.threads)
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    client = NodeClient.on_domain(
        domain, NODE_NAME, image_topic=None, labels="stamps", client_name="ovseg_bench_listener"
    )
    client.track_stamps(ECHO_LABELS)
    records = []
    all_cases = cases(settings)
    try:
        with tempfile.TemporaryDirectory(prefix="ovseg_node_bench_") as tmp:
            for number, case in enumerate(all_cases, 1):
                print(f"[{number}/{len(all_cases)}] node {case.label}", file=log, flush=True)
                try:
                    records.append(bench_case(client, env, Path(tmp), case, settings))
                except (HarnessError, ValueError, OSError) as exc:
                    print(f"warning: {case.label}: {exc}", file=log, flush=True)
                    records.append(
                        {
                            "method": case.method or "default",
                            "device": case.device or "default",
                            "dtype": case.dtype or "default",
                            "size": f"{case.size[0]}x{case.size[1]}",
                            "error": str(exc).splitlines()[0],
                        }
                    )
    finally:
        client.close()
    return records


HEADER = (
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
    "engine alone p50/p90/p99",
    "engine in node p50/p90/p99",
    "in node / alone",
    "overhead p50",
    "lost in transport",
    "dropped by node",
    "later than 1 period",
)


def row(record: dict) -> list[Any]:
    """The table cells of one node record (latencies in ms, ``-`` where unknown)."""

    def trio(values: dict) -> str:
        return "/".join(fmt(values[k], 1) for k in ("p50", "p90", "p99"))

    r = record
    if "error" in r:
        cells = [r["method"], r["device"], r["dtype"], "-", r["size"], "failed"]
        return cells + ["-"] * (len(HEADER) - len(cells))
    ratio = r["engine_ratio_p50"]
    return [
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
        trio(r["engine_alone_ms"]),
        trio(r["engine_in_node_ms"]),
        "-" if ratio is None else f"{ratio:.2f}x",
        fmt(r["overhead_p50_ms"], 1),
        r["lost_in_transport"],
        r["dropped_by_node"],
        r["late"],
    ]
