"""The node's ``/diagnostics`` status: a pure function of a stats snapshot and the node state.

Levels: ERROR while the last configure failed and no model is loaded; while active, WARN for
inference errors, invalid input frames, more than :data:`INPUT_LOSS_WARN` of the camera's
frames lost on the way in (estimated from the gaps in its stamps, :mod:`.input_loss`) or no
input since the previous status; OK otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from ovseg_ros.pipeline import OUTPUT_KINDS
from ovseg_ros.ros.stats import StatsSnapshot, combined

INPUT_LOSS_WARN = 0.05  # share of the camera's frames lost in transport that warns
INPUT_LOSS_HINT = 'see the README section "Large images and DDS"'


@dataclass(frozen=True)
class NodeInfo:
    """What diagnostics report besides the counters."""

    name: str  # the status name, "<node>: segmentation"
    state: str  # lifecycle state label
    failure: str = ""  # why the last configure failed ("" if it did not)
    configured: bool = False  # a segmenter is loaded
    method: str = ""
    device: str = ""
    preset: str = ""
    vocabulary_version: int = 0
    vocabulary_size: int = 0
    # A classes change being encoded: the version it will get, names encoded / to encode.
    pending_version: int = 0  # 0: none
    pending_done: int = 0
    pending_total: int = 0  # 0: not known yet


def node_info(
    name: str,
    state: str,
    failure: str,
    segmenter: Any,
    parameter: Callable[[str], Any],
    vocabulary_version: int,
    pending: dict[str, int],
) -> NodeInfo:
    """The :class:`NodeInfo` of node ``name``: method, device and preset from ``segmenter``
    while one is loaded, else from the parameters (``parameter(name)``); ``pending``: the
    ``pending_*`` fields (:func:`ovseg_ros.ros.vocabulary_updater.pending_info`)."""
    config = segmenter.config if segmenter is not None else None
    vocabulary = segmenter.vocabulary if segmenter is not None else None
    return NodeInfo(
        name=f"{name}: segmentation",
        state=state,
        failure=failure,
        configured=segmenter is not None,
        method=config.method if config else str(parameter("method")),
        device=str(config.device) if config else str(parameter("device")),
        preset=config.preset if config else str(parameter("preset")),
        vocabulary_version=vocabulary_version,
        vocabulary_size=len(vocabulary) if vocabulary else 0,
        **pending,
    )


def node_statuses(
    info: NodeInfo,
    cameras: list[str],
    now: dict[str, StatsSnapshot],
    previous: dict[str, StatsSnapshot],
    elapsed_s: float,
) -> list[DiagnosticStatus]:
    """The node's status (counters summed over cameras), then in the multi-camera mode one
    per named camera (``"<node>: camera <name>"``), judged like the node's on that camera's
    counters alone: its rate, latency percentiles, drops and invalid frames."""
    statuses = [segmentation_status(info, combined(now), combined(previous), elapsed_s)]
    node = info.name.split(":")[0]
    for key in cameras:
        if key:  # the single camera's key is "": its status is the node's
            camera = replace(info, name=f"{node}: camera {key}")
            empty = StatsSnapshot()
            status = segmentation_status(
                camera, now.get(key, empty), previous.get(key, empty), elapsed_s
            )
            statuses.append(status)
    return statuses


def segmentation_status(
    info: NodeInfo, now: StatsSnapshot, previous: StatsSnapshot, elapsed_s: float
) -> DiagnosticStatus:
    """The status for the counters ``now``, compared with ``previous`` ``elapsed_s`` ago."""
    elapsed = max(elapsed_s, 1e-6)
    rate = (now.processed - previous.processed) / elapsed
    new_frames = now.received - previous.received
    new_invalid = now.invalid - previous.invalid
    new_errors = now.errors - previous.errors
    new_lost = now.input_lost - previous.input_lost
    loss = new_lost / (new_lost + new_frames) if new_lost > 0 else 0.0

    level, message = DiagnosticStatus.OK, info.state
    if info.failure and not info.configured:
        level, message = DiagnosticStatus.ERROR, f"not configured: {info.failure}"
    elif info.state == "active":
        message = f"active, {rate:.1f} Hz"
        if new_errors:
            level, message = DiagnosticStatus.WARN, f"inference errors: {now.last_error}"
        elif new_invalid:
            level, message = DiagnosticStatus.WARN, f"{new_invalid} invalid input frames"
        elif loss > INPUT_LOSS_WARN:
            level = DiagnosticStatus.WARN
            message = (
                f"{loss:.0%} of the camera's frames lost before reaching the node ({new_lost} "
                f"of {new_lost + new_frames}); {INPUT_LOSS_HINT}"
            )
        elif new_frames == 0:
            level, message = DiagnosticStatus.WARN, "no input frames"

    values: dict[str, object] = {
        "state": info.state,
        "method": info.method,
        "device": info.device,
        "preset": info.preset,
        "vocabulary_version": info.vocabulary_version if info.configured else 0,
        "vocabulary_size": info.vocabulary_size if info.configured else 0,
        "vocabulary_pending_version": info.pending_version or "",
        "vocabulary_encoding": (
            f"{info.pending_done}/{info.pending_total or '?'}" if info.pending_version else ""
        ),
        "rate_hz": f"{rate:.2f}",
        "frames_received": now.received,
        "frames_processed": now.processed,
        "frames_dropped": now.dropped,
        "frames_invalid": now.invalid,
        "inference_errors": now.errors,
        "qos_incompatible_events": now.qos_incompatible,
        "frames_lost_in_transport": now.input_lost,
        "input_loss_percent": f"{100 * loss:.1f}",
    }
    # Outputs made so far, by kind: only the labels are made for nobody.
    values.update({f"computed_{kind}": now.computed.get(kind, 0) for kind in OUTPUT_KINDS})
    for key, samples in (("latency", now.latency), ("inference", now.inference)):
        for q in (50, 90, 99):
            value = np.percentile(samples, q) * 1e3 if samples.size else float("nan")
            values[f"{key}_p{q}_ms"] = f"{value:.1f}"
    return DiagnosticStatus(
        level=level,
        name=info.name,
        message=message,
        hardware_id=info.device,
        values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
    )


def points_status(
    name: str, now: dict[str, int], previous: dict[str, int], active: bool
) -> DiagnosticStatus:
    """The status of one camera's point clouds and 3D objects (``"<node>: points[ <camera>]"``).

    ``now`` / ``previous``: :meth:`ovseg_ros.points_stage.PointsStage.counters` at this and the
    previous status. WARN while active when clouds or objects were skipped since the previous
    status (the message names the most frequent reason), OK otherwise. With objects, the
    message and the ``objects_per_frame`` / ``objects_ms_per_frame`` values give the period's
    objects and time per frame.
    """

    def since(key: str) -> int:
        return now.get(key, 0) - previous.get(key, 0)

    def skipped(what: str) -> str:
        """``"N <what> skipped (mostly <reason>), "`` for skips since the previous status."""
        prefix = f"{what}_skipped_"
        counts = {k.removeprefix(prefix): since(k) for k in now if k.startswith(prefix)}
        worst = max(counts, key=lambda k: counts[k], default="")
        if not (active and worst and counts[worst] > 0):
            return ""
        return f"{sum(counts.values())} {what} skipped (mostly {worst}), "

    clouds, objects, frames = skipped("clouds"), skipped("objects"), since("objects_frames")
    parts = [f"{clouds}{since('clouds_published')} clouds published"]
    values = dict(now)
    if objects or frames:
        parts.append(f"{objects}{frames} frames of objects")
    if frames:
        per_frame = since("objects_found") / frames
        ms = since("objects_time_us") / frames / 1000.0
        parts[-1] += f" ({per_frame:.1f} objects in {ms:.1f} ms per frame)"
        values.update(objects_per_frame=f"{per_frame:.2f}", objects_ms_per_frame=f"{ms:.2f}")
    level = DiagnosticStatus.WARN if clouds or objects else DiagnosticStatus.OK
    return DiagnosticStatus(
        level=level,
        name=name,
        message="; ".join(parts),
        values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
    )
