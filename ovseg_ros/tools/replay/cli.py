"""``ovseg-replay``: segment every camera frame of a rosbag2 bag and write the results to a new bag.

Example::

    ovseg-replay run1_bag run1_seg --image-topic /camera/color/image_raw \\
        --classes "background; floor; wall" "person; man; woman" chair --overlay

The output bag holds what the live node (``segment_node``) publishes, under ``--namespace``
(default ``/ovseg``): ``labels`` (mono8, mono16 from 255 classes; 255 / 65535 where no class
reaches ``prob_threshold``), ``confidence`` (32FC1), ``confidence/<class>`` per
``--confidence-classes`` entry (32FC1), ``mask/<class>`` per ``--mask-classes`` entry (mono8 0/255),
``overlay`` (rgb8, with ``--overlay``) and ``vocabulary`` (std_msgs/String JSON, once,
``valid_from`` stamp 0, offered transient-local so a played-back bag latches it). Each image
carries its input frame's header and is written at the input message's bag timestamp. Unless
``--no-copy-input``, every input topic is copied byte for byte, so the result plays back in RViz
or Foxglove next to the camera. With several image topics, each topic's outputs go under
``<namespace>/<image topic>``.

With ``--temporal-alpha`` (or the params file's ``temporal_alpha``) each image topic's class
probabilities are fused across its frames, in order, as the node does per camera
(:mod:`ovseg_ros.temporal`).

Unlike the node, no frame is dropped. A frame that cannot be decoded is reported and skipped.
The output is written under ``<parent>/.partial/<name>`` and moved to its name only when
complete, so nothing under the output's name is ever unfinished: Ctrl-C leaves the frames
labelled so far in a valid, closed bag at the partial name (exit code 130); an error (a full
or read-only disk) removes it (exit code 1). A rerun clears what a killed run left.

With ``--output-dir``, any number of bags (:mod:`ovseg_ros.tools.replay.many`), also on Ray.

Also ``python -m ovseg_ros.tools.replay``. This module is the command line only: flags, the
summary, exit codes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import traceback
from pathlib import Path

from ovseg_ros.image_conversion import MAX_IMAGE_PIXELS
from ovseg_ros.tools.cli import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Progress,
    UsageError,
    add_engine_arguments,
    add_params_arguments,
    add_ray_arguments,
    positive_int,
)
from ovseg_ros.tools.replay.bag_io import STORAGES, BagError
from ovseg_ros.tools.replay.core import run_replay
from ovseg_ros.tools.replay.jobs import (
    REPORT_NAME,
    BagJob,
    OutputError,
    clear_stale,
    discard,
    finalize,
    job_for,
    prepare_staging,
    remove_empty_staging,
)
from ovseg_ros.tools.replay.many import (
    DEFAULT_RANGE_FRAMES,
    ManyOptions,
    ManyOutcome,
    plan_many,
    run_many,
)
from ovseg_ros.tools.replay.plan import (
    DEFAULT_NAMESPACE,
    PROG,
    ReplayAborted,
    ReplayPlan,
    ReplayStats,
    plan_replay,
    stderr_log,
)
from ovseg_ros.tools.replay.settings import (
    ReplaySettings,
    build_replay_segmenter,
    read_settings,
)

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
        counters = stats.clouds

        def skipped(what: str) -> str:
            prefix = f"{what}_skipped_"
            return ", ".join(
                f"{k.removeprefix(prefix)}: {n}"
                for k, n in counters.items()
                if k.startswith(prefix)
            )

        lines.append(
            f"  point clouds: {counters['clouds_published']} written; skipped: {skipped('clouds')}"
        )
        if counters["objects_frames"] or any(
            n for k, n in counters.items() if k.startswith("objects_skipped_")
        ):
            frames = max(counters["objects_frames"], 1)
            lines.append(
                f"  objects: {counters['objects_found']} in {counters['objects_frames']} frames "
                f"({counters['objects_time_us'] / frames / 1000:.1f} ms per frame); frames "
                f"without depth or camera model: {skipped('objects')}"
            )
    lines.append(f"  output: {stats.output} ({plan.output_storage})")
    for topic, msgtype in stats.topics.items():
        lines.append(f"    {topic}  [{msgtype}]  {stats.counts[topic]} messages")
    if stats.copied_topics:
        lines.append(f"  copied input topics: {', '.join(stats.copied_topics)}")
    for topic, why in stats.not_copied.items():
        lines.append(f"  not copied: {topic}: {why}")
    return "\n".join(lines)


# -- flags ---------------------------------------------------------------------------------------


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
    parser.add_argument(
        "--mask-classes",
        nargs="*",
        default=None,
        help="classes that get a <namespace>/mask/<class> topic, mono8 0/255 (default: params "
        "file's)",
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
    _add_depth_arguments(parser)
    _add_temporal_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_many_arguments(parser)
    return parser


def _add_depth_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "point clouds",
        "write <namespace>/points and <namespace>/camera_info (as the node with "
        "depth:=true), with --objects the 3D objects; the options default to the params "
        "file's values",
    )
    add = group.add_argument
    add(
        "--depth-topic",
        help="registered depth topic: Image (16UC1 mm or 32FC1 m) or its compressedDepth "
        "CompressedImage (png or rvl), told apart by the bag's message type",
    )
    add("--camera-info-topic", help="CameraInfo topic of the depth image")
    add("--depth-sync-tolerance", type=float, help="seconds (default 0.02)")
    add("--points-stride", type=int, help="use every n-th depth pixel (default 1)")
    add("--points-organized", action=argparse.BooleanOptionalAction, default=None)
    add("--depth-min", type=float, help="metres (default 0.1)")
    add("--depth-max", type=float, help="metres (default 10.0)")
    add("--points-classes", nargs="*", help="only points of these classes (default: all)")
    add(
        "--objects",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also write the 3D objects: <namespace>/objects/markers (MarkerArray) and "
        "<namespace>/objects (vision_msgs/Detection3DArray), as the node with objects:=true",
    )
    add("--objects-classes", nargs="*", help="only objects of these classes (default: all)")
    add("--objects-min-points", type=int, help="fewer pixels: no object (default 50)")
    add("--objects-depth-gap", type=float, help="metres between neighbours (default 0.15)")


def _add_temporal_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "stable labels over time (docs/temporal.md)",
        "fuse each image topic's class probabilities with its previous frame's, warped by "
        "optical flow, in stamp order (as the node with temporal_alpha); defaults: the params "
        "file's values",
    )
    add = group.add_argument
    add("--temporal-alpha", type=float, help="weight of the past, in [0, 0.95] (default 0: off)")
    add("--temporal-reset-s", type=float, help="a longer stamp gap restarts fusion (default 0.5)")
    add(
        "--temporal-warmup",
        type=int,
        metavar="N",
        help="with --ray: frames fused before each window (default: enough to match a single "
        "run to 1e-6 at the alpha, 28 at 0.6)",
    )


def _add_many_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("many bags (--output-dir) and Ray (--ray)")
    group.add_argument(
        "--output-dir",
        type=Path,
        help="label every BAG (a bag, a directory of bags or a glob) into DIR/<name>_ovseg",
    )
    add_ray_arguments(group, "the bags (in time windows)")
    group.add_argument(
        "--retries", type=int, default=2, help="retries of a failed bag (default: 2)"
    )
    group.add_argument(
        "--range-frames",
        type=int,
        default=DEFAULT_RANGE_FRAMES,
        help=f"with --ray, split bags into windows of about N frames (default: "
        f"{DEFAULT_RANGE_FRAMES})",
    )
    group.add_argument("--report", type=Path, help=f"JSON report (default: DIR/{REPORT_NAME})")


# -- one bag -------------------------------------------------------------------------------------


def _replay_one(args: argparse.Namespace, input_bag: Path, output_bag: Path) -> int:
    settings = read_settings(args, input_bag, output_bag)
    plan = plan_replay(settings.options)  # fails fast on a bad bag, topic or output path
    job = job_for(input_bag, output_bag)
    prepare_staging(output_bag.parent)  # a read-only output directory fails here
    try:
        clear_stale(job)
        return _label_one(args, settings, plan, job)
    finally:
        remove_empty_staging(output_bag.parent)


def _label_one(
    args: argparse.Namespace, settings: ReplaySettings, plan: ReplayPlan, job: BagJob
) -> int:
    """Label into the staging name; only a complete bag is moved to the output's name."""
    resolved = settings.config.resolved()
    stderr_log(
        f"loading {resolved.method} ({resolved.preset}) on {resolved.device}; "
        f"{len(settings.vocabulary)} classes; {plan.total_frames} frames from "
        + ", ".join(plan.image_topics)
    )
    segmenter = build_replay_segmenter(settings)
    staged = dataclasses.replace(settings.options, output=job.staging, overwrite=True)
    progress = Progress(plan.total_frames, prog=PROG, enabled=not args.no_progress)
    try:
        stats = run_replay(
            staged,
            segmenter,
            on_frame=lambda s: progress.advance_to(s.frames_in, skipped=s.frames_skipped),
            log=progress.log,
        )
    except ReplayAborted as exc:
        progress.close()
        discard(job)
        if not isinstance(exc.__cause__, (BagError, OSError)):  # not the disk: a bug to report
            traceback.print_exception(exc.__cause__ or exc, file=sys.stderr)
            print(format_summary(exc.stats))
        stderr_log(f"error: {exc}; nothing was written to {job.final}")
        return EXIT_FAILED
    progress.close()
    if stats.interrupted:
        print(format_summary(stats))
        stderr_log(
            f"interrupted: the {stats.frames_out} frames labelled so far are in {job.staging} "
            f"(a closed bag); {job.final} was not written"
        )
        return EXIT_INTERRUPTED
    if stats.frames_in and not stats.frames_out:
        discard(job)
        print(format_summary(stats))
        stderr_log("error: no frame could be segmented (see the skipped frames above)")
        return EXIT_FAILED
    finalize(job)
    stats.output = job.final
    print(format_summary(stats))
    return EXIT_OK


# -- many bags -----------------------------------------------------------------------------------


def _replay_many(args: argparse.Namespace) -> int:
    if args.output_dir is None:
        raise UsageError("--ray needs --output-dir DIR")
    # input/output are set per bag; the settings' options are the template.
    settings = read_settings(args, Path(), Path())
    options = ManyOptions(
        output_dir=args.output_dir.expanduser(),
        retries=args.retries,
        report=args.report,
        ray=args.ray,
        actors=args.actors,
        range_frames=args.range_frames,
    )
    run = plan_many(args.bags, settings, options)
    progress = Progress(run.frames, prog=PROG, enabled=not args.no_progress)
    try:
        outcome = run_many(run, progress.update, progress.log)
    finally:
        progress.close()
    return _many_status(outcome, len(run.jobs))


def _many_status(outcome: ManyOutcome, bags: int) -> int:
    done, skipped, failed = (outcome.count(s) for s in ("done", "skipped", "failed"))
    stderr_log(
        f"{done} done, {skipped} skipped, {failed} failed of {bags} bags in "
        f"{outcome.seconds:.1f} s; report: {outcome.report_path}"
    )
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if failed else EXIT_OK


# -- entry point ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ovseg-replay``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    many = args.output_dir is not None or args.ray is not None  # BAG [BAG ...] --output-dir DIR
    if not many and len(args.bags) != 2:
        parser.error("give INPUT_BAG OUTPUT_BAG, or BAG [BAG ...] --output-dir DIR")
    try:
        return _replay_many(args) if many else _replay_one(args, *args.bags)
    except UsageError as exc:  # ReplayError, params-file and flag problems
        stderr_log(f"error: {exc}")
        return EXIT_USAGE
    except OutputError as exc:  # a read-only or full disk: nothing under a final name
        stderr_log(f"error: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        stderr_log("interrupted before any output was written")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
