"""The GPU check's report: step results, issue 12's targets, one Markdown and one JSON file.

Pure functions over the steps' results (:class:`StepResult`), so the report is tested without
running anything (``test/test_gpu_check.py``); ``check.py`` beside this file runs the steps.
"""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ovseg_ros.tools.cli import fmt, markdown_table

REPORT_NAME = "gpu_check_report"

# Issue 12's targets on one H100: (method, engine ms) at 640x480, 20 classes, fp16.
ENGINE_TARGETS_MS = {"pearl": 15.0, "lposs_plus": 50.0}
NODE_P99_TARGET_MS = 25.0


@dataclass
class StepResult:
    """One step of the check, as the report shows it."""

    name: str
    status: str  # passed | failed | skipped | timed_out | missing
    seconds: float = 0.0
    command: list[str] | None = None
    reason: str = ""
    logs: list[str] = field(default_factory=list)  # file names in the output folder
    data: dict[str, Any] = field(default_factory=dict)


def parse_junit(path: Path) -> dict[str, Any]:
    """Counts, failures (test and first message line) and skip reasons of a JUnit XML file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failures, skips = [], {}
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            test = f"{case.get('classname', '')}::{case.get('name', '')}"
            for tag in ("failure", "error"):
                for node in case.iter(tag):
                    message = (node.get("message") or node.text or "").strip().splitlines()
                    failures.append({"test": test, "message": message[0] if message else tag})
            for node in case.iter("skipped"):
                reason = (node.get("message") or "").strip()
                skips[reason] = skips.get(reason, 0) + 1
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failed_tests": failures, "skip_reasons": skips}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_targets(steps: list[StepResult]) -> list[dict[str, Any]]:
    """Issue 12's H100 targets against this run's numbers (``met`` is None if not measured)."""
    by_name = {s.name: s for s in steps}
    records = by_name.get("engine benchmark", StepResult("", "")).data.get("records", [])
    targets = []
    for method, limit in ENGINE_TARGETS_MS.items():
        value = next(
            (
                r.get("total_ms")
                for r in records
                if r.get("method") == method
                and str(r.get("device", "")).startswith("cuda")
                and r.get("dtype") == "fp16"
                and r.get("size") == "640x480"
                and r.get("classes") == 20
                and "error" not in r
            ),
            None,
        )
        targets.append(_target(f"{method} engine, 640x480, 20 classes, fp16", value, limit))
    node = by_name.get("node benchmark", StepResult("", "")).data.get("records", [])
    for r in node:
        if not str(r.get("device", "")).startswith("cuda") or "error" in r:
            continue
        what = f"node {r.get('method')} {r.get('size')} {r.get('dtype')} at {r.get('rate_hz'):g} Hz"
        p99 = (r.get("e2e_ms") or {}).get("p99")
        targets.append(_target(f"{what}: end-to-end p99", p99, NODE_P99_TARGET_MS))
        late = r.get("late")
        targets.append(_target(f"{what}: labels older than one period", late, 0, "frames"))
    return targets


def _target(what: str, value: float | None, limit: float, unit: str = "ms") -> dict[str, Any]:
    met = None if value is None else bool(value <= limit)
    return {"target": what, "limit": limit, "value": value, "unit": unit, "met": met}


# --- the report ---------------------------------------------------------------------------------


def build_report(
    plan: dict[str, Any],
    steps: list[StepResult],
    env: dict[str, Any],
    total_s: float,
    setup_s: float,
) -> dict[str, Any]:
    """The JSON report: ``plan`` as ``check.make_plan`` makes it (a dict), the steps in
    order, ``env`` (versions, GPU), and issue 12's targets (on CUDA only)."""
    failed = [s.name for s in steps if s.status in ("failed", "timed_out")]
    return {
        "result": "failed" if failed else "passed",
        "failed_steps": failed,
        "device": plan["device"],
        "environment": env,
        "seconds": {"total": round(total_s, 1), "setup": round(setup_s, 1)},
        "notes": plan.get("notes", []),
        "plan": plan,
        "steps": [asdict(s) for s in steps],
        "targets": check_targets(steps) if plan["device"] == "cuda" else [],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def report_markdown(report: dict[str, Any]) -> str:
    """The human-readable report: steps, targets, tests, both benchmarks' tables."""
    env = report["environment"]
    gpu = env.get("gpu") or "none visible to torch"
    lines = [
        "# ovseg_ros GPU check",
        "",
        f"- result: **{report['result'].upper()}**"
        + (f" (failed: {', '.join(report['failed_steps'])})" if report["failed_steps"] else ""),
        f"- device: {report['device']}; GPU: {gpu}; torch {env['torch']} (CUDA build "
        f"{env['cuda_build']}), Triton {env.get('triton')}, Python {env['python']}, "
        f"{env['cpu_count']} CPU cores",
        f"- took {report['seconds']['total']:.0f} s after {report['seconds']['setup']:.0f} s "
        f"of setup; {report['time']}",
    ]
    if env.get("nvidia_smi"):
        lines.append(f"- nvidia-smi: {env['nvidia_smi']}")
    lines += [f"- {note}" for note in report["notes"]]
    rows = [
        [s["name"], s["status"], fmt(s["seconds"], 0), s["reason"] or "-"] for s in report["steps"]
    ]
    lines += ["", "## Steps", "", markdown_table(["step", "status", "seconds", "notes"], rows)]
    if report["targets"]:
        rows = [
            [
                t["target"],
                f"<= {t['limit']:g} {t['unit']}",
                "-" if t["value"] is None else f"{_num(t['value'])} {t['unit']}",
                {True: "yes", False: "NO", None: "not measured"}[t["met"]],
            ]
            for t in report["targets"]
        ]
        lines += ["", "## Targets (issue 12, one H100)", ""]
        lines.append(markdown_table(["target", "limit", "measured", "met"], rows))
    for step in report["steps"]:
        lines += _step_section(step)
    return "\n".join(lines) + "\n"


TITLES = {"cuda tests": "CUDA tests", "engine benchmark": "Engine benchmark"}


def _step_section(step: dict[str, Any]) -> list[str]:
    data, name = step["data"], step["name"]
    if name == "environment":
        return []  # in the header
    lines = ["", f"## {TITLES.get(name, name[0].upper() + name[1:])}", ""]
    if step["command"]:
        lines += [f"`{' '.join(_short(c) for c in step['command'])}`", ""]
    if step["status"] in ("missing", "skipped") and not data:
        return lines + [f"{step['status']}: {step['reason']}"]
    if name == "cuda tests" and data:
        lines.append(
            f"{data['passed']} passed, {data['failures'] + data['errors']} failed, "
            f"{data['skipped']} skipped (of {data['tests']})."
        )
        for failure in data["failed_tests"]:
            lines.append(f"- FAILED `{failure['test']}`: {failure['message']}")
        for reason, count in data["skip_reasons"].items():
            lines.append(f"- skipped {count}: {reason}")
        if data.get("measurements"):
            rows = [
                [m["name"], ", ".join(f"{k} {_num(v)}" for k, v in m.items() if k != "name")]
                for m in data["measurements"]
            ]
            lines += ["", markdown_table(["measurement", "values"], rows)]
    elif data.get("table"):
        lines.append(data["table"])
    if step["status"] not in ("passed", "skipped"):
        lines += ["", f"**{step['status']}**: {step['reason']} (see {', '.join(step['logs'])})"]
    return lines


def _short(arg: str) -> str:
    """A command argument without the machine's paths (``--junitxml=/x/y.xml`` -> ``y.xml``)."""
    flag, sep, value = arg.rpartition("=")
    if value.endswith((".json", ".xml")) or "/python" in value:
        return f"{flag}{sep}{os.path.basename(value)}"
    return arg


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    md, js = out / f"{REPORT_NAME}.md", out / f"{REPORT_NAME}.json"
    js.write_text(json.dumps(report, indent=2) + "\n")
    md.write_text(report_markdown(report))
    return md, js
