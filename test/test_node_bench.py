"""``ovseg-bench node`` briefly: the node (tiny preset, CPU), a camera, the echo floor and the
engine alone, each in its own process over real DDS on a private domain. Counts and
orderings are checked; no timing is asserted."""

from __future__ import annotations

import json

import pytest

from ovseg_ros.bench import cli, node

pytestmark = [pytest.mark.dds, pytest.mark.slow, pytest.mark.timeout(400)]

RATE, DURATION = 10.0, 1.0


def test_node_bench_prints_table_with_sane_numbers(tmp_path, capsys):
    path = tmp_path / "node.json"
    argv = ["node", "--preset", "tiny", "--devices", "cpu", "--methods", "pearl"]
    argv += ["--qos", "reliable", "--rate", str(RATE), "--duration", str(DURATION)]
    argv += ["--node-param", "templates:=single", "--json", str(path)]
    assert cli.main(argv) == 0

    out = capsys.readouterr().out
    assert "| method | device | dtype | QoS | size | sent | labelled |" in out
    assert "| engine alone p50/p90/p99 | engine in node p50/p90/p99 | in node / alone |" in out
    assert f"| pearl | cpu | default | reliable | 640x480 | {int(RATE * DURATION)} |" in out

    document = json.loads(path.read_text())
    assert document["meta"]["mode"] == "node"
    (record,) = document["records"]
    assert "error" not in record
    sent = record["sent"]
    assert sent == RATE * DURATION
    # Every frame is accounted for: lost on the way in, or received by the node; of those,
    # some are replaced in the node's latest-frame slot, the rest are processed and labelled.
    assert record["node_received"] + record["lost_in_transport"] == sent
    assert record["dropped_by_node"] + record["node_processed"] <= record["node_received"]
    assert 1 <= record["labelled"] <= record["node_processed"]
    assert 0 < record["output_hz"] <= RATE
    assert 0 <= record["late"] <= record["labelled"]
    for key in ("e2e_ms", "floor_ms", "engine_in_node_ms", "engine_alone_ms"):
        p = record[key]
        assert 0 < p["p50"] <= p["p90"] <= p["p99"], key
    # The labels come after the engine ran on the frame.
    assert record["e2e_ms"]["p50"] > record["engine_in_node_ms"]["p50"] / 2
    assert 1 <= record["floor_delivered"] <= record["floor_sent"] == sent
    # The engine alone kept the camera's schedule: warm-up and measured frames, none twice.
    assert 1 <= record["engine_alone_frames"] <= RATE * (node.WARMUP_S + DURATION)
    e2e, floor = record["e2e_ms"]["p50"], record["floor_ms"]["p50"]
    alone, in_node = record["engine_alone_ms"]["p50"], record["engine_in_node_ms"]["p50"]
    assert record["engine_ratio_p50"] == pytest.approx(in_node / alone)
    assert record["overhead_p50_ms"] == pytest.approx(e2e - alone - floor)
    assert record["overhead_beside_engine_p50_ms"] == pytest.approx(e2e - in_node - floor)


def test_engine_alone_is_built_like_the_node(tmp_path):
    """The engine alone gets the node's settings: params file, flags, then -p parameters."""
    params = tmp_path / "segment.yaml"
    params.write_text("ovseg:\n  ros__parameters:\n    method: maskclip\n    window_stride: 200\n")
    settings = node.NodeBenchSettings(
        preset="tiny",
        params_file=str(params),
        node_params=("templates:=single", "window_stride:=150", "classes:=['a', 'b']"),
    )
    (case,) = node.cases(settings)
    config = node.engine_config(settings, case)
    assert (config.method, config.preset, config.templates) == ("maskclip", "tiny", "single")
    assert config.window_stride == 150  # -p after the params file, as ROS applies them
    (case,) = node.cases(node.NodeBenchSettings(methods=("pearl",), devices=("cpu",)))
    config = node.engine_config(node.NodeBenchSettings(methods=("pearl",)), case)
    assert (config.method, config.device) == ("pearl", "cpu")


def test_the_subscription_policy_comes_from_the_node_log():
    log = (
        "[INFO] [1700000000.100000000] [ovseg]: /cam: subscribed best_effort (qos_reliability "
        "auto, no publisher yet)\n[INFO] [1700000002.500000000] [ovseg]: /cam: switched to "
        "reliable (qos_reliability auto, 1 publisher: 1 reliable)\n[INFO] [1700000009.0] "
        "[ovseg]: /cam: switched to best_effort (qos_reliability auto, no publisher yet)\n"
    )
    assert node.subscription_policy(log, 1_700_000_001 * 10**9) == "best_effort"
    assert node.subscription_policy(log, 1_700_000_003 * 10**9) == "reliable"  # measuring
    assert node.subscription_policy("", 1_700_000_003 * 10**9) == "unknown"
    fixed = "[INFO] [1700000000.2] [ovseg]: active: segmenting /cam (reliable)\n"
    assert node.subscription_policy(fixed, 1_700_000_003 * 10**9) == "reliable"


@pytest.mark.parametrize(
    "argv",
    [
        ["--params", "/nonexistent/params.yaml"],
        ["--dds-profile", "/nonexistent/profile.xml"],
        ["--threads", "0"],
        ["--node-param", "templates=single"],
    ],
)
def test_bad_input_exits_2_before_starting_anything(argv, capsys):
    assert cli.main(["node", *argv]) == 2
    assert "error:" in capsys.readouterr().err
