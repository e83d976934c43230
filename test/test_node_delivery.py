"""Every frame of a reliable camera is labelled: the node (its own process, default
parameters, tiny preset on the CPU) against a camera process publishing 640x480 and 1280x720
rgb8 at 5 Hz with a driver's usual QoS (reliable, keep-last 10), over real DDS on a private
domain. Labels are matched to frames by their header stamps; no timing is asserted. A reliable
transport delivers large frames in bursts at times; the worker's second slot absorbs them
while the engine is under half the camera's period.

With the old best-effort default, Fast DDS lost most of these frames (README, "Large images
and DDS"); ``qos_reliability: auto`` subscribes reliable because the camera is.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import pytest

from ovseg_ros.tools.node_bench import node_command
from ovseg_ros.tools.node_bench_procs import (
    CAMERA_TOPIC,
    LABELS_TOPIC,
    Listener,
    Process,
    wait_for,
)

RATE_HZ, DURATION_S = 5.0, 20.0  # 100 frames per size: 99% allows one
SIZES = ((640, 480), (1280, 720))
DOMAIN_ID = random.Random(os.getpid() ^ time.time_ns()).randint(1, 200)

pytestmark = pytest.mark.timeout(600)


def camera(env: dict[str, str], width: int, height: int) -> dict:
    """The camera process: warm-up frames, a pause, then the measured frames' stamps."""
    command = [sys.executable, "-m", "ovseg_ros.tools.node_bench_procs", "camera"]
    command += ["--topic", CAMERA_TOPIC, "--size", f"{width}x{height}"]
    command += ["--rate", str(RATE_HZ), "--duration", str(DURATION_S)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def last_diagnostics(listener: Listener) -> dict[str, str]:
    """The node's counters and timings, for the failure message."""
    keys = ("frames_received", "frames_processed", "frames_dropped", "frames_lost_in_transport")
    keys += ("inference_p50_ms", "inference_p99_ms", "latency_p50_ms", "latency_p99_ms")
    with listener.lock:
        values = listener.diagnostics[-1][1] if listener.diagnostics else {}
    return {k: values.get(k, "?") for k in keys}


def test_every_frame_of_a_reliable_camera_is_labelled(tmp_path) -> None:
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID), RCUTILS_LOGGING_BUFFERED_STREAM="0")
    listener = Listener(DOMAIN_ID)
    args = ["--ros-args", "-r", f"image:={CAMERA_TOPIC}"]
    args += ["-p", "preset:=tiny", "-p", "device:=cpu"]  # everything else: the defaults
    node = Process([*node_command(), *args], env, tmp_path, "node")
    try:
        wait_for(lambda: listener.publishers(LABELS_TOPIC) > 0, 120, node, "the node to start")
        for width, height in SIZES:
            listener.reset()
            shot = camera(env, width, height)
            sent = shot["stamps"]
            assert len(sent) == RATE_HZ * DURATION_S

            def labelled(sent=sent) -> int:
                with listener.lock:
                    return sum(s in listener.arrivals[LABELS_TOPIC] for s in sent)

            try:
                wait_for(lambda s=sent: labelled() == len(s), 10, node, "the last labels")
            except RuntimeError:
                pass  # counted below
            assert labelled() >= 0.99 * len(sent), (
                f"{width}x{height}: {labelled()} of {len(sent)} frames labelled; the node's "
                f"diagnostics: {last_diagnostics(listener)}\n{node.tail(30)}"
            )
        assert "switched to reliable (qos_reliability auto" in node.tail(200)
    finally:
        node.stop()
        listener.close()
