#!/usr/bin/env bash
# The node's DDS tests on another ROS 2 distribution's rclpy, from its PyPI wheels:
#
#   scripts/test_distro.sh kilted        # .ci/run runs it after the main suite
#
# .venv (scripts/setup.sh) holds Jazzy's wheels, torch and the rest. This makes .venv-<distro>
# (git-ignored) with .venv's Python and installs the distribution's wheels into it (setup.py's
# "ros-pip" extra with the distribution's prefix; what else they need is pinned to .venv's
# versions). A .pth file then appends .venv's site-packages after its own: rclpy, the messages
# and their shared libraries are the distribution's, torch, pytest and the editable ovseg_ros
# come from .venv. It prints which rclpy, rmw and DDS library load, stops if one of .venv's ROS
# libraries does, and runs DISTRO_TESTS with OVSEG_RCLPY_SHAPE=native (rclpy as installed).
#
# Run again, it reuses .venv-<distro> while the wheel list and .venv's packages are unchanged.
# No wheel of the distribution for this Python: one line says so and it exits 0.
# Environment: DISTRO_TESTS (test files, default below).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
START=$SECONDS

say() { printf 'test_distro.sh: %s\n' "$*"; }
die() { printf 'test_distro.sh: error: %s\n' "$*" >&2; exit 1; }

distro=${1:-}
case $distro in
    kilted) ;;
    *) die "usage: scripts/test_distro.sh kilted (Jazzy is .venv itself; Humble has no wheels on PyPI, test/test_distributions.py runs the node with Humble's rclpy names in the main suite)" ;;
esac
BASE=.venv
ENV=.venv-$distro
TESTS=${DISTRO_TESTS:-test/test_distributions.py test/test_node_lifecycle.py test/test_segment_node.py}

[[ -x $BASE/bin/python ]] || die "$BASE not found: run scripts/setup.sh first"
IFS=: read -ra python_path <<<"${PYTHONPATH:-}"
for dir in "${python_path[@]}"; do
    [[ -n $dir && -d $dir/rclpy ]] \
        && die "the rclpy in $dir (a sourced ROS 2 ${ROS_DISTRO:-}) would shadow $distro's: run this from a shell without it"
done
PY=$BASE/bin/python
pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
read -ra wheels <<<"$("$PY" scripts/distro_env.py wheels "$distro")"
base_site=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" scripts/distro_env.py constraints >"$tmp/constraints.txt"
stamp="$distro ${wheels[*]} $("$PY" -V) $base_site $(sha256sum <"$tmp/constraints.txt" | cut -c1-16)"
stamp_file=$ENV/.ovseg_distro_stamp

# -- the environment -------------------------------------------------------------------------
if [[ -f $stamp_file && $(<"$stamp_file") == "$stamp" ]]; then
    say "reusing $ENV"
else
    rm -rf "$ENV"
    system=()
    grep -qx 'include-system-site-packages = true' "$BASE/pyvenv.cfg" && system=(--system-site-packages)
    "$PY" -m venv --without-pip "${system[@]}" "$ENV"
    say "installing ${wheels[*]} into $ENV"
    # pip from .venv, installing for $ENV's interpreter; .venv is not on its path yet, so every
    # ROS wheel lands in $ENV (none is taken as already installed from .venv).
    if ! "$PY" -m pip --python "$ENV/bin/python" install --quiet --disable-pip-version-check \
        -c "$tmp/constraints.txt" "${wheels[@]}" >"$tmp/pip.log" 2>&1; then
        rm -rf "$ENV"
        missing=$(grep -oE 'No matching distribution found for ros-[^ ]+' "$tmp/pip.log" | head -1)
        missing=${missing##* }
        other=$([[ $pyver == 3.12 ]] && echo 3.11 || echo 3.12)
        # A wheel that exists for another Python, not for this one: not this machine's fault.
        if [[ -n $missing && $missing != ros-$distro-* ]] \
            && "$PY" -m pip download --quiet --disable-pip-version-check --no-deps \
                --only-binary=:all: --python-version "$other" -d "$tmp/other" "$missing" \
                >/dev/null 2>&1; then
            say "skipped: ROS 2 $distro has no $missing wheel for Python $pyver on PyPI (there is one for $other)"
            exit 0
        fi
        cat "$tmp/pip.log" >&2
        die "installing ROS 2 $distro's wheels failed (above)"
    fi
    site=$("$ENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    # Last in name order, so it runs after the wheels' own .pth files (their library paths).
    "$PY" -c 'import sys; print(f"import site; site.addsitedir({sys.argv[1]!r})")' "$base_site" \
        >"$site/zz_ovseg_base_venv.pth"
    echo "$stamp" >"$stamp_file"
fi

# -- what loads ------------------------------------------------------------------------------
# The wheels re-execute Python once with their library folders in LD_LIBRARY_PATH; a parent
# started from .venv would hand its own over (and the flag that skips that step).
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE
if [[ -n ${LD_LIBRARY_PATH:-} ]]; then
    LD_LIBRARY_PATH=$(tr ':' '\n' <<<"$LD_LIBRARY_PATH" | grep -v "^$REPO/$BASE/" | paste -sd: -) || true
    export LD_LIBRARY_PATH
fi
probe=$("$ENV/bin/python" scripts/distro_env.py probe "$BASE") || die "$distro: $probe"
say "$distro: $probe"
say "$distro: environment ready in $((SECONDS - START)) s; running $TESTS"

# -- the tests -------------------------------------------------------------------------------
read -ra tests <<<"$TESTS"
OVSEG_RCLPY_SHAPE=native "$ENV/bin/python" -m pytest -q "${tests[@]}"
say "$distro: done in $((SECONDS - START)) s"
