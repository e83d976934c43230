"""One bag labelled in pieces: split it by bag time, label a piece into memory, write back in order.

The fleet mode labels a large bag on several workers at once. Each worker runs the normal
replay pass (:func:`ovseg_ros.tools.replay.core.replay_stream`) over one time window of the bag
and collects what it would write, serialised, instead of writing a file; the driver writes
the windows into ONE output bag in bag-time order. Windows partition the message stream by
bag time, so the pieces put back together are what a single run writes: the same
connections, every message once, in order. The only things a window repeats are the latched
(transient-local) outputs, the vocabulary and label_info (each window writes them before its
first frame); the writer keeps the first of each.

Nothing here imports Ray: the pieces are plain picklable data, so any scheduler can move them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rosbags.interfaces import QosDurability

from ovseg_ros.tools.replay.bag_io import BagError, open_reader, open_writer, remove_bag
from ovseg_ros.tools.replay.core import replay_stream
from ovseg_ros.tools.replay.plan import (
    MAX_REPORTED_SKIPS,
    ReplayOptions,
    ReplayStats,
    open_input,
)
from ovseg_ros.tools.replay.warmup import warmup_start


@dataclass(frozen=True)
class FrameRange:
    """A time window of one bag: messages with ``start <= bag time < stop``.

    ``None`` is open: the first window starts before the first message, the last one ends
    after the last. ``frames`` is how many image frames the window was planned to hold (the
    metadata only gives counts per topic, so it is an estimate for the progress display).
    """

    index: int  # position of the window in its bag
    count: int  # windows in the bag
    start: int | None
    stop: int | None
    frames: int


def split_ranges(
    path: Path, image_topics: Sequence[str], range_frames: int, limit: int | None = None
) -> list[FrameRange]:
    """Windows of about ``range_frames`` image frames each, equal spans of bag time.

    One window when the bag is small, and with ``limit`` (the first N frames cannot be
    placed in time without reading the bag). Raises :class:`BagError` for an unreadable bag.
    """
    if range_frames < 1:
        raise ValueError(f"range_frames must be >= 1, got {range_frames}")
    reader = open_reader(path)
    try:
        frames = sum(c.msgcount for c in reader.connections if c.topic in set(image_topics))
        first, end = reader.start_time, reader.end_time  # end: last message + 1 ns
    finally:
        reader.close()
    count = math.ceil(frames / range_frames) if frames else 1
    if limit is not None or count <= 1 or end - first < count:
        return [FrameRange(0, 1, None, None, frames if limit is None else min(frames, limit))]
    cuts = [first + (end - first) * k // count for k in range(1, count)]
    bounds = [None, *cuts, None]
    share = [frames // count + (k < frames % count) for k in range(count)]
    return [FrameRange(k, count, bounds[k], bounds[k + 1], share[k]) for k in range(count)]


class _WindowReader:
    """A rosbags reader seen through a time window: same connections, fewer messages (from
    ``warm_from`` on when given: the temporal fusion warm-up before the window)."""

    def __init__(self, reader: Any, frame_range: FrameRange, warm_from: int | None = None) -> None:
        self._reader, self._range = reader, frame_range
        self._start = frame_range.start if warm_from is None else warm_from
        self.connections = reader.connections

    def messages(self, connections: Sequence[Any] = ()) -> Iterator[tuple[Any, int, Any]]:
        return self._reader.messages(
            connections=connections, start=self._start, stop=self._range.stop
        )


@dataclass(frozen=True)
class ConnectionSpec:
    """What ``Writer.add_connection`` needs, resolved so that no typestore must travel."""

    topic: str
    msgtype: str
    msgdef: str
    rihs01: str
    serialization_format: str
    qos: tuple[Any, ...]


@dataclass(frozen=True)
class _Handle:
    """The connection object :class:`CollectingWriter` hands out (``.topic`` as rosbags')."""

    index: int
    topic: str


class CollectingWriter:
    """Stands in for a rosbags ``Writer``: keeps connections and serialised messages in memory."""

    def __init__(self) -> None:
        self.connections: list[ConnectionSpec] = []
        self.messages: list[tuple[int, int, bytes]] = []  # (connection index, bag time, CDR)

    def add_connection(
        self,
        topic: str,
        msgtype: str,
        *,
        typestore: Any = None,
        msgdef: str | None = None,
        rihs01: str | None = None,
        serialization_format: str = "cdr",
        offered_qos_profiles: Sequence[Any] = (),
    ) -> _Handle:
        if msgdef is None or rihs01 is None:  # as rosbags' Writer resolves them
            msgdef, _ = typestore.generate_msgdef(msgtype, ros_version=2)
            rihs01 = typestore.hash_rihs01(msgtype)
        spec = ConnectionSpec(
            topic, msgtype, msgdef, rihs01, serialization_format, tuple(offered_qos_profiles)
        )
        self.connections.append(spec)
        return _Handle(len(self.connections) - 1, topic)

    def write(self, connection: _Handle, timestamp: int, data: bytes | memoryview) -> None:
        self.messages.append((connection.index, timestamp, bytes(data)))


@dataclass
class RangeOutput:
    """What labelling one window gives back: connections, messages in write order, stats."""

    frame_range: FrameRange
    connections: list[ConnectionSpec]
    messages: list[tuple[int, int, bytes]]
    stats: ReplayStats  # of the window
    seconds: float

    @property
    def nbytes(self) -> int:
        return sum(len(data) for _, _, data in self.messages)


def label_range(options: ReplayOptions, segmenter: Any, frame_range: FrameRange) -> RangeOutput:
    """Label one window of ``options.input`` with ``segmenter``; nothing is written to disk.

    ``options.output`` only names the result. Raises ``ReplayError`` for bad input, anything
    else for a failure.
    """
    started = time.perf_counter()
    reader = open_input(options.input)
    try:
        writer = CollectingWriter()
        # The window's output never exists on disk: check nothing there.
        window_options = dataclasses.replace(
            options, output=Path(f"{options.output}.window{frame_range.index}"), overwrite=True
        )
        # With temporal fusion the window first fuses the frames before it, unwritten.
        warm_from = warmup_start(reader, options, frame_range.start)
        stats = replay_stream(
            _WindowReader(reader, frame_range, warm_from),
            writer,
            window_options,
            segmenter,
            log=_quiet,
            warm_until=frame_range.start if warm_from is not None else None,
        )
    finally:
        reader.close()
    stats.output = options.output
    return RangeOutput(
        frame_range, writer.connections, writer.messages, stats, time.perf_counter() - started
    )


def _quiet(line: str) -> None:
    """Skip lines stay in the window's stats; the driver reports them."""


class OrderedBagWriter:
    """Writes the windows of one bag, arriving in any order, into one bag in window order.

    Windows that arrive early wait in memory until the ones before them are written; the
    caller bounds how many are in flight. :meth:`close` finishes the bag, :meth:`abort`
    deletes it. ``stats``: the bag's counters, from the first window on (None before).
    """

    def __init__(self, path: Path, storage: str, windows: int) -> None:
        self.path, self.storage, self.windows = path, storage, windows
        self.next_index = 0
        self.stats: ReplayStats | None = None
        self._waiting: dict[int, RangeOutput] = {}
        self._writer: Any = None
        self._connections: list[Any] = []
        self._latched: set[int] = set()  # output String topics: only the first message
        self._latched_written: set[int] = set()

    @property
    def buffered(self) -> int:
        """Windows received but not written yet (waiting for an earlier one)."""
        return len(self._waiting)

    @property
    def complete(self) -> bool:
        return self.next_index == self.windows

    def add(self, output: RangeOutput) -> int:
        """Buffer ``output``; write every window that is next in order. Returns frames written."""
        self._waiting[output.frame_range.index] = output
        frames = 0
        while self.next_index in self._waiting:
            frames += self._write(self._waiting.pop(self.next_index))
            self.next_index += 1
        return frames

    def _open(self, output: RangeOutput) -> None:
        self._writer = open_writer(self.path, self.storage)
        first = output.stats  # what the windows share: the plan, topics, copies
        self.stats = dataclasses.replace(
            first, output=self.path, frames_in=0, frames_out=0, skipped=Counter(),
            skip_lines=[], counts=Counter(), clouds={}, elapsed_s=0.0,
        )  # fmt: skip
        outputs = first.topics  # output topic -> type
        for index, spec in enumerate(output.connections):
            self._connections.append(
                self._writer.add_connection(
                    spec.topic,
                    spec.msgtype,
                    msgdef=spec.msgdef,
                    rihs01=spec.rihs01,
                    serialization_format=spec.serialization_format,
                    offered_qos_profiles=list(spec.qos),
                )
            )
            # The run's latched outputs (vocabulary, label_info): every window writes them.
            latched = any(q.durability == QosDurability.TRANSIENT_LOCAL for q in spec.qos)
            if latched and spec.topic in outputs:
                self._latched.add(index)

    def _write(self, output: RangeOutput) -> int:
        if self._writer is None:
            self._open(output)
        elif [c.topic for c in output.connections] != [c.topic for c in self._connections]:
            raise BagError(f"{self.path}: window {output.frame_range.index} has other topics")
        for index, timestamp, data in output.messages:
            if index in self._latched:
                if index in self._latched_written:
                    continue
                self._latched_written.add(index)
            self._writer.write(self._connections[index], timestamp, data)
            self.stats.counts[self._connections[index].topic] += 1
        window, stats = output.stats, self.stats
        stats.frames_in += window.frames_in
        stats.frames_out += window.frames_out
        stats.skipped.update(window.skipped)
        room = MAX_REPORTED_SKIPS - len(stats.skip_lines)
        stats.skip_lines += window.skip_lines[: max(room, 0)]
        stats.elapsed_s += window.elapsed_s
        for key, count in window.clouds.items():
            stats.clouds[key] = stats.clouds.get(key, 0) + count
        return window.frames_in

    def close(self) -> None:
        """Finish the bag (all windows must have been written)."""
        if not self.complete:
            raise BagError(f"{self.path}: {self.windows - self.next_index} windows missing")
        if self._writer is not None:
            self._writer.close()

    def abort(self) -> None:
        """Stop and delete whatever was written (never raises: the caller reports its own
        error)."""
        self._waiting.clear()
        if self._writer is not None:
            self._writer.abort()
        with contextlib.suppress(BagError, OSError):
            if self.path.exists():
                remove_bag(self.path)
