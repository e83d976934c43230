"""Per-bag bookkeeping of ``ovseg-replay``: where an output is written, when it becomes final,
and the JSON report.

An output never appears under its final name unfinished: it is written under
``<parent>/.partial/<name>`` (the same name, so the bag's own files are named as if written
in place) and moved to ``<parent>/<name>`` only once closed. :func:`clear_stale` removes what
a killed run left there, :func:`finalize` moves a closed bag into place, :func:`discard`
removes an unfinished one. Both the single-bag and the many-bags runs, here and on Ray, use
these.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import glob
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovseg_ros.tools.cli import UsageError
from ovseg_ros.tools.replay.bag_io import BagError, is_bag, remove_bag
from ovseg_ros.tools.replay.plan import (
    PROG,
    ReplayError,
    ReplayOptions,
    ReplayStats,
    plan_replay,
)

SUFFIX = "_ovseg"  # DIR/<name>_ovseg for an input bag <name> (--output-dir)
PARTIAL = ".partial"  # staging directory next to the final outputs
REPORT_NAME = "ovseg-replay-report.json"


class OutputError(RuntimeError):
    """An output location cannot be prepared, written or moved into place (a full or
    read-only disk, permissions): the message says where and why. Exit status 1."""


# -- inputs and outputs ---------------------------------------------------------------------


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
    final: Path  # the output's name once complete
    staging: Path  # <final's parent>/.partial/<final's name>, while it is written
    options: ReplayOptions | None = None  # writing to ``staging`` (set when planned)
    frames: int = 0  # image frames planned
    image_topics: tuple[str, ...] = ()  # the topics labelled


def job_for(input_bag: Path, final: Path, name: str | None = None) -> BagJob:
    """The job writing ``input_bag``'s output to ``final`` through its staging name."""
    return BagJob(
        input_bag, name or bag_name(input_bag), final, final.parent / PARTIAL / final.name
    )


def make_jobs(bags: Sequence[Path], output_dir: Path) -> list[BagJob]:
    """One job per bag, each writing ``output_dir/<name>_ovseg``; two inputs of the same
    name are a :class:`UsageError`."""
    jobs, seen = [], {}
    for bag in bags:
        name = bag_name(bag)
        if name in seen:
            raise UsageError(
                f"two inputs give the same output name {name}{SUFFIX}: {seen[name]} and {bag}"
            )
        seen[name] = bag
        jobs.append(job_for(bag, output_dir / f"{name}{SUFFIX}", name))
    return jobs


def is_complete(path: Path) -> bool:
    """A finished output: outputs reach their final name only once closed."""
    return (path / "metadata.yaml").is_file()


def prepare_staging(directory: Path) -> None:
    """Create ``directory/.partial`` and a file in it before any model loads, so that an
    output location that cannot be written (read-only, no space, permissions) fails at once:
    :class:`OutputError`."""
    try:
        (directory / PARTIAL).mkdir(parents=True, exist_ok=True)
        # A probe: the directory may exist already while its file system is read-only now.
        fd, probe = tempfile.mkstemp(dir=directory / PARTIAL, suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        remove_empty_staging(directory)
        raise OutputError(f"cannot write to {directory}: {exc}") from exc


def clear_stale(job: BagJob) -> None:
    """Remove what a killed run left under the staging name (a bag without metadata, an
    sqlite3 journal, a truncated mcap): :class:`OutputError` if it cannot be removed."""
    try:
        if job.staging.exists() or job.staging.is_symlink():
            remove_bag(job.staging)
    except (BagError, OSError) as exc:
        raise OutputError(f"cannot remove the partial output {job.staging}: {exc}") from exc


def finalize(job: BagJob) -> None:
    """Move the closed bag from the staging name to its final name (the old output, with
    --overwrite, goes only now); :class:`OutputError` if that fails."""
    try:
        if job.final.exists() or job.final.is_symlink():
            remove_bag(job.final)
        os.replace(job.staging, job.final)
    except (BagError, OSError) as exc:
        raise OutputError(f"cannot move {job.staging} to {job.final}: {exc}") from exc
    remove_empty_staging(job.final.parent)


def discard(job: BagJob) -> None:
    """Remove the unfinished output, if any (never raises: the run reports its own error)."""
    with contextlib.suppress(BagError, OSError):
        if job.staging.exists() or job.staging.is_symlink():
            remove_bag(job.staging)
    remove_empty_staging(job.final.parent)


def remove_empty_staging(directory: Path) -> None:
    with contextlib.suppress(OSError):  # only when empty
        (directory / PARTIAL).rmdir()


def plan_jobs(
    jobs: Sequence[BagJob], template: ReplayOptions, reports: dict[str, BagReport]
) -> list[BagJob]:
    """The jobs to run, each with its options (``template`` for ``job.input`` into
    ``job.staging``): complete outputs are skipped unless ``template.overwrite``; a bag that
    cannot be read, or a stale partial output that cannot be removed, fails here."""
    todo = []
    for job in jobs:
        report = reports[job.name]
        if is_complete(job.final) and not template.overwrite:
            report.status = "skipped"
            continue
        job.options = dataclasses.replace(
            template, input=job.input, output=job.staging, overwrite=True
        )
        try:
            plan = plan_replay(job.options)
            clear_stale(job)  # the partial output of an earlier, killed run
        except (ReplayError, OutputError) as exc:
            report.status, report.error = "failed", str(exc)
            continue
        job.frames, job.image_topics = plan.total_frames, tuple(plan.image_topics)
        todo.append(job)
    return todo


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


def fill_report(report: BagReport, stats: ReplayStats) -> None:
    """Frame counters from a run's (or a windowed bag's merged) :class:`ReplayStats`."""
    report.frames_in = stats.frames_in
    report.frames_labelled = stats.frames_out
    report.corrupt_frames_skipped = stats.frames_skipped
    report.skipped_frames = list(stats.skip_lines)


def write_report(path: Path, reports: Sequence[BagReport], run: dict[str, Any]) -> None:
    """The JSON report, written whole or not at all (through ``<path>.tmp``, removed when the
    write fails); :class:`OutputError` when it cannot be written."""
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
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"cannot write the report {path}: {exc}") from exc
