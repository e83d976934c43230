"""``ovseg-replay`` over many bags, here and on a local Ray (2 CPUs), and ``ovseg-evaluate --ray``.

Real rosbag2 bags (sqlite3, mcap, a lone .mcap file) written with rosbags, tiny real models
on the CPU. Every output is compared with what a single ``ovseg-replay IN OUT`` run writes.
One Ray session serves the whole module (Ray takes seconds to start).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from bag_helpers import (
    bag_files,
    bag_time,
    break_mcap,
    camera_bag,
    decode,
    read_bag,
    stamp,
)
from PIL import Image as PILImage

from ovseg_ros.tools.replay.cli import main
from ovseg_ros.tools.replay.plan import ReplayOptions
from ovseg_ros.tools.replay.ranges import OrderedBagWriter, label_range, split_ranges

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]
torch = pytest.importorskip("torch")

CLASSES = ["sky", "person; man", "chair"]
FAST = {"templates": "single", "short_side": 0}  # tiny models, small frames: fast
FRAMES = {"alpha": 4, "bravo": 7, "charlie": 3}
BAG_IDS = {"alpha": 1, "bravo": 2, "charlie": 3}
LONG = 80  # frames of each bag a run is interrupted in (seconds of labelling)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Torch on one thread, as each of the two Ray actors on 2 CPUs: the float sums of the
    reference runs then happen in the same order as the actors' and match bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module; the CLI joins it instead of starting its own."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def args(tmp_path_factory) -> list[str]:
    params = tmp_path_factory.mktemp("params") / "segment.yaml"
    params.write_text(yaml.safe_dump({"ovseg": {"ros__parameters": FAST}}))
    return [
        "--classes", *CLASSES, "--params", str(params), "--overlay",
        "--confidence-classes", "man",
        "--preset", "tiny", "--device", "cpu", "--no-progress",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, args) -> tuple[Path, Path]:
    """(directory of 3 bags: sqlite3, mcap, lone .mcap file; their single-run outputs)."""
    root = tmp_path_factory.mktemp("fleet")
    bags = root / "bags"
    camera_bag(bags / "alpha", "sqlite3", BAG_IDS["alpha"], FRAMES["alpha"])
    camera_bag(bags / "bravo", "mcap", BAG_IDS["bravo"], FRAMES["bravo"])
    lone = camera_bag(root / "lone", "mcap", BAG_IDS["charlie"], FRAMES["charlie"])
    next(lone.glob("*.mcap")).rename(bags / "charlie.mcap")
    reference = root / "reference"
    for name in FRAMES:
        source = bags / "charlie.mcap" if name == "charlie" else bags / name
        assert main([str(source), str(reference / f"{name}_ovseg"), *args]) == 0
    return bags, reference


def assert_same_bag(got: Path, want: Path) -> None:
    """Same files (the storage file is named after the directory), topics, messages, QoS."""
    assert bag_files(got) == bag_files(want)
    messages, connections = read_bag(got)
    expected, expected_connections = read_bag(want)
    assert set(messages) == set(expected)
    for topic, items in expected.items():
        assert messages[topic] == items, topic
        a, b = connections[topic], expected_connections[topic]
        assert (a.msgtype, a.msgdef, a.digest, a.ext) == (b.msgtype, b.msgdef, b.digest, b.ext)


def assert_each_frame_once(output: Path, name: str) -> None:
    """One label image per input frame, with that frame's own stamp and bag time."""
    messages, _ = read_bag(output)
    labels = [decode(raw) for _, raw in messages["/ovseg/labels"]]
    n = FRAMES[name]
    assert [(m.header.stamp.sec, m.header.stamp.nanosec) for m in labels] == [
        stamp(BAG_IDS[name], i) for i in range(n)
    ]
    assert [t for t, _ in messages["/ovseg/labels"]] == [bag_time(i) for i in range(n)]
    assert len(messages["/ovseg/vocabulary"]) == 1


def load_report(out: Path) -> dict[str, dict]:
    report = json.loads((out / "ovseg-replay-report.json").read_text())
    return {Path(bag["input"]).name: bag for bag in report["bags"]}


# -- without Ray ------------------------------------------------------------------------------


def test_windows_written_back_in_order_equal_a_single_run(fleet, tmp_path):
    """A bag cut in time windows, labelled apart and handed over in reverse order."""
    from ovseg_ros.segmentation import build_segmenter, tiny_config

    bags, reference = fleet
    segmenter = build_segmenter(tiny_config("pearl", **FAST))
    segmenter.set_vocabulary(CLASSES)
    options = ReplayOptions(
        bags / "bravo", tmp_path / "bravo_ovseg", overlay=True, confidence_classes=("man",)
    )
    windows = split_ranges(options.input, ["/cam/image"], range_frames=2)
    assert [w.index for w in windows] == [0, 1, 2, 3] and windows[0].start is None
    assert sum(w.frames for w in windows) == FRAMES["bravo"]
    outputs = [label_range(options, segmenter, w) for w in windows]
    assert sum(o.stats.frames_in for o in outputs) == FRAMES["bravo"]  # each frame in one window
    assert sum(len(o.messages) > 0 for o in outputs) == len(windows)
    writer = OrderedBagWriter(options.output, "mcap", len(windows))
    assert [writer.add(o) for o in reversed(outputs)][:-1] == [0, 0, 0]  # held back until #0
    writer.close()
    assert writer.stats.frames_out == FRAMES["bravo"]
    assert_same_bag(options.output, reference / "bravo_ovseg")


def test_many_bags_without_ray_equal_single_runs_and_rerun_skips(fleet, args, tmp_path, capsys):
    bags, reference = fleet
    out = tmp_path / "out"
    assert main([str(bags), "--output-dir", str(out), *args]) == 0
    for name in FRAMES:
        assert_same_bag(out / f"{name}_ovseg", reference / f"{name}_ovseg")
        assert_each_frame_once(out / f"{name}_ovseg", name)
    report = load_report(out)
    assert {n: (b["status"], b["frames_in"], b["frames_labelled"]) for n, b in report.items()} == {
        "alpha": ("done", 4, 4), "bravo": ("done", 7, 7), "charlie.mcap": ("done", 3, 3)
    }  # fmt: skip
    assert not (out / ".partial").exists()
    err = capsys.readouterr().err
    assert err.count("done        ") == 3 and "3 done, 0 skipped, 0 failed" in err

    # A rerun leaves finished outputs alone; --overwrite redoes them.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*_ovseg/*")}
    assert main([str(bags), "--output-dir", str(out), *args]) == 0
    assert {b["status"] for b in load_report(out).values()} == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in out.glob("*_ovseg/*")} == stamps
    assert main([str(bags / "alpha"), "--output-dir", str(out), *args, "--overwrite"]) == 0
    assert load_report(out)["alpha"]["status"] == "done"
    assert_same_bag(out / "alpha_ovseg", reference / "alpha_ovseg")


def test_usage_errors(fleet, args, tmp_path, capsys):
    bags, _ = fleet
    out = str(tmp_path / "out")
    other = camera_bag(tmp_path / "other" / "alpha", "mcap", 9, 1)
    cases = [
        ([str(tmp_path / "nope"), "--output-dir", out], "not found"),
        ([str(tmp_path / "*.mcap"), "--output-dir", out], "no bag matches"),
        ([str(bags), str(other), "--output-dir", out], "same output name alpha_ovseg"),
        ([str(bags), "--output-dir", out, "--retries", "-1"], "--retries"),
        ([str(bags), "--ray"], "--ray needs --output-dir"),
    ]
    for argv, message in cases:
        assert main([*argv, *args]) == 2, argv
        assert message in capsys.readouterr().err
    assert not Path(out).exists()


# -- failures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> Path:
    """delta: fine but for one undecodable frame; echo: garbage storage file (cannot be
    opened); foxtrot: opens, but reading its messages fails (retried, then failed)."""
    bags = tmp_path_factory.mktemp("damaged")
    camera_bag(bags / "delta", "sqlite3", 4, 3, broken=(1,))
    camera_bag(bags / "echo", "sqlite3", 5, 3)
    (bags / "echo" / "echo.db3").write_bytes(b"not a database" * 100)
    camera_bag(bags / "foxtrot", "mcap", 6, 6)
    break_mcap(bags / "foxtrot", "robot6")
    return bags


def check_damaged_report(out: Path) -> None:
    """The damaged bags' outcome: delta done without its broken frame, echo and foxtrot
    failed with their reasons, nothing of theirs written."""
    report = load_report(out)
    delta, echo, foxtrot = report["delta"], report["echo"], report["foxtrot"]
    assert (delta["status"], delta["frames_in"], delta["frames_labelled"]) == ("done", 3, 2)
    assert delta["corrupt_frames_skipped"] == 1 and "step" in delta["skipped_frames"][0]
    assert echo["status"] == "failed" and "cannot read bag" in echo["error"]
    assert echo["attempts"] == 0  # never started: the bag cannot be opened
    assert foxtrot["status"] == "failed" and "Truncated record" in foxtrot["error"]
    assert foxtrot["attempts"] == 3  # --retries 2
    assert not (out / "echo_ovseg").exists() and not (out / "foxtrot_ovseg").exists()
    messages, _ = read_bag(out / "delta_ovseg")
    assert [decode(raw).header.stamp.sec for _, raw in messages["/ovseg/labels"]] == [4000, 4002]


def test_a_damaged_bag_fails_alone_and_is_reported(damaged, args, tmp_path):
    """Here; on Ray in test_many_bags_on_ray_equal_single_runs (one Ray run for both)."""
    out = tmp_path / "out"
    assert main([str(damaged), "--output-dir", str(out), *args]) == 1
    check_damaged_report(out)
    assert sorted(p.name for p in out.iterdir()) == ["delta_ovseg", "ovseg-replay-report.json"]


def _wait_for(predicate, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def _writing(partials: list[Path], stale: set[int]) -> bool:
    """True when a new partial output (not one of ``stale``, by inode) is being written."""
    for path in partials:
        try:
            if path.stat().st_ino not in stale and not (path / "metadata.yaml").exists():
                return True
        except FileNotFoundError:  # renamed or removed just now
            pass
    return False


def test_interrupted_run_leaves_no_half_written_output(tmp_path, args):
    """Ctrl-C and kill -9 in the middle of a bag: nothing under a final name but complete
    outputs; the next run clears the partial output and finishes the job."""
    bags = tmp_path / "bags"
    for k in range(3):
        camera_bag(bags / f"long{k}", "mcap", 10 + k, LONG)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ovseg_ros.tools.replay", str(bags), "--output-dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def partial() -> list[Path]:
        return list((out / ".partial").glob("*")) if (out / ".partial").exists() else []

    for sig in (signal.SIGKILL, signal.SIGINT):
        stale = {p.stat().st_ino for p in partial()}  # left by the killed run

        process = subprocess.Popen(
            [*command, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            _wait_for(lambda stale=stale: _writing(partial(), stale))
            process.send_signal(sig)
            _, err = process.communicate(timeout=120)
        finally:
            process.kill()
        finals = [p for p in out.glob("long*_ovseg")]
        for final in finals:  # only complete bags under a final name
            messages, _ = read_bag(final)
            assert len(messages["/ovseg/labels"]) == LONG
        assert len(finals) < 3
        if sig == signal.SIGKILL:
            assert process.returncode == -signal.SIGKILL and partial()  # killed mid-bag
        else:
            # 130 from our handler; -SIGINT when the interrupt lands while the interpreter
            # is importing or finalising (Python's own convention for Ctrl-C).
            assert process.returncode in (130, -signal.SIGINT), err.decode()
            assert not partial()
            report = load_report(out)
            assert "interrupted" in {b["status"] for b in report.values()}
    assert main([str(bags), "--output-dir", str(out), *args]) == 0
    assert not (out / ".partial").exists()
    for k in range(3):
        assert_each_frame_count(out / f"long{k}_ovseg", LONG)


def assert_each_frame_count(path: Path, frames: int) -> None:
    messages, _ = read_bag(path)
    assert len(messages["/ovseg/labels"]) == frames
    assert len({decode(raw).header.stamp.nanosec for _, raw in messages["/ovseg/labels"]}) == frames


# -- on Ray -----------------------------------------------------------------------------------


def test_many_bags_on_ray_equal_single_runs(local_ray, fleet, damaged, args, tmp_path, capsys):
    """Three bags (a directory, a bag, a glob) in windows of 2 frames on 2 CPU actors, equal
    to single runs; beside them the damaged bags fail alone, as here (one Ray run: each costs
    its actors' start)."""
    bags, reference = fleet
    out = tmp_path / "out"
    argv = [str(bags / "alpha"), str(bags / "bravo"), str(bags / "*.mcap")]
    argv += [str(damaged / name) for name in ("delta", "echo", "foxtrot")]
    argv += ["--output-dir", str(out), *args, "--actors", "2", "--range-frames", "2", "--ray"]
    assert main(argv) == 1  # the damaged ones failed
    for name in FRAMES:
        assert_same_bag(out / f"{name}_ovseg", reference / f"{name}_ovseg")
        assert_each_frame_once(out / f"{name}_ovseg", name)
    check_damaged_report(out)
    report = load_report(out)
    for name, bag in report.items():
        if name in ("delta", "echo", "foxtrot"):
            continue
        n = FRAMES[name.removesuffix(".mcap")]
        assert (bag["status"], bag["frames_in"], bag["frames_labelled"]) == ("done", n, n)
        assert bag["windows"] == math.ceil(n / 2)  # split, labelled apart, written in order
    run = json.loads((out / "ovseg-replay-report.json").read_text())["run"]
    assert run["ray"] == "local" and run["ray_actors"] == 2
    err = capsys.readouterr().err
    assert err.count("done        ") == 4 and "4 done, 0 skipped, 2 failed" in err
    assert not (out / ".partial").exists()


# -- ovseg-evaluate --ray ---------------------------------------------------------------------


def write_voc(root: Path, n: int = 6, h: int = 48, w: int = 64) -> None:
    """A tiny PASCAL VOC 2012 layout (JPEGImages, palette PNGs, val.txt)."""
    from ovseg_ros.evaluation.datasets import voc_colormap

    rng = np.random.default_rng(0)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names = [f"2007_{i:06d}" for i in range(n)]
    for k, name in enumerate(names):
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        PILImage.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg")
        gt = np.zeros((h, w), dtype=np.uint8)
        gt[h // 4 : 3 * h // 4, w // 4 : w // 2] = 15  # person
        gt[h // 2 :, 3 * w // 4 :] = 9 + k % 3  # chair, cow, dining table
        gt[h // 4, :] = 255  # ignored
        png = PILImage.fromarray(gt, mode="P")
        png.putpalette(voc_colormap().reshape(-1).tolist())
        png.save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(names) + "\n")


def test_evaluate_on_ray_equals_single_process(local_ray, tmp_path, capsys):
    from ovseg_ros.tools import evaluate

    root = tmp_path / "voc"
    write_voc(root)
    # One prompt template per class: the actors' text encoding is what a run costs here.
    params = tmp_path / "segment.yaml"
    params.write_text(yaml.safe_dump({"ovseg": {"ros__parameters": {"templates": "single"}}}))
    flags = ["--dataset", "voc21", "--root", str(root), "--preset", "tiny", "--device", "cpu"]
    flags += ["--method", "maskclip", "--params", str(params)]
    assert evaluate.main([*flags, "--output-dir", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    assert evaluate.main([*flags, "--output-dir", str(tmp_path / "ray"), "--ray"]) == 0
    err = capsys.readouterr().err  # the progress shows the program that runs, not replay's
    assert "ovseg-evaluate voc21" in err and "ovseg-replay" not in err
    one, on_ray = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "ray"))
    assert on_ray["num_images"] == one["num_images"] == 6
    assert on_ray["summary"] == one["summary"] and on_ray["per_class"] == one["per_class"]

    # Per class, the same pixel counts (ground truth, predicted) and scores: the actors'
    # metrics summed (SegmentationMetric.merge, tested count for count in test_metrics.py)
    # are the single process's.
    assert [(r["gt_pixels"], r["pred_pixels"]) for r in on_ray["per_class"]] == [
        (r["gt_pixels"], r["pred_pixels"]) for r in one["per_class"]
    ]
    assert sum(r["pred_pixels"] for r in one["per_class"]) > 0
