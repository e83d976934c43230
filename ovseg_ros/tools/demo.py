"""A self-contained tour of the node over real DDS: camera -> ovseg -> planner.

``ovseg-demo`` (or ``python3 -m ovseg_ros.tools.demo``) starts the segmentation node, a
camera that publishes frames (a synthetic street-like scene, or ``--image photo.jpg``) and a
small "planner" that reads ``~/labels`` and ``~/vocabulary`` and, halfway through, changes the
classes through the standard SetParameters service, as a real planner would. It prints what
the planner sees.

It never touches a live node: everything runs under its own namespace (``/ovseg_demo``: node
``/ovseg_demo/ovseg``), on a random private ROS domain id with discovery limited to this
machine, unless ``--domain-id`` / ``--use-env-domain`` say otherwise; it prints where it runs
and refuses to start when its node name is already taken there.

With real weights on the machine it uses them; otherwise (``--preset auto``) it says so and
runs the tiny random models, which exercise the same code but label nothing meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time

import numpy as np

from ovseg_ros.segmentation.config import PRESETS
from ovseg_ros.segmentation.methods import METHODS
from ovseg_ros.tools.cli import EXIT_FAILED, EXIT_USAGE

DEFAULT_NAMESPACE = "/ovseg_demo"
MAX_DOMAIN_ID = 232  # the highest id Fast DDS / Cyclone DDS map to valid ports
PRIVATE_DOMAINS = range(1, 201)  # random picks; 0 is every machine's default


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
    domain = random.SystemRandom().choice([d for d in PRIVATE_DOMAINS if d not in taken])
    return domain, True, "a random private domain; --domain-id N to choose one"


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
        help="ROS domain id (default: a random one in 1..200, not ROS_DOMAIN_ID's); "
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
    from rclpy.exceptions import InvalidNamespaceException
    from rclpy.validate_namespace import validate_namespace

    try:
        validate_namespace(args.namespace)
        domain, localhost, why = choose_domain(args, dict(os.environ))
    except (InvalidNamespaceException, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    local = ""
    if localhost:  # read by rcl when rclpy initialises
        name, value = local_discovery_env(os.environ.get("ROS_DISTRO", ""))
        os.environ[name] = value
        local = f" {name}={value}"
    return _run(args, domain, local, why)


def local_discovery_env(distro: str) -> tuple[str, str]:
    """The environment variable that keeps DDS discovery on this machine: Humble's
    ``ROS_LOCALHOST_ONLY``, deprecated since Iron for ``ROS_AUTOMATIC_DISCOVERY_RANGE``."""
    if distro.strip().lower() == "humble":
        return "ROS_LOCALHOST_ONLY", "1"
    return "ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST"


def _run(args: argparse.Namespace, domain: int, local: str, why: str) -> int:
    """The demo on ``domain``; ``local``: the discovery setting it runs with ("" if none)."""
    import rclpy
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter as RclpyParameter
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile, qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from ovseg_ros.ros.node import SegmentNode

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
    first = ["background; sky; wall; road", "person; pedestrian", "car"]
    second = ["background; sky; road", "wall; building", "person", "door"]

    rclpy.init(domain_id=domain)
    planner = Node("demo_planner", namespace=namespace)
    if _name_taken(planner, namespace, "ovseg"):
        print(
            f"error: a node {node_name} already runs on ROS domain {domain}; the demo never "
            "shares a node's name: pass another --namespace (or --domain-id)",
            file=sys.stderr,
        )
        planner.destroy_node()
        rclpy.try_shutdown()
        return EXIT_USAGE
    overrides = [
        RclpyParameter("method", value=args.method),
        RclpyParameter("preset", value=preset),
        RclpyParameter("device", value=args.device),
        RclpyParameter("classes", value=first),
        RclpyParameter("confidence_classes", value=["person"]),
    ]
    seg_node = SegmentNode(namespace=namespace, parameter_overrides=overrides)
    if getattr(seg_node, "autostart_failed", False):
        seg_node.destroy_node()
        planner.destroy_node()
        rclpy.try_shutdown()
        return EXIT_FAILED
    camera_pub = planner.create_publisher(Image, camera_topic, qos_profile_sensor_data)
    vocab: dict[int, dict] = {}
    sent: set[tuple[int, int]] = set()
    seen: list[tuple[float, int, np.ndarray]] = []
    foreign = [0]  # label images of frames this camera did not send
    latched = QoSProfile(depth=1, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)

    def on_vocabulary(msg: String) -> None:
        data = json.loads(msg.data)
        if data["version"] in vocab:
            return  # published again (latched, or before its first labels)
        vocab[data["version"]] = data
        print(f"[planner] vocabulary v{data['version']}: {[c['name'] for c in data['classes']]}")

    def on_labels(msg: Image) -> None:
        if (msg.header.stamp.sec, msg.header.stamp.nanosec) not in sent:
            foreign[0] += 1
            return
        labels = np.frombuffer(bytes(msg.data), np.uint8 if msg.encoding == "mono8" else np.uint16)
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        seen.append((stamp, max(vocab) if vocab else 0, np.bincount(labels)))

    planner.create_subscription(String, f"{node_name}/vocabulary", on_vocabulary, latched)
    planner.create_subscription(Image, f"{node_name}/labels", on_labels, 10)
    client = planner.create_client(SetParameters, f"{node_name}/set_parameters")

    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(seg_node)
    executor.add_node(planner)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    code = 0
    try:
        for i in range(args.frames):
            if foreign[0]:
                print(
                    f"error: {node_name}/labels carries labels of frames this camera never sent:"
                    f" another node has this name on ROS domain {domain}; stopping before it is"
                    " asked to change its classes (use another --namespace)",
                    file=sys.stderr,
                )
                break
            msg = Image(height=frame.shape[0], width=frame.shape[1], encoding="rgb8")
            msg.step = frame.shape[1] * 3
            msg.data = frame.tobytes()
            msg.header.frame_id = "camera_color_optical_frame"
            msg.header.stamp = planner.get_clock().now().to_msg()
            sent.add((msg.header.stamp.sec, msg.header.stamp.nanosec))
            camera_pub.publish(msg)
            if i == args.frames // 2:
                value = ParameterValue(type=ParameterType.PARAMETER_STRING_ARRAY)
                value.string_array_value = second
                request = SetParameters.Request(parameters=[Parameter(name="classes", value=value)])
                if client.wait_for_service(timeout_sec=5.0):
                    reply = client.call(request, timeout_sec=30.0)
                    ok = reply is not None and reply.results[0].successful
                    print(f"[planner] asked for {second}: {'accepted' if ok else 'refused'}")
            time.sleep(1.0 / args.rate)
        deadline = time.time() + 10.0
        while time.time() < deadline and len(seen) < 2:
            time.sleep(0.1)
        for stamp, version, counts in seen[-3:]:
            names = [c["name"] for c in vocab.get(version, {"classes": []})["classes"]]
            share = {
                names[i] if i < len(names) else i: f"{100 * n / counts.sum():.0f}%"
                for i, n in enumerate(counts)
                if n
            }
            print(f"[planner] frame {stamp:.3f}: vocabulary v{version}, pixels per class {share}")
        print(
            f"[demo] camera sent {args.frames} frames, planner got {len(seen)} label images "
            f"(the node keeps only the newest frame while busy) and {foreign[0]} of other "
            f"frames, preset={preset}, domain {domain}, node {node_name}",
            flush=True,
        )
        if not seen or foreign[0]:
            code = EXIT_FAILED
    except KeyboardInterrupt:
        pass
    finally:
        executor.shutdown(timeout_sec=2.0)
        seg_node.close() if hasattr(seg_node, "close") else None
        seg_node.destroy_node()
        planner.destroy_node()
        rclpy.try_shutdown()
    return code


def _name_taken(
    node,
    namespace: str,
    name: str,
    settle_s: float = 1.0,
    least_s: float = 2.0,
    most_s: float = 6.0,
) -> bool:
    """Whether a node ``namespace/name`` shows up in the graph. Discovery is asynchronous:
    waits at least ``least_s`` and until the graph has not changed for ``settle_s`` (at most
    ``most_s``). Best effort: the labels' stamps are checked as well (see ``_run``)."""
    start = last_change = time.monotonic()
    graph = None
    while True:
        names = set(node.get_node_names_and_namespaces())
        if (name, namespace) in names:
            return True
        now = time.monotonic()
        if names != graph:
            graph, last_change = names, now
        if now - start >= most_s or (now - start >= least_s and now - last_change >= settle_s):
            return False
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
