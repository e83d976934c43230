"""Ray for ``ovseg-replay --ray`` and ``ovseg-evaluate --ray``: the only module that imports ray.

One actor per GPU (``--actors N`` to choose; CPU actors when the cluster has no GPU) builds
the segmenter once and keeps it, with its text-embedding cache, for every task it is given.

Replay: every bag is cut into time windows of about ``--range-frames`` frames
(:mod:`ovseg_ros.tools.replay.ranges`); windows are tasks given to whichever actor is free, so a
large bag is labelled by all actors at once. An actor returns its window's messages
serialised; the driver writes them into one output bag in window order. Memory stays
bounded: at most two windows per actor are in flight or waiting to be written. A window
that fails is retried (``--retries``); when it keeps failing, its bag fails alone.
Input bags must be readable by every node (same path); outputs are written by the driver.

Evaluate: the dataset's images are dealt to the actors in chunks; each returns the
confusion counts of its chunk and the driver sums them, which gives exactly the counts of
a single-process run (integer sums do not depend on the order).

``ray`` is an optional extra: ``pip install ovseg_ros[fleet]``. Actors are never detached:
a driver that dies (even by ``kill -9``) takes them along, and a local Ray started here
goes with it (Ray's fate-sharing of the processes it starts; its two agent processes notice
and exit on their own within about two minutes).

Library code only (the command lines call it, never the reverse): the replay package's
jobs, plan and ranges, and the evaluation loop; progress goes through callbacks.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ovseg_ros.evaluation.loop import run_timing, score_sample
from ovseg_ros.evaluation.metrics import SegmentationMetric
from ovseg_ros.tools.replay.bag_io import BagError
from ovseg_ros.tools.replay.jobs import (
    BagJob,
    BagReport,
    OutputError,
    discard,
    fill_report,
    finalize,
)
from ovseg_ros.tools.replay.plan import ReplayError, ReplayOptions
from ovseg_ros.tools.replay.ranges import (
    FrameRange,
    OrderedBagWriter,
    RangeOutput,
    label_range,
    split_ranges,
)
from ovseg_ros.tools.replay.settings import ReplaySettings

WINDOWS_PER_ACTOR = 2  # in flight or waiting to be written, per actor
EVAL_CHUNK = 4  # images per evaluation task


class FleetError(RuntimeError):
    """Ray is missing or cannot be reached; the message says what to do."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise FleetError(
            f"--ray needs Ray: pip install 'ovseg_ros[fleet]' (or pip install ray): {exc}"
        ) from None
    return ray


def connect(address: str | None) -> tuple[Any, bool]:
    """``(ray, started_here)``: reuse an initialised Ray, join ``address`` or start a local one.

    ``None``/``"local"`` starts a local Ray on this machine; ``"auto"`` joins the cluster
    this machine belongs to (``ray start``); anything else is a cluster address.
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    kwargs: dict[str, Any] = {"log_to_driver": False}
    if address in (None, "local"):
        kwargs["include_dashboard"] = False
    else:
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise FleetError(f"cannot start or join Ray ({address}): {exc}") from exc
    return ray, True


@dataclass(frozen=True)
class ActorShape:
    """How many actors and what each reserves."""

    count: int
    num_cpus: float
    num_gpus: float
    threads: int  # torch threads per actor (CPU actors)


def actor_shape(resources: dict[str, float], actors: int | None) -> ActorShape:
    """One actor per GPU (or ``actors``, sharing the GPUs); CPUs / 2 actors without GPUs."""
    if actors is not None and actors < 1:
        raise FleetError(f"--actors must be >= 1, got {actors}")
    gpus, cpus = int(resources.get("GPU", 0)), max(float(resources.get("CPU", 1)), 1.0)
    if gpus:
        count = actors or gpus
        return ActorShape(count, min(1.0, cpus / count), min(1.0, gpus / count), 1)
    count = actors or max(1, int(cpus) // 2)
    share = cpus / count
    return ActorShape(count, share, 0.0, max(1, int(share)))


class SegmenterWorker:
    """A Ray actor's state: one segmenter with its vocabulary, used for every task."""

    def __init__(self, config: Any, classes: list[str], strict: bool, threads: int) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        from ovseg_ros.segmentation import build_segmenter

        self.segmenter = build_segmenter(config.resolved())  # the actor's own device
        self.segmenter.set_vocabulary(classes, strict=strict)

    def ready(self) -> str:
        """The device the model runs on, once it is built."""
        return str(self.segmenter.config.device)

    def label_range(self, options: ReplayOptions, frame_range: FrameRange) -> RangeOutput:
        """One window of a bag -> its serialised messages and stats."""
        return label_range(options, self.segmenter, frame_range)

    def evaluate(self, dataset: Any, indices: Sequence[int], boundary: bool) -> tuple:
        """Images ``indices`` of ``dataset`` -> (SegmentationMetric, stage seconds, segment s)."""
        metric = SegmentationMetric(dataset.num_classes, boundary=boundary)
        stages: dict[str, float] = {}
        segment_s = 0.0
        for index in indices:
            segment_s += score_sample(self.segmenter, dataset[index], metric, stages)
        return metric, stages, segment_s


class ActorPool:
    """Started actors, and which of them are free."""

    def __init__(self, ray: Any, shape: ActorShape, config: Any, classes: list[str], strict: bool):
        remote = ray.remote(num_cpus=shape.num_cpus, num_gpus=shape.num_gpus, max_restarts=1)(
            SegmenterWorker
        )
        self.actors = [
            remote.remote(config, classes, strict, shape.threads) for _ in range(shape.count)
        ]
        self.free: deque[Any] = deque(self.actors)

    def wait_ready(self, ray: Any) -> list[str]:
        """Block until every actor has built its model; a failure (missing weights) is
        raised here once, as :class:`FleetError`, not once per task."""
        try:
            return ray.get([actor.ready.remote() for actor in self.actors])
        except Exception as exc:
            self.close(ray)
            raise FleetError(
                f"the Ray actors could not build the segmenter: {_describe(exc)}"
            ) from exc

    def close(self, ray: Any) -> None:
        for actor in self.actors:
            ray.kill(actor)


def _cause(exc: BaseException) -> BaseException:
    """The worker's own exception behind a Ray task error."""
    return getattr(exc, "cause", None) or exc


def _describe(exc: BaseException) -> str:
    cause = _cause(exc)
    return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause) else ''}"


# -- replay -----------------------------------------------------------------------------------


@dataclass
class _Task:
    job: int  # index into the jobs
    frame_range: FrameRange
    attempt: int = 1


def replay_on_ray(
    jobs: Sequence[BagJob],
    settings: ReplaySettings,
    reports: dict[str, BagReport],
    advance: Callable[[int], None],
    finished: Callable[[BagJob], None],
    *,
    address: str | None,
    actors: int | None,
    retries: int,
    range_frames: int,
) -> dict[str, Any]:
    """Label planned ``jobs`` on Ray with the segmenter ``settings`` describe.

    Fills ``reports``; calls ``advance(frames)`` as windows are written (negative when a
    failed bag's frames are taken back) and ``finished(job)`` when a bag is done or failed.
    Returns the run's facts for the report.
    """
    ray, started_here = connect(address)
    try:
        shape = actor_shape(ray.cluster_resources(), actors)
        started = time.perf_counter()
        pool = ActorPool(ray, shape, settings.config, settings.classes, strict=True)
        devices = pool.wait_ready(ray)
        ready_s = time.perf_counter() - started
        tasks: deque[_Task] = deque()
        for j, job in enumerate(jobs):
            try:
                ranges = split_ranges(job.input, job.image_topics, range_frames, job.options.limit)
            except (BagError, ReplayError) as exc:
                reports[job.name].status, reports[job.name].error = "failed", str(exc)
                finished(job)
                continue
            reports[job.name].windows = len(ranges)
            tasks.extend(_Task(j, r) for r in ranges)
        writers: dict[int, OrderedBagWriter] = {}
        begun: dict[int, float] = {}
        in_flight: dict[Any, tuple[Any, _Task]] = {}
        window = WINDOWS_PER_ACTOR * shape.count

        def fail(j: int, error: str) -> None:
            job, report = jobs[j], reports[jobs[j].name]
            if j in writers:
                writers.pop(j).abort()
            discard(job)
            report.status, report.error = "failed", error
            report.seconds = time.perf_counter() - begun.get(j, time.perf_counter())
            advance(-report.frames_in)
            finished(job)

        def next_in_order(task: _Task) -> bool:
            writer = writers.get(task.job)
            return task.frame_range.index == (writer.next_index if writer else 0)

        try:
            while tasks or in_flight:
                waiting = sum(w.buffered for w in writers.values())
                while tasks and pool.free:
                    task = tasks[0]
                    if reports[jobs[task.job].name].status != "pending":
                        tasks.popleft()  # its bag failed already
                        continue
                    full = len(in_flight) + waiting >= window
                    if full and in_flight and not next_in_order(task):
                        break  # bounded memory; the window a bag waits for always goes
                    tasks.popleft()
                    actor = pool.free.popleft()
                    begun.setdefault(task.job, time.perf_counter())
                    reports[jobs[task.job].name].attempts = max(
                        reports[jobs[task.job].name].attempts, task.attempt
                    )
                    ref = actor.label_range.remote(jobs[task.job].options, task.frame_range)
                    in_flight[ref] = (actor, task)
                if not in_flight:
                    continue
                [ref], _ = ray.wait(list(in_flight), num_returns=1)
                actor, task = in_flight.pop(ref)
                pool.free.append(actor)
                job = jobs[task.job]
                report = reports[job.name]
                try:
                    output = ray.get(ref)
                except Exception as exc:  # the worker's error, or a lost actor
                    if report.status != "pending":
                        continue
                    permanent = isinstance(_cause(exc), ReplayError)
                    if permanent or task.attempt > retries:
                        fail(task.job, _describe(exc))
                    else:
                        report.error = _describe(exc)
                        tasks.appendleft(_Task(task.job, task.frame_range, task.attempt + 1))
                    continue
                if report.status != "pending":
                    continue
                writer = writers.get(task.job)
                if writer is None:
                    storage = output.stats.plan.output_storage
                    writer = writers[task.job] = OrderedBagWriter(
                        job.staging, storage, task.frame_range.count
                    )
                try:
                    frames = writer.add(output)
                except (BagError, OSError) as exc:
                    fail(task.job, f"writing {job.staging}: {exc}")
                    continue
                report.frames_in += frames
                report.worker_seconds += output.seconds
                advance(frames)
                if not writer.complete:
                    continue
                fill_report(report, writer.stats)
                if writer.stats.frames_in and not writer.stats.frames_out:
                    fail(task.job, "no frame could be labelled")
                    continue
                try:
                    writers.pop(task.job).close()
                    finalize(job)
                except (BagError, OutputError) as exc:
                    fail(task.job, str(exc))
                    continue
                report.status, report.error = "done", None
                report.seconds = time.perf_counter() - begun[task.job]
                finished(job)
        finally:
            for ref in in_flight:
                ray.cancel(ref, force=True)
            for writer in writers.values():
                writer.abort()
            pool.close(ray)
        return {
            "ray_actors": shape.count,
            "actor_cpus": shape.num_cpus,
            "actor_gpus": shape.num_gpus,
            "actor_devices": devices,
            "actors_ready_s": ready_s,
        }
    finally:
        if started_here:
            ray.shutdown()


# -- evaluate ---------------------------------------------------------------------------------


def evaluate_on_ray(config: Any, dataset: Any, **options: Any) -> tuple[Any, dict[str, Any], bool]:
    """:func:`evaluate_metric_on_ray` (same ``options``) with the metrics computed:
    ``ovseg-evaluate``'s ``evaluate`` sharded over Ray actors, (metrics, timing, interrupted)."""
    metric, timing, interrupted = evaluate_metric_on_ray(config, dataset, **options)
    return metric.compute(), timing, interrupted


def evaluate_metric_on_ray(
    config: Any,
    dataset: Any,
    *,
    address: str | None,
    actors: int | None,
    limit: int | None = None,
    boundary: bool = True,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[SegmentationMetric, dict[str, Any], bool]:
    """The images (the first ``limit``) dealt to Ray actors in chunks: (the summed
    ``SegmentationMetric``, timing, interrupted). ``on_progress(n)``: ``n`` more images
    scored.

    The confusion counts (and Boundary IoU counts) of all chunks are summed, so the metrics
    equal a single-process run's. Every node must see the dataset at ``dataset.root``.
    """
    count = len(dataset) if limit is None else min(limit, len(dataset))
    ray, started_here = connect(address)
    total = SegmentationMetric(dataset.num_classes, boundary=boundary)
    stage_sums: dict[str, float] = {}
    segment_s = 0.0
    interrupted = False
    start = time.perf_counter()
    try:
        shape = actor_shape(ray.cluster_resources(), actors)
        pool = ActorPool(ray, shape, config, list(dataset.classes), strict=False)
        pool.wait_ready(ray)
        shared = ray.put(dataset)
        chunks = deque(
            list(range(i, min(i + EVAL_CHUNK, count))) for i in range(0, count, EVAL_CHUNK)
        )
        in_flight: dict[Any, Any] = {}
        try:
            while chunks or in_flight:
                while chunks and pool.free:
                    actor = pool.free.popleft()
                    in_flight[actor.evaluate.remote(shared, chunks.popleft(), boundary)] = actor
                [ref], _ = ray.wait(list(in_flight), num_returns=1)
                pool.free.append(in_flight.pop(ref))
                try:
                    metric, stages, seconds = ray.get(ref)
                except Exception as exc:
                    raise RuntimeError(f"evaluation on Ray failed: {_describe(exc)}") from exc
                total.merge(metric)
                for stage, value in stages.items():
                    stage_sums[stage] = stage_sums.get(stage, 0.0) + value
                segment_s += seconds
                if on_progress is not None:
                    on_progress(metric.num_images)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            for ref in in_flight:
                ray.cancel(ref, force=True)
            pool.close(ray)
    finally:
        if started_here:
            ray.shutdown()
    timing = run_timing(time.perf_counter() - start, total.num_images, segment_s, stage_sums)
    timing["ray_actors"] = shape.count
    return total, timing, interrupted
