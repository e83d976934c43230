"""The GPU check kit (scripts/gpu_check.sh, scripts/gpu_check/): its plans, its refusal
without a GPU, how it judges the steps' results (tests all skipped on a CPU, a benchmark's
table and records) and the report it assembles from them. The benchmarks it runs have their
own tests (test_bench.py, test_node_bench.py); the CUDA tests run on a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / "scripts" / "gpu_check"
sys.path.insert(0, str(KIT))

from check import bench_step, judge_tests, make_plan  # noqa: E402
from report import (  # noqa: E402
    StepResult,
    build_report,
    parse_junit,
    report_markdown,
    write_report,
)

ENV = {"python": "3.11", "torch": "2.x", "cuda_build": "12.8", "cpu_count": 2, "gpu": "H100"}


def engine_record(method: str, dtype: str, total_ms: float) -> dict:
    return {
        "method": method,
        "device": "cuda",
        "dtype": dtype,
        "size": "640x480",
        "classes": 20,
        "total_ms": total_ms,
    }


def test_report_checks_targets_and_lists_failures(tmp_path):
    junit = tmp_path / "t.xml"
    junit.write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1">'
        '<testcase classname="test_cuda" name="test_a"/>'
        '<testcase classname="test_cuda" name="test_b"/>'
        '<testcase classname="test_cuda" name="test_half[fp16]">'
        '<failure message="assert 0.97 &gt;= 0.995&#10;more">trace</failure></testcase>'
        '<testcase classname="test_cuda" name="test_c"><skipped message="no triton"/></testcase>'
        "</testsuite></testsuites>"
    )
    tests = parse_junit(junit)
    assert (tests["passed"], tests["failures"], tests["skipped"]) == (2, 1, 1)
    assert tests["failed_tests"] == [
        {"test": "test_cuda::test_half[fp16]", "message": "assert 0.97 >= 0.995"}
    ]
    tests["measurements"] = [{"name": "stencil", "torch_ms": 3.25, "triton_ms": 0.5}]
    engine = {
        "records": [
            engine_record("pearl", "fp16", 12.5),
            engine_record("pearl", "fp32", 30.0),
            engine_record("lposs_plus", "fp16", 61.0),
        ],
        "table": "| method | total ms |\n|---|---|\n| pearl | 12.5 |",
    }
    node = {
        "records": [
            {
                "method": "pearl",
                "device": "cuda",
                "dtype": "fp16",
                "size": "640x480",
                "rate_hz": 30.0,
                "e2e_ms": {"p50": 14.0, "p90": 17.0, "p99": 22.0},
                "late": 2,
            }
        ]
    }
    steps = [
        StepResult("environment", "passed"),
        StepResult(
            "cuda tests", "failed", 100.0, ["python", "-m", "pytest"], "1 failed", [], tests
        ),
        StepResult("engine benchmark", "passed", 50.0, ["ovseg-bench"], data=engine),
        StepResult("node benchmark", "passed", 40.0, ["ovseg-bench", "node"], data=node),
    ]
    plan = {"device": "cuda", "notes": []}
    report = build_report(plan, steps, ENV, 200.0, 30.0)
    assert report["result"] == "failed" and report["failed_steps"] == ["cuda tests"]
    met = {t["target"]: (t["value"], t["met"]) for t in report["targets"]}
    assert met["pearl engine, 640x480, 20 classes, fp16"] == (12.5, True)
    assert met["lposs_plus engine, 640x480, 20 classes, fp16"] == (61.0, False)
    assert met["node pearl 640x480 fp16 at 30 Hz: end-to-end p99"] == (22.0, True)
    assert met["node pearl 640x480 fp16 at 30 Hz: labels older than one period"] == (2, False)

    md_path, json_path = write_report(report, tmp_path)
    assert json.loads(json_path.read_text())["targets"] == report["targets"]
    md = md_path.read_text()
    assert md == report_markdown(report)
    assert "result: **FAILED** (failed: cuda tests)" in md
    assert "- FAILED `test_cuda::test_half[fp16]`: assert 0.97 >= 0.995" in md
    assert "- skipped 1: no triton" in md
    assert "| stencil | torch_ms 3.25, triton_ms 0.5 |" in md
    assert "| pearl | 12.5 |" in md  # the benchmark's own table
    assert "| lposs_plus engine, 640x480, 20 classes, fp16 | <= 50 ms | 61 ms | NO |" in md


def test_plans_fit_their_budgets():
    cuda, cpu = (
        make_plan("cuda", ("pearl", "lposs_plus"), False),
        make_plan("cpu", ("pearl",), True),
    )
    assert cuda.bench_dtypes == ("fp32", "fp16") and cuda.bench_preset == "random"
    assert sum(cuda.caps_s.values()) <= 600  # the steps after setup: 10 minutes on one GPU
    assert cpu.bench_dtypes == ("fp32",) and any("CUDA" in note for note in cpu.notes)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_cuda_mode_without_a_gpu_fails_clearly(tmp_path):
    done = subprocess.run(
        [sys.executable, str(KIT / "check.py"), "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    report = json.loads((tmp_path / "gpu_check_report.json").read_text())
    assert report["failed_steps"] == ["environment"]
    assert "torch sees no CUDA device" in (tmp_path / "gpu_check_report.md").read_text()


def test_cpu_mode_steps_and_report(tmp_path):
    """What the quick CPU mode reports: CUDA tests collected and skipped, the engine
    benchmark's records and table, the CPU notes (from stand-in step outputs)."""
    plan = make_plan("cpu", ("pearl",), True)
    junit = tmp_path / "cuda_tests.xml"
    cases = "".join(
        f'<testcase classname="test_cuda" name="t{i}"><skipped message="needs an NVIDIA GPU"/>'
        "</testcase>"
        for i in range(25)
    )
    junit.write_text(f'<testsuite tests="25" skipped="25">{cases}</testsuite>')
    tests = judge_tests(StepResult("cuda tests", "passed"), 0, junit, tmp_path / "none", 120.0)
    assert tests.status == "skipped" and "NVIDIA GPU" in tests.reason
    assert tests.data["tests"] > 20 and tests.data["skipped"] == tests.data["tests"]
    timed_out = judge_tests(
        StepResult("cuda tests", "passed"), None, junit, tmp_path / "none", 120.0
    )
    assert timed_out.status == "timed_out"

    # A stand-in benchmark: prints its table, writes its JSON, exits 0.
    path = tmp_path / "bench_engine.json"
    record = {"method": "pearl", "device": "cpu", "dtype": "fp32", "size": "160x120"}
    stand_in = (
        "import json, sys; print('| method | device | dtype |\\n|---|---|---|\\n"
        "| pearl | cpu | fp32 |'); "
        f"json.dump({{'records': [{record!r}]}}, open(sys.argv[1], 'w'))"
    )
    command = [sys.executable, "-c", stand_in, str(path)]
    engine = bench_step("engine benchmark", command, tmp_path, "bench_engine", path, 60.0)
    assert engine.status == "passed"
    assert [(r["method"], r["device"], r["dtype"]) for r in engine.data["records"]] == [
        ("pearl", "cpu", "fp32")
    ]
    failing = bench_step(
        "node benchmark", [sys.executable, "-c", "raise SystemExit(1)"], tmp_path, "n", path, 60
    )
    assert failing.status == "failed" and failing.reason.startswith("exit 1")

    steps = [StepResult("environment", "passed"), tests, engine]
    report = build_report(asdict(plan), steps, ENV, 10.0, 0.0)
    assert report["failed_steps"] == [] and report["targets"] == []
    md = report_markdown(report)
    assert "fp16 is benchmarked on CUDA only" in md and "| pearl | cpu | fp32 |" in md
