"""``ovseg-replay BAG [BAG ...] --output-dir DIR``: label many bags, here or on Ray (``--ray``).

Each input bag gives ``DIR/<name>_ovseg`` with what a single ``ovseg-replay IN OUT`` run
writes. Nothing is lost and nothing is written twice:

- an output is written under ``DIR/.partial/<name>_ovseg`` (same name, so the bag's own
  files are named as a single run names them) and moved to ``DIR`` only when complete;
- a rerun skips complete outputs (``--overwrite`` redoes them) and clears stale partials;
- a bag that fails is retried ``--retries`` times, then reported; the others go on;
- the run ends with a JSON report (``--report``, default ``DIR/ovseg-replay-report.json``)
  and exit status 1 if any bag failed (130 when interrupted).

One overall progress bar (frames done / total, frames/s, ETA) and one line per bag, the
same with and without Ray. The Ray side lives in :mod:`ovseg_ros.tools.fleet`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import glob
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ovseg_ros.tools.cli import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_ray_arguments,
)

PROG = "ovseg-replay"
SUFFIX = "_ovseg"
PARTIAL = ".partial"  # staging directory inside --output-dir
REPORT_NAME = "ovseg-replay-report.json"
BAG_FILE_SUFFIXES = (".mcap", ".db3")
DEFAULT_RANGE_FRAMES = 200


# -- command line -----------------------------------------------------------------------------


def add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the many-bags mode, added to ``ovseg-replay``'s parser."""
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


def wants_many(args: argparse.Namespace) -> bool:
    return args.output_dir is not None or args.ray is not None


# -- inputs and outputs ---------------------------------------------------------------------


def is_bag(path: Path) -> bool:
    """A rosbag2 directory (with metadata.yaml) or a lone .mcap/.db3 file, as rosbags reads."""
    if path.is_dir():
        return (path / "metadata.yaml").is_file()
    return path.is_file() and path.suffix in BAG_FILE_SUFFIXES


def expand_bags(items: Sequence[str | Path]) -> list[Path]:
    """Bags named directly, the bags inside a directory (sorted), or the bags a glob matches."""
    bags: list[Path] = []
    for item in items:
        text = str(item)
        path = Path(text).expanduser()
        if is_bag(path):
            found = [path]
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if is_bag(p) and not p.name.startswith("."))
            if not found:
                raise UsageError(f"{path} is neither a bag nor a directory holding bags")
        elif glob.has_magic(text):
            found = sorted(p for p in map(Path, glob.glob(os.path.expanduser(text))) if is_bag(p))
            if not found:
                raise UsageError(f"no bag matches {text}")
        else:
            raise UsageError(f"input bag {path} not found")
        bags += [p for p in found if p.resolve() not in {b.resolve() for b in bags}]
    return bags


def bag_name(path: Path) -> str:
    """``run1`` for ``run1/`` (a bag directory) and for ``run1.mcap`` (a lone file)."""
    return path.stem if path.is_file() else path.name


@dataclass
class BagJob:
    """One input bag and where its output goes."""

    input: Path
    name: str
    final: Path  # DIR/<name>_ovseg
    staging: Path  # DIR/.partial/<name>_ovseg
    options: Any = None  # ReplayOptions writing to ``staging``
    frames: int = 0  # image frames planned
    image_topics: tuple[str, ...] = ()  # the topics labelled


def make_jobs(bags: Sequence[Path], output_dir: Path) -> list[BagJob]:
    jobs, seen = [], {}
    for bag in bags:
        name = bag_name(bag)
        if name in seen:
            raise UsageError(
                f"two inputs give the same output name {name}{SUFFIX}: {seen[name]} and {bag}"
            )
        seen[name] = bag
        out = f"{name}{SUFFIX}"
        jobs.append(BagJob(bag, name, output_dir / out, output_dir / PARTIAL / out))
    return jobs


def is_complete(path: Path) -> bool:
    """A finished output: outputs reach their final name only once closed."""
    return (path / "metadata.yaml").is_file()


def finalize(job: BagJob) -> None:
    """Move the closed bag from the staging name to its final name."""
    from ovseg_ros.tools.bag_io import remove_bag

    if job.final.exists() or job.final.is_symlink():
        remove_bag(job.final)  # --overwrite: the old output goes only now
    os.replace(job.staging, job.final)


def discard(job: BagJob) -> None:
    from ovseg_ros.tools.bag_io import remove_bag

    if job.staging.exists():
        remove_bag(job.staging)


# -- report -----------------------------------------------------------------------------------


@dataclass
class BagReport:
    """One bag's line in the JSON report."""

    input: str
    output: str
    status: str = "pending"  # done | skipped | failed | interrupted
    frames_in: int = 0
    frames_labelled: int = 0
    corrupt_frames_skipped: int = 0
    seconds: float = 0.0
    attempts: int = 0
    windows: int = 0  # Ray: time windows the bag was labelled in
    worker_seconds: float = 0.0  # Ray: the actors' time on its windows (reading, labelling)
    error: str | None = None
    skipped_frames: list[str] = field(default_factory=list)  # the first skip lines

    def line(self) -> str:
        head = f"{self.status:<11} {Path(self.input).name}"
        if self.status == "skipped":
            return f"{head}: {self.output} is complete (--overwrite redoes it)"
        text = (
            f"{head}: {self.frames_labelled}/{self.frames_in} frames labelled, "
            f"{self.corrupt_frames_skipped} corrupt skipped, {self.seconds:.1f} s"
        )
        if self.attempts > 1:
            text += f", {self.attempts} attempts"
        if self.status == "done":
            return f"{text} -> {self.output}"
        return f"{text}: {self.error}" if self.error else text


def write_report(path: Path, reports: Sequence[BagReport], run: dict[str, Any]) -> None:
    totals = {
        "bags": len(reports),
        **{s: sum(r.status == s for r in reports) for s in ("done", "skipped", "failed")},
        "frames_in": sum(r.frames_in for r in reports),
        "frames_labelled": sum(r.frames_labelled for r in reports),
        "corrupt_frames_skipped": sum(r.corrupt_frames_skipped for r in reports),
    }
    report = {
        "tool": PROG,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run": run,
        "totals": totals,
        "bags": [dataclasses.asdict(r) for r in reports],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def fill_report(report: BagReport, stats: Any) -> None:
    """Frame counters from a ``ReplayStats`` (or the merged stats of a windowed bag)."""
    report.frames_in = stats.frames_in
    report.frames_labelled = stats.frames_out
    report.corrupt_frames_skipped = stats.frames_skipped
    report.skipped_frames = list(stats.skip_lines)


# -- progress ---------------------------------------------------------------------------------


class FrameProgress:
    """One bar for the whole run (frames done / total, frames/s, ETA) plus printed lines.

    The tools' shared :class:`~ovseg_ros.tools.cli.Progress`; ``advance`` takes negative
    steps too (a failed attempt's frames are taken back before its retry). Disabled, only
    the lines are printed.
    """

    def __init__(self, total: int, enabled: bool = True, stream: TextIO | None = None) -> None:
        from ovseg_ros.tools.cli import Progress

        self.stream = stream or sys.stderr
        self.bar = Progress(total, prog=PROG, stream=self.stream) if enabled else None

    def advance(self, frames: int) -> None:
        if frames and self.bar is not None:
            self.bar.update(frames)

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.log(text)
        else:
            print(f"{PROG}: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Prepared:
    """What every bag of a run shares: engine settings, vocabulary, output options."""

    config: Any  # SegmenterConfig (unresolved: each Ray actor resolves its own device)
    classes: list[str]
    options: Any  # ReplayOptions template (input/output replaced per bag)


def prepare(args: argparse.Namespace) -> Prepared:
    """Flags and params file -> settings, as a single ``ovseg-replay`` run reads them."""
    from ovseg_ros.tools.replay import read_settings
    from ovseg_ros.tools.replay_plan import confidence_topics

    # input/output are set per bag; the template holds everything else.
    per_bag = argparse.Namespace(**{**vars(args), "input": Path(), "output": Path()})
    settings = read_settings(per_bag)
    confidence_topics(settings.vocabulary, settings.options.confidence_classes)
    return Prepared(settings.config, settings.classes, settings.options)


def plan_jobs(
    jobs: Sequence[BagJob], prepared: Prepared, overwrite: bool, reports: dict[str, BagReport]
) -> list[BagJob]:
    """The jobs to run: complete outputs are skipped, unreadable bags fail here."""
    from ovseg_ros.tools.replay_plan import ReplayError, plan_replay

    todo = []
    for job in jobs:
        report = reports[job.name]
        if is_complete(job.final) and not overwrite:
            report.status = "skipped"
            continue
        job.options = dataclasses.replace(
            prepared.options, input=job.input, output=job.staging, overwrite=True
        )
        try:
            discard(job)  # a partial output of an earlier, killed run
            plan = plan_replay(job.options)
        except (ReplayError, OSError) as exc:
            report.status, report.error = "failed", str(exc)
            continue
        job.frames, job.image_topics = plan.total_frames, tuple(plan.image_topics)
        todo.append(job)
    return todo


def run_many(args: argparse.Namespace) -> int:
    """The many-bags mode of ``ovseg-replay``; returns the exit status."""
    from ovseg_ros.tools.replay_plan import ReplayError

    try:
        return _run_many(args)
    except (UsageError, ReplayError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before any bag started
        print(f"{PROG}: interrupted before any output was written", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run_many(args: argparse.Namespace) -> int:
    if args.output_dir is None:
        raise UsageError("--ray needs --output-dir DIR")
    if args.retries < 0 or (args.actors is not None and args.actors < 1):
        raise UsageError("--retries must be >= 0 and --actors >= 1")
    if args.range_frames < 1:
        raise UsageError("--range-frames must be >= 1")
    output_dir: Path = args.output_dir.expanduser()
    jobs = make_jobs(expand_bags(args.bags), output_dir)
    for job in jobs:
        inside = output_dir.resolve()
        if inside == job.input.resolve() or job.input.resolve() in inside.parents:
            raise UsageError(f"--output-dir {output_dir} is inside the input bag {job.input}")
    prepared = prepare(args)
    reports = {j.name: BagReport(str(j.input), str(j.final)) for j in jobs}
    todo = plan_jobs(jobs, prepared, args.overwrite, reports)
    progress = FrameProgress(sum(j.frames for j in todo), enabled=not args.no_progress)
    for job in jobs:
        if reports[job.name].status in ("skipped", "failed"):
            progress.line(reports[job.name].line())
    run_info = {
        "output_dir": str(output_dir),
        "ray": args.ray,
        "retries": args.retries,
        "method": prepared.config.method,
        "preset": prepared.config.preset,
        "classes": prepared.classes,
    }

    def finished(job: BagJob) -> None:
        progress.line(reports[job.name].line())

    from ovseg_ros.tools.fleet import FleetError  # imports no ray

    started = time.perf_counter()
    interrupted = False
    try:
        if todo and args.ray is not None:
            from ovseg_ros.tools.fleet import replay_on_ray

            run_info.update(
                replay_on_ray(todo, prepared, args, reports, progress.advance, finished)
            )
        elif todo:
            _replay_here(todo, prepared, args.retries, reports, progress, finished)
    except KeyboardInterrupt:
        interrupted = True
    except FleetError as exc:  # Ray missing, unreachable, or the actors cannot start
        progress.line(f"error: {exc}")
        for job in todo:
            if reports[job.name].status == "pending":
                reports[job.name].status, reports[job.name].error = "failed", str(exc)
    finally:
        progress.close()
        for job in todo:
            if reports[job.name].status == "pending":
                reports[job.name].status = "interrupted"
                discard(job)
        run_info["seconds"] = time.perf_counter() - started
        with contextlib.suppress(OSError):  # only when empty
            (output_dir / PARTIAL).rmdir()
        report_path = args.report or output_dir / REPORT_NAME
        ordered = [reports[j.name] for j in jobs]
        write_report(report_path, ordered, run_info)
    counts = {s: sum(r.status == s for r in ordered) for s in ("done", "skipped", "failed")}
    print(
        f"{PROG}: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed "
        f"of {len(jobs)} bags in {run_info['seconds']:.1f} s; report: {report_path}",
        file=sys.stderr,
    )
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if counts["failed"] else EXIT_OK


def build_segmenter_for(prepared: Prepared) -> Any:
    """The segmenter with the run's vocabulary (``ReplayError`` for missing weights etc.)."""
    from ovseg_ros.segmentation import WeightsNotFoundError, build_segmenter
    from ovseg_ros.tools.replay_plan import ReplayError

    try:
        segmenter = build_segmenter(prepared.config.resolved())
        segmenter.set_vocabulary(prepared.classes)
    except (WeightsNotFoundError, ValueError) as exc:
        raise ReplayError(str(exc)) from exc
    return segmenter


def _replay_here(
    todo: Sequence[BagJob],
    prepared: Prepared,
    retries: int,
    reports: dict[str, BagReport],
    progress: FrameProgress,
    finished: Callable[[BagJob], None],
) -> None:
    """One process, one model: the bags one after the other with ``run_replay``."""
    from ovseg_ros.tools.replay_core import run_replay
    from ovseg_ros.tools.replay_plan import ReplayAborted, ReplayError

    segmenter = build_segmenter_for(prepared)
    for job in todo:
        report = reports[job.name]
        counted = 0

        def on_frame(stats: Any) -> None:
            nonlocal counted
            progress.advance(stats.frames_in - counted)
            counted = stats.frames_in

        started = time.perf_counter()
        while report.status == "pending":
            report.attempts += 1
            progress.advance(-counted)
            counted = 0
            try:
                stats = run_replay(job.options, segmenter, on_frame=on_frame, log=progress.line)
            except (ReplayAborted, ReplayError, OSError) as exc:
                discard(job)
                if isinstance(exc, ReplayAborted):
                    fill_report(report, exc.stats)
                report.error = str(exc)
                if isinstance(exc, ReplayError) or report.attempts > retries:
                    report.status = "failed"
                continue
            fill_report(report, stats)
            if stats.interrupted:
                discard(job)
                raise KeyboardInterrupt
            if stats.frames_in and not stats.frames_out:
                discard(job)
                report.status, report.error = "failed", "no frame could be labelled"
                continue
            finalize(job)
            report.status, report.error = "done", None
        report.seconds = time.perf_counter() - started
        finished(job)
