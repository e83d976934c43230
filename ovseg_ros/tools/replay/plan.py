"""What an ``ovseg-replay`` run is asked to do, and the checks made before any model loads.

:class:`ReplayOptions` (one input bag, one output bag), the checked :class:`ReplayPlan`
(storage plugins, image topics, frame count), the run's counters (:class:`ReplayStats`) and
the two ways a run fails: :class:`ReplayError` (bad input, nothing written) and
:class:`ReplayAborted` (an error during the pass). :func:`plan_replay` checks the input bag,
the image (and depth) topics and the output path; :mod:`ovseg_ros.tools.replay.core` runs
the plan.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovseg_ros.image_conversion import MAX_IMAGE_PIXELS
from ovseg_ros.outputs import is_name_token
from ovseg_ros.pipeline import per_class_topics
from ovseg_ros.points_stage import PointsSettings
from ovseg_ros.temporal import TemporalSettings
from ovseg_ros.tools.cli import UsageError
from ovseg_ros.tools.replay.bag_io import (
    STORAGES,
    BagError,
    bag_storage,
    looks_like_bag,
    open_reader,
)

PROG = "ovseg-replay"
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
STRING_TYPE = "std_msgs/msg/String"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
DEFAULT_NAMESPACE = "/ovseg"
MAX_REPORTED_SKIPS = 20  # skipped frames reported one line each; the rest are counted


def stderr_log(line: str) -> None:
    """The replay tools' default log: one ``ovseg-replay: ...`` line on stderr."""
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)


class ReplayError(UsageError):
    """Bad input the user can fix (missing bag, wrong topic, existing output): exit code 2."""


class ReplayAborted(RuntimeError):
    """An error stopped the run (the output could not be created or written, or a frame
    raised); what was written is not a complete output. Exit code 1."""

    def __init__(self, message: str, stats: ReplayStats) -> None:
        super().__init__(message)
        self.stats = stats


@dataclass(frozen=True)
class DepthOptions:
    """``--depth-topic``: the depth inputs of a replay run and the cloud parameters."""

    depth_topic: str
    camera_info_topic: str
    tolerance: float = 0.02
    settings: PointsSettings = PointsSettings()


@dataclass(frozen=True)
class ReplayOptions:
    """What to replay and where to write it (the segmenter is passed separately)."""

    input: Path
    output: Path
    image_topics: tuple[str, ...] = ()  # empty: the bag's only image topic
    namespace: str = DEFAULT_NAMESPACE
    confidence_classes: tuple[str, ...] = ()  # names or synonyms in the vocabulary
    mask_classes: tuple[str, ...] = ()  # the same, for <namespace>/mask/<class>
    overlay: bool = False
    overlay_alpha: float = 0.5
    copy_input: bool = True
    storage: str | None = None  # None: same as the input bag
    overwrite: bool = False
    limit: int | None = None  # segment at most this many frames
    depth: DepthOptions | None = None  # --depth-topic: also write points and camera_info
    max_image_pixels: int | None = MAX_IMAGE_PIXELS  # larger frames are skipped (None: no limit)
    temporal: TemporalSettings = TemporalSettings()  # --temporal-alpha: fusion per image topic
    # Fleet windows: frames of each image topic fused, unwritten, before the window starts
    # (None: temporal.warmup_frames of the alpha, which converges to a single run's state).
    temporal_warmup: int | None = None


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
    def frames_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def fps(self) -> float:
        return self.frames_out / self.elapsed_s if self.elapsed_s > 0 else math.nan


# -- names ---------------------------------------------------------------------------------------


def absolute_topic(topic: str) -> str:
    """``"cam/image"`` -> ``"/cam/image"`` (bags store absolute topic names)."""
    topic = topic.strip()
    return topic if topic.startswith("/") else f"/{topic}"


def normalize_namespace(namespace: str) -> str:
    """``"ovseg"``, ``"/ovseg/"`` -> ``"/ovseg"``; ``"/"`` -> ``""`` (topics at the root)."""
    stripped = namespace.strip().strip("/")
    if not stripped:
        return ""
    tokens = stripped.split("/")
    for token in tokens:
        if not is_name_token(token):
            raise ReplayError(
                f"invalid namespace {namespace!r}: each part must be letters, digits and "
                "single '_', not starting with a digit"
            )
    return "".join(f"/{token}" for token in tokens)


def output_class_topics(vocabulary: Any, options: ReplayOptions) -> dict[str, int]:
    """``{"confidence/<class>" or "mask/<class>": entry index}`` for ``options``'
    ``confidence_classes`` and ``mask_classes``, named as the node names them
    (:func:`ovseg_ros.pipeline.per_class_topics`); a name not in the vocabulary is a
    :class:`ReplayError`."""
    topics, absent = per_class_topics(vocabulary, options.confidence_classes, options.mask_classes)
    for parameter, missing in absent.items():
        if missing:
            kind = parameter.removesuffix("_classes")
            raise ReplayError(
                f"{kind} class {missing[0]!r} is not in the vocabulary: "
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
    for topic in dict.fromkeys(absolute_topic(t) for t in requested):
        if topic not in types:
            raise ReplayError(f"topic {topic} is not in the bag; image topics: {listing or 'none'}")
        if types[topic] not in IMAGE_TYPES:
            raise ReplayError(
                f"topic {topic} is {types[topic]}, not an Image or CompressedImage; "
                f"image topics: {listing or 'none'}"
            )
        selected[topic] = types[topic]
    return selected


def _check_depth_topics(reader: Any, depth: DepthOptions, image_topics: dict[str, str]) -> None:
    """Both depth topics in the bag with the right types, and exactly one image topic (a
    depth stream belongs to one camera). The depth topic is an Image (raw depth) or a
    CompressedImage (compressedDepth): its messages are decoded by their type."""
    types = {c.topic: c.msgtype for c in reader.connections}
    for flag, topic, msgtypes in (
        ("--depth-topic", depth.depth_topic, IMAGE_TYPES),
        ("--camera-info-topic", depth.camera_info_topic, (CAMERA_INFO_TYPE,)),
    ):
        if topic not in types:
            raise ReplayError(f"{flag} {topic} is not in the bag")
        if types[topic] not in msgtypes:
            expected = " or ".join(msgtypes)
            raise ReplayError(f"{flag} {topic} is {types[topic]}, not {expected}")
    if len(image_topics) != 1:
        raise ReplayError(
            "--depth-topic needs exactly one image topic (the color camera it is registered "
            f"to); got {', '.join(image_topics)}"
        )


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


def plan_from_reader(reader: Any, options: ReplayOptions) -> ReplayPlan:
    """Check ``options`` against an open reader of ``options.input``."""
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
        _check_depth_topics(reader, options.depth, image_topics)
    total = sum(c.msgcount for c in reader.connections if c.topic in image_topics)
    if options.limit is not None:
        total = min(total, options.limit)
    return ReplayPlan(input_storage, options.storage or input_storage, image_topics, total)


def plan_replay(options: ReplayOptions) -> ReplayPlan:
    """Check the input bag, the image topics and the output path without loading any model."""
    reader = open_input(options.input)
    try:
        return plan_from_reader(reader, options)
    finally:
        reader.close()


def open_input(path: Path) -> Any:
    """An open reader of the input bag; an unreadable bag is a :class:`ReplayError`."""
    try:
        return open_reader(path)
    except BagError as exc:
        raise ReplayError(str(exc)) from exc
