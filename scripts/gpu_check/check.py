"""The GPU check: CUDA tests, engine and node benchmarks, one Markdown + JSON report.

``scripts/gpu_check.sh`` sets up ``.venv`` and runs this script (a source checkout's tool:
it runs ``test/``, so it is not part of the installed package). Steps, each a subprocess
with its own log and a share of the time budget (killed, and reported, when it runs over):

1. environment: GPU, driver, torch / CUDA / Triton versions;
2. CUDA tests: ``pytest -m cuda test/test_cuda.py`` (Triton stencil, fused attention,
   half precision, every method end to end, compile / CUDA graphs), with the measurements
   the tests record;
3. engine benchmark: ``ovseg-bench engine --preset random`` for every method in fp32 and fp16;
4. node benchmark: ``ovseg-bench node`` with the random preset.

``--device cpu`` runs the same steps on the CPU with smaller runs: the CUDA tests are
collected and skipped, fp16 is left out, and the report says so. That keeps the kit working
before a GPU is available. Exit status: 0 when no step failed, 1 otherwise, 2 on bad usage.

    python scripts/gpu_check/check.py --device cpu --out /tmp/gpu_check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(REPO)]  # report.py; this ovseg_ros

from report import StepResult, build_report, parse_junit, read_jsonl, write_report  # noqa: E402

from ovseg_ros.segmentation.methods import METHODS  # noqa: E402
from ovseg_ros.tools.cli import EXIT_FAILED, EXIT_OK  # noqa: E402

MEASUREMENTS = "cuda_test_measurements.jsonl"  # written by test/test_cuda.py


@dataclass
class Plan:
    """What each step runs; ``cuda`` and ``quick`` choose the sizes."""

    device: str
    methods: tuple[str, ...]
    bench_preset: str
    bench_size: str
    bench_dtypes: tuple[str, ...]
    bench_warmup: int
    bench_repeat: int
    node_preset: str
    node_methods: tuple[str, ...]
    node_dtypes: tuple[str, ...]
    node_sizes: tuple[str, ...]
    node_duration: float
    node_rate: float
    caps_s: dict[str, float]  # step -> its longest allowed run
    notes: list[str] = field(default_factory=list)


def make_plan(device: str, methods: tuple[str, ...], quick: bool) -> Plan:
    """The runs for ``device``: on CUDA sized to finish within 10 minutes on one GPU; on the
    CPU small enough for a few minutes on 2 cores (``quick``: a smoke run for tests)."""
    if device == "cuda":
        return Plan(
            device="cuda",
            methods=methods,
            bench_preset="random",
            bench_size="640x480",
            bench_dtypes=("fp32", "fp16"),
            bench_warmup=3,
            bench_repeat=20,
            node_preset="random",
            node_methods=tuple(m for m in ("pearl", "lposs_plus") if m in methods) or methods[:1],
            node_dtypes=("fp16",),
            node_sizes=("640x480", "1280x720"),
            node_duration=5.0,
            node_rate=30.0,
            # The node benchmark starts the node and then the engine alone per case.
            caps_s={"cuda tests": 300.0, "engine benchmark": 120.0, "node benchmark": 180.0},
        )
    notes = [
        "CPU mode: the CUDA tests are collected and skipped (no GPU); fp16 is benchmarked on "
        "CUDA only (the CPU emulates half precision, its timings mean nothing for a robot); "
        "tiny random models (the random preset's ViT-B/16 text tower alone takes minutes to "
        "encode a vocabulary on 2 cores).",
    ]
    if quick:
        notes.append("quick mode: the smallest frames and runs (a smoke run of the kit).")
    return Plan(
        device="cpu",
        methods=methods,
        bench_preset="tiny",
        bench_size="160x120" if quick else "320x240",
        bench_dtypes=("fp32",),
        bench_warmup=0,
        bench_repeat=1,
        node_preset="tiny",
        node_methods=methods[:1],
        node_dtypes=("fp32",),
        node_sizes=("640x480",),
        node_duration=2.0,
        node_rate=5.0,
        caps_s={"cuda tests": 120.0, "engine benchmark": 300.0, "node benchmark": 120.0},
        notes=notes,
    )


# --- running ------------------------------------------------------------------------------------


def run_logged(
    command: list[str], out: Path, name: str, timeout_s: float, env: dict[str, str] | None = None
) -> tuple[int | None, float, str]:
    """Run ``command`` in the repository with stdout to ``name.out`` and stderr to
    ``name.log``; ``(exit status or None if it ran over timeout_s, seconds, stdout)``.

    The command gets its own process group, so a timeout also ends its children (node
    processes, compile workers)."""
    start = time.perf_counter()
    with open(out / f"{name}.out", "w") as stdout, open(out / f"{name}.log", "w") as stderr:
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        try:
            code: int | None = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            code = None
    return code, time.perf_counter() - start, (out / f"{name}.out").read_text()


def environment(device: str) -> dict[str, Any]:
    """Versions and the GPU (``nvidia-smi``'s view and torch's)."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=name,driver_version,memory.total"
        done = subprocess.run(
            [smi, query, "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
        info["nvidia_smi"] = done.stdout.strip() or done.stderr.strip()
    return info


# --- the steps ----------------------------------------------------------------------------------


def step_tests(plan: Plan, out: Path, python: str, timeout_s: float) -> StepResult:
    junit = out / "cuda_tests.xml"
    command = [python, "-m", "pytest", "-m", "cuda", "test/test_cuda.py", "-q", "-rfEs"]
    command += ["-p", "no:cacheprovider", f"--junitxml={junit}"]
    code, seconds, _ = run_logged(
        command, out, "cuda_tests", timeout_s, env={"OVSEG_GPU_CHECK_DIR": str(out)}
    )
    result = StepResult("cuda tests", "passed", seconds, command, logs=["cuda_tests.out"])
    return judge_tests(result, code, junit, out / MEASUREMENTS, timeout_s)


def judge_tests(
    result: StepResult, code: int | None, junit: Path, measurements: Path, timeout_s: float
) -> StepResult:
    """The CUDA tests' step from pytest's exit status (None: ran over ``timeout_s``), its
    JUnit report and the measurements the tests wrote: failed, timed out, skipped when every
    test was skipped (no GPU), else passed."""
    if code is None:
        result.status, result.reason = "timed_out", f"ran over {timeout_s:.0f} s"
    if not junit.exists():
        if code is not None:
            result.status, result.reason = "failed", f"pytest exited {code} without a report"
        return result
    tests = parse_junit(junit)
    tests["measurements"] = read_jsonl(measurements)
    result.data = tests
    if code is None:
        return result
    if tests["failures"] or tests["errors"] or code not in (0, 5):
        result.status = "failed"
        result.reason = f"{tests['failures'] + tests['errors']} failed (pytest exit {code})"
    elif tests["skipped"] == tests["tests"]:
        result.status = "skipped"
        result.reason = "; ".join(tests["skip_reasons"]) or "all skipped"
    return result


def step_engine_bench(plan: Plan, out: Path, python: str, timeout_s: float) -> StepResult:
    path = out / "bench_engine.json"
    command = [python, "-m", "ovseg_ros.bench", "engine", "--preset", plan.bench_preset]
    command += ["--methods", *plan.methods, "--sizes", plan.bench_size, "--classes", "20"]
    command += ["--devices", plan.device, "--dtypes", *plan.bench_dtypes]
    command += ["--warmup", str(plan.bench_warmup), "--repeat", str(plan.bench_repeat)]
    command += ["--json", str(path)]
    return bench_step("engine benchmark", command, out, "bench_engine", path, timeout_s)


def step_node_bench(plan: Plan, out: Path, python: str, timeout_s: float) -> StepResult:
    path = out / "bench_node.json"
    command = [python, "-m", "ovseg_ros.bench", "node", "--preset", plan.node_preset]
    command += ["--methods", *plan.node_methods, "--devices", plan.device]
    command += ["--dtypes", *plan.node_dtypes, "--sizes", *plan.node_sizes]
    command += ["--rate", f"{plan.node_rate:g}", "--duration", f"{plan.node_duration:g}"]
    command += ["--json", str(path)]
    return bench_step("node benchmark", command, out, "bench_node", path, timeout_s)


def bench_step(
    name: str, command: list[str], out: Path, stem: str, path: Path, timeout_s: float
) -> StepResult:
    """Run a benchmark ``command`` that writes its JSON to ``path``: its table (stdout) and
    records in ``data``, failed when it exits non-zero or runs over ``timeout_s``."""
    code, seconds, stdout = run_logged(command, out, stem, timeout_s)
    result = StepResult(name, "passed", seconds, command, logs=[f"{stem}.out", f"{stem}.log"])
    result.data["table"] = stdout.strip()
    if path.exists():
        result.data.update(json.loads(path.read_text()))
    if code is None:
        result.status, result.reason = "timed_out", f"ran over {timeout_s:.0f} s"
    elif code != 0:
        failed = [r for r in result.data.get("records", []) if "error" in r]
        result.status = "failed"
        result.reason = f"exit {code}" + (
            f", {len(failed)} configuration(s) failed" if failed else ""
        )
    return result


# --- command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu_check",
        description="CUDA tests, engine and node benchmarks, and one Markdown + JSON report "
        "(run through scripts/gpu_check.sh, which sets up .venv first).",
    )
    add = parser.add_argument
    add("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: the kit without a GPU")
    add("--out", default="gpu_check", help="output folder (default ./gpu_check)")
    add("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="default: all")
    add("--budget", type=float, default=570.0, help="seconds for all steps (default 570)")
    add("--quick", action="store_true", help="CPU smoke run: tiny models, smallest runs")
    add("--setup-seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / MEASUREMENTS).unlink(missing_ok=True)
    start = time.perf_counter()
    plan = make_plan(args.device, tuple(args.methods), args.quick)
    env = environment(args.device)
    python = sys.executable
    steps: list[StepResult] = []
    if args.device == "cuda" and not env["cuda_available"]:
        reason = "torch sees no CUDA device (driver, or a CPU-only torch build?); nothing run"
        steps.append(StepResult("environment", "failed", reason=reason))
    else:
        steps.append(StepResult("environment", "passed", data=env))
        runners = [
            ("cuda tests", step_tests),
            ("engine benchmark", step_engine_bench),
            ("node benchmark", step_node_bench),
        ]
        for name, runner in runners:
            left = args.budget - (time.perf_counter() - start)
            if left < 10:
                steps.append(StepResult(name, "skipped", reason="time budget spent"))
                continue
            print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
            steps.append(runner(plan, out, python, min(plan.caps_s[name], left)))
            print(f"gpu_check: {name}: {steps[-1].status}", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - start
    report = build_report(asdict(plan), steps, env, elapsed, args.setup_seconds)
    md, js = write_report(report, out)
    print(f"gpu_check: {report['result']}; report: {md} and {js}", file=sys.stderr)
    return EXIT_FAILED if report["failed_steps"] else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
