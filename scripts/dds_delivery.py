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
and the recorder are the DDS harness's (:mod:`ovseg_ros.harness.peers`), the latency
arithmetic that of ``ovseg-bench node`` (:mod:`ovseg_ros.bench.measure`). Profiles are
applied through FASTRTPS_DEFAULT_PROFILES_FILE (read by Fast DDS 2.x, Jazzy) and
FASTDDS_DEFAULT_PROFILES_FILE (Fast DDS 3.x).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's ovseg_ros, installed or not

from ovseg_ros.bench.measure import latencies_ms, percentiles  # noqa: E402
from ovseg_ros.harness.domain import child_env, private_domain_id  # noqa: E402
from ovseg_ros.harness.peers import read_arrivals, run_camera, start_recorder  # noqa: E402
from ovseg_ros.tools.cli import size_arg  # noqa: E402

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


def _env(domain: int, profile: Path | None) -> dict[str, str]:
    env = child_env(domain)
    for var in PROFILE_VARS:
        env.pop(var, None)
        if profile is not None:
            env[var] = str(profile)
    return env


def measure(
    size: tuple[int, int],
    reliable: bool,
    placement: str,
    args: argparse.Namespace,
) -> dict:
    """One camera process and one recorder process; delivery and latency of one case."""
    width, height = size
    pub_profile, sub_profile = PLACEMENTS[placement]
    domain = private_domain_id()  # a private domain per case: no cross-talk, no leftovers
    qos = "reliable" if reliable else "best_effort"
    with tempfile.TemporaryDirectory(prefix="dds_delivery_") as tmp:
        work = Path(tmp)
        env = _env(domain, args.profile if sub_profile else None)
        got = work / "got.json"
        with start_recorder(env, work / "sub.log", TOPIC, qos, args.depth, got) as sub:
            shot = run_camera(
                _env(domain, args.profile if pub_profile else None),
                work / "pub.log",
                TOPIC,
                size,
                args.rate,
                args.duration,
                frame=_zeros(work, width, height),
            )
            time.sleep(1.0)  # frames still in flight
            code = sub.stop()
        if code != 0:
            raise RuntimeError(f"subscriber exited with {code}:\n{sub.tail()}")
        arrivals = read_arrivals(got)
    latencies = latencies_ms(shot.stamps, arrivals)
    latency, delivered = percentiles(latencies), int(latencies.size)
    return {
        "size": f"{width}x{height}",
        "megabytes": width * height * 3 / 1e6,
        "subscriber_qos": qos,
        "profile": placement,
        "sent": len(shot.stamps),
        "matched": shot.matched,
        "delivered": delivered,
        "delivered_pct": 100.0 * delivered / len(shot.stamps),
        "latency_p50_ms": latency["p50"],
        "latency_p99_ms": latency["p99"],
    }


def _zeros(folder: Path, width: int, height: int) -> Path:
    """A black frame as the camera's ``.npy`` (content does not matter here)."""
    path = folder / "frame.npy"
    np.save(path, np.zeros((height, width, 3), np.uint8))
    return path


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
    args = parser.parse_args(argv)
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
