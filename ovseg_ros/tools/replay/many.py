"""``ovseg-replay BAG [BAG ...] --output-dir DIR``: label many bags, here or on Ray (``--ray``).

Each input bag gives ``DIR/<name>_ovseg`` with what a single ``ovseg-replay IN OUT`` run
writes. Nothing is lost and nothing is written twice:

- an output is written under ``DIR/.partial/<name>_ovseg`` and moved to ``DIR`` only when
  complete (:mod:`ovseg_ros.tools.replay.jobs`);
- a rerun skips complete outputs (``--overwrite`` redoes them) and clears stale partials;
- a bag that fails is retried ``retries`` times, then reported; the others go on;
- the run ends with a JSON report (default ``DIR/ovseg-replay-report.json``).

Progress goes through two callbacks (frames done, a line per bag), the same with and
without Ray. The Ray side lives in :mod:`ovseg_ros.tools.fleet`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovseg_ros.tools.cli import UsageError
from ovseg_ros.tools.fleet import FleetError, replay_on_ray
from ovseg_ros.tools.replay.core import run_replay
from ovseg_ros.tools.replay.jobs import (
    REPORT_NAME,
    BagJob,
    BagReport,
    OutputError,
    discard,
    expand_bags,
    fill_report,
    finalize,
    make_jobs,
    plan_jobs,
    prepare_staging,
    remove_empty_staging,
    write_report,
)
from ovseg_ros.tools.replay.plan import ReplayAborted, ReplayError
from ovseg_ros.tools.replay.settings import ReplaySettings, build_replay_segmenter

DEFAULT_RANGE_FRAMES = 200


@dataclass(frozen=True)
class ManyOptions:
    """Where the outputs go and how the bags are shared out."""

    output_dir: Path
    retries: int = 2  # retries of a failed bag (a failed window, on Ray)
    report: Path | None = None  # default: output_dir / REPORT_NAME
    ray: str | None = None  # None: here, in this process; else a Ray address ("local", "auto")
    actors: int | None = None  # Ray actors (default: one per GPU)
    range_frames: int = DEFAULT_RANGE_FRAMES  # Ray: frames per time window

    @property
    def report_path(self) -> Path:
        return self.report or self.output_dir / REPORT_NAME


@dataclass
class ManyRun:
    """A planned run: every job (in input order), its report, and the jobs to label."""

    settings: ReplaySettings
    options: ManyOptions
    jobs: list[BagJob]
    reports: dict[str, BagReport]  # job name -> report
    todo: list[BagJob]

    @property
    def frames(self) -> int:
        """Image frames to label in all."""
        return sum(job.frames for job in self.todo)

    def ordered_reports(self) -> list[BagReport]:
        return [self.reports[job.name] for job in self.jobs]


def plan_many(
    inputs: Sequence[str | Path], settings: ReplaySettings, options: ManyOptions
) -> ManyRun:
    """Find the bags, check them and the output directory; nothing is labelled yet.

    Bad flags or inputs are a :class:`UsageError`; an output directory that cannot be
    written is an :class:`OutputError`.
    """
    if options.retries < 0 or (options.actors is not None and options.actors < 1):
        raise UsageError("--retries must be >= 0 and --actors >= 1")
    if options.range_frames < 1:
        raise UsageError("--range-frames must be >= 1")
    output_dir = options.output_dir
    jobs = make_jobs(expand_bags(inputs), output_dir)
    inside = output_dir.resolve()
    for job in jobs:
        if inside == job.input.resolve() or job.input.resolve() in inside.parents:
            raise UsageError(f"--output-dir {output_dir} is inside the input bag {job.input}")
    prepare_staging(output_dir)
    reports = {j.name: BagReport(str(j.input), str(j.final)) for j in jobs}
    todo = plan_jobs(jobs, settings.options, reports)
    return ManyRun(settings, options, jobs, reports, todo)


@dataclass(frozen=True)
class ManyOutcome:
    """How a run ended: every bag's report (in input order), and where the report went."""

    reports: list[BagReport]
    report_path: Path
    seconds: float
    interrupted: bool

    def count(self, status: str) -> int:
        return sum(report.status == status for report in self.reports)


def run_many(
    run: ManyRun, advance: Callable[[int], None], line: Callable[[str], None]
) -> ManyOutcome:
    """Label the planned bags, here or on Ray; write the report.

    ``advance(frames)`` reports frames done (negative: a failed attempt's frames taken back
    before its retry); ``line(text)`` a bag's result. Ctrl-C stops the run: the bags not
    finished are reported ``interrupted`` and their partial outputs removed. Raises
    :class:`OutputError` when the report cannot be written.
    """
    options, reports, todo = run.options, run.reports, run.todo
    for job in run.jobs:
        if reports[job.name].status in ("skipped", "failed"):
            line(reports[job.name].line())
    config = run.settings.config
    facts: dict[str, Any] = {
        "output_dir": str(options.output_dir),
        "ray": options.ray,
        "retries": options.retries,
        "method": config.method,
        "preset": config.preset,
        "classes": run.settings.classes,
    }

    def finished(job: BagJob) -> None:
        line(reports[job.name].line())

    started = time.perf_counter()
    interrupted = False
    try:
        if todo and options.ray is not None:
            facts |= replay_on_ray(
                todo,
                run.settings,
                reports,
                advance,
                finished,
                address=options.ray,
                actors=options.actors,
                retries=options.retries,
                range_frames=options.range_frames,
            )
        elif todo:
            _replay_here(todo, run.settings, options.retries, reports, advance, line)
    except KeyboardInterrupt:
        interrupted = True
    except (FleetError, ReplayError) as exc:  # Ray unusable, or no segmenter (missing weights)
        line(f"error: {exc}")
        for job in todo:
            if reports[job.name].status == "pending":
                reports[job.name].status, reports[job.name].error = "failed", str(exc)
    finally:
        for job in todo:
            if reports[job.name].status == "pending":
                reports[job.name].status = "interrupted"
                discard(job)
        remove_empty_staging(options.output_dir)
        facts["seconds"] = time.perf_counter() - started
        write_report(options.report_path, run.ordered_reports(), facts)
    return ManyOutcome(run.ordered_reports(), options.report_path, facts["seconds"], interrupted)


def _replay_here(
    todo: Sequence[BagJob],
    settings: ReplaySettings,
    retries: int,
    reports: dict[str, BagReport],
    advance: Callable[[int], None],
    line: Callable[[str], None],
) -> None:
    """One process, one model: the bags one after the other with ``run_replay``. A segmenter
    that cannot be built is a :class:`ReplayError` before any bag starts."""
    segmenter = build_replay_segmenter(settings)
    for job in todo:
        report = reports[job.name]
        counted = 0

        def on_frame(stats: Any) -> None:
            nonlocal counted
            advance(stats.frames_in - counted)
            counted = stats.frames_in

        started = time.perf_counter()
        while report.status == "pending":
            report.attempts += 1
            advance(-counted)
            counted = 0
            try:
                stats = run_replay(job.options, segmenter, on_frame=on_frame, log=line)
            except (ReplayAborted, ReplayError) as exc:
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
            try:
                finalize(job)
            except OutputError as exc:
                discard(job)
                report.status, report.error = "failed", str(exc)
                continue
            report.status, report.error = "done", None
        report.seconds = time.perf_counter() - started
        line(report.line())
