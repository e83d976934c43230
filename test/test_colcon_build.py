"""The package built the way the README's robot section builds it: `python -m colcon build`.

A scratch colcon workspace gets a copy of the repository under src/; the environment's own
Python runs colcon (installed from PyPI by scripts/setup.sh, extra "test"), so the executables
must start with that interpreter. The installed segment_node then runs from the sourced
install space with the tiny preset, and a frame published here over DDS comes back labelled.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy

from ovseg_ros.harness.client import NodeClient
from ovseg_ros.harness.domain import child_env, private_domain_id
from ovseg_ros.harness.frames import rgb8_message
from ovseg_ros.harness.process import NodeProcess

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "ovseg_ros"
DOMAIN_ID = private_domain_id()
# Build outputs and local environments in the repository are not part of the package source.
NOT_SOURCE = {".venv", ".git", "build", "install", "log", ".pytest_cache", ".ruff_cache", ".whl"}

pytestmark = [pytest.mark.dds, pytest.mark.slow, pytest.mark.timeout(300)]


def _ignore(directory: str, names: list[str]) -> set[str]:
    top = Path(directory) == REPO
    return {
        name
        for name in names
        if name == "__pycache__" or name.endswith(".egg-info") or (top and name in NOT_SOURCE)
    }


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """colcon workspace with the package built into install/; returns the install prefix."""
    if importlib.util.find_spec("colcon_core") is None:
        pytest.fail("colcon is not installed here: scripts/setup.sh installs it (extra 'test')")
    workspace = tmp_path_factory.mktemp("colcon_ws")
    shutil.copytree(REPO, workspace / "src" / PACKAGE, ignore=_ignore)
    env = dict(os.environ, COLCON_HOME=str(workspace / "colcon_home"))  # no user defaults
    result = subprocess.run(
        [sys.executable, "-m", "colcon", "build", "--packages-select", PACKAGE],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return workspace / "install"


def _sourced(install: Path, command: str, **kwargs) -> subprocess.Popen:
    """Runs `command` in bash after sourcing the install space, as a robot's shell would."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID), RCUTILS_LOGGING_BUFFERED_STREAM="0")
    return subprocess.Popen(
        ["bash", "-c", f"source {shlex.quote(str(install / 'setup.bash'))} && {command}"],
        cwd=install.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        **kwargs,
    )  # fmt: skip


def test_install_layout(install: Path) -> None:
    prefix = install / PACKAGE
    node = prefix / "lib" / PACKAGE / "segment_node"
    assert node.is_file() and os.access(node, os.X_OK)
    assert node.read_text().splitlines()[0] == f"#!{sys.executable}"  # the venv's Python
    assert (prefix / "share/ament_index/resource_index/packages" / PACKAGE).is_file()
    share = prefix / "share" / PACKAGE
    for folder in ("launch", "config"):
        expected = sorted(p.name for p in (REPO / folder).iterdir() if p.is_file())
        assert sorted(p.name for p in (share / folder).iterdir()) == expected, folder
    assert (share / "package.xml").read_text() == (REPO / "package.xml").read_text()

    # The sourced environment finds the package through the ament index and imports it from
    # the install space, not from the repository (which the environment may hold editable).
    probe = (
        "import ovseg_ros; from ament_index_python.packages import get_package_share_directory;"
        f" print(get_package_share_directory('{PACKAGE}')); print(ovseg_ros.__file__)"
    )
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(probe)}"
    output, _ = _sourced(install, command).communicate(timeout=60)
    share_dir, module = output.strip().splitlines()[-2:]
    assert Path(share_dir) == share, output
    assert Path(module).is_relative_to(prefix / "lib"), output


def test_installed_node_labels_a_frame_over_dds(install: Path, tmp_path: Path) -> None:
    node_name, image_topic = "ovseg_colcon", f"/colcon_camera_{DOMAIN_ID}"
    # The installed executable, started from a shell that sourced the install space.
    setup = shlex.quote(str(install / "setup.bash"))
    executable = ["bash", "-c", f'source {setup} && exec "$@"', "bash"]
    executable.append(str(install / PACKAGE / "lib" / PACKAGE / "segment_node"))
    node = NodeProcess(
        child_env(DOMAIN_ID, package_path=False),  # the install space's ovseg_ros, not ours
        tmp_path / "node.log",
        {"preset": "tiny", "device": "cpu", "templates": "single"},
        ["-r", f"__node:={node_name}", "-r", f"image:={image_topic}"],
        executable=executable,
        cwd=install.parent,
    )
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
    client = NodeClient.on_domain(
        DOMAIN_ID, node_name, image_topic=image_topic, camera_qos=qos, client_name="colcon_camera"
    )
    try:
        pixels = np.zeros((48, 64, 3), np.uint8)
        pixels[:, 32:] = (40, 40, 200)
        frame = rgb8_message(pixels, 42 * 10**9, frame_id="colcon_camera")
        # Until the node is up and subscribed, frames go nowhere: repeat the frame until labelled.
        deadline = time.monotonic() + 120
        while not client.labels() and node.alive() and time.monotonic() < deadline:
            client.image_pub.publish(frame)
            time.sleep(0.2)
        assert client.labels(), "no labels from the installed node:\n" + node.log()
        labels = client.labels()[0]
        assert (labels.height, labels.width, labels.encoding) == (48, 64, "mono8")
        assert (labels.header.stamp.sec, labels.header.frame_id) == (42, "colcon_camera")
        assert len(labels.data) == 48 * labels.step
    finally:
        client.close()
        code = node.stop()
    assert code == 0, node.log()
    assert "Traceback" not in node.log()
