"""scripts/setup.sh: where it must stop (no venv support, as on Debian/Ubuntu without
python3-venv; a leftover .venv that is no environment) and the rerun that must not touch pip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The interpreter this environment was made from (the system Python in CI) and its stdlib.
BASE_PYTHON = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
ENSUREPIP = Path(os.__file__).parent / "ensurepip"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _scratch_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "setup.sh", repo / "scripts" / "setup.sh")
    return repo


def _can_hide_ensurepip() -> bool:
    """A private mount namespace (root, CAP_SYS_ADMIN) can hide ensurepip from this run alone."""
    if not (shutil.which("unshare") and BASE_PYTHON.is_file() and ENSUREPIP.is_dir()):
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_hide_ensurepip(), reason="needs root and `unshare -m`")
def test_without_ensurepip_it_names_the_apt_package_and_leaves_no_venv(tmp_path: Path) -> None:
    """The real interpreter with ensurepip hidden, as on Debian/Ubuntu without python3-venv."""
    repo = _scratch_repo(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    command = f"mount --bind '{empty}' '{ENSUREPIP}' && bash scripts/setup.sh"
    result = subprocess.run(
        ["unshare", "-m", "bash", "-c", command], cwd=repo, capture_output=True, text=True,
        env=dict(os.environ, PYTHON=str(BASE_PYTHON)), timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert f"apt-get install -y python{version}-venv" in result.stderr
    assert not (repo / ".venv").exists()  # a half-made venv would be "reused" next time


def test_a_leftover_non_venv_is_refused_not_reused(tmp_path: Path) -> None:
    repo = _scratch_repo(tmp_path)
    (repo / ".venv" / "bin").mkdir(parents=True)  # e.g. an interrupted venv creation
    result = subprocess.run(
        ["bash", "scripts/setup.sh"], cwd=repo, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "rm -rf .venv" in result.stderr
    assert (repo / ".venv" / "bin").is_dir()  # the user's directory is left alone


def test_a_rerun_reuses_the_venv_without_pip(tmp_path: Path) -> None:
    """A real venv in a copy of the repository, borrowing this environment's packages (a .pth
    file), so that the first run only installs the copy itself and the rerun has nothing to do.
    """
    repo = tmp_path / "repo"
    keep = {"ovseg_ros", "resource", "launch", "config", "scripts"}
    shutil.copytree(
        REPO, repo,
        ignore=lambda d, names: {
            n for n in names
            if (Path(d) == REPO and Path(d, n).is_dir() and n not in keep)
            or n == "__pycache__" or n.endswith(".egg-info")
        },
    )  # fmt: skip
    subprocess.run(
        [BASE_PYTHON, "-m", "venv", "--system-site-packages", "--without-pip", repo / ".venv"],
        check=True,
    )
    site = Path(sysconfig.get_paths(vars={"base": str(repo / ".venv")})["purelib"])
    own_site = sysconfig.get_paths()["purelib"]
    (site / "borrowed.pth").write_text(f"import site; site.addsitedir({own_site!r})\n")

    def run() -> str:
        result = subprocess.run(
            ["bash", "scripts/setup.sh"], cwd=repo, capture_output=True, text=True, timeout=240
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    first = run()
    assert "reusing .venv" in first and "installing ovseg_ros[" in first, first
    assert (repo / ".venv" / ".ovseg_ros_setup").is_file()
    second = run()
    assert "installing" not in second and "already installed, nothing to do" in second, second
    assert "ready" in second and ".venv: " in second  # what it holds, its size and the time
