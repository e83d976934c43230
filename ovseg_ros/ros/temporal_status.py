"""The ``/diagnostics`` status of each camera's temporal fusion (``"<node>: temporal[ <camera>]"``):
frames fused and used alone, the resets by reason and the time spent per frame, from
:meth:`ovseg_ros.temporal.TemporalFusion.counters`.

Levels: OK; WARN while fusion is on and every frame since the previous status was used alone
(e.g. the camera's period is above ``temporal_reset_s``, or the scene changes completely at
every frame): fusion is then on without effect. No status while fusion is off and never ran.
"""

from __future__ import annotations

from collections.abc import Mapping

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from ovseg_ros.temporal import RESET_REASONS, TemporalFusion


def temporal_status(
    name: str, stage: TemporalFusion, now: dict[str, int], previous: dict[str, int]
) -> DiagnosticStatus:
    """The status of one camera's fusion (``now`` / ``previous``: its counters at this and the
    previous status)."""
    delta = {key: n - previous.get(key, 0) for key, n in now.items()}
    resets = {reason: delta[f"resets_{reason}"] for reason in RESET_REASONS}
    fused, alone = delta["frames_fused"], delta["frames_alone"]
    settings = stage.settings
    level = DiagnosticStatus.OK
    if not settings.enabled:
        message = "off"
    else:
        message = f"alpha {settings.alpha:g}: {fused} frames fused, {sum(resets.values())} resets"
        worst = max(resets, key=lambda reason: resets[reason])
        if resets[worst] > 0:
            message += f" (mostly {worst})"
        if alone > 0 and fused == 0:
            level = DiagnosticStatus.WARN
            message = f"alpha {settings.alpha:g}: no frame fused, every frame used alone" + (
                f" (resets: mostly {worst})" if resets[worst] > 0 else ""
            )
    frames = fused + alone
    values = {
        "temporal_alpha": f"{settings.alpha:g}",
        "temporal_reset_s": f"{settings.reset_s:g}",
        **now,
        # since the previous status: the flow thread's and the frame path's cost per frame
        "flow_ms_per_frame": f"{delta['flow_time_us'] / 1000 / frames:.2f}" if frames else "",
        "fusion_ms_per_frame": f"{delta['fusion_time_us'] / 1000 / frames:.2f}" if frames else "",
        "last_flow_error": stage.last_flow_error,
    }
    return DiagnosticStatus(
        level=level,
        name=name,
        message=message,
        values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
    )


class TemporalDiagnostics:
    """The statuses of every camera's fusion, each against its counters at the last call."""

    def __init__(self) -> None:
        self._last: dict[str, dict[str, int]] = {}

    def statuses(
        self, node_name: str, stages: Mapping[str, TemporalFusion]
    ) -> list[DiagnosticStatus]:
        out = []
        for key, stage in stages.items():
            counters = stage.counters()
            if not stage.enabled and not any(counters.values()):
                continue
            name = f"{node_name}: temporal" + (f" {key}" if key else "")
            out.append(temporal_status(name, stage, counters, self._last.get(key, {})))
            self._last[key] = counters
        return out
