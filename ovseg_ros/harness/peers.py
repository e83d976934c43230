"""The harness's peer processes and how to run them from another process. Each runs as
``python -m ovseg_ros.harness.peer_roles ROLE ...`` (:mod:`.peer_roles`):

- ``camera``: publishes one frame (the two-tone test frame, or an ``.npy`` file) the way a
  camera driver does (reliable, keep-last 10) at a fixed rate, stamped with the wall clock
  (shared by every process on the machine): warm-up frames, a pause, then the measured
  frames. It prints ``event warmup|pause|measure`` as each phase starts and, at the end,
  ``report {json}`` with every stamp.
- ``echo``: answers each frame with a mono8 label and a 32FC1 confidence image of its size,
  computing nothing: its latency is the transport floor a node cannot beat.
- ``recorder``: notes when each frame arrives (by stamp) and writes them to a JSON file when
  it is stopped.

The echo and the recorder run until SIGINT (:meth:`.process.ChildProcess.stop`).
:func:`run_camera`, :func:`start_echo` and :func:`start_recorder` start them.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ovseg_ros.harness.process import ChildProcess, HarnessError

CAMERA_DEPTH = 10  # a driver's publisher: reliable, keep-last 10
NODE_DEPTH = 5  # the node's qos_depth default: the echo subscribes and publishes like it
MATCH_TIMEOUT_S = 30.0  # the camera waits this long for a subscriber
CAMERA_NODE, ECHO_NODE, RECORDER_NODE = "harness_camera", "harness_echo", "harness_recorder"


def _peer(role: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "ovseg_ros.harness.peer_roles", role, *args]


# -- the camera ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraShot:
    """What the camera sent: wall-clock stamps (ns) of the warm-up and the measured frames,
    the measured phase's start and end, and whether a subscriber was matched."""

    warmup_stamps: list[int]
    stamps: list[int]
    start_ns: int
    end_ns: int
    matched: bool


def run_camera(
    env: Mapping[str, str],
    log_path: str | Path,
    topic: str,
    size: tuple[int, int],
    rate: float,
    duration: float,
    *,
    warmup_s: float = 0.0,
    pause_s: float = 0.0,
    frame: str | Path | None = None,
    on_event: Callable[[str], None] | None = None,
) -> CameraShot:
    """Run the camera process to its end; ``on_event(phase)`` as each phase starts
    (``warmup``, ``pause``, ``measure``: read from its output as it goes, no polling).
    :class:`.process.HarnessError` when it fails or runs far over its schedule."""
    width, height = size
    command = _peer("camera", "--topic", topic, "--size", f"{width}x{height}")
    command += ["--rate", repr(rate), "--duration", repr(duration)]
    command += ["--warmup", repr(warmup_s), "--pause", repr(pause_s)]
    if frame is not None:
        command += ["--frame", str(frame)]
    camera = ChildProcess(command, env, log_path, name="camera", capture_stdout=True)
    limit = 60.0 + MATCH_TIMEOUT_S + warmup_s + pause_s + duration
    watchdog = threading.Timer(limit, camera.kill)
    watchdog.start()
    report = None
    try:
        for line in camera.stdout:
            kind, _, text = line.strip().partition(" ")
            if kind == "event" and on_event is not None:
                on_event(text)
            elif kind == "report":
                report = json.loads(text)
    finally:
        watchdog.cancel()
        code = camera.stop()
    if code != 0 or report is None:
        raise HarnessError(f"the camera process failed ({code}):\n{camera.tail(30)}")
    return CameraShot(**report)


def start_echo(
    env: Mapping[str, str],
    log_path: str | Path,
    reliability: str,
    topic_in: str,
    labels_topic: str,
    confidence_topic: str,
) -> ChildProcess:
    """The echo process: subscribes ``topic_in`` (``reliability``, the node's depth), answers
    on ``labels_topic`` and ``confidence_topic`` (reliable, as the node publishes)."""
    command = _peer("echo", "--in", topic_in, "--labels", labels_topic)
    command += ["--confidence", confidence_topic, "--reliability", reliability]
    return ChildProcess(command, env, log_path, name="echo")


def start_recorder(
    env: Mapping[str, str],
    log_path: str | Path,
    topic: str,
    reliability: str,
    depth: int,
    out: str | Path,
) -> ChildProcess:
    """The recorder process: arrival times of ``topic``'s frames, written to ``out`` (JSON)
    when it is stopped (:func:`read_arrivals`)."""
    command = _peer("recorder", "--topic", topic, "--reliability", reliability)
    command += ["--depth", str(depth), "--out", str(out)]
    return ChildProcess(command, env, log_path, name="recorder")


def read_arrivals(path: str | Path) -> dict[int, int]:
    """The recorder's file: frame stamp (ns) -> arrival wall-clock time (ns)."""
    return {int(stamp): at for stamp, at in json.loads(Path(path).read_text()).items()}
