"""Session-wide pytest hooks.

rclpy (Jazzy, pip wheels) can abort the interpreter at exit with "terminate called without an
active exception" (ros2/rclpy#1484): a C++ destructor of the DDS/rcl layer meets a thread that
an executor left behind, after every test has passed. pytest's exit status would then be 134
instead of its own. Once pytest has printed its summary the results are final, so the process
leaves with pytest's status after the normal exit handlers, skipping only the C++ teardown.
"""

from __future__ import annotations

import atexit
import os
import sys

_exit_status: list[int] = []


def pytest_sessionfinish(session, exitstatus) -> None:
    _exit_status.append(int(exitstatus))


def pytest_unconfigure(config) -> None:
    if not _exit_status:  # --help, --collect-only errors: nothing ran
        return
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status[-1])
