"""The node tests' names for the harness (:mod:`ovseg_ros.harness`): ``NodeProcess(domain,
log_path, params, *ros_args)`` runs ``python -m ovseg_ros.ros.main`` on ``domain`` (log in a
file, peak memory from ``VmHWM``), ``Client(context)`` plays camera, lifecycle manager and
parameter client in this process, ``make_image(sec)`` is the stamped two-tone test frame."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ovseg_ros.harness import process
from ovseg_ros.harness.client import NodeClient as Client
from ovseg_ros.harness.domain import child_env
from ovseg_ros.harness.frames import stamped_frame as make_image

__all__ = ["Client", "NodeProcess", "make_image"]


class NodeProcess(process.NodeProcess):
    """The node on ``domain`` with ``params`` (``-p k:=v``) after ``ros_args``."""

    def __init__(self, domain: int, log_path: Path, params: dict[str, Any], *ros_args: str):
        super().__init__(child_env(domain), log_path, params, ros_args)
