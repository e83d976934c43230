"""The ``ovseg-replay`` output bag: its topics, the copied input, and the per-frame writer.

:class:`FrameProcessor` decodes, segments and writes one input frame with the fields the
live node publishes, or records why the frame was skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ovseg_ros.image_conversion import (
    MAX_IMAGE_PIXELS,
    ImageConversionError,
    array_to_image_fields,
)
from ovseg_ros.outputs import vocabulary_json
from ovseg_ros.pipeline import FrameInput, OutputPlan, process_frame
from ovseg_ros.stamps import stamp_ns, stamp_text
from ovseg_ros.tools.bag_io import LATCHED_QOS, RELIABLE_QOS, BagError, copy_connection
from ovseg_ros.tools.replay_plan import (
    COMPRESSED_TYPE,
    IMAGE_TYPE,
    MAX_REPORTED_SKIPS,
    STRING_TYPE,
    ReplayOptions,
    ReplayPlan,
    ReplayStats,
    confidence_topics,
    normalize_namespace,
)
from ovseg_ros.tools.replay_points import DepthAligner, PointsWriter


@dataclass
class OutputGroup:
    """The output topics of one image topic: pipeline output suffix -> connection."""

    image_topic: str
    compressed: bool
    vocabulary: Any
    connections: dict[str, Any]
    vocabulary_written: bool = False
    points: PointsWriter | None = None  # with --depth-topic


class OutputBag:
    """Adds connections and serializes typestore messages into an open writer, counting them."""

    def __init__(self, writer: Any, typestore: Any, stats: ReplayStats) -> None:
        self.writer, self.typestore, self.stats = writer, typestore, stats
        self._image = typestore.types[IMAGE_TYPE]
        self._string = typestore.types[STRING_TYPE]

    def add(self, topic: str, msgtype: str, qos: Any) -> Any:
        connection = self.writer.add_connection(
            topic, msgtype, typestore=self.typestore, offered_qos_profiles=[qos]
        )
        self.stats.topics[topic] = msgtype
        self.stats.counts[topic] += 0
        return connection

    def write_raw(self, connection: Any, timestamp: int, data: bytes | memoryview) -> None:
        self.writer.write(connection, timestamp, data)

    def write_image(
        self, connection: Any, timestamp: int, header: Any, array: np.ndarray, encoding: str
    ) -> None:
        """Serialise an Image with the fields the node publishes (identical CDR bytes)."""
        fields = array_to_image_fields(array, encoding)
        fields["data"] = np.frombuffer(fields["data"], dtype=np.uint8)
        self._write(connection, timestamp, self._image(header=header, **fields), IMAGE_TYPE)

    def write_string(self, connection: Any, timestamp: int, text: str) -> None:
        self._write(connection, timestamp, self._string(data=text), STRING_TYPE)

    def _write(self, connection: Any, timestamp: int, msg: Any, msgtype: str) -> None:
        self.writer.write(connection, timestamp, self.typestore.serialize_cdr(msg, msgtype))
        self.stats.counts[connection.topic] += 1


def make_output_plan(options: ReplayOptions, vocabulary: Any) -> OutputPlan:
    return OutputPlan(
        class_topics=confidence_topics(vocabulary, options.confidence_classes),
        overlay_alpha=options.overlay_alpha if options.overlay else None,
    )


def add_groups(
    out: OutputBag, options: ReplayOptions, plan: ReplayPlan, output_plan: OutputPlan
) -> dict[str, OutputGroup]:
    namespace = normalize_namespace(options.namespace)
    suffixes = ["labels", "confidence", *output_plan.class_topics]
    if output_plan.overlay_alpha is not None:
        suffixes.append("overlay")
    groups: dict[str, OutputGroup] = {}
    for topic, msgtype in plan.image_topics.items():
        prefix = namespace if len(plan.image_topics) == 1 else f"{namespace}{topic}"
        groups[topic] = OutputGroup(
            image_topic=topic,
            compressed=msgtype == COMPRESSED_TYPE,
            vocabulary=out.add(f"{prefix}/vocabulary", STRING_TYPE, LATCHED_QOS),
            connections={s: out.add(f"{prefix}/{s}", IMAGE_TYPE, RELIABLE_QOS) for s in suffixes},
            points=PointsWriter(out, prefix) if options.depth is not None else None,
        )
    return groups


def add_copies(out: OutputBag, reader: Any, stats: ReplayStats) -> dict[int, Any]:
    """Copy every input connection (input id -> output connection), except name clashes."""
    copies: dict[int, Any] = {}
    added: dict[tuple[str, str, str], Any] = {}
    for connection in reader.connections:
        if connection.topic in stats.topics:
            stats.not_copied[connection.topic] = "an output topic has the same name"
            continue
        key = (connection.topic, connection.msgtype, repr(connection.ext))
        if key not in added:
            try:
                added[key] = copy_connection(out.writer, connection, out.typestore)
            except BagError as exc:
                stats.not_copied[connection.topic] = str(exc)
                continue
        copies[connection.id] = added[key]
    stats.copied_topics = sorted({c.topic for c in added.values()})
    return copies


# -- frames --------------------------------------------------------------------------------------


class FrameProcessor:
    """Decodes, segments and writes one input frame, or reports why it was skipped."""

    def __init__(
        self,
        segmenter: Any,
        out: OutputBag,
        plan: OutputPlan,
        stats: ReplayStats,
        log: Callable[[str], None],
        max_pixels: int | None = MAX_IMAGE_PIXELS,
    ) -> None:
        self.segmenter, self.out, self.plan = segmenter, out, plan
        self.stats, self.log, self.max_pixels = stats, log, max_pixels
        self.vocabulary = segmenter.vocabulary
        self.aligner: DepthAligner | None = None  # with --depth-topic

    def process(
        self, group: OutputGroup, timestamp: int, raw: bytes | memoryview, msgtype: str
    ) -> None:
        out = self.out
        if not group.vocabulary_written:  # latched: once, before the first labels
            # One version for the whole run, valid from the start (as the node's version at
            # activation).
            text = vocabulary_json(self.vocabulary, {"": 0})
            out.write_string(group.vocabulary, timestamp, text)
            group.vocabulary_written = True
        try:
            msg = out.typestore.deserialize_cdr(raw, msgtype)
        except Exception as exc:  # any parse failure of a corrupt message
            self._skip("corrupt message", group, timestamp, None, f"cannot deserialize: {exc}")
            return
        depth = self.aligner.stage if group.points is not None and self.aligner else None
        try:
            frame = process_frame(
                self.segmenter,
                FrameInput(msg, group.compressed, self.plan, None, self.max_pixels, depth),
            )
        except ImageConversionError as exc:
            reason = "larger than max_image_pixels" if exc.kind == "limit" else "undecodable image"
            self._skip(reason, group, timestamp, msg.header, str(exc))
            return
        except ValueError as exc:
            self._skip("refused by the segmenter", group, timestamp, msg.header, str(exc))
            return
        for image in frame.images:
            connection = group.connections[image.suffix]
            out.write_image(connection, timestamp, msg.header, image.array, image.encoding)
        if group.points is not None:
            group.points.write(timestamp, frame)
        for warning in frame.warnings:
            self.log(f"{group.image_topic} at {stamp_text(stamp_ns(msg.header.stamp))}: {warning}")
        self.stats.frames_out += 1

    def _skip(
        self, reason: str, group: OutputGroup, timestamp: int, header: Any, detail: str
    ) -> None:
        stats = self.stats
        stats.skipped[reason] += 1
        if len(stats.skip_lines) >= MAX_REPORTED_SKIPS:
            return
        where = f"bag time {stamp_text(timestamp)}"
        if header is not None:
            where += f", stamp {stamp_text(stamp_ns(header.stamp))}, frame_id {header.frame_id!r}"
        line = f"skipped frame {stats.frames_in} of {group.image_topic} ({where}): {detail}"
        stats.skip_lines.append(line)
        self.log(line)
