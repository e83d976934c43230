"""``ovseg-replay``: segment every camera frame of a rosbag2 bag and write the results to a new bag.

Example::

    ovseg-replay run1_bag run1_seg --image-topic /camera/color/image_raw \\
        --classes "background; floor; wall" "person; man; woman" chair --overlay

The output bag holds what the live node (``segment_node``) publishes, under ``--namespace``
(default ``/ovseg``): ``labels`` (mono8, mono16 above 256 classes), ``confidence`` (32FC1),
``confidence/<class>`` per ``--confidence-classes`` entry (32FC1), ``overlay`` (rgb8, with
``--overlay``) and ``vocabulary`` (std_msgs/String JSON, once, ``valid_from`` stamp 0, offered
transient-local so a played-back bag latches it). Each image carries its input frame's header
and is written at the input message's bag timestamp. Unless ``--no-copy-input``, every input
topic is copied byte for byte, so the result plays back in RViz or Foxglove next to the
camera. With several image topics, each topic's outputs go under
``<namespace>/<image topic>``.

Unlike the node, no frame is dropped. A frame that cannot be decoded is reported and skipped.
Ctrl-C stops the run and still leaves a valid, closed bag (exit code 130).

Also ``python -m ovseg_ros.tools.replay``.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ovseg_ros.image_conversion import (
    MAX_IMAGE_PIXELS,
    ImageConversionError,
    array_to_image_fields,
)
from ovseg_ros.outputs import vocabulary_json
from ovseg_ros.pipeline import (
    OutputPlan,
    class_confidence_topics,
    process_frame,
    string_list,
)
from ovseg_ros.tools.bag_io import (
    LATCHED_QOS,
    RELIABLE_QOS,
    STORAGES,
    BagError,
    bag_storage,
    copy_connection,
    looks_like_bag,
    new_typestore,
    open_reader,
    open_writer,
    remove_bag,
    sigint_ignored,
    stamp_ns,
)
from ovseg_ros.tools.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Progress,
    UsageError,
    add_engine_arguments,
    add_params_arguments,
    positive_int,
    read_params,
)
from ovseg_ros.tools.replay_points import (
    DepthAligner,
    DepthOptions,
    PointsWriter,
    add_depth_arguments,
    check_depth_topics,
    depth_options,
)

PROG = "ovseg-replay"
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
STRING_TYPE = "std_msgs/msg/String"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
DEFAULT_NAMESPACE = "/ovseg"
MAX_REPORTED_SKIPS = 20  # skipped frames reported one line each; the rest are counted

_NAME_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ReplayError(UsageError):
    """Bad input the user can fix (missing bag, wrong topic, existing output): exit code 2."""


class ReplayAborted(RuntimeError):
    """An unexpected error stopped the run; the output bag was closed with what was written."""

    def __init__(self, message: str, stats: ReplayStats) -> None:
        super().__init__(message)
        self.stats = stats


@dataclass(frozen=True)
class ReplayOptions:
    """What to replay and where to write it (the segmenter is passed separately)."""

    input: Path
    output: Path
    image_topics: tuple[str, ...] = ()  # empty: the bag's only image topic
    namespace: str = DEFAULT_NAMESPACE
    confidence_classes: tuple[str, ...] = ()  # names or synonyms in the vocabulary
    overlay: bool = False
    overlay_alpha: float = 0.5
    copy_input: bool = True
    storage: str | None = None  # None: same as the input bag
    overwrite: bool = False
    limit: int | None = None  # segment at most this many frames
    depth: DepthOptions | None = None  # --depth-topic: also write points and camera_info
    max_image_pixels: int | None = MAX_IMAGE_PIXELS  # larger frames are skipped (None: no limit)


@dataclass(frozen=True)
class ReplayPlan:
    """The checked inputs of a run: storage plugins, image topics and their frame counts."""

    input_storage: str
    output_storage: str
    image_topics: dict[str, str]  # topic -> message type
    total_frames: int  # frames that will be read (after --limit)


@dataclass
class ReplayStats:
    """Counters of a run; passed to ``on_frame`` after every input frame."""

    input: Path
    output: Path
    plan: ReplayPlan
    frames_in: int = 0  # image messages read (segmented or skipped)
    frames_out: int = 0  # frames segmented and written
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> frames
    skip_lines: list[str] = field(default_factory=list)  # the first MAX_REPORTED_SKIPS
    topics: dict[str, str] = field(default_factory=dict)  # output topic -> type (written ones)
    counts: Counter[str] = field(default_factory=Counter)  # output topic -> messages
    copied_topics: list[str] = field(default_factory=list)
    not_copied: dict[str, str] = field(default_factory=dict)  # input topic -> why
    clouds: dict[str, int] = field(default_factory=dict)  # PointsStage.counters() (--depth-topic)
    interrupted: bool = False
    elapsed_s: float = 0.0

    @property
    def frames_total(self) -> int:
        return self.plan.total_frames

    @property
    def frames_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def fps(self) -> float:
        return self.frames_out / self.elapsed_s if self.elapsed_s > 0 else math.nan


# -- names ---------------------------------------------------------------------------------------


def normalize_namespace(namespace: str) -> str:
    """``"ovseg"``, ``"/ovseg/"`` -> ``"/ovseg"``; ``"/"`` -> ``""`` (topics at the root)."""
    stripped = namespace.strip().strip("/")
    if not stripped:
        return ""
    tokens = stripped.split("/")
    for token in tokens:
        if not _NAME_TOKEN.fullmatch(token):
            raise ReplayError(
                f"invalid namespace {namespace!r}: each part must be letters, digits or '_' "
                "and not start with a digit"
            )
    return "".join(f"/{token}" for token in tokens)


def _absolute(topic: str) -> str:
    topic = topic.strip()
    return topic if topic.startswith("/") else f"/{topic}"


def confidence_topics(vocabulary: Any, names: Sequence[str]) -> dict[str, int]:
    """``{"confidence/<class>": entry index}``, named as the node names them
    (:func:`ovseg_ros.pipeline.class_confidence_topics`); a name not in the vocabulary is a
    :class:`ReplayError`."""
    topics, missing = class_confidence_topics(vocabulary, names)
    if missing:
        raise ReplayError(
            f"confidence class {missing[0]!r} is not in the vocabulary: "
            f"{', '.join(vocabulary.names)}"
        )
    return topics


# -- planning ------------------------------------------------------------------------------------


def _image_topics_of(reader: Any) -> dict[str, str]:
    return {c.topic: c.msgtype for c in reader.connections if c.msgtype in IMAGE_TYPES}


def _select_image_topics(reader: Any, requested: Sequence[str]) -> dict[str, str]:
    """The image topics to segment: the requested ones (checked), else the only one."""
    available = _image_topics_of(reader)
    listing = ", ".join(f"{t} ({m.rsplit('/', 1)[-1]})" for t, m in sorted(available.items()))
    if not requested:
        if len(available) == 1:
            return available
        if not available:
            topics = ", ".join(sorted({c.topic for c in reader.connections})) or "none"
            raise ReplayError(f"the bag has no Image or CompressedImage topic (topics: {topics})")
        raise ReplayError(f"the bag has several image topics; choose with --image-topic: {listing}")
    types = {c.topic: c.msgtype for c in reader.connections}
    selected: dict[str, str] = {}
    for topic in dict.fromkeys(_absolute(t) for t in requested):
        if topic not in types:
            raise ReplayError(f"topic {topic} is not in the bag; image topics: {listing or 'none'}")
        if types[topic] not in IMAGE_TYPES:
            raise ReplayError(
                f"topic {topic} is {types[topic]}, not an Image or CompressedImage; "
                f"image topics: {listing or 'none'}"
            )
        selected[topic] = types[topic]
    return selected


def _check_output(options: ReplayOptions) -> None:
    """Refuse an output that is, holds or is inside the input, or exists without --overwrite."""
    source, target = options.input.expanduser().resolve(), options.output.expanduser().resolve()
    if source == target or target in source.parents or source in target.parents:
        raise ReplayError(f"output {options.output} would overwrite the input bag {options.input}")
    if options.output.exists() or options.output.is_symlink():
        if not options.overwrite:
            raise ReplayError(
                f"output {options.output} exists already; use --overwrite to replace it"
            )
        if not looks_like_bag(options.output):
            raise ReplayError(
                f"output {options.output} exists and is not a rosbag2 bag; not replacing it"
            )


def _plan(reader: Any, options: ReplayOptions) -> ReplayPlan:
    if options.limit is not None and options.limit < 1:
        raise ReplayError("--limit must be >= 1")
    if options.storage is not None and options.storage not in STORAGES:
        raise ReplayError(f"--storage must be one of {', '.join(STORAGES)}")
    if not 0.0 <= options.overlay_alpha <= 1.0:
        raise ReplayError(f"overlay alpha must be in [0, 1], got {options.overlay_alpha}")
    normalize_namespace(options.namespace)
    _check_output(options)
    try:
        input_storage = bag_storage(options.input)
    except BagError as exc:
        raise ReplayError(str(exc)) from exc
    image_topics = _select_image_topics(reader, options.image_topics)
    if options.depth is not None:
        try:
            check_depth_topics(reader, options.depth, image_topics)
        except UsageError as exc:
            raise ReplayError(str(exc)) from None
    total = sum(c.msgcount for c in reader.connections if c.topic in image_topics)
    if options.limit is not None:
        total = min(total, options.limit)
    return ReplayPlan(input_storage, options.storage or input_storage, image_topics, total)


def plan_replay(options: ReplayOptions) -> ReplayPlan:
    """Check the input bag, the image topics and the output path without loading any model."""
    reader = _open(options.input)
    try:
        return _plan(reader, options)
    finally:
        reader.close()


def _open(path: Path) -> Any:
    try:
        return open_reader(path)
    except BagError as exc:
        raise ReplayError(str(exc)) from exc


# -- output bag ----------------------------------------------------------------------------------


@dataclass
class _Group:
    """The output topics of one image topic: pipeline output suffix -> connection."""

    image_topic: str
    compressed: bool
    vocabulary: Any
    connections: dict[str, Any]
    vocabulary_written: bool = False
    points: PointsWriter | None = None  # with --depth-topic


class _OutputBag:
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


def _output_plan(options: ReplayOptions, vocabulary: Any) -> OutputPlan:
    return OutputPlan(
        class_topics=confidence_topics(vocabulary, options.confidence_classes),
        overlay_alpha=options.overlay_alpha if options.overlay else None,
    )


def _add_groups(
    out: _OutputBag, options: ReplayOptions, plan: ReplayPlan, output_plan: OutputPlan
) -> dict[str, _Group]:
    namespace = normalize_namespace(options.namespace)
    suffixes = ["labels", "confidence", *output_plan.class_topics]
    if output_plan.overlay_alpha is not None:
        suffixes.append("overlay")
    groups: dict[str, _Group] = {}
    for topic, msgtype in plan.image_topics.items():
        prefix = namespace if len(plan.image_topics) == 1 else f"{namespace}{topic}"
        groups[topic] = _Group(
            image_topic=topic,
            compressed=msgtype == COMPRESSED_TYPE,
            vocabulary=out.add(f"{prefix}/vocabulary", STRING_TYPE, LATCHED_QOS),
            connections={s: out.add(f"{prefix}/{s}", IMAGE_TYPE, RELIABLE_QOS) for s in suffixes},
            points=PointsWriter(out, prefix) if options.depth is not None else None,
        )
    return groups


def _add_copies(out: _OutputBag, reader: Any, stats: ReplayStats) -> dict[int, Any]:
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


def _ns_text(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


class _FrameProcessor:
    """Decodes, segments and writes one input frame, or reports why it was skipped."""

    def __init__(
        self,
        segmenter: Any,
        out: _OutputBag,
        plan: OutputPlan,
        stats: ReplayStats,
        log: Callable[[str], None],
        max_pixels: int | None = MAX_IMAGE_PIXELS,
    ) -> None:
        self.segmenter, self.out, self.plan = segmenter, out, plan
        self.stats, self.log, self.max_pixels = stats, log, max_pixels
        self.vocabulary = segmenter.vocabulary
        self.aligner: DepthAligner | None = None  # with --depth-topic

    def process(self, group: _Group, timestamp: int, raw: bytes | memoryview, msgtype: str) -> None:
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
        try:
            frame = process_frame(
                self.segmenter, msg, group.compressed, self.plan, max_pixels=self.max_pixels
            )
        except ImageConversionError as exc:
            reason = "larger than max_image_pixels" if exc.kind == "limit" else "undecodable image"
            self._skip(reason, group, timestamp, msg.header, str(exc))
            return
        except ValueError as exc:
            self._skip("refused by the segmenter", group, timestamp, msg.header, str(exc))
            return
        for output in frame.outputs:
            connection = group.connections[output.suffix]
            out.write_image(connection, timestamp, msg.header, output.array, output.encoding)
        if group.points is not None and self.aligner is not None:
            device = getattr(self.segmenter, "device", "cpu")
            outputs, warnings = self.aligner.stage.outputs(
                msg.header, frame.rgb, frame.result, device
            )
            group.points.write(timestamp, msg.header, outputs)
            for warning in warnings:
                self.log(
                    f"{group.image_topic} at {_ns_text(stamp_ns(msg.header.stamp))}: {warning}"
                )
        self.stats.frames_out += 1

    def _skip(self, reason: str, group: _Group, timestamp: int, header: Any, detail: str) -> None:
        stats = self.stats
        stats.skipped[reason] += 1
        if len(stats.skip_lines) >= MAX_REPORTED_SKIPS:
            return
        where = f"bag time {_ns_text(timestamp)}"
        if header is not None:
            where += f", stamp {_ns_text(stamp_ns(header.stamp))}, frame_id {header.frame_id!r}"
        line = f"skipped frame {stats.frames_in} of {group.image_topic} ({where}): {detail}"
        stats.skip_lines.append(line)
        self.log(line)


# -- the run -------------------------------------------------------------------------------------


def _stderr_log(line: str) -> None:
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)


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
    closed bag and ``stats.interrupted``; any other error closes the bag too and is raised as
    :class:`ReplayAborted` (with the stats) from the original exception.
    """
    if segmenter.vocabulary is None:
        raise ReplayError("the segmenter has no vocabulary: call set_vocabulary() first")
    log = log or _stderr_log
    reader = _open(options.input)
    try:
        plan = _plan(reader, options)
        stats = ReplayStats(input=options.input, output=options.output, plan=plan)
        # Validate the per-class topics before touching the output.
        confidence_topics(segmenter.vocabulary, options.confidence_classes)
        if options.output.exists() or options.output.is_symlink():
            try:
                remove_bag(options.output)
            except (BagError, OSError) as exc:
                raise ReplayError(f"cannot replace {options.output}: {exc}") from exc
        try:
            writer = open_writer(options.output, plan.output_storage)
        except BagError as exc:
            raise ReplayError(str(exc)) from exc
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            _replay_messages(reader, writer, segmenter, options, stats, on_frame, log)
        except KeyboardInterrupt:
            stats.interrupted = True
        except Exception as exc:  # close the bag first, then report
            failure = exc
        finally:
            with sigint_ignored():  # a second Ctrl-C must not leave a half-closed bag
                writer.close()
            stats.elapsed_s = time.perf_counter() - started
    finally:
        reader.close()
    if failure is not None:
        raise ReplayAborted(f"{type(failure).__name__}: {failure}", stats) from failure
    return stats


def _replay_messages(
    reader: Any,
    writer: Any,
    segmenter: Any,
    options: ReplayOptions,
    stats: ReplayStats,
    on_frame: Callable[[ReplayStats], None] | None,
    log: Callable[[str], None],
) -> None:
    """One pass over the input in time order: copy messages, segment image frames."""
    out = _OutputBag(writer, new_typestore(), stats)
    output_plan = _output_plan(options, segmenter.vocabulary)
    groups = _add_groups(out, options, stats.plan, output_plan)
    copies = _add_copies(out, reader, stats) if options.copy_input else {}
    processor = _FrameProcessor(segmenter, out, output_plan, stats, log, options.max_image_pixels)
    aligner = processor.aligner = (
        DepthAligner(options.depth, out.typestore) if options.depth is not None else None
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


# -- reporting -----------------------------------------------------------------------------------


def format_summary(stats: ReplayStats) -> str:
    """A human-readable report of a run: frames, skips, speed, output topics."""
    plan = stats.plan
    state = "interrupted" if stats.interrupted else "done"
    lines = [
        f"{PROG}: {state}: {stats.frames_out} of {stats.frames_in} frames segmented in "
        f"{stats.elapsed_s:.1f} s ({stats.fps:.2f} frames/s)",
        f"  input:  {stats.input} ({plan.input_storage}); image topics: "
        + ", ".join(f"{t} ({m.rsplit('/', 1)[-1]})" for t, m in plan.image_topics.items()),
    ]
    if stats.frames_skipped:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in stats.skipped.most_common())
        lines.append(f"  skipped: {stats.frames_skipped} frames ({reasons})")
        hidden = stats.frames_skipped - len(stats.skip_lines)
        if hidden > 0:
            lines.append(f"    ({hidden} more skipped frames not listed above)")
    if stats.clouds:
        prefix = "clouds_skipped_"
        skipped = [f"{k[len(prefix) :]}: {n}" for k, n in stats.clouds.items() if k[:15] == prefix]
        lines.append(
            f"  point clouds: {stats.clouds['clouds_published']} written; skipped: "
            + ", ".join(skipped)
        )
    lines.append(f"  output: {stats.output} ({plan.output_storage})")
    for topic, msgtype in stats.topics.items():
        lines.append(f"    {topic}  [{msgtype}]  {stats.counts[topic]} messages")
    if stats.copied_topics:
        lines.append(f"  copied input topics: {', '.join(stats.copied_topics)}")
    for topic, why in stats.not_copied.items():
        lines.append(f"  not copied: {topic}: {why}")
    return "\n".join(lines)


# -- CLI -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Segment every frame of a rosbag2 bag (Image or CompressedImage topics) "
        "and write labels, confidences, overlay and vocabulary to a new bag, as the live node "
        "publishes them.",
    )
    parser.add_argument(
        "bags",
        nargs="+",
        type=Path,
        metavar="BAG",
        help="INPUT_BAG OUTPUT_BAG (a rosbag2 bag directory and a new one), or with "
        "--output-dir any number of bags, directories of bags or globs",
    )
    parser.add_argument(
        "--image-topic",
        action="append",
        default=[],
        help="image topic to segment (repeatable; default: the bag's only image topic)",
    )
    parser.add_argument(
        "--classes",
        nargs="+",
        help="vocabulary entries, synonyms separated by ';' (default: the params file's)",
    )
    parser.add_argument(
        "--confidence-classes",
        nargs="*",
        default=None,
        help="classes that get a <namespace>/confidence/<class> topic (default: params file's)",
    )
    add_engine_arguments(parser)
    add_params_arguments(parser)
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="output topic namespace")
    parser.add_argument("--overlay", action="store_true", help="also write <namespace>/overlay")
    parser.add_argument(
        "--overlay-alpha", type=float, help="class color opacity (default: params file's, 0.5)"
    )
    parser.add_argument(
        "--copy-input",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="copy every input topic into the output bag (default: yes)",
    )
    parser.add_argument("--storage", choices=STORAGES, help="output storage (default: as input)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    parser.add_argument("--limit", type=int, help="segment only the first N frames")
    parser.add_argument(
        "--max-image-pixels",
        type=positive_int,
        metavar="N",
        help="skip (and report) frames of more than N pixels, refused before decoding "
        f"(default: the params file's max_image_pixels, else {MAX_IMAGE_PIXELS}, 8K)",
    )
    add_depth_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from ovseg_ros.tools.replay_many import add_fleet_arguments

    add_fleet_arguments(parser)
    return parser


def _string_list(value: Any, name: str) -> list[str]:
    try:
        return string_list(value, name)
    except ValueError as exc:
        raise ReplayError(f"params file: {exc}") from None


def _options(args: argparse.Namespace, params: dict[str, Any], vocabulary: Any) -> ReplayOptions:
    """ReplayOptions from the flags; params-file confidence classes not in the vocabulary are
    dropped with a warning (as the node does), unknown --confidence-classes are an error."""
    if args.confidence_classes is not None:
        confidence = [c.strip() for c in args.confidence_classes if c.strip()]
    else:
        confidence = []
        for name in _string_list(params.get("confidence_classes"), "confidence_classes"):
            try:
                vocabulary.index(name)
                confidence.append(name)
            except KeyError:
                _stderr_log(f"warning: params file confidence class {name!r} not in --classes")
    alpha = args.overlay_alpha
    if alpha is None:
        try:
            alpha = float(params.get("publish_overlay_alpha", 0.5))
        except (TypeError, ValueError) as exc:
            raise ReplayError(
                f"params file: publish_overlay_alpha must be a number: {exc}"
            ) from exc
    as_given = ("input", "output", "namespace", "overlay", "copy_input", "storage", "overwrite")
    return ReplayOptions(
        **{name: getattr(args, name) for name in (*as_given, "limit")},
        image_topics=tuple(args.image_topic),
        confidence_classes=tuple(confidence),
        overlay_alpha=alpha,
        depth=depth_options(args, params),
        max_image_pixels=_max_image_pixels(args, params),
    )


def _max_image_pixels(args: argparse.Namespace, params: dict[str, Any]) -> int:
    """``--max-image-pixels``, else the params file's ``max_image_pixels``, else 8K."""
    if args.max_image_pixels is not None:
        return args.max_image_pixels
    value = params.get("max_image_pixels", MAX_IMAGE_PIXELS)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ReplayError(f"params file: max_image_pixels must be an integer >= 1, got {value!r}")
    return value


def _run(args: argparse.Namespace) -> int:
    flags = {"method": args.method, "preset": args.preset, "device": args.device}
    loaded = read_params(args.params, args.params_node, flags)
    params, config = loaded.node, loaded.config
    classes = args.classes or _string_list(params.get("classes"), "classes")
    if not classes:
        raise ReplayError("no classes: give --classes, or --params with a 'classes' list")
    from ovseg_ros.segmentation.vocabulary import build_vocabulary

    try:
        draft = build_vocabulary(classes, version=0)  # validates before the models load
    except ValueError as exc:
        raise ReplayError(f"invalid classes: {exc}") from exc
    options = _options(args, params, draft)
    plan = plan_replay(options)  # fails fast on a bad bag, topic or output path
    confidence_topics(draft, options.confidence_classes)

    from ovseg_ros.segmentation import WeightsNotFoundError, build_segmenter

    resolved = config.resolved()
    _stderr_log(
        f"loading {resolved.method} ({resolved.preset}) on {resolved.device}; "
        f"{len(draft)} classes; {plan.total_frames} frames from " + ", ".join(plan.image_topics)
    )
    try:
        segmenter = build_segmenter(resolved)
        segmenter.set_vocabulary(classes)
    except WeightsNotFoundError as exc:
        raise ReplayError(str(exc)) from exc
    except ValueError as exc:  # e.g. cuda requested on a machine without it
        raise ReplayError(str(exc)) from exc

    progress = None if args.no_progress else Progress(plan.total_frames, prog=PROG)
    try:
        stats = run_replay(
            options,
            segmenter,
            on_frame=(
                (lambda s: progress.advance_to(s.frames_in, skipped=s.frames_skipped))
                if progress
                else None
            ),
            log=progress.log if progress else None,
        )
    except ReplayAborted as exc:
        if progress:
            progress.close()
        traceback.print_exception(exc.__cause__ or exc, file=sys.stderr)
        print(format_summary(exc.stats))
        _stderr_log(
            f"error: {exc}; {exc.stats.output} was closed with the {exc.stats.frames_out} "
            "frames segmented before the error"
        )
        return EXIT_FAILED
    if progress:
        progress.close()
    print(format_summary(stats))
    if stats.interrupted:
        _stderr_log(f"interrupted: {stats.output} is closed with {stats.frames_out} frames")
        return EXIT_INTERRUPTED
    if stats.frames_in and not stats.frames_out:
        _stderr_log("error: no frame could be segmented (see the skipped frames above)")
        return EXIT_FAILED
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ovseg-replay``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from ovseg_ros.tools.replay_many import run_many, wants_many

    if wants_many(args):  # BAG [BAG ...] --output-dir DIR [--ray]
        return run_many(args)
    if len(args.bags) != 2:
        parser.error("give INPUT_BAG OUTPUT_BAG, or BAG [BAG ...] --output-dir DIR")
    args.input, args.output = args.bags
    try:
        return _run(args)
    except UsageError as exc:  # ReplayError and params-file problems
        _stderr_log(f"error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _stderr_log("interrupted before any output was written")
        return EXIT_INTERRUPTED


def replay_stream(
    reader: Any,
    writer: Any,
    options: ReplayOptions,
    segmenter: Any,
    *,
    log: Callable[[str], None] | None = None,
) -> ReplayStats:
    """The pass of :func:`run_replay` from an open reader into an open writer (neither closed).

    For callers that choose what is read and where it goes: the fleet mode
    (``ovseg_ros.tools.bag_ranges``) passes a reader limited to one time window of the bag
    and a writer that collects the serialised messages in memory. Raises :class:`ReplayError`
    for bad input; other errors propagate unchanged.
    """
    if segmenter.vocabulary is None:
        raise ReplayError("the segmenter has no vocabulary: call set_vocabulary() first")
    plan = _plan(reader, options)
    stats = ReplayStats(input=options.input, output=options.output, plan=plan)
    confidence_topics(segmenter.vocabulary, options.confidence_classes)
    started = time.perf_counter()
    try:
        _replay_messages(reader, writer, segmenter, options, stats, None, log or _stderr_log)
    finally:
        stats.elapsed_s = time.perf_counter() - started
    return stats


if __name__ == "__main__":
    sys.exit(main())
