"""Small rosbag2 helpers on top of ``rosbags`` (pure Python, no ROS install needed).

Used by ``ovseg-replay``: open a bag with clear errors, find its storage plugin, write one
whose storage failures (a full or read-only disk) are a :class:`BagError`, copy connections
with their original definitions and QoS, build the QoS profiles the live node offers, and
remove an old or half-written output bag without ever deleting something that is not a bag.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rosbags.interfaces import (
    Connection,
    ConnectionExtRosbag2,
    MessageDefinitionFormat,
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer, WriterError

from ovseg_ros.outputs import DETECTION3D_DEFINITIONS, LABEL_INFO_DEFINITIONS

STORAGES: tuple[str, ...] = ("sqlite3", "mcap")
BAG_VERSION = 9  # rosbag2 metadata version of ROS 2 Jazzy
_STORAGE_SUFFIXES = {".db3": "sqlite3", ".mcap": "mcap"}
# What a rosbag2 directory may hold, also a half-written one (a killed sqlite3 writer leaves
# its rollback journal, or -wal/-shm in WAL mode): safe to delete on --overwrite or a rerun.
_BAG_FILE_SUFFIXES = (
    ".db3", ".db3-journal", ".db3-wal", ".db3-shm", ".mcap", ".yaml", ".zstd", ".tmp"
)  # fmt: skip
# What a storage plugin raises when the disk is full, read-only or gone.
_STORAGE_ERRORS = (OSError, sqlite3.Error)
_DEFAULT_TIME = QosTime(0, 0)  # 0 = the RMW default (infinite) for deadline, lifespan, lease


class BagError(Exception):
    """A bag cannot be read, written or replaced; the message says why."""


def new_typestore() -> Any:
    """A fresh ROS 2 Jazzy typestore (sensor_msgs/std_msgs layouts are the same in Humble).

    Fresh, because :func:`copy_connection` may register a bag's own custom types in it.
    """
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_JAZZY)


def register_vision_msgs(typestore: Any) -> None:
    """Register the vision_msgs types the outputs use (``LabelInfo``, ``Detection3DArray``
    and the types they hold) in ``typestore`` from their definitions, unless it knows them
    (vision_msgs is in no rosbags store)."""
    from rosbags.typesys import get_types_from_msg

    types: dict[str, Any] = {}
    for name, definition in {**LABEL_INFO_DEFINITIONS, **DETECTION3D_DEFINITIONS}.items():
        if name not in typestore.types:
            types.update(get_types_from_msg(definition, name))
    if types:
        typestore.register(types)


def _qos(depth: int, durability: QosDurability) -> Qos:
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=depth,
        reliability=QosReliability.RELIABLE,
        durability=durability,
        deadline=_DEFAULT_TIME,
        lifespan=_DEFAULT_TIME,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=_DEFAULT_TIME,
        avoid_ros_namespace_conventions=False,
    )


# The profiles the node's publishers offer; `ros2 bag play` republishes with them, so a
# transient-local topic (the vocabulary) is latched for late subscribers such as RViz.
RELIABLE_QOS: Qos = _qos(5, QosDurability.VOLATILE)
LATCHED_QOS: Qos = _qos(1, QosDurability.TRANSIENT_LOCAL)


def open_reader(path: str | Path) -> Reader:
    """An opened :class:`Reader` for a rosbag2 directory (or a bare ``.db3``/``.mcap`` file)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise BagError(f"input bag {path} not found")
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        raise BagError(f"{path} is not a rosbag2 bag: it has no metadata.yaml")
    try:
        reader = Reader(path)
        reader.open()
    except (ReaderError, OSError, ValueError, KeyError) as exc:
        raise BagError(f"cannot read bag {path}: {exc}") from exc
    return reader


def bag_storage(path: str | Path) -> str:
    """The storage plugin of a bag: ``"sqlite3"`` or ``"mcap"``."""
    path = Path(path).expanduser()
    if path.is_file():
        storage = _STORAGE_SUFFIXES.get(path.suffix)
        if storage is None:
            raise BagError(f"{path}: unknown storage file type {path.suffix!r}")
        return storage
    import yaml

    try:
        metadata = yaml.safe_load((path / "metadata.yaml").read_text(encoding="utf-8"))
        storage = metadata["rosbag2_bagfile_information"]["storage_identifier"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise BagError(f"{path}: cannot read the storage plugin from metadata.yaml: {exc}") from exc
    if storage not in STORAGES:
        raise BagError(f"{path}: unsupported storage plugin {storage!r}; supported: {STORAGES}")
    return storage


class BagWriter:
    """An open rosbags :class:`Writer` whose storage failures (a full or read-only disk, a
    lost device; ``OSError`` or ``sqlite3.Error`` underneath) are :class:`BagError` naming
    the bag, so that callers report them in one line."""

    def __init__(self, writer: Writer, path: Path) -> None:
        self._writer, self.path = writer, path

    def add_connection(self, topic: str, msgtype: str, **kwargs: Any) -> Connection:
        try:
            return self._writer.add_connection(topic, msgtype, **kwargs)
        except _STORAGE_ERRORS as exc:
            raise self._failed(exc) from exc

    def write(self, connection: Connection, timestamp: int, data: bytes | memoryview) -> None:
        try:
            self._writer.write(connection, timestamp, data)
        except _STORAGE_ERRORS as exc:
            raise self._failed(exc) from exc

    def close(self) -> None:
        """Finish the bag: the storage's index, then ``metadata.yaml`` (a bag without it is
        not complete)."""
        try:
            self._writer.close()
        except _STORAGE_ERRORS as exc:
            raise self._failed(exc) from exc

    def abort(self) -> None:
        """Release the files without finishing the bag (no ``metadata.yaml``): for a bag that
        is deleted next. Never raises."""
        with contextlib.suppress(Exception):
            self._writer.abort()

    def _failed(self, exc: BaseException) -> BagError:
        return BagError(f"cannot write {self.path}: {exc}")


def open_writer(path: str | Path, storage: str) -> BagWriter:
    """An opened rosbag2 writer (format version 9) with ``storage`` (sqlite3/mcap)."""
    if storage not in STORAGES:
        raise BagError(f"unsupported storage {storage!r}; supported: {', '.join(STORAGES)}")
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    try:
        writer = Writer(Path(path), version=BAG_VERSION, storage_plugin=plugin)
        writer.open()
    except (WriterError, *_STORAGE_ERRORS) as exc:
        raise BagError(f"cannot create output bag {path}: {exc}") from exc
    return BagWriter(writer, Path(path))


def copy_connection(writer: BagWriter, connection: Connection, typestore: Any) -> Connection:
    """Add ``connection`` (from a reader) to ``writer`` with the same type, definition and QoS.

    The reader's message definition and hash are kept as they are. A bag without the hash
    (recorded before Jazzy) gets it from ``typestore``, after registering the bag's own
    definition there for a type the typestore does not know; a bag without a definition
    (older sqlite3 bags) gets both from ``typestore``. Raises :class:`BagError` when the
    type cannot be described, since a bag cannot be written without its definition.
    """
    qos: list[Qos] = []
    if isinstance(connection.ext, ConnectionExtRosbag2):
        qos = list(connection.ext.offered_qos_profiles)
    msgtype, msgdef, digest = connection.msgtype, connection.msgdef.data, connection.digest
    if msgdef and not digest and msgtype not in typestore.fielddefs:
        _register(typestore, connection)
    if msgdef and not digest and msgtype in typestore.fielddefs:
        digest = typestore.hash_rihs01(msgtype)
    if msgdef and digest:
        return writer.add_connection(
            connection.topic, msgtype, msgdef=msgdef, rihs01=digest, offered_qos_profiles=qos
        )
    if msgtype in typestore.fielddefs:
        return writer.add_connection(
            connection.topic, msgtype, typestore=typestore, offered_qos_profiles=qos
        )
    raise BagError(
        f"{connection.topic}: the bag has no definition of {msgtype} and the ROS 2 Jazzy "
        "typestore does not know it"
    )


def _register(typestore: Any, connection: Connection) -> None:
    """Register the types of a connection's ``.msg`` definition (with its dependencies)."""
    if connection.msgdef.format != MessageDefinitionFormat.MSG:
        return  # IDL definitions: leave the type unknown
    from rosbags.typesys import get_types_from_msg

    try:
        typestore.register(get_types_from_msg(connection.msgdef.data, connection.msgtype))
    except Exception as exc:  # a definition rosbags cannot parse, or a clash
        raise BagError(
            f"{connection.topic}: cannot parse its {connection.msgtype} definition: {exc}"
        ) from exc


def is_bag(path: Path) -> bool:
    """A complete rosbag2 directory (with metadata.yaml) or a lone .mcap/.db3 file."""
    if path.is_dir():
        return (path / "metadata.yaml").is_file()
    return path.is_file() and path.suffix in _STORAGE_SUFFIXES


def looks_like_bag(path: Path) -> bool:
    """True for a file, or a directory holding only rosbag2 files (complete or half-written)."""
    if not path.is_dir():
        return True
    return all(
        entry.is_file() and entry.name.endswith(_BAG_FILE_SUFFIXES) for entry in path.iterdir()
    )


def remove_bag(path: Path) -> None:
    """Delete an existing output bag; refuses a directory that holds anything but bag files."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        if not looks_like_bag(path):
            raise BagError(
                f"{path} exists and is not a rosbag2 bag (it holds other files); not removing it"
            )
        shutil.rmtree(path)


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C inside the block (main thread only), e.g. while a bag is being closed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
