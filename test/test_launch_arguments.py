"""The launch file's arguments as node parameters (``ovseg_ros.ros.launch_arguments``, which
``launch/segment.launch.py`` calls): given ones checked and converted, empty ones left to the
params file. Plain Python, so this runs where the ``launch`` packages are not installed."""

from __future__ import annotations

import pytest

from ovseg_ros.ros.launch_arguments import node_overrides, parse_camera_topics, parse_classes


def test_classes_parse_as_a_yaml_list() -> None:
    assert parse_classes("['person', 'chair; stool']") == ["person", "chair; stool"]
    assert parse_classes("person") == ["person"]
    for bad in ("[]", "{a: 1}", "['']"):
        with pytest.raises(ValueError, match="classes"):
            parse_classes(bad)


def test_launch_arguments_become_node_parameters() -> None:
    def overrides(**given: str) -> dict:
        return node_overrides(lambda name: given.get(name, ""))

    # empty arguments set nothing: the params file holds
    assert overrides(use_sim_time="false") == {"use_sim_time": False}
    assert overrides(use_sim_time="false", temporal_alpha="0.6")["temporal_alpha"] == 0.6
    assert overrides(use_sim_time="true", temporal_alpha="0")["temporal_alpha"] == 0.0
    assert overrides(use_sim_time="false", objects="true")["depth"] is True
    assert overrides(use_sim_time="false", objects="true", depth="false")["depth"] is False
    assert overrides(use_sim_time="no", classes="person")["classes"] == ["person"]
    for bad in ("0.96", "-0.1", "nan", "high"):
        with pytest.raises(ValueError, match="temporal_alpha"):
            overrides(use_sim_time="false", temporal_alpha=bad)
    with pytest.raises(ValueError, match="depth must be true or false"):
        overrides(use_sim_time="false", depth="maybe")
    assert parse_camera_topics("{front: /f/image}", ["front"]) == {"front": "/f/image"}
    with pytest.raises(ValueError, match="not in cameras"):
        parse_camera_topics("{back: /b/image}", ["front"])
