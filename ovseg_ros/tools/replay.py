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

This module is the command line (flags, params file, summary). The pass itself is
:mod:`ovseg_ros.tools.replay_core`; options, checks and counters are in
:mod:`ovseg_ros.tools.replay_plan`; the output bag's topics and frame writer in
:mod:`ovseg_ros.tools.replay_output`.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovseg_ros.image_conversion import MAX_IMAGE_PIXELS
from ovseg_ros.pipeline import string_list
from ovseg_ros.tools.bag_io import STORAGES
from ovseg_ros.tools.cli import (
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
from ovseg_ros.tools.replay_core import run_replay
from ovseg_ros.tools.replay_plan import (
    DEFAULT_NAMESPACE,
    PROG,
    ReplayAborted,
    ReplayError,
    ReplayOptions,
    ReplayStats,
    confidence_topics,
    plan_replay,
    stderr_log,
)
from ovseg_ros.tools.replay_points import add_depth_arguments, depth_options

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
                stderr_log(f"warning: params file confidence class {name!r} not in --classes")
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


@dataclass(frozen=True)
class ReplaySettings:
    """The flags and params file of a run, checked before any model loads."""

    config: Any  # SegmenterConfig (unresolved)
    classes: list[str]
    vocabulary: Any  # Vocabulary of ``classes`` (version 0), to check names against
    options: ReplayOptions


def read_settings(args: argparse.Namespace) -> ReplaySettings:
    """Engine config, classes and :class:`ReplayOptions` from the parsed flags and params file;
    bad classes or params values are a :class:`ReplayError`. Shared by the multi-bag mode."""
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
    return ReplaySettings(config, list(classes), draft, _options(args, params, draft))


def _run(args: argparse.Namespace) -> int:
    settings = read_settings(args)
    options = settings.options
    plan = plan_replay(options)  # fails fast on a bad bag, topic or output path
    confidence_topics(settings.vocabulary, options.confidence_classes)

    from ovseg_ros.segmentation import WeightsNotFoundError, build_segmenter

    resolved = settings.config.resolved()
    stderr_log(
        f"loading {resolved.method} ({resolved.preset}) on {resolved.device}; "
        f"{len(settings.vocabulary)} classes; {plan.total_frames} frames from "
        + ", ".join(plan.image_topics)
    )
    try:
        segmenter = build_segmenter(resolved)
        segmenter.set_vocabulary(settings.classes)
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
        stderr_log(
            f"error: {exc}; {exc.stats.output} was closed with the {exc.stats.frames_out} "
            "frames segmented before the error"
        )
        return EXIT_FAILED
    if progress:
        progress.close()
    print(format_summary(stats))
    if stats.interrupted:
        stderr_log(f"interrupted: {stats.output} is closed with {stats.frames_out} frames")
        return EXIT_INTERRUPTED
    if stats.frames_in and not stats.frames_out:
        stderr_log("error: no frame could be segmented (see the skipped frames above)")
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
        stderr_log(f"error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        stderr_log("interrupted before any output was written")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
