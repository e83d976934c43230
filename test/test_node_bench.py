"""``ovseg-bench --node`` briefly: the node (tiny preset, CPU), a camera and the echo floor,
each in its own process over real DDS on a private domain. Counts and orderings are checked;
no timing is asserted."""

from __future__ import annotations

import json

import pytest

from ovseg_ros.tools import bench, node_bench

pytestmark = pytest.mark.timeout(400)

RATE, DURATION = 10.0, 2.0


def test_node_bench_prints_table_with_sane_numbers(tmp_path, capsys):
    path = tmp_path / "node.json"
    argv = ["--node", "--preset", "tiny", "--devices", "cpu", "--methods", "pearl"]
    argv += ["--qos", "reliable", "--rate", str(RATE), "--duration", str(DURATION)]
    argv += ["--node-param", "templates:=single", "--json", str(path)]
    assert bench.main(argv) == 0

    out = capsys.readouterr().out
    assert "| method | device | dtype | QoS | size | sent | labelled |" in out
    assert "| pearl | cpu | default | reliable | 640x480 | 20 |" in out

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
    for key in ("e2e_ms", "floor_ms", "engine_ms"):
        p = record[key]
        assert 0 < p["p50"] <= p["p90"] <= p["p99"], key
    # The labels come after the engine ran on the frame.
    assert record["e2e_ms"]["p50"] > record["engine_ms"]["p50"] / 2
    assert 1 <= record["floor_delivered"] <= record["floor_sent"] == sent
    overhead = record["e2e_ms"]["p50"] - record["engine_ms"]["p50"] - record["floor_ms"]["p50"]
    assert record["overhead_p50_ms"] == pytest.approx(overhead)


def test_node_switch():
    assert node_bench.is_node_mode(["--node", "--preset", "tiny"])
    assert node_bench.is_node_mode(["--preset", "tiny", "--node"])
    assert not node_bench.is_node_mode(["--params", "p.yaml", "--params-node", "ovseg"])
    assert not node_bench.is_node_mode(["--preset", "tiny"])


@pytest.mark.parametrize(
    "argv",
    [
        ["--params", "/nonexistent/params.yaml"],
        ["--dds-profile", "/nonexistent/profile.xml"],
        ["--threads", "0"],
    ],
)
def test_bad_input_exits_2_before_starting_anything(argv, capsys):
    assert node_bench.main(["--node", *argv]) == 2
    assert "error:" in capsys.readouterr().err


def test_node_command_uses_an_existing_entry_point():
    command = node_bench.node_command()
    assert command[1] == "-m"
    assert command[2] in ("ovseg_ros.ros.main", "ovseg_ros.segment_node")
