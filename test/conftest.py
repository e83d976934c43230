"""Session-wide pytest settings and hooks.

Each test process, and every child it starts (nodes, replay, Ray actors inherit the
environment), computes on one thread: the suite runs two workers on a 2-core machine, and
OpenMP threads of several processes on the same cores spin waiting for each other (the
suite's CPU time fell from 10.1 to 8.5 minutes with one thread). A variable set wins.

rclpy (Jazzy, pip wheels) can abort the interpreter at exit with "terminate called without an
active exception" (ros2/rclpy#1484): a C++ destructor of the DDS/rcl layer meets a thread that
an executor left behind, after every test has passed. pytest's exit status would then be 134
instead of its own. Once pytest has printed its summary the results are final, so the process
leaves with pytest's status after the normal exit handlers, skipping only the C++ teardown.

``-n auto`` (pyproject's addopts) starts one worker more than there are cores, at most four:
much of the suite waits on other processes (nodes, DDS discovery, Ray actors), so on a 2-core
machine a third worker keeps both cores busy (measured: 1.4 of 2 cores used with two workers).
"""

from __future__ import annotations

import atexit
import os
import sys

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")  # before torch is imported by any test module

_exit_status: list[int] = []


def pytest_xdist_auto_num_workers(config) -> int:
    return min(4, (os.cpu_count() or 1) + 1)


def pytest_sessionfinish(session, exitstatus) -> None:
    _exit_status.append(int(exitstatus))


def pytest_unconfigure(config) -> None:
    if not _exit_status:  # --help, --collect-only errors: nothing ran
        return
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status[-1])
