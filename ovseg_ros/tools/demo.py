"""A self-contained tour of the node over real DDS: camera -> ovseg -> planner.

``ovseg-demo`` (or ``python3 -m ovseg_ros.tools.demo``) starts the segmentation node (the
``segment_node`` executable, as its own process), a camera that publishes frames (a synthetic
street-like scene, or ``--image photo.jpg``) and a small "planner" that reads ``~/labels`` and
``~/vocabulary`` and, halfway through, changes the classes through the standard
SetParameters service, as a real planner would. It prints what the planner sees. The node,
camera and planner are those of the DDS harness (:mod:`ovseg_ros.harness`).

It never touches a live node: everything runs under its own namespace (``/ovseg_demo``: node
``/ovseg_demo/ovseg``), on a random private ROS domain id with discovery limited to this
machine, unless ``--domain-id`` / ``--use-env-domain`` say otherwise; it prints where it runs
and refuses to start when its node name is already taken there.

With real weights on the machine it uses them; otherwise (``--preset auto``) it says so and
runs the tiny random models, which exercise the same code but label nothing meaningful.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rclpy.exceptions import InvalidNamespaceException
from rclpy.parameter import Parameter
from rclpy.validate_namespace import validate_namespace

from ovseg_ros.harness.client import NodeClient
from ovseg_ros.harness.domain import (
    MAX_DOMAIN_ID,
    PRIVATE_DOMAINS,
    child_env,
    local_discovery_env,
    private_domain_id,
)
from ovseg_ros.harness.frames import rgb8_message
from ovseg_ros.harness.process import HarnessError, NodeProcess, wait_for
from ovseg_ros.segmentation.config import PRESETS
from ovseg_ros.segmentation.methods import METHODS
from ovseg_ros.stamps import NS_PER_S, stamp_ns
from ovseg_ros.tools.cli import EXIT_FAILED, EXIT_USAGE

DEFAULT_NAMESPACE = "/ovseg_demo"
FIRST_CLASSES = ["background; sky; wall; road", "person; pedestrian", "car"]
SECOND_CLASSES = ["background; sky; road", "wall; building", "person", "door"]
STARTUP_TIMEOUT_S = 300.0  # the node loads its models (real weights on a CPU take a while)


def _scene(height: int = 480, width: int = 640) -> np.ndarray:
    """Sky, a wall, a road and a figure: regions with edges, so propagation has work."""
    img = np.zeros((height, width, 3), np.uint8)
    img[: height // 3] = (135, 190, 235)
    img[height // 3 : 2 * height // 3] = (170, 120, 90)
    img[2 * height // 3 :] = (70, 70, 75)
    y0, x0 = height // 3, width // 2
    img[y0 : y0 + height // 2, x0 : x0 + width // 10] = (200, 40, 40)
    noise = np.random.default_rng(0).integers(-8, 8, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def _load_image(path: str) -> np.ndarray:
    from PIL import Image as PILImage

    return np.asarray(PILImage.open(path).convert("RGB"))


def _choose_preset(preset: str, method: str) -> str:
    if preset != "auto":
        return preset
    from ovseg_ros.segmentation import SegmenterConfig
    from ovseg_ros.segmentation.weights import WeightsNotFoundError, resolve, sources_for

    try:
        for source, local, key in sources_for(SegmenterConfig(method=method, device="cpu")):
            resolve(source, local, "", False, key)
    except WeightsNotFoundError as exc:
        print(f"[demo] real weights not found ({exc})\n[demo] -> running the tiny random models")
        return "tiny"
    return "full"


def choose_domain(args: argparse.Namespace, env: dict[str, str]) -> tuple[int, bool, str]:
    """``(domain id, localhost only, why)`` for the demo.

    Default: a random id in 1..200 other than ``ROS_DOMAIN_ID`` (whatever the robot uses),
    with DDS discovery kept on this machine. ``--domain-id N``: that id, still on this machine
    (for ``ros2`` tools beside it). ``--use-env-domain``: ``ROS_DOMAIN_ID`` (0 if unset) and the
    environment's discovery settings, for watching from another machine; only the namespace
    then separates the demo from a live node.
    """
    current = env.get("ROS_DOMAIN_ID", "").strip()
    if args.use_env_domain:
        try:
            return int(current or 0), False, "ROS_DOMAIN_ID (--use-env-domain)"
        except ValueError:
            raise ValueError(f"ROS_DOMAIN_ID={current!r} is not an integer") from None
    if args.domain_id is not None:
        return args.domain_id, True, "--domain-id"
    taken = {int(current)} if current.isdigit() else set()
    return (
        private_domain_id(avoid=taken),
        True,
        "a random private domain; --domain-id N to choose one",
    )


def _domain_id(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_DOMAIN_ID:
        raise argparse.ArgumentTypeError(f"must be in 0..{MAX_DOMAIN_ID}, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ovseg-demo", description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="pearl", choices=METHODS)
    parser.add_argument(
        "--preset",
        default="auto",
        choices=("auto", *PRESETS),
        help="auto: the real weights when they are on this machine, else tiny random models",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--rate", type=float, default=5.0, help="camera frames per second")
    parser.add_argument("--image", default="", help="an image file to publish instead")
    parser.add_argument(
        "--namespace",
        default=DEFAULT_NAMESPACE,
        help=f"namespace of the demo's nodes and topics (default {DEFAULT_NAMESPACE})",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--domain-id",
        type=_domain_id,
        default=None,
        metavar="N",
        help=f"ROS domain id (default: a random one in {PRIVATE_DOMAINS.start}.."
        f"{PRIVATE_DOMAINS.stop - 1}, not ROS_DOMAIN_ID's); "
        "discovery stays on this machine",
    )
    where.add_argument(
        "--use-env-domain",
        action="store_true",
        help="run on ROS_DOMAIN_ID with the environment's discovery range (visible from other "
        "machines; only the namespace separates the demo from a live node)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        validate_namespace(args.namespace)
        domain, localhost, why = choose_domain(args, dict(os.environ))
    except (InvalidNamespaceException, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    local = ""
    if localhost:  # read by rcl when rclpy initialises (the node gets it through child_env)
        name, value = local_discovery_env(os.environ.get("ROS_DISTRO", ""))
        os.environ[name] = value
        local = f" {name}={value}"
    return _run(args, domain, local, why)


def _run(args: argparse.Namespace, domain: int, local: str, why: str) -> int:
    """The demo on ``domain``; ``local``: the discovery setting it runs with ("" if none)."""
    namespace = args.namespace
    prefix = namespace.rstrip("/")
    node_name, camera_topic = f"{prefix}/ovseg", f"{prefix}/image"
    scope = "discovery on this machine only" if local else "discovery as the environment says"
    print(
        f"[demo] ROS domain {domain} ({why}), {scope}; namespace {namespace}: node {node_name},"
        f" camera {camera_topic}\n[demo] watch it with: ROS_DOMAIN_ID={domain}{local} "
        f"ros2 topic echo {node_name}/vocabulary",
        flush=True,
    )
    preset = _choose_preset(args.preset, args.method)
    frame = _load_image(args.image) if args.image else _scene()
    planner = NodeClient.on_domain(
        domain,
        node_name,
        image_topic=camera_topic,  # reliable, as camera drivers publish (the node follows)
        client_name="demo_planner",
        namespace=namespace,
    )
    try:
        if _name_taken(planner, namespace, "ovseg"):
            print(
                f"error: a node {node_name} already runs on ROS domain {domain}; the demo never "
                "shares a node's name: pass another --namespace (or --domain-id)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        params = {
            "method": args.method,
            "preset": preset,
            "device": args.device,
            "classes": FIRST_CLASSES,
            "confidence_classes": ["person"],
        }
        print(f"[demo] starting the node: {args.method}, preset {preset} ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="ovseg_demo_") as tmp:
            env = child_env(domain, local=bool(local))
            ros_args = ["-r", f"__ns:={namespace}"]
            with NodeProcess(env, Path(tmp) / "node.log", params, ros_args) as node:
                try:
                    wait_for(
                        lambda: planner.image_pub.get_subscription_count() > 0,
                        STARTUP_TIMEOUT_S,
                        "the node to subscribe to the camera",
                        node,
                    )
                except HarnessError as exc:
                    print(f"error: the node did not start: {exc}", file=sys.stderr)
                    return EXIT_FAILED
                return _tour(args, planner, frame, preset, domain)
    except KeyboardInterrupt:
        return EXIT_FAILED
    finally:
        planner.close()


def _tour(
    args: argparse.Namespace, planner: NodeClient, frame: np.ndarray, preset: str, domain: int
) -> int:
    """Camera frames at ``args.rate``, the classes changed halfway, what the planner saw."""
    node_name = planner.path
    sent: set[int] = set()
    announced: set[int] = set()
    changed = False  # the planner's change was accepted: wait for its version below
    for i in range(args.frames):
        _announce(planner, announced)
        if _foreign(planner, sent):
            print(
                f"error: {node_name}/labels carries labels of frames this camera never sent:"
                f" another node has this name on ROS domain {domain}; stopping before it is"
                " asked to change its classes (use another --namespace)",
                file=sys.stderr,
            )
            break
        stamp = time.time_ns()
        sent.add(stamp)
        planner.image_pub.publish(rgb8_message(frame, stamp, "camera_color_optical_frame"))
        if i == args.frames // 2:
            try:
                (result,) = planner.set_parameters(Parameter("classes", value=SECOND_CLASSES))
                verdict = "accepted" if result.successful else "refused"
                changed = result.successful
            except HarnessError as exc:
                verdict = f"not answered ({exc})"
            print(f"[planner] asked for {SECOND_CLASSES}: {verdict}", flush=True)
        time.sleep(1.0 / args.rate)
    # The new classes are encoded in the background (seconds on a busy CPU): the tour ends
    # once the planner has labels and, after an accepted change, the new version.
    first = min((v["version"] for v in planner.vocabularies()), default=0)

    def done() -> bool:
        newer = any(v["version"] > first for v in planner.vocabularies())
        return len(_own(planner, sent)) >= 2 and (newer or not changed)

    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline and not done():
        time.sleep(0.1)
    _announce(planner, announced)
    seen = _own(planner, sent)
    vocabularies = planner.vocabularies()
    for msg in seen[-3:]:
        stamp = stamp_ns(msg.header.stamp)
        vocabulary = _labelled_with(vocabularies, stamp)
        names = [c["name"] for c in vocabulary["classes"]] if vocabulary else []
        labels = np.frombuffer(bytes(msg.data), np.uint8 if msg.encoding == "mono8" else np.uint16)
        counts = np.bincount(labels)
        share = {
            names[k] if k < len(names) else "unlabeled": f"{100 * n / counts.sum():.0f}%"
            for k, n in enumerate(counts)
            if n
        }
        version = vocabulary["version"] if vocabulary else "?"
        print(
            f"[planner] frame {stamp * 1e-9:.3f}: vocabulary v{version}, pixels per class {share}"
        )
    foreign = _foreign(planner, sent)
    print(
        f"[demo] camera sent {len(sent)} frames, planner got {len(seen)} label images "
        f"(the node keeps only the newest frame while busy) and {foreign} of other "
        f"frames, preset={preset}, domain {domain}, node {node_name}",
        flush=True,
    )
    return EXIT_FAILED if not seen or foreign else 0


def _own(planner: NodeClient, sent: set[int]) -> list:
    """The label images of frames this camera sent, in arrival order."""
    return [m for m in planner.labels() if stamp_ns(m.header.stamp) in sent]


def _foreign(planner: NodeClient, sent: set[int]) -> int:
    """Label images of frames this camera did not send: another node with the demo's name."""
    return sum(stamp_ns(m.header.stamp) not in sent for m in planner.labels())


def _announce(planner: NodeClient, announced: set[int]) -> None:
    """Print each vocabulary version the first time it arrives."""
    for vocabulary in planner.vocabularies():
        version = vocabulary["version"]
        if version not in announced:  # published again (latched, or before its labels)
            announced.add(version)
            names = [c["name"] for c in vocabulary["classes"]]
            print(f"[planner] vocabulary v{version}: {names}", flush=True)


def _labelled_with(vocabularies: list[dict], stamp: int) -> dict | None:
    """The vocabulary a label image stamped ``stamp`` belongs to: the highest version whose
    ``valid_from`` (of the single camera, ``""``) is not after it."""

    def valid_from(vocabulary: dict) -> int | None:
        start = vocabulary.get("valid_from", {}).get("")
        return None if start is None else start["sec"] * NS_PER_S + start["nanosec"]

    valid = [v for v in vocabularies if (start := valid_from(v)) is not None and start <= stamp]
    return max(valid, key=lambda v: v["version"], default=None)


def _name_taken(
    planner: NodeClient,
    namespace: str,
    name: str,
    settle_s: float = 1.5,
    least_s: float = 3.0,
    most_s: float = 10.0,
) -> bool:
    """Whether a node ``namespace/name`` shows up: in the graph's node names, or as a
    publisher of its ``~/vocabulary`` (which every running node has). Discovery is
    asynchronous and slower on a busy machine: waits at least ``least_s`` and until the graph
    has not changed for ``settle_s`` (at most ``most_s``). Best effort: the labels' stamps are
    checked as well (see ``_tour``)."""
    start = last_change = time.monotonic()
    graph = None
    while True:
        names = planner.node_names()
        if (name, namespace) in names or planner.publisher_count(planner.vocabulary_topic):
            return True
        now = time.monotonic()
        if names != graph:
            graph, last_change = names, now
        if now - start >= most_s or (now - start >= least_s and now - last_change >= settle_s):
            return False
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
