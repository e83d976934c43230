"""ovseg-demo never touches a live node: a real segment_node runs under /ovseg on this
module's domain, fed by a camera, while the demo runs beside it (default: a private domain;
--domain-id: the same domain, separated by its namespace). Tiny random models, real DDS."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from ovseg_ros.harness.client import NodeClient
from ovseg_ros.harness.domain import child_env, local_discovery_env, private_domain_id
from ovseg_ros.harness.frames import rgb8_message
from ovseg_ros.harness.process import NodeProcess, wait_for
from ovseg_ros.tools import demo

REPO = Path(__file__).resolve().parents[1]
DOMAIN_ID = private_domain_id()
LIVE_CLASSES = ["alpha thing", "beta thing"]
DEMO_ARGS = ["--preset", "tiny", "--device", "cpu", "--frames", "6", "--rate", "3"]

pytestmark = [pytest.mark.dds, pytest.mark.slow, pytest.mark.timeout(420)]


def _env() -> dict[str, str]:
    """A user's shell on the robot's domain (no discovery settings of its own)."""
    env = child_env(DOMAIN_ID, local=False)
    env.pop("ROS_AUTOMATIC_DISCOVERY_RANGE", None)
    env.pop("ROS_LOCALHOST_ONLY", None)
    return env


class LiveRobot:
    """The robot's own /ovseg node (a subprocess) and a camera + planner feeding / reading it."""

    def __init__(self, log_path: Path) -> None:
        params = {"preset": "tiny", "device": "cpu", "templates": "single"}
        self.process = NodeProcess(_env(), log_path, {**params, "classes": LIVE_CLASSES})
        self.client = NodeClient.on_domain(DOMAIN_ID, client_name="robot_planner")
        self.labels, self.vocabularies = self.client.labels, self.client.vocabularies
        self.stop = threading.Event()
        self.sent = 0
        self.feeder = threading.Thread(target=self._feed, daemon=True)
        self.feeder.start()

    def _feed(self) -> None:
        pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        while not self.stop.wait(0.25):
            # Far from any demo stamp (the wall clock).
            self.client.image_pub.publish(rgb8_message(pixels, (1000 + self.sent) * 10**9))
            self.sent += 1

    def classes(self) -> list[str]:
        (classes,) = self.client.get_parameters("classes")
        return list(classes)

    def close(self) -> None:
        self.stop.set()
        self.feeder.join(2.0)
        self.process.stop()
        self.client.close()


@pytest.fixture(scope="module")
def robot(tmp_path_factory):
    live = LiveRobot(tmp_path_factory.mktemp("robot") / "node.log")
    try:
        wait_for(lambda: bool(live.labels()), 180.0, "the live node's labels", live.process)
        yield live
    finally:
        live.close()


def _run_demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ovseg_ros.tools.demo", *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _check_demo_output(done: subprocess.CompletedProcess, domain: int) -> None:
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert f"[demo] ROS domain {domain} " in out and "namespace /ovseg_demo" in out
    counts = re.search(
        r"camera sent (\d+) frames, planner got (\d+) label images .* and (\d+) of", out
    )
    assert counts, out
    sent, got, foreign = (int(n) for n in counts.groups())
    assert sent == 6 and 1 <= got <= sent and foreign == 0, out
    # Only the demo's own two vocabularies, each announced once.
    versions = re.findall(r"\[planner\] vocabulary v(\d+): (.*)", out)
    assert versions == [
        ("1", "['background', 'person', 'car']"),
        ("2", "['background', 'wall', 'person', 'door']"),
    ], out


def _assert_untouched(robot: LiveRobot, labels_before: int) -> None:
    assert robot.classes() == LIVE_CLASSES
    assert robot.process.alive()
    assert robot.vocabularies() and {v["version"] for v in robot.vocabularies()} == {1}
    assert all(m.header.stamp.sec >= 1000 and m.header.stamp.sec < 10**6 for m in robot.labels())
    assert len(robot.labels()) > labels_before  # it kept labelling its own camera meanwhile


def test_demo_on_its_private_domain_by_default(robot: LiveRobot) -> None:
    before = len(robot.labels())
    done = _run_demo(*DEMO_ARGS)
    domain = int(re.search(r"\[demo\] ROS domain (\d+) ", done.stdout).group(1))
    assert domain != DOMAIN_ID  # ROS_DOMAIN_ID is the robot's: never picked
    assert "a random private domain" in done.stdout
    assert "discovery on this machine only" in done.stdout
    assert f"watch it with: ROS_DOMAIN_ID={domain} ROS_" in done.stdout
    _check_demo_output(done, domain)
    _assert_untouched(robot, before)


def test_demo_on_the_robots_domain_is_separated_by_its_namespace(robot: LiveRobot) -> None:
    before = len(robot.labels())
    done = _run_demo(*DEMO_ARGS, "--domain-id", str(DOMAIN_ID))
    _check_demo_output(done, DOMAIN_ID)
    _assert_untouched(robot, before)


def test_demo_refuses_a_namespace_where_a_node_runs(robot: LiveRobot) -> None:
    """Refused before the demo makes a node when discovery shows the robot's in time (exit
    2); where discovery is slower than the demo's wait (a busy machine), its second check,
    labels of frames its camera never sent, stops it before it changes any classes (exit 1).
    Either way the robot's node is untouched."""
    done = _run_demo(*DEMO_ARGS, "--domain-id", str(DOMAIN_ID), "--namespace", "/")
    out = done.stdout + done.stderr
    if done.returncode == 2:
        assert f"a node /ovseg already runs on ROS domain {DOMAIN_ID}" in done.stderr, out
        assert "loading" not in out  # refused before the node was made
    else:
        assert done.returncode == 1, out
        assert "stopping before it is asked to change its classes" in done.stderr, out
        assert "[planner] vocabulary v2" not in out  # it never changed the classes
    assert robot.classes() == LIVE_CLASSES


def test_domain_choice() -> None:
    parser = demo.build_parser()
    for _ in range(50):
        domain, localhost, _ = demo.choose_domain(parser.parse_args([]), {"ROS_DOMAIN_ID": "7"})
        assert domain != 7 and 1 <= domain <= 200 and localhost
    args = parser.parse_args(["--domain-id", "0"])
    assert demo.choose_domain(args, {"ROS_DOMAIN_ID": "7"})[:2] == (0, True)
    args = parser.parse_args(["--use-env-domain"])
    assert demo.choose_domain(args, {"ROS_DOMAIN_ID": "7"})[:2] == (7, False)
    assert demo.choose_domain(args, {})[:2] == (0, False)
    with pytest.raises(SystemExit):
        parser.parse_args(["--domain-id", "233"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--domain-id", "3", "--use-env-domain"])
    assert local_discovery_env("jazzy") == ("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    assert local_discovery_env("humble") == ("ROS_LOCALHOST_ONLY", "1")


def test_private_domains_are_reserved_across_processes() -> None:
    """Parallel test workers draw ids at the same time: a live process's ids are never
    handed to another (the collision that once let one worker's planner reconfigure another
    worker's node)."""
    here = {private_domain_id() for _ in range(20)}
    code = "from ovseg_ros.harness.domain import private_domain_id as p\n"
    code += "print([p() for _ in range(20)])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    there = set(eval(out.stdout))
    assert len(here) == len(there) == 20 and not here & there


def test_bad_namespace_is_a_usage_error(capsys) -> None:
    assert demo.main(["--namespace", "not a namespace"]) == 2
    assert "error:" in capsys.readouterr().err
