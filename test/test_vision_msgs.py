"""The node's vision_msgs messages (``~/objects`` Detection3DArray, ``~/label_info``) built
with vision_msgs' own Python classes, generated from their definitions (vision_msgs has no
PyPI wheel; see vision_msgs_python.py), in a separate process so that no node of this test
process takes them for an installed vision_msgs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TEST_DIR = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import numpy as np
    import vision_msgs_python

    sys.path.insert(0, str(vision_msgs_python.generate(Path(sys.argv[1]))))
    from std_msgs.msg import Header
    from test_objects import VOCABULARY, depth_image, model, scene

    from ovseg_ros.outputs import LabelInfoOutput, ObjectsOutput
    from ovseg_ros.points.objects import ObjectsOptions, find_objects
    from ovseg_ros.ros.output_messages import (
        detection_array_message, detection_types, label_info_message, label_info_types,
    )

    types = detection_types()
    assert types is not None and label_info_types() is not None
    labels, z, confidence = scene()
    found = find_objects(depth_image(z, "16UC1"), model([]), labels, confidence, 5,
                         ObjectsOptions())
    output = ObjectsOutput.of(found, VOCABULARY, "depth_optical")
    header = Header(frame_id="depth_optical")
    header.stamp.sec, header.stamp.nanosec = 12, 34
    msg = detection_array_message(types, header, output)
    assert isinstance(msg, types.Detection3DArray) and msg.header == header
    specs = output.detections()
    assert len(msg.detections) == len(specs) == 5
    for detection, spec in zip(msg.detections, specs, strict=True):
        assert detection.header == header and detection.id == spec.id
        (result,) = detection.results
        assert (result.hypothesis.class_id, result.hypothesis.score) == (spec.class_id, spec.score)
        pose = result.pose.pose
        assert [pose.position.x, pose.position.y, pose.position.z] == list(spec.centroid)
        assert pose.orientation.w == 1.0 and not np.any(result.pose.covariance)
        center, size = detection.bbox.center, detection.bbox.size
        assert [center.position.x, center.position.y, center.position.z] == list(spec.center)
        assert center.orientation.w == 1.0
        assert [size.x, size.y, size.z] == list(spec.size)
    info = label_info_message(label_info_types(), header, LabelInfoOutput.of(VOCABULARY, 0.4))
    assert [(c.class_id, c.class_name) for c in info.class_map] == list(enumerate(VOCABULARY.names))
    assert abs(info.threshold - 0.4) < 1e-6 and info.header == header
    print("ok")
    """
)


def test_vision_msgs_messages_with_generated_classes(tmp_path):
    pytest.importorskip("rosidl_generator_py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TEST_DIR), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "vision_msgs")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
