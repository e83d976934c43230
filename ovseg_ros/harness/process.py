"""Child processes of the harness: the node (or any command) with its output in a log file,
its peak memory, and a teardown that never leaves a process behind. No ROS needed.

Every child runs in its own process group, so a Ctrl-C in the terminal reaches only the
parent, which stops its children in order: SIGINT (the node's clean shutdown), a wait, then
SIGKILL to the whole group. A child that nobody stopped (a test that failed before its
``finally``, an exception, an interpreter exiting) is stopped the same way when its
:class:`ChildProcess` is garbage-collected or at interpreter exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

NODE_MODULE = "ovseg_ros.ros.main"
STOP_TIMEOUT_S = 20.0  # a node releasing its models and leaving DDS takes a few seconds
REAP_TIMEOUT_S = 5.0  # at garbage collection or exit: shorter, then SIGKILL


class HarnessError(RuntimeError):
    """A child exited, or something it should do did not happen in time (with its log)."""


def _signal_group(popen: subprocess.Popen, sig: int) -> None:
    """``sig`` to the child's process group while the child lives (its pid is still ours)."""
    if popen.poll() is None:
        try:
            os.killpg(popen.pid, sig)
        except ProcessLookupError:
            pass


def _reap(popen: subprocess.Popen, log: IO[str] | None, timeout: float) -> int:
    """SIGINT, wait up to ``timeout`` s, then SIGKILL the group; the exit status."""
    _signal_group(popen, signal.SIGINT)
    try:
        code = popen.wait(timeout)
    except subprocess.TimeoutExpired:
        _signal_group(popen, signal.SIGKILL)
        code = popen.wait()
    for stream in (popen.stdin, popen.stdout):
        if stream is not None:
            stream.close()
    if log is not None:
        log.close()
    return code


class ChildProcess:
    """``command`` in its own process group, stdout and stderr to ``log_path``.

    ``capture_stdout``: stdout is a pipe (:attr:`stdout`) for a child that reports to its
    parent; stderr still goes to the log. ``stdin``: a pipe (:attr:`stdin`) to talk to it.
    Use it as a context manager, or call :meth:`stop`.
    """

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        log_path: str | Path,
        *,
        name: str = "",
        cwd: str | Path | None = None,
        capture_stdout: bool = False,
        stdin: bool = False,
    ) -> None:
        self.command = list(command)
        self.name = name or Path(self.command[0]).name
        self.log_path = Path(log_path)
        log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed by stop()
        self.popen = subprocess.Popen(
            self.command,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture_stdout else log,
            stderr=log if capture_stdout else subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.stdin, self.stdout = self.popen.stdin, self.popen.stdout
        self._log = log
        self._finalizer = weakref.finalize(self, _reap, self.popen, log, REAP_TIMEOUT_S)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        """Everything the child wrote to its log so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def _status_kib(self, field: str) -> int:
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1])
        raise HarnessError(f"no {field} in /proc/{self.pid}/status")

    def rss_mib(self) -> float:
        """``VmRSS``: the child's resident memory now (Linux)."""
        return self._status_kib("VmRSS") / 1024

    def peak_rss_mib(self) -> float:
        """``VmHWM``: the child's peak resident memory so far (Linux)."""
        return self._status_kib("VmHWM") / 1024

    def reset_peak_rss(self) -> float:
        """Restart the peak from the resident set now (``/proc/PID/clear_refs``); the
        resident memory at that moment, MiB."""
        with open(f"/proc/{self.pid}/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
        return self.rss_mib()

    def kill(self) -> None:
        """SIGKILL to the child's whole group (it is reaped by :meth:`stop`)."""
        _signal_group(self.popen, signal.SIGKILL)

    def send_signal(self, sig: int) -> None:
        """``sig`` to the child alone (not its group)."""
        if self.alive():
            self.popen.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit (``subprocess.TimeoutExpired`` after ``timeout``)."""
        return self.popen.wait(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGINT, wait up to ``timeout`` s, then SIGKILL; the exit status. Idempotent."""
        if self._finalizer.alive:
            self._finalizer.detach()
            _reap(self.popen, self._log, timeout)
        return self.popen.wait()

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def param_text(value: Any) -> str:
    """A parameter value as ``-p name:=value`` wants it (ROS reads it as YAML)."""
    return json.dumps(value) if isinstance(value, (list, tuple, bool)) else str(value)


def node_command(
    params: Mapping[str, Any] | None = None,
    ros_args: Sequence[str] = (),
    executable: Sequence[str] | None = None,
) -> list[str]:
    """``executable`` (default ``python -m ovseg_ros.ros.main``) ``--ros-args``, then
    ``ros_args`` (remaps, ``--params-file``), then ``-p name:=value`` for each of ``params``."""
    command = list(executable or [sys.executable, "-m", NODE_MODULE])
    command += ["--ros-args", *ros_args]
    for name, value in (params or {}).items():
        command += ["-p", f"{name}:={param_text(value)}"]
    return command


class NodeProcess(ChildProcess):
    """The segmentation node as a child process: :func:`node_command` of ``params``,
    ``ros_args`` and ``executable`` (another command that starts the node, e.g. an installed
    ``segment_node``), on the domain ``env`` says (:func:`.domain.child_env`)."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: str | Path,
        params: Mapping[str, Any] | None = None,
        ros_args: Sequence[str] = (),
        *,
        executable: Sequence[str] | None = None,
        name: str = "node",
        cwd: str | Path | None = None,
    ) -> None:
        command = node_command(params, ros_args, executable)
        super().__init__(command, env, log_path, name=name, cwd=cwd)


# -- waiting -------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, poll: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` s passed; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return bool(predicate())


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    process: ChildProcess | None = None,
    poll: float = 0.05,
) -> None:
    """Wait until ``predicate`` holds; :class:`HarnessError` (with the tail of ``process``'s
    log) when ``process`` exits first or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if process is not None and not process.alive():
            raise HarnessError(
                f"{process.name} exited ({process.returncode}) while waiting for {what}:\n"
                f"{process.tail()}"
            )
        if time.monotonic() > deadline:
            tail = f":\n{process.tail()}" if process is not None else ""
            raise HarnessError(f"timed out after {timeout:.0f} s waiting for {what}{tail}")
        time.sleep(poll)
