#!/usr/bin/env bash
# The GPU check in one command, on a machine with an NVIDIA GPU:
#
#   scripts/gpu_check.sh                      # set up .venv, then everything on CUDA
#   scripts/gpu_check.sh --out /tmp/gpu       # report folder (default ./gpu_check)
#   scripts/gpu_check.sh --device cpu         # the same kit without a GPU (smaller runs)
#
# 1. scripts/setup.sh creates or reuses .venv (PyTorch's CUDA build, Triton, ovseg_ros and the
#    test extras); --skip-setup uses .venv as it is.
# 2. python scripts/gpu_check/check.py runs the CUDA tests (pytest -m cuda), ovseg-bench
#    engine --preset random for every method in fp32 and fp16, ovseg-bench node with the random
#    preset, and writes gpu_check_report.md and gpu_check_report.json into the output folder.
#
# The steps after setup are sized to finish within 10 minutes on one GPU (--budget seconds).
# Other options go to the Python driver: --methods, --budget, --quick (CPU smoke run).
# Exit status: 0 when every step passed or was skipped for want of CUDA, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

setup=1
args=()
device=cuda
while (($#)); do
    case $1 in
        --skip-setup) setup=0 ;;
        -h | --help)
            sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        --device)
            device=${2:-}
            args+=("$1" "$device")
            shift
            ;;
        *) args+=("$1") ;;
    esac
    shift
done

START=$SECONDS
if ((setup)); then
    scripts/setup.sh
elif [[ ! -x .venv/bin/python ]]; then
    echo "gpu_check.sh: error: --skip-setup but there is no .venv: run scripts/setup.sh first" >&2
    exit 2
fi
setup_s=$((SECONDS - START))

if [[ $device == cuda ]] && ! command -v nvidia-smi >/dev/null; then
    echo "gpu_check.sh: warning: nvidia-smi not found: is the NVIDIA driver installed?" >&2
fi
exec .venv/bin/python scripts/gpu_check/check.py --setup-seconds "$setup_s" "${args[@]}"
