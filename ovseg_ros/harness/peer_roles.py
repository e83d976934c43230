"""What runs inside each harness peer process: ``python -m ovseg_ros.harness.peer_roles
camera|echo|recorder ...`` (:mod:`.peers` starts them and says what each does)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from ovseg_ros.harness.frames import rgb8_message, two_tone_rgb
from ovseg_ros.harness.peers import (
    CAMERA_DEPTH,
    CAMERA_NODE,
    ECHO_NODE,
    MATCH_TIMEOUT_S,
    NODE_DEPTH,
    RECORDER_NODE,
)
from ovseg_ros.stamps import split_ns, stamp_ns


def _publish_at_rate(publisher: Any, msg: Any, count: int, rate: float) -> list[int]:
    """Publish ``msg`` ``count`` times at ``rate`` Hz, each stamped with the wall clock."""
    stamps, start = [], time.monotonic()
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = split_ns(now)
        publisher.publish(msg)
        stamps.append(now)
    return stamps


def _wait_for_subscriber(publisher: Any, timeout: float) -> bool:
    """Wait until ``publisher`` has a subscriber, then half a second for the subscriber's
    side of the match; whether one was seen."""
    deadline = time.monotonic() + timeout
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    matched = publisher.get_subscription_count() > 0
    time.sleep(0.5)
    return matched


def _event(text: str) -> None:
    print(f"event {text}", flush=True)


def camera_main(args: argparse.Namespace) -> int:
    width, height = (int(v) for v in args.size.split("x"))
    pixels = two_tone_rgb(width, height) if args.frame is None else np.load(args.frame)
    if pixels.shape != (height, width, 3):
        raise SystemExit(f"--frame {args.frame}: shape {pixels.shape}, not {(height, width, 3)}")
    rclpy.init()
    node = rclpy.create_node(CAMERA_NODE)
    publisher = node.create_publisher(Image, args.topic, _qos("reliable", CAMERA_DEPTH))
    matched = _wait_for_subscriber(publisher, MATCH_TIMEOUT_S)
    msg = rgb8_message(pixels)  # converted once, restamped for every frame

    warmup: list[int] = []
    if args.warmup > 0:
        _event("warmup")
        warmup = _publish_at_rate(publisher, msg, max(1, round(args.warmup * args.rate)), args.rate)
        _event("pause")
        time.sleep(args.pause)
    _event("measure")
    start_ns = time.time_ns()
    stamps = _publish_at_rate(publisher, msg, max(1, round(args.duration * args.rate)), args.rate)
    end_ns = time.time_ns()
    time.sleep(0.5)  # a reliable writer finishes its repairs before the process goes away
    node.destroy_node()
    rclpy.try_shutdown()
    report = {"warmup_stamps": warmup, "stamps": stamps, "start_ns": start_ns, "end_ns": end_ns}
    print("report " + json.dumps({**report, "matched": matched}), flush=True)
    return 0


# -- the echo and the recorder -------------------------------------------------------------------


def _spin_until_stopped(node: Any) -> None:
    """Spin until SIGINT (rclpy's handler shuts the context down), then clean up."""
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def _qos(reliability: str, depth: int) -> QoSProfile:
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy[reliability.upper()])


def echo_main(args: argparse.Namespace) -> int:
    rclpy.init()
    node = rclpy.create_node(ECHO_NODE)
    labels_pub = node.create_publisher(Image, args.labels, _qos("reliable", NODE_DEPTH))
    confidence_pub = node.create_publisher(Image, args.confidence, _qos("reliable", NODE_DEPTH))
    outputs: dict[tuple[int, int], tuple[Image, Image]] = {}

    def on_frame(frame: Image) -> None:
        width, height = frame.width, frame.height
        if (width, height) not in outputs:  # allocated once per size: the floor computes nothing
            labels = Image(height=height, width=width, encoding="mono8", step=width)
            labels.data = bytes(width * height)
            confidence = Image(height=height, width=width, encoding="32FC1", step=4 * width)
            confidence.data = bytes(4 * width * height)
            outputs[width, height] = (labels, confidence)
        labels, confidence = outputs[width, height]
        labels.header = confidence.header = frame.header
        labels_pub.publish(labels)
        confidence_pub.publish(confidence)

    node.create_subscription(Image, args.topic_in, on_frame, _qos(args.reliability, NODE_DEPTH))
    _spin_until_stopped(node)
    return 0


def recorder_main(args: argparse.Namespace) -> int:
    rclpy.init()
    node = rclpy.create_node(RECORDER_NODE)
    arrivals: dict[int, int] = {}

    def on_frame(msg: Image) -> None:
        arrivals.setdefault(stamp_ns(msg.header.stamp), time.time_ns())

    node.create_subscription(Image, args.topic, on_frame, _qos(args.reliability, args.depth))
    try:
        _spin_until_stopped(node)
    finally:
        Path(args.out).write_text(json.dumps({str(k): v for k, v in arrivals.items()}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovseg_ros.harness.peer_roles")
    roles = parser.add_subparsers(dest="role", required=True)
    camera = roles.add_parser("camera", help="publish frames at a rate; report their stamps")
    camera.add_argument("--topic", required=True)
    camera.add_argument("--size", required=True, metavar="WxH")
    camera.add_argument("--rate", type=float, required=True, help="Hz")
    camera.add_argument("--duration", type=float, required=True, help="measured seconds")
    camera.add_argument("--warmup", type=float, default=0.0, help="seconds of warm-up frames")
    camera.add_argument("--pause", type=float, default=0.0, help="seconds after the warm-up")
    camera.add_argument("--frame", help=".npy file of uint8 [H, W, 3] RGB (default: two-tone)")
    reliabilities = ("reliable", "best_effort")
    echo = roles.add_parser("echo", help="answer each frame with empty labels and confidence")
    echo.add_argument("--in", dest="topic_in", required=True)
    echo.add_argument("--labels", required=True)
    echo.add_argument("--confidence", required=True)
    echo.add_argument("--reliability", choices=reliabilities, required=True)
    recorder = roles.add_parser("recorder", help="note when each frame arrives")
    recorder.add_argument("--topic", required=True)
    recorder.add_argument("--reliability", choices=reliabilities, required=True)
    recorder.add_argument("--depth", type=int, default=NODE_DEPTH)
    recorder.add_argument("--out", required=True, help="JSON file: stamp -> arrival (ns)")
    args = parser.parse_args(argv)
    run = {"camera": camera_main, "echo": echo_main, "recorder": recorder_main}[args.role]
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
