"""Real rosbag2 bags (sqlite3 and mcap) written with ``rosbags``, and readers for the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability
from rosbags.interfaces import QosTime as T
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

TS = get_typestore(Stores.ROS2_JAZZY)
Image = TS.types["sensor_msgs/msg/Image"]
Header = TS.types["std_msgs/msg/Header"]
Time = TS.types["builtin_interfaces/msg/Time"]
String = TS.types["std_msgs/msg/String"]

H, W = 32, 40
T0 = 1_700_000_000_000_000_000  # bag (receive) time of the first frame, ns
LATCHED = Qos(
    QosHistory.KEEP_LAST,
    1,
    QosReliability.RELIABLE,
    QosDurability.TRANSIENT_LOCAL,
    T(0, 0),
    T(0, 0),
    QosLiveliness.AUTOMATIC,
    T(0, 0),
    False,
)


def scene(seed: int) -> np.ndarray:
    """A small synthetic RGB frame [H, W, 3]: colored blocks plus noise, different per seed."""
    rng = np.random.default_rng(seed)
    img = np.zeros((H, W, 3), np.uint8)
    img[: H // 2] = (90, 150, 230)
    img[H // 2 :, : W // 2] = (200, 60, 40)
    img[H // 2 :, W // 2 :] = (40, 160, 90)
    return np.clip(img + rng.integers(-40, 40, img.shape), 0, 255).astype(np.uint8)


def stamp(bag: int, i: int) -> tuple[int, int]:
    """The header stamp of frame ``i`` of bag ``bag`` (unique across bags), (sec, nanosec)."""
    return 1000 * bag + i, 1000 * i + 7


def bag_time(i: int) -> int:
    return T0 + i * 50_000_000 + 3


def raw_image(bag: int, i: int, broken: bool = False) -> object:
    """Frame ``i`` of bag ``bag``; ``broken``: a row step too small for the width."""
    sec, nanosec = stamp(bag, i)
    return Image(
        header=Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=f"robot{bag}"),
        height=H,
        width=W,
        encoding="rgb8",
        is_bigendian=0,
        step=W * 3 - 1 if broken else W * 3,
        data=scene(1000 * bag + i).reshape(-1),
    )


def camera_bag(
    path: Path, storage: str, bag: int, frames: int, broken: tuple[int, ...] = ()
) -> Path:
    """A bag of ``frames`` rgb8 frames on /cam/image (the ``broken`` ones undecodable), a
    /chatter message after each frame, and a latched /tf_static before the first."""
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        static = writer.add_connection(
            "/tf_static", "tf2_msgs/msg/TFMessage", typestore=TS, offered_qos_profiles=[LATCHED]
        )
        tf = TS.types["tf2_msgs/msg/TFMessage"](transforms=[])
        writer.write(static, T0 - 1, TS.serialize_cdr(tf, "tf2_msgs/msg/TFMessage"))
        image = writer.add_connection("/cam/image", "sensor_msgs/msg/Image", typestore=TS)
        chatter = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=TS)
        for i in range(frames):
            msg = TS.serialize_cdr(raw_image(bag, i, i in broken), "sensor_msgs/msg/Image")
            writer.write(image, bag_time(i), msg)
            text = TS.serialize_cdr(String(data=f"bag {bag} hello {i}"), "std_msgs/msg/String")
            writer.write(chatter, bag_time(i) + 1000, text)
    return path


def read_bag(path: Path) -> tuple[dict[str, list[tuple[int, bytes]]], dict[str, object]]:
    """``({topic: [(bag time, raw CDR)]}, {topic: connection})`` of a bag, in bag-time order."""
    messages: dict[str, list[tuple[int, bytes]]] = {}
    with Reader(path) as reader:
        connections = {c.topic: c for c in reader.connections}
        for topic in connections:
            messages[topic] = []
        for connection, t, raw in reader.messages():
            messages[connection.topic].append((t, bytes(raw)))
    return messages, connections


def decode(raw: bytes, msgtype: str = "sensor_msgs/msg/Image") -> object:
    return TS.deserialize_cdr(raw, msgtype)


def bag_files(path: Path) -> list[str]:
    """The file names of a bag directory (the storage file is named after the directory)."""
    return sorted(p.name for p in path.iterdir())


def break_mcap(path: Path, frame_id: str) -> None:
    """Damage the middle of an mcap bag's data: it still opens (its summary at the end is
    intact), but reading its messages fails with a truncated-record error."""
    file = next(path.glob("*.mcap"))
    data = bytearray(file.read_bytes())
    pos = -1
    for _ in range(len(data)):
        pos = data.index(frame_id.encode(), pos + 1)
        if pos > len(data) // 3:
            break
    data[pos - 46 : pos - 38] = (2**40).to_bytes(8, "little")  # an impossible record length
    file.write_bytes(bytes(data))
