"""The one params loader: plain, namespaced, wildcard and multi-node params files.

Where rclpy is importable, every file is also handed to a real rclpy node with
``--params-file`` and the loader must give that node exactly the parameters ROS gives it.
"""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest

from ovseg_ros.params import load_params, node_parameters, read_yaml
from ovseg_ros.segmentation.config import SegmenterConfig

REPO = Path(__file__).resolve().parents[1]
PLAIN = "method: lposs\nlposs_k: 50\nclasses: [door, person]\n"
NAMESPACED = """
robot:
  ovseg:
    ros__parameters:
      method: lposs_plus
      short_side: 448
      qos_overrides:
        /image:
          subscription:
            depth: 3
"""
WILDCARD = "/**:\n  ros__parameters:\n    method: maskclip\n    tlp: true\n"
SEVERAL = """
/**:
  ros__parameters:
    method: maskclip
    window_stride: 100
other:
  ros__parameters:
    method: pearl
/robot/ovseg:
  ros__parameters:
    method: lposs_plus
    classes: [door]
/**/ovseg:
  ros__parameters:
    window_stride: 56
"""


def write(tmp_path, text: str, name: str = "p.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_plain_mapping(tmp_path):
    params = load_params(write(tmp_path, PLAIN))
    assert (params.config.method, params.config.lposs_k) == ("lposs", 50)
    assert params.classes == ["door", "person"]


def test_namespaced_file_gives_its_method_everywhere(tmp_path):
    """The bug of issue 8: a namespaced lposs_plus file was read as pearl."""
    path = write(tmp_path, NAMESPACED)
    params = load_params(path)
    assert params.config.method == "lposs_plus"
    assert params.node == {"qos_overrides./image.subscription.depth": 3}
    assert load_params(path, node="/robot/ovseg").config.method == "lposs_plus"
    with pytest.raises(ValueError, match="no parameters for node /ovseg"):
        load_params(path, node="/ovseg")


def test_namespaced_file_makes_download_weights_fetch_the_dino_weights(tmp_path, capsys):
    from ovseg_ros.segmentation.weights import sources_for

    config = load_params(write(tmp_path, NAMESPACED)).config
    repos = [source.repo_id for source, _, _ in sources_for(config)]
    assert repos == ["laion/CLIP-ViT-B-16-laion2B-s34B-b88K", "timm/vit_base_patch16_224.dino"]


def test_wildcard_file(tmp_path):
    params = load_params(write(tmp_path, WILDCARD))
    assert (params.config.method, params.config.tlp) == ("maskclip", True)
    assert load_params(write(tmp_path, WILDCARD), node="/any/ns/cam").config.method == "maskclip"


def test_several_nodes_merge_in_file_order(tmp_path):
    path = write(tmp_path, SEVERAL)
    params = load_params(path)  # the file names /robot/ovseg: that is the node
    assert (params.config.method, params.config.window_stride) == ("lposs_plus", 56)
    assert params.classes == ["door"]
    other = load_params(path, node="other")
    assert (other.config.method, other.config.window_stride) == ("pearl", 100)
    # A wildcard after the node's own section overrides it, as in ROS.
    flipped = write(tmp_path, "/ovseg:\n  ros__parameters: {method: lposs}\n" + WILDCARD)
    assert load_params(flipped).config.method == "maskclip"


def test_overrides_and_errors(tmp_path):
    path = write(tmp_path, NAMESPACED)
    params = load_params(path, overrides={"method": "pearl", "device": None})
    assert (params.config.method, params.config.device) == ("pearl", "auto")
    assert load_params(None).config == SegmenterConfig()
    assert load_params({"method": "lposs"}).config.method == "lposs"
    twice = write(tmp_path, "/a/ovseg: {ros__parameters: {}}\n/b/ovseg: {ros__parameters: {}}\n")
    with pytest.raises(ValueError, match="several nodes named 'ovseg'.*fully qualified"):
        load_params(twice)
    assert load_params(twice, node="/b/ovseg").config == SegmenterConfig()
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="mapping"):
        load_params(write(tmp_path, "- 1\n- 2\n", "list.yaml"))
    with pytest.raises(ValueError, match="bad.yaml: window_size must be an integer"):
        load_params(write(tmp_path, "window_size: 2.5\n", "bad.yaml"))
    with pytest.raises(ValueError, match="ros__parameters must be a mapping"):
        load_params(write(tmp_path, "ovseg:\n  ros__parameters: 3\n", "flat.yaml"))
    assert load_params(write(tmp_path, "", "empty.yaml")).config == SegmenterConfig()


@pytest.mark.parametrize(
    ("text", "node", "namespace"),
    [
        (NAMESPACED, "ovseg", "/robot"),
        (WILDCARD, "ovseg", "/"),
        (WILDCARD, "cam", "/x/y"),
        (SEVERAL, "ovseg", "/robot"),
        (SEVERAL, "other", "/"),
        ("/ovseg:\n  ros__parameters: {method: lposs}\n" + WILDCARD, "ovseg", "/"),
        ("/*/ovseg:\n  ros__parameters: {method: lposs}\n" + SEVERAL, "ovseg", "/robot"),
    ],
)
def test_loader_agrees_with_rclpy(tmp_path, text, node, namespace):
    rclpy = pytest.importorskip("rclpy")
    from rclpy.context import Context
    from rclpy.node import Node

    path = write(tmp_path, text)
    context = Context()
    rclpy.init(
        args=["--ros-args", "--params-file", str(path)],
        context=context,
        domain_id=random.randint(1, 200),
    )
    try:
        ros_node = Node(node, namespace=namespace, context=context)
        expected = {k: p.value for k, p in ros_node._parameter_overrides.items()}
        ros_node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    fqn = f"{namespace.rstrip('/')}/{node}"
    ours = node_parameters(read_yaml(path), fqn)
    assert {k: (list(v) if isinstance(v, list) else v) for k, v in expected.items()} == ours


def test_params_file_states_every_safe_range():
    """config/segment.yaml gives each bounded parameter its range, as the field metadata (the
    node's descriptors and refusals) has it: one source, written out where users read it."""
    from ovseg_ros.ros.parameters import all_specs

    lines = (REPO / "config" / "segment.yaml").read_text().splitlines()
    missing = []
    for spec in all_specs():
        if spec.minimum is None and spec.maximum is None and spec.max_items is None:
            continue
        clause = spec.constraints.split(";")[0]
        line = next((t for t in lines if t.strip().startswith(f"{spec.name}:")), "")
        if clause not in line:
            missing.append(f"{spec.name}: {clause!r}")
    assert not missing, missing
