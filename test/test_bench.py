"""``ovseg-bench`` on tiny models (CPU): the subcommand tree, records, tables, exit codes,
rows printed as they are measured, the CPU estimate; the components, cameras and points
subcommands. No timing is asserted (``test_node_bench.py``: the node subcommand)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ovseg_ros.bench import cli, estimate, scene
from ovseg_ros.segmentation.methods import METHODS

pytestmark = pytest.mark.slow  # every test runs a benchmark (in this process)

REPO = Path(__file__).resolve().parents[1]

STAGES = {
    "pearl": {"preprocess", "backbone", "attention", "stitch", "tlp", "postprocess", "total"},
    "lposs_plus": {
        "preprocess",
        "backbone",
        "patch_propagation",
        "stitch",
        "pixel_refine",
        "postprocess",
        "total",
    },
}


def test_quick_tiny_run_records_every_combination(tmp_path, capsys):
    path = tmp_path / "b.json"
    argv = ["--preset", "tiny", "--quick", "--devices", "cpu", "--methods", "pearl", "lposs_plus"]
    # LPOSS+ refines at 448x597 whatever the frame size: 2 frames keep this test short.
    argv += ["--warmup", "0", "--repeat", "2"]
    assert cli.main([*argv, "--json", str(path)]) == 0  # no subcommand: engine

    document = json.loads(path.read_text())
    assert document["meta"]["mode"] == "engine"
    records = document["records"]
    keys = [(r["method"], r["device"], r["dtype"], r["size"], r["classes"]) for r in records]
    assert keys == [
        ("pearl", "cpu", "fp32", "640x480", 20),
        ("lposs_plus", "cpu", "fp32", "640x480", 20),
    ]
    for record in records:
        assert "error" not in record
        assert set(record["stages_ms"]) == STAGES[record["method"]]
        assert all(value >= 0 for value in record["stages_ms"].values())
        assert record["total_ms"] > 0 and record["fps"] > 0

    table = capsys.readouterr().out
    assert "| method | device | dtype | size | classes | preprocess |" in table
    assert "| pearl | cpu | fp32 | 640x480 | 20 |" in table
    assert "| lposs_plus | cpu | fp32 | 640x480 | 20 |" in table


def test_full_preset_without_weights_exits_2_with_hint(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "hub"
    empty.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_CACHE at import time, so the cache is also passed explicitly.
    monkeypatch.setenv("HF_HUB_CACHE", str(empty))
    argv = ["--preset", "full", "--quick", "--devices", "cpu", "--methods", "pearl", "lposs"]
    assert cli.main(["engine", *argv, "--weights-cache-dir", str(empty)]) == 2

    err = capsys.readouterr().err
    assert "weights are not on this machine" in err
    assert str(empty) in err
    assert "--preset tiny" in err
    assert "hint: random preset on CPU: ~" in err  # what the suggested run costs
    assert "Traceback" not in err


def test_components_json_on_stdout(capsys):
    argv = ["components", "--devices", "cpu", "--classes", "3", "--warmup", "0", "--repeat", "1"]
    assert cli.main([*argv, "--json", "-"]) == 0

    captured = capsys.readouterr()
    records = json.loads(captured.out)["records"]  # stdout holds only the JSON
    assert [r["component"] for r in records] == [
        "procrustes_attention",
        "text_aware_propagation",
        "patch_propagation",
        "pixel_propagation",
    ]
    assert all("error" not in r and r["median_ms"] > 0 for r in records)
    # A 640x480 frame: PEARL's 448x336 image has 6 windows; LPOSS's 597x448 has 15.
    assert "[72, 197, 64]" in records[0]["shapes"]
    assert "[2940, 768]" in records[2]["shapes"]
    assert "[3, 448, 597]" in records[3]["shapes"]
    assert "| procrustes_attention | cpu | fp32 | 640x480 | - |" in captured.err


def test_synthetic_inputs_are_deterministic_and_distinct():
    names = scene.synthetic_vocabulary(150)
    assert len(names) == 150 and len({n.casefold() for n in names}) == 150
    assert names[:2] == ["person", "bicycle"] and names[-1] == "object 149"
    assert len(set(scene.OBJECT_NAMES)) == len(scene.OBJECT_NAMES)

    image = scene.synthetic_image(64, 48)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert np.array_equal(image, scene.synthetic_image(64, 48))
    assert image.std() > 10  # regions of different colours, not a flat frame
    assert not np.array_equal(image, scene.synthetic_image(64, 48, seed=1))  # one per camera


def test_bad_usage_exits_2(capsys):
    assert cli.main(["--devices", "meta", "--preset", "tiny"]) == 2
    assert "unsupported device 'meta'" in capsys.readouterr().err
    assert cli.main(["engine", "--devices", "gpu0", "--preset", "tiny"]) == 2
    assert "invalid device 'gpu0'" in capsys.readouterr().err
    assert cli.main(["--node", "--preset", "tiny"]) == 2  # modes are subcommands now
    assert "unrecognized arguments: --node" in capsys.readouterr().err


def test_help_lists_the_subcommands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "{" + ",".join(cli.SUBCOMMANDS) + "}" in out
    for name in cli.SUBCOMMANDS:
        assert f"\n    {name} " in out, name


def test_params_file_gives_the_method_and_settings(tmp_path):
    params = tmp_path / "segment.yaml"
    params.write_text(
        "robot:\n  ovseg:\n    ros__parameters:\n"
        "      method: maskclip\n      preset: tiny\n      window_stride: 224\n"
    )
    path = tmp_path / "b.json"
    argv = ["--params", str(params), "--quick", "--devices", "cpu", "--warmup", "0"]
    assert cli.main([*argv, "--repeat", "1", "--json", str(path)]) == 0
    (record,) = json.loads(path.read_text())["records"]
    assert (record["method"], record["size"]) == ("maskclip", "640x480")
    matrix = cli.engine_matrix(cli.build_parser().parse_args(["engine", *argv]))
    config = matrix.config("maskclip", "cpu", "fp32")
    assert (config.preset, config.window_stride) == ("tiny", 224)


def test_rows_stream_as_they_are_measured():
    """Each row is on stdout before the next configuration starts (stderr merged in order)."""
    argv = ["--preset", "tiny", "--devices", "cpu", "--methods", "pearl", "maskclip"]
    argv += ["--sizes", "64x48", "--classes", "3", "--warmup", "0", "--repeat", "1"]
    process = subprocess.Popen(
        [sys.executable, "-m", "ovseg_ros.bench", *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = [line.rstrip("\n") for line in process.stdout]
    assert process.wait(timeout=300) == 0, "\n".join(lines)
    index = {name: i for i, line in enumerate(lines) for name in _markers(line)}
    assert index["estimate"] < index["header"] < index["[1/2]"] < index["row pearl"]
    assert index["row pearl"] < index["[2/2]"] < index["row maskclip"], "\n".join(lines)
    assert "min so far" in lines[index["[2/2]"]]  # the pace of the first row: time left


def _markers(line: str) -> list[str]:
    found = []
    if line.startswith("tiny preset on CPU:"):
        found.append("estimate")
    if line.startswith("| method | device |"):
        found.append("header")
    if line.startswith(("[1/2]", "[2/2]")):
        found.append(line[:5])
    for method in ("pearl", "maskclip"):
        if line.startswith(f"| {method} | cpu | fp32 | 64x48 | 3 |"):
            found.append(f"row {method}")
    return found


def test_cpu_estimate_of_the_random_preset():
    args = cli.build_parser().parse_args(["engine", "--preset", "random", "--devices", "cpu"])
    m = cli.engine_matrix(args)
    frames = m.warmup + m.repeat
    line = estimate.estimate_line(m.preset, m.methods, m.sizes, m.classes, frames)
    assert line.startswith("random preset on CPU: ~") and "--methods" in line
    default = estimate.cpu_seconds(m.methods, m.sizes, m.classes, frames)
    # Known answer from the reference costs: every term of the sum by hand for one method.
    cost = estimate.REFERENCE_CPU["pearl"]
    pearl = cost.build_s + 100 * cost.name_s
    for width, height in ((640, 480), (1280, 720)):
        pearl += 3 * 13 * (cost.frame_base_s + cost.frame_s_per_mpx * width * height / 1e6)
    assert estimate.cpu_seconds(["pearl"], m.sizes, m.classes, 13) == pytest.approx(pearl)
    assert set(estimate.REFERENCE_CPU) == set(METHODS)  # every method has its costs
    # Fewer methods, sizes or classes: shorter; the default matrix takes many minutes.
    assert estimate.cpu_seconds(["pearl"], [(640, 480)], [20], 4) < pearl < default
    assert default > 20 * 60


def test_cameras_subcommand(tmp_path, capsys) -> None:
    out = tmp_path / "cameras.json"
    argv = ["cameras", "1", "2", "--methods", "maskclip", "--preset", "tiny", "--devices"]
    argv += ["cpu", "--sizes", "64x48", "--repeat", "1", "--json", str(out)]
    assert cli.main(argv) == 0
    records = json.loads(out.read_text())["records"]
    assert [(r["method"], r["device"], r["cameras"], r["size"]) for r in records] == [
        ("maskclip", "cpu", 1, "64x48"),
        ("maskclip", "cpu", 2, "64x48"),
    ]
    for record in records:
        assert record["batched_fps"] > 0 and record["one_by_one_fps"] > 0
        assert record["speedup"] == pytest.approx(
            record["batched_fps"] / record["one_by_one_fps"], rel=1e-6
        )
    table = capsys.readouterr().out
    assert "| maskclip | cpu | fp32 | 2 | 64x48 |" in table
    assert cli.main(["cameras", "0"]) == 2
    assert cli.main(["cameras", "1", "--devices", "tpu"]) == 2


def test_points_subcommand(capsys):
    assert cli.main(["points", "--sizes", "64x48", "--repeat", "2", "--json", "-"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)["records"]
    assert {(r["device"], r["stride"], r["organized"]) for r in rows} >= {
        ("cpu", 1, False),
        ("cpu", 2, True),
    }
    assert all(r["ms"] > 0 for r in rows) and "| cpu | 64x48 | 2 | organized |" in captured.err
    assert cli.main(["points", "--sizes", "0x3"]) == 2
