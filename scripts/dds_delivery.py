#!/usr/bin/env python3
"""How many camera frames a subscriber in another process gets over Fast DDS, and how late.

One process publishes sensor_msgs/Image frames the way a camera driver does (reliable,
keep-last 10) at a fixed rate; another subscribes best-effort (the sensor-data QoS) or
reliable. Every combination of image size, subscriber QoS and Fast DDS profile placement
(none, subscriber only, publisher only, both processes) runs for a few seconds on a private
DDS domain, and a Markdown table of frames delivered and latency (publish -> callback) p50 /
p99 is printed.

    python3 scripts/dds_delivery.py                       # the full table (~4 minutes)
    python3 scripts/dds_delivery.py --sizes 640x480 --duration 2 --json out.json

Needs rclpy and sensor_msgs (the ROS 2 Jazzy PyPI wheels work) and this checkout: the camera
and the latency arithmetic are those of ``ovseg-bench --node``
(:mod:`ovseg_ros.tools.node_bench_procs`). Profiles are applied
through FASTRTPS_DEFAULT_PROFILES_FILE (read by Fast DDS 2.x, Jazzy) and
FASTDDS_DEFAULT_PROFILES_FILE (Fast DDS 3.x).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's ovseg_ros, installed or not

from ovseg_ros.tools.cli import size_arg  # noqa: E402
from ovseg_ros.tools.node_bench_procs import (  # noqa: E402
    latencies_ms,
    percentiles,
    publish_at_rate,
    spin_until_stdin_closes,
    stamp_ns,
    wait_for_subscriber,
)

DEFAULT_PROFILE = ROOT / "config" / "fastdds_large_images.xml"
PROFILE_VARS = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")
# Where the profile is applied: (publisher process, subscriber process).
PLACEMENTS = {
    "none": (False, False),
    "subscriber": (False, True),
    "publisher": (True, False),
    "both": (True, True),
}
TOPIC = "/dds_delivery/image"
MATCH_TIMEOUT_S = 20.0


# -- the two roles, each run in its own process ----------------------------------------------


def run_publisher(width: int, height: int, rate: float, duration: float) -> dict:
    """Publish `rate * duration` rgb8 frames, reliable keep-last 10; return their stamps."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("dds_delivery_camera")
    publisher = node.create_publisher(
        Image, TOPIC, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    )
    matched = wait_for_subscriber(publisher, MATCH_TIMEOUT_S)
    msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
    msg.data = bytes(width * height * 3)  # content does not matter; converted once, reused
    stamps = publish_at_rate(publisher, msg, max(1, round(rate * duration)), rate)
    time.sleep(0.5)  # let a reliable writer finish repairs before the process goes away
    node.destroy_node()
    rclpy.try_shutdown()
    return {"stamps": stamps, "matched": matched}


def run_subscriber(reliable: bool, depth: int) -> dict:
    """Record the arrival time (ns) of every frame, by its stamp, until stdin closes."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("dds_delivery_subscriber")
    arrivals: dict[int, int] = {}

    def on_image(msg: Image) -> None:
        arrivals.setdefault(stamp_ns(msg), time.time_ns())

    policy = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
    node.create_subscription(Image, TOPIC, on_image, QoSProfile(depth=depth, reliability=policy))
    spin_until_stdin_closes(node)
    return {"arrivals": arrivals}


# -- the driver ----------------------------------------------------------------------------


def _env(domain: int, profile: Path | None) -> dict[str, str]:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    for var in PROFILE_VARS:
        env.pop(var, None)
        if profile is not None:
            env[var] = str(profile)
    return env


def _role(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--role", *args]


def measure(
    size: tuple[int, int],
    reliable: bool,
    placement: str,
    args: argparse.Namespace,
) -> dict:
    """One publisher process and one subscriber process; delivery and latency of one case."""
    width, height = size
    pub_profile, sub_profile = PLACEMENTS[placement]
    domain = random.randint(1, 200)  # a private domain per case: no cross-talk, no leftovers
    subscriber = subprocess.Popen(
        _role(
            "subscriber", "--reliable" if reliable else "--best-effort", "--depth", str(args.depth)
        ),
        env=_env(domain, args.profile if sub_profile else None),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        publisher = subprocess.run(
            _role(
                "publisher",
                "--size",
                f"{width}x{height}",
                "--rate",
                str(args.rate),
                "--duration",
                str(args.duration),
            ),
            env=_env(domain, args.profile if pub_profile else None),
            capture_output=True,
            text=True,
            timeout=MATCH_TIMEOUT_S + args.duration + 30,
        )
        if publisher.returncode != 0:
            raise RuntimeError(f"publisher failed:\n{publisher.stderr[-2000:]}")
        sent = json.loads(publisher.stdout.strip().splitlines()[-1])
        time.sleep(1.0)  # frames still in flight
        out, _ = subscriber.communicate("", timeout=30)
    finally:
        if subscriber.poll() is None:
            subscriber.kill()
            subscriber.wait()
    if subscriber.returncode != 0:
        raise RuntimeError(f"subscriber exited with {subscriber.returncode}")
    arrivals = json.loads(out.strip().splitlines()[-1])["arrivals"]  # JSON keys are strings
    stamps = sent["stamps"]
    latencies = latencies_ms(stamps, {int(stamp): at for stamp, at in arrivals.items()})
    latency, delivered = percentiles(latencies), int(latencies.size)
    return {
        "size": f"{width}x{height}",
        "megabytes": width * height * 3 / 1e6,
        "subscriber_qos": "reliable" if reliable else "best_effort",
        "profile": placement,
        "sent": len(stamps),
        "matched": sent["matched"],
        "delivered": delivered,
        "delivered_pct": 100.0 * delivered / len(stamps),
        "latency_p50_ms": latency["p50"],
        "latency_p99_ms": latency["p99"],
    }


def markdown(rows: list[dict], rate: float, duration: float) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [
        f"Reliable publisher (keep-last 10), {rate:g} Hz for {duration:g} s per case, "
        "publisher and subscriber in separate processes.",
        "",
        "| size | MB | subscriber | profile in | delivered | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['megabytes']:.1f} | {r['subscriber_qos']} | {r['profile']} "
            f"| {r['delivered_pct']:.0f}% ({r['delivered']}/{r['sent']}) "
            f"| {ms(r['latency_p50_ms'])} | {ms(r['latency_p99_ms'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", nargs="+", type=size_arg, default=[(640, 480), (1280, 720), (1920, 1080)]
    )
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per case")
    parser.add_argument(
        "--qos",
        nargs="+",
        choices=["best_effort", "reliable"],
        default=["best_effort", "reliable"],
        help="subscriber reliability",
    )
    parser.add_argument(
        "--placements",
        nargs="+",
        choices=list(PLACEMENTS),
        default=list(PLACEMENTS),
        help="where the profile is applied",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=DEFAULT_PROFILE,
        help="Fast DDS XML profile (default: %(default)s)",
    )
    parser.add_argument("--depth", type=int, default=5, help="subscriber history depth")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    # Internal: the role of a child process.
    parser.add_argument("--role", choices=["publisher", "subscriber"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=size_arg, help=argparse.SUPPRESS)
    parser.add_argument("--reliable", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--best-effort", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.role == "publisher":
        print(json.dumps(run_publisher(*args.size, args.rate, args.duration)), flush=True)
        return 0
    if args.role == "subscriber":
        print(json.dumps(run_subscriber(args.reliable, args.depth)), flush=True)
        return 0
    if args.rate <= 0 or args.duration <= 0:
        parser.error("--rate and --duration must be positive")
    if not args.profile.is_file():
        parser.error(f"no such profile: {args.profile}")

    rows = []
    for size in args.sizes:
        for qos in args.qos:
            for placement in args.placements:
                row = measure(size, qos == "reliable", placement, args)
                print(
                    f"  {row['size']} {qos:11s} profile={placement:10s} "
                    f"{row['delivered_pct']:5.1f}%",
                    file=sys.stderr,
                    flush=True,
                )
                rows.append(row)
    print(markdown(rows, args.rate, args.duration))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
