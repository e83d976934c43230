"""The ``ovseg-replay`` pass: read the input bag in time order, segment, write the output bag.

:func:`run_replay` opens and closes the bags; :func:`replay_stream` runs the same pass
between a reader and a writer the caller opened (the fleet mode's time windows). The output
side: :class:`OutputBag` adds connections and serialises messages, :func:`add_groups` gives
each image topic the node's output topics, :func:`add_copies` copies the input topics, and
:class:`FrameProcessor` decodes, segments and writes one frame with the fields the live node
publishes, or records why the frame was skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ovseg_ros.image_conversion import (
    MAX_IMAGE_PIXELS,
    ImageConversionError,
    array_to_image_fields,
)
from ovseg_ros.outputs import (
    LABEL_INFO,
    LABEL_INFO_TYPE,
    VISION_CLASS_TYPE,
    LabelInfoOutput,
    vocabulary_json,
)
from ovseg_ros.pipeline import FrameInput, OutputPlan, complete_objects, process_frame
from ovseg_ros.stamps import stamp_ns, stamp_text
from ovseg_ros.temporal import TemporalFusion
from ovseg_ros.tools.replay.bag_io import (
    LATCHED_QOS,
    RELIABLE_QOS,
    BagError,
    copy_connection,
    new_typestore,
    open_writer,
    register_vision_msgs,
    remove_bag,
    sigint_ignored,
)
from ovseg_ros.tools.replay.plan import (
    COMPRESSED_TYPE,
    IMAGE_TYPE,
    MAX_REPORTED_SKIPS,
    STRING_TYPE,
    ReplayAborted,
    ReplayError,
    ReplayOptions,
    ReplayPlan,
    ReplayStats,
    normalize_namespace,
    open_input,
    output_class_topics,
    plan_from_reader,
    stderr_log,
)
from ovseg_ros.tools.replay.points import DepthAligner, PointsWriter

# -- the pass ------------------------------------------------------------------------------------


def run_replay(
    options: ReplayOptions,
    segmenter: Any,
    *,
    on_frame: Callable[[ReplayStats], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> ReplayStats:
    """Segment every frame of ``options.image_topics`` with ``segmenter`` into a new bag.

    ``segmenter`` needs its vocabulary set. ``on_frame(stats)`` runs after every input frame
    (segmented or skipped). Raises :class:`ReplayError` for bad input before anything is
    written. Ctrl-C (``KeyboardInterrupt``, also from ``on_frame``) ends the run with a valid,
    closed bag and ``stats.interrupted``. Any other error (the output cannot be created or
    written: a :class:`BagError` cause; a frame raised: anything else) leaves an unfinished
    bag without ``metadata.yaml`` and is raised as :class:`ReplayAborted` (with the stats)
    from the original exception.
    """
    reader = open_input(options.input)
    try:
        stats = _start(reader, options, segmenter)
        try:
            if options.output.exists() or options.output.is_symlink():
                remove_bag(options.output)
            writer = open_writer(options.output, stats.plan.output_storage)
        except (BagError, OSError) as exc:  # a BagError names the bag already
            what = (
                str(exc) if isinstance(exc, BagError) else f"cannot replace {options.output}: {exc}"
            )
            raise ReplayAborted(what, stats) from exc
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            _replay_messages(reader, writer, segmenter, options, stats, on_frame, log or stderr_log)
        except KeyboardInterrupt:
            stats.interrupted = True
        except Exception as exc:  # release the files first, then report
            failure = exc
        finally:
            with sigint_ignored():  # a second Ctrl-C must not leave a half-closed bag
                if failure is None:
                    try:
                        writer.close()
                    except BagError as exc:  # e.g. the disk filled up at the end
                        failure = exc
                if failure is not None:
                    writer.abort()
            stats.elapsed_s = time.perf_counter() - started
    finally:
        reader.close()
    if failure is not None:
        # A storage failure says what it is; anything else is named by its type.
        what = (
            str(failure)
            if isinstance(failure, BagError)
            else f"{type(failure).__name__}: {failure}"
        )
        raise ReplayAborted(what, stats) from failure
    return stats


def replay_stream(
    reader: Any,
    writer: Any,
    options: ReplayOptions,
    segmenter: Any,
    *,
    log: Callable[[str], None] | None = None,
    warm_until: int | None = None,
) -> ReplayStats:
    """The pass of :func:`run_replay` from an open reader into an open writer (neither closed).

    For callers that choose what is read and where it goes: the fleet mode
    (:mod:`ovseg_ros.tools.replay.ranges`) passes a reader limited to one time window of the
    bag and a writer that collects the serialised messages in memory. ``warm_until``: image
    frames before this bag time only feed the temporal fusion state (a window's warm-up),
    other messages before it are ignored. Raises :class:`ReplayError` for bad input; other
    errors propagate unchanged.
    """
    stats = _start(reader, options, segmenter)
    started = time.perf_counter()
    try:
        _replay_messages(
            reader, writer, segmenter, options, stats, None, log or stderr_log, warm_until
        )
    finally:
        stats.elapsed_s = time.perf_counter() - started
    return stats


def _start(reader: Any, options: ReplayOptions, segmenter: Any) -> ReplayStats:
    """The checks before anything is written; the run's empty counters."""
    if segmenter.vocabulary is None:
        raise ReplayError("the segmenter has no vocabulary: call set_vocabulary() first")
    plan = plan_from_reader(reader, options)
    output_class_topics(segmenter.vocabulary, options)
    return ReplayStats(input=options.input, output=options.output, plan=plan)


def _replay_messages(
    reader: Any,
    writer: Any,
    segmenter: Any,
    options: ReplayOptions,
    stats: ReplayStats,
    on_frame: Callable[[ReplayStats], None] | None,
    log: Callable[[str], None],
    warm_until: int | None = None,
) -> None:
    """One pass over the input in time order: copy messages, segment image frames (those
    before ``warm_until`` only warm the temporal fusion up, see :func:`replay_stream`)."""
    out = OutputBag(writer, new_typestore(), stats)
    output_plan = OutputPlan(
        class_topics=output_class_topics(segmenter.vocabulary, options),
        overlay_alpha=options.overlay_alpha if options.overlay else None,
    )
    groups = add_groups(out, options, stats.plan, output_plan)
    copies = add_copies(out, reader, stats) if options.copy_input else {}
    aligner = None
    if options.depth is not None:
        aligner = DepthAligner(options.depth, out.typestore, options.max_image_pixels or 2**62)
    processor = FrameProcessor(
        segmenter, out, output_plan, stats, log, options.max_image_pixels, aligner
    )
    image_connections = [
        c for c in reader.connections if c.topic in groups or (aligner and aligner.accepts(c.topic))
    ]
    wanted = list(reader.connections) if options.copy_input else image_connections

    def process(frame: tuple) -> None:
        processor.process(*frame)
        if on_frame is not None:
            on_frame(stats)

    for connection, timestamp, raw in reader.messages(connections=wanted):
        if warm_until is not None and timestamp < warm_until:
            group = groups.get(connection.topic)
            if group is not None and group.temporal is not None:
                processor.warm(group, raw, connection.msgtype)
            continue
        copy = copies.get(connection.id)
        if copy is not None:
            out.write_raw(copy, timestamp, raw)
        if aligner is not None and aligner.accepts(connection.topic):
            for frame in aligner.push(connection.topic, raw, connection.msgtype):
                process(frame)
            continue
        group = groups.get(connection.topic)
        if group is None:
            continue
        stats.frames_in += 1
        frame = (group, timestamp, raw, connection.msgtype)
        if aligner is None:
            process(frame)
        else:  # wait for the depth partner (a bag may hold it after the color frame)
            for ready in aligner.defer(_color_stamp(out.typestore, raw, connection.msgtype), frame):
                process(ready)
        if options.limit is not None and stats.frames_in >= options.limit:
            break
    if aligner is not None:
        for frame in aligner.drain():
            process(frame)
        stats.clouds = aligner.stage.counters()


def _color_stamp(typestore: Any, raw: bytes | memoryview, msgtype: str) -> int:
    """The header stamp of an image message (0 if it cannot be read: it is skipped later)."""
    try:
        return stamp_ns(typestore.deserialize_cdr(raw, msgtype).header.stamp)
    except Exception:  # a corrupt message is reported when it is processed
        return 0


# -- the output bag ------------------------------------------------------------------------------


@dataclass
class OutputGroup:
    """The output topics of one image topic: pipeline output suffix -> connection."""

    image_topic: str
    compressed: bool
    vocabulary: Any
    connections: dict[str, Any]
    label_info: Any = None  # vision_msgs/msg/LabelInfo, beside the vocabulary
    vocabulary_written: bool = False
    temporal: TemporalFusion | None = None  # with --temporal-alpha: this camera's fusion
    points: PointsWriter | None = None  # with --depth-topic


class OutputBag:
    """Adds connections and serializes typestore messages into an open writer, counting them."""

    def __init__(self, writer: Any, typestore: Any, stats: ReplayStats) -> None:
        self.writer, self.typestore, self.stats = writer, typestore, stats
        self._image = typestore.types[IMAGE_TYPE]
        self._string = typestore.types[STRING_TYPE]
        register_vision_msgs(typestore)

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
        self.write_message(connection, timestamp, self._image(header=header, **fields), IMAGE_TYPE)

    def write_string(self, connection: Any, timestamp: int, text: str) -> None:
        self.write_message(connection, timestamp, self._string(data=text), STRING_TYPE)

    def write_label_info(self, connection: Any, timestamp: int, info: LabelInfoOutput) -> None:
        """A ``vision_msgs/LabelInfo`` stamped 0 (the run's one version is valid from the
        start), as the node publishes ``~/label_info``."""
        types = self.typestore.types
        header = types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id=""
        )
        vision_class = types[VISION_CLASS_TYPE]
        msg = types[LABEL_INFO_TYPE](
            header=header,
            class_map=[vision_class(class_id=i, class_name=name) for i, name in info.class_map],
            threshold=info.threshold,
        )
        self.write_message(connection, timestamp, msg, LABEL_INFO_TYPE)

    def write_message(self, connection: Any, timestamp: int, msg: Any, msgtype: str) -> None:
        """Serialise a typestore message of ``msgtype`` and write it, counting it."""
        self.writer.write(connection, timestamp, self.typestore.serialize_cdr(msg, msgtype))
        self.stats.counts[connection.topic] += 1


def add_groups(
    out: OutputBag, options: ReplayOptions, plan: ReplayPlan, output_plan: OutputPlan
) -> dict[str, OutputGroup]:
    """The output connections of every image topic, under ``<namespace>`` (one topic) or
    ``<namespace>/<image topic>`` (several)."""
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
            label_info=out.add(f"{prefix}/{LABEL_INFO}", LABEL_INFO_TYPE, LATCHED_QOS),
            connections={s: out.add(f"{prefix}/{s}", IMAGE_TYPE, RELIABLE_QOS) for s in suffixes},
            points=(
                PointsWriter(out, prefix, options.depth.settings.objects.enabled)
                if options.depth is not None
                else None
            ),
            temporal=TemporalFusion(options.temporal) if options.temporal.enabled else None,
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
        aligner: DepthAligner | None = None,  # with --depth-topic
    ) -> None:
        self.segmenter, self.out, self.plan = segmenter, out, plan
        self.stats, self.log, self.max_pixels = stats, log, max_pixels
        self.vocabulary = segmenter.vocabulary
        self.aligner = aligner

    def process(
        self, group: OutputGroup, timestamp: int, raw: bytes | memoryview, msgtype: str
    ) -> None:
        out = self.out
        if not group.vocabulary_written:  # latched: once, before the first labels
            # One version for the whole run, valid from the start (as the node's version at
            # activation).
            text = vocabulary_json(self.vocabulary, {"": 0})
            out.write_string(group.vocabulary, timestamp, text)
            threshold = self.segmenter.config.prob_threshold
            out.write_label_info(
                group.label_info, timestamp, LabelInfoOutput.of(self.vocabulary, threshold)
            )
            group.vocabulary_written = True
        try:
            msg = out.typestore.deserialize_cdr(raw, msgtype)
        except Exception as exc:  # any parse failure of a corrupt message
            self._skip("corrupt message", group, timestamp, None, f"cannot deserialize: {exc}")
            return
        depth = self.aligner.stage if group.points is not None and self.aligner else None
        camera_info = depth.camera_info if depth is not None else None
        try:
            frame = process_frame(
                self.segmenter,
                FrameInput(
                    msg,
                    group.compressed,
                    self.plan,
                    None,
                    self.max_pixels,
                    depth,
                    camera_info,
                    temporal=group.temporal,
                ),
            )
        except ImageConversionError as exc:
            reason = "larger than max_image_pixels" if exc.kind == "limit" else "undecodable image"
            self._skip(reason, group, timestamp, msg.header, str(exc))
            return
        except ValueError as exc:
            self._skip("refused by the segmenter", group, timestamp, msg.header, str(exc))
            return
        frame.warnings += complete_objects(frame)  # the node finds them after the labels
        for image in frame.images:
            connection = group.connections[image.suffix]
            out.write_image(connection, timestamp, msg.header, image.array, image.encoding)
        if group.points is not None:
            group.points.write(timestamp, frame)
        for warning in frame.warnings:
            self.log(f"{group.image_topic} at {stamp_text(stamp_ns(msg.header.stamp))}: {warning}")
        self.stats.frames_out += 1

    def warm(self, group: OutputGroup, raw: bytes | memoryview, msgtype: str) -> None:
        """A frame before a fleet window: segmented only to bring the group's temporal fusion
        state where a single run has it; nothing is written or counted. A frame a single run
        skips (corrupt, undecodable, refused) leaves the state as it was, as there."""
        try:
            msg = self.out.typestore.deserialize_cdr(raw, msgtype)
        except Exception:  # skipped in the single run too
            return
        frame = FrameInput(
            msg, group.compressed, wanted=(), max_pixels=self.max_pixels, temporal=group.temporal
        )  # only the labels are made
        try:
            process_frame(self.segmenter, frame)
        except (ImageConversionError, ValueError):
            return

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
