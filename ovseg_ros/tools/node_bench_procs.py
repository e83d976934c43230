"""The processes of ``ovseg-bench --node`` besides the node: a camera, an echo (the transport
floor), and this process's listener (labels and /diagnostics), plus child-process handling
and the latency arithmetic (also used by ``scripts/dds_delivery.py``).

The camera and the echo run as ``python -m ovseg_ros.tools.node_bench_procs camera|echo ...``;
they need only rclpy and sensor_msgs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

NODE_NAME = "ovseg"  # the default name: a params file's section applies
CAMERA_TOPIC = "/ovseg_bench/camera/image"
LABELS_TOPIC = f"/{NODE_NAME}/labels"
ECHO_IN = "/ovseg_bench/echo/image"
ECHO_LABELS, ECHO_CONFIDENCE = "/ovseg_bench/echo/labels", "/ovseg_bench/echo/confidence"
WARMUP_S = 1.0  # frames before the measured ones (first-inference costs), not counted
PAUSE_S = 1.0  # between warm-up and measurement: the diagnostics counters settle
DIAGNOSTICS_PERIOD_S = 0.25
STARTUP_TIMEOUT_S = 300.0  # model build; the random preset on a slow CPU takes a while
CAMERA_DEPTH, NODE_DEPTH = 10, 5  # a driver's publisher; the node's qos_depth default


class Listener:
    """This process's DDS side: labels of the node and of the echo, and /diagnostics."""

    def __init__(self, domain: int) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node("ovseg_bench_listener", context=self.context)
        self.lock = threading.Lock()
        self.arrivals: dict[str, dict[int, int]] = {LABELS_TOPIC: {}, ECHO_LABELS: {}}
        self.diagnostics: deque[tuple[int, dict[str, str]]] = deque(maxlen=1000)
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.subscriptions = {
            topic: self.node.create_subscription(
                Image, topic, lambda msg, t=topic: self._on_label(t, msg), reliable
            )
            for topic in self.arrivals
        }
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, reliable)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_label(self, topic: str, msg: Any) -> None:
        now = time.time_ns()
        with self.lock:
            self.arrivals[topic].setdefault(stamp_ns(msg), now)

    def _on_diag(self, msg: Any) -> None:
        now = time.time_ns()
        for status in msg.status:
            if status.name.startswith(f"{NODE_NAME}:") or status.name == NODE_NAME:
                with self.lock:
                    self.diagnostics.append((now, {kv.key: kv.value for kv in status.values}))

    def reset(self) -> None:
        with self.lock:
            for arrivals in self.arrivals.values():
                arrivals.clear()
            self.diagnostics.clear()

    def subscriber_reliability(self, topic: str, node_name: str) -> str | None:
        """'reliable' / 'best_effort' of ``node_name``'s subscription to ``topic``, if any."""
        for info in self.node.get_subscriptions_info_by_topic(topic):
            if info.node_name == node_name:
                return info.qos_profile.reliability.name.lower()
        return None

    def publishers(self, topic: str) -> int:
        return self.subscriptions[topic].get_publisher_count()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5)
        self.node.destroy_node()
        self.context.try_shutdown()


class Process:
    """A child process whose output goes to a log file (tail shown when it fails)."""

    def __init__(self, command: list[str], env: dict[str, str], log_dir: Path, name: str) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        """Close stdin (the echo's stop signal), then SIGINT, then kill."""
        if self.alive():
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=1.0)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.send_signal(2)  # SIGINT: the node's clean shutdown
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self._log.close()


def wait_for(
    predicate: Callable[[], bool], timeout: float, process: Process | None = None, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process is not None and not process.alive():
            raise RuntimeError(f"{process.name} exited while waiting for {what}:\n{process.tail()}")
        if time.monotonic() > deadline:
            tail = f":\n{process.tail()}" if process is not None else ""
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}{tail}")
        time.sleep(0.05)


# -- latencies --------------------------------------------------------------------------------


def stamp_ns(msg: Any) -> int:
    """A message's header stamp in ns (the camera's wall-clock publish time)."""
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def latencies_ms(sent: list[int], arrivals: dict[int, int]) -> np.ndarray:
    """``[K]`` arrival - publish times (ms) of the ``sent`` stamps that arrived."""
    return np.array([(arrivals[s] - s) / 1e6 for s in sent if s in arrivals], dtype=np.float64)


def percentiles(values: np.ndarray) -> dict[str, float | None]:
    """p50 / p90 / p99 of ``values`` (None each when empty)."""
    if values.size == 0:
        return {"p50": None, "p90": None, "p99": None}
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)}


# -- the child roles: camera and echo ---------------------------------------------------------


def wait_for_subscriber(publisher: Any, timeout: float) -> bool:
    """Wait (up to ``timeout`` s) until ``publisher`` has a subscriber, then half a second for
    the subscriber's side of the match; whether one was seen."""
    deadline = time.monotonic() + timeout
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    matched = publisher.get_subscription_count() > 0
    time.sleep(0.5)
    return matched


def publish_at_rate(publisher: Any, msg: Any, count: int, rate: float) -> list[int]:
    """Publish ``msg`` ``count`` times at ``rate`` Hz, each stamped with the wall clock (shared
    by every process on the machine); the stamps (ns)."""
    stamps, start = [], time.monotonic()
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
        publisher.publish(msg)
        stamps.append(now)
    return stamps


def spin_until_stdin_closes(node: Any) -> None:
    """Spin ``node`` until this process's stdin closes (the parent's stop signal), then shut
    rclpy down."""
    import rclpy

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.is_set():
        rclpy.spin_once(node, timeout_sec=0.05)
    node.destroy_node()
    rclpy.try_shutdown()


def _frame(width: int, height: int) -> bytes:
    """Two colored halves with noise: a frame the models can tell apart (content is cheap)."""
    rng = np.random.default_rng(0)
    image = np.empty((height, width, 3), np.uint8)
    image[:, : width // 2] = (200, 40, 40)
    image[:, width // 2 :] = (40, 40, 200)
    image ^= rng.integers(0, 16, image.shape, dtype=np.uint8)
    return image.tobytes()


def camera_main(topic: str, width: int, height: int, rate: float, duration: float) -> dict:
    """Publish warm-up frames, pause, then the measured frames; report their stamps."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("ovseg_bench_camera")
    qos = QoSProfile(depth=CAMERA_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
    publisher = node.create_publisher(Image, topic, qos)
    wait_for_subscriber(publisher, 30)
    msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
    msg.header.frame_id = "camera"
    msg.data = _frame(width, height)  # converted once, reused for every frame

    publish_at_rate(publisher, msg, max(1, round(WARMUP_S * rate)), rate)
    time.sleep(PAUSE_S)
    start_ns = time.time_ns()
    stamps = publish_at_rate(publisher, msg, max(1, round(duration * rate)), rate)
    end_ns = time.time_ns()
    time.sleep(0.5)  # a reliable writer finishes its repairs
    node.destroy_node()
    rclpy.try_shutdown()
    return {"stamps": stamps, "start_ns": start_ns, "end_ns": end_ns}


def echo_main(reliability: str) -> None:
    """Answer every frame with a label (mono8) and a confidence (32FC1) of its size."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("ovseg_bench_echo")
    out_qos = QoSProfile(depth=NODE_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
    labels_pub = node.create_publisher(Image, ECHO_LABELS, out_qos)
    confidence_pub = node.create_publisher(Image, ECHO_CONFIDENCE, out_qos)
    outputs: dict[tuple[int, int], tuple[Any, Any]] = {}

    def on_frame(frame: Image) -> None:
        key = (frame.width, frame.height)
        if key not in outputs:  # allocated once per size: the floor computes nothing
            labels = Image(
                height=frame.height,
                width=frame.width,
                encoding="mono8",
                step=frame.width,
                data=bytes(frame.width * frame.height),
            )
            confidence = Image(
                height=frame.height,
                width=frame.width,
                encoding="32FC1",
                step=4 * frame.width,
                data=bytes(4 * frame.width * frame.height),
            )
            outputs[key] = (labels, confidence)
        labels, confidence = outputs[key]
        labels.header = confidence.header = frame.header
        labels_pub.publish(labels)
        confidence_pub.publish(confidence)

    policy = ReliabilityPolicy[reliability.upper()]
    node.create_subscription(
        Image, ECHO_IN, on_frame, QoSProfile(depth=NODE_DEPTH, reliability=policy)
    )
    spin_until_stdin_closes(node)


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="node_bench")
    roles = parser.add_subparsers(dest="role", required=True)
    camera = roles.add_parser("camera")
    camera.add_argument("--topic", required=True)
    camera.add_argument("--size", required=True)
    camera.add_argument("--rate", type=float, required=True)
    camera.add_argument("--duration", type=float, required=True)
    echo = roles.add_parser("echo")
    echo.add_argument("--reliability", choices=("reliable", "best_effort"), required=True)
    args = parser.parse_args(argv)
    if args.role == "camera":
        width, height = (int(v) for v in args.size.split("x"))
        report = camera_main(args.topic, width, height, args.rate, args.duration)
        print(json.dumps(report), flush=True)
    else:
        echo_main(args.reliability)
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
