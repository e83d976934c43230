"""``ovseg-replay`` never leaves a bag that looks complete when it is not (issue 21).

Each fault is real, in a real ``ovseg-replay`` process (the process boundary is the point):
``kill -9`` in the middle of a bag (sqlite3 and mcap storage; single and many-bags mode); a
full disk, simulated by the kernel's file-size limit (``RLIMIT_FSIZE``: a write past the limit
fails with ``EFBIG`` as it would with ``ENOSPC``); a read-only output directory, by a
read-only bind mount in a private mount namespace (``unshare``: ``chmod`` does not stop root,
and the mount is not seen outside the test's process). After each fault: nothing under the
final name, no traceback, and a rerun completes.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from bag_helpers import camera_bag, decode, read_bag

from ovseg_ros.tools.replay.cli import main

pytestmark = [pytest.mark.slow]

LONG = 150  # frames: long enough that a kill lands in the middle, whatever the machine's speed
SHORT = 20  # frames of the bags for the other faults (~200 kB written)
RERUN = 10  # frames a rerun after a kill labels
CLASSES = ["sky", "person; man", "chair"]
REPLAY = [sys.executable, "-m", "ovseg_ros.tools.replay"]


@pytest.fixture(scope="module")
def args(tmp_path_factory) -> list[str]:
    params = tmp_path_factory.mktemp("params") / "segment.yaml"
    params.write_text(yaml.safe_dump({"ovseg": {"ros__parameters": {"templates": "single"}}}))
    return [
        "--classes", *CLASSES, "--params", str(params), "--preset", "tiny", "--device", "cpu",
        "--no-progress",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def long_bags(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("long")
    return {s: camera_bag(root / s / "drive", s, 1, LONG) for s in ("sqlite3", "mcap")}


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("short")
    return {s: camera_bag(root / s / "drive", s, 2, SHORT) for s in ("sqlite3", "mcap")}


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def wait_for(predicate, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def assert_complete(path: Path, frames: int = SHORT) -> None:
    """A finished output: every frame labelled once."""
    messages, _ = read_bag(path)
    labels = messages["/ovseg/labels"]
    assert len({decode(raw).header.stamp.sec for _, raw in labels}) == len(labels) == frames


def kill_9_while_writing(command: list[str], partial: Path, storage: str) -> None:
    """Start ``command``; ``kill -9`` it once its partial output holds an open storage file
    (for sqlite3 its rollback journal: rosbags commits only when the bag is closed)."""
    pattern = "*.db3-journal" if storage == "sqlite3" else "*.mcap"
    process = subprocess.Popen(
        command, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: process.poll() is not None or any(partial.glob(pattern)))
        process.kill()
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == -9, err.decode()  # killed in the middle, not finished


# -- kill -9 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_kill_9_of_a_single_run_leaves_nothing_under_the_output_name(
    storage, long_bags, args, tmp_path
):
    source, out = long_bags[storage], tmp_path / "labelled"
    partial = tmp_path / ".partial" / "labelled"
    kill_9_while_writing([*REPLAY, str(source), str(out), *args], partial, storage)
    assert not out.exists() and partial.is_dir()
    assert not (partial / "metadata.yaml").exists()

    # A partial under a final name (as an older ovseg-replay left it): --overwrite replaces it.
    stale = tmp_path / "stale"
    shutil.copytree(partial, stale)
    assert main([str(source), str(stale), *args]) == 2  # exists already
    assert main([str(source), str(stale), *args, "--overwrite", "--limit", "3"]) == 0
    assert_complete(stale, 3)

    # The rerun clears the killed run's partial and finishes the job (its first RERUN frames:
    # the whole bag would only take longer).
    assert main([str(source), str(out), *args, "--limit", str(RERUN)]) == 0
    assert_complete(out, RERUN)
    assert not (tmp_path / ".partial").exists()


def test_kill_9_of_a_many_bags_run_with_sqlite3_then_the_rerun_completes(long_bags, args, tmp_path):
    """The rerun used to die on the partial's ``.db3-journal`` (not a file it would remove)."""
    out, source = tmp_path / "out", long_bags["sqlite3"]
    partial = out / ".partial" / "drive_ovseg"
    command = [*REPLAY, str(source), "--output-dir", str(out), *args]
    kill_9_while_writing(command, partial, "sqlite3")
    assert not (out / "drive_ovseg").exists() and any(partial.glob("*.db3-journal"))

    assert main([str(source), "--output-dir", str(out), *args, "--limit", str(RERUN)]) == 0
    assert_complete(out / "drive_ovseg", RERUN)
    assert sorted(p.name for p in out.iterdir()) == ["drive_ovseg", "ovseg-replay-report.json"]


# -- a full disk --------------------------------------------------------------------------------


def run_with_file_size_limit(command: list[str], limit: int) -> subprocess.CompletedProcess:
    """``command`` where no file may grow past ``limit`` bytes (Python ignores SIGXFSZ, so a
    write past it fails with EFBIG, as a write to a full disk fails with ENOSPC)."""

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        command, env=env(), capture_output=True, text=True, timeout=300, preexec_fn=limit_files
    )


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if "error" in line]


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_a_full_disk_fails_in_one_line_with_nothing_under_the_output_name(
    storage, bags, args, tmp_path
):
    """The bag (~200 kB) does not fit in 64 KiB: both storages fail when the bag is closed
    (sqlite3 commits, mcap writes its chunk), after every frame was labelled. Neither
    leaves a bag behind."""
    source, out = bags[storage], tmp_path / "labelled"
    done = run_with_file_size_limit([*REPLAY, str(source), str(out), *args], 64 * 1024)
    assert done.returncode == 1, done.stderr
    [line] = error_lines(done.stderr)
    assert f"nothing was written to {out}" in line
    assert sorted(tmp_path.iterdir()) == []  # neither the output nor its partial

    assert main([str(source), str(out), *args]) == 0  # room again: the rerun completes
    assert_complete(out)


def test_a_full_disk_leaves_no_report_tmp_in_many_bags_mode(bags, args, tmp_path):
    """Not even the (small) JSON report fits: its .tmp is removed, the run ends in one line."""
    out = tmp_path / "out"
    command = [*REPLAY, str(bags["sqlite3"]), "--output-dir", str(out), *args, "--retries", "0"]
    done = run_with_file_size_limit(command, 512)
    assert done.returncode == 1, done.stderr
    assert "cannot write the report" in error_lines(done.stderr)[-1]
    assert sorted(out.iterdir()) == []  # no output, no partial, no report, no report .tmp

    assert main([str(bags["sqlite3"]), "--output-dir", str(out), *args]) == 0
    assert_complete(out / "drive_ovseg")
    report = json.loads((out / "ovseg-replay-report.json").read_text())
    assert report["totals"]["done"] == 1


# -- a read-only disk ---------------------------------------------------------------------------


def read_only(directory: Path, command: list[str]) -> list[str]:
    """``command`` with ``directory`` bind-mounted read-only in a private mount namespace
    (a user namespace too, so that it also works without root)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a read-only bind mount")
    mount = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && shift && exec "$@"'
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", mount, "sh", str(directory), "true"], capture_output=True
    )
    if probe.returncode:
        pytest.skip(f"no private read-only bind mount here: {probe.stderr.decode().strip()}")
    return ["unshare", "-rm", "sh", "-c", mount, "sh", str(directory), *command]


@pytest.mark.parametrize("mode", ["single", "many"])
def test_a_read_only_output_directory_fails_in_one_line(mode, bags, args, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    target = ["--output-dir", str(out)] if mode == "many" else [str(out / "labelled")]
    command = [*REPLAY, str(bags["mcap"]), *target, *args]
    done = subprocess.run(
        read_only(out, command), env=env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.strip().splitlines()  # no model loaded, no traceback: one line
    assert f"error: cannot write to {out}" in line and "Read-only file system" in line
    assert sorted(out.iterdir()) == []

    assert main([str(bags["mcap"]), *target, *args]) == 0  # writable again: it completes
    assert_complete(out / ("drive_ovseg" if mode == "many" else "labelled"))
