"""The ``ovseg-replay`` pass: read the input bag in time order, segment, write the output bag.

:func:`run_replay` opens and closes the bags; :func:`replay_stream` runs the same pass
between a reader and a writer the caller opened.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ovseg_ros.stamps import stamp_ns
from ovseg_ros.tools.bag_io import (
    BagError,
    new_typestore,
    open_writer,
    remove_bag,
    sigint_ignored,
)
from ovseg_ros.tools.replay_output import (
    FrameProcessor,
    OutputBag,
    add_copies,
    add_groups,
    make_output_plan,
)
from ovseg_ros.tools.replay_plan import (
    ReplayAborted,
    ReplayError,
    ReplayOptions,
    ReplayStats,
    confidence_topics,
    open_input,
    plan_from_reader,
    stderr_log,
)
from ovseg_ros.tools.replay_points import DepthAligner


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
    log = log or stderr_log
    reader = open_input(options.input)
    try:
        plan = plan_from_reader(reader, options)
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
    out = OutputBag(writer, new_typestore(), stats)
    output_plan = make_output_plan(options, segmenter.vocabulary)
    groups = add_groups(out, options, stats.plan, output_plan)
    copies = add_copies(out, reader, stats) if options.copy_input else {}
    processor = FrameProcessor(segmenter, out, output_plan, stats, log, options.max_image_pixels)
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
    plan = plan_from_reader(reader, options)
    stats = ReplayStats(input=options.input, output=options.output, plan=plan)
    confidence_topics(segmenter.vocabulary, options.confidence_classes)
    started = time.perf_counter()
    try:
        _replay_messages(reader, writer, segmenter, options, stats, None, log or stderr_log)
    finally:
        stats.elapsed_s = time.perf_counter() - started
    return stats
