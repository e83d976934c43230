"""The engine and the offline tools work where ROS (and OpenCV) is not installed at all."""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoRos(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            blocked = ("rclpy", "sensor_msgs", "std_msgs", "rcl_interfaces", "cv2")
            if name.split(".")[0] in blocked:
                raise ImportError(f"{name} is blocked: not installed here")
            return None

    sys.meta_path.insert(0, NoRos())
    import numpy as np
    import ovseg_ros.tools.evaluate, ovseg_ros.tools.replay.cli  # noqa: F401  (offline tools)
    import ovseg_ros.bench.cli, ovseg_ros.tools.download_weights  # noqa: F401
    import ovseg_ros.pipeline, ovseg_ros.ros.worker, ovseg_ros.ros.versions  # noqa: F401
    from ovseg_ros.segmentation import build_segmenter, tiny_config

    seg = build_segmenter(tiny_config("pearl"))
    seg.set_vocabulary(["floor", "person"])
    # No OpenCV: the frame is resized on the device.
    assert seg.segment(np.zeros((20, 30, 3), np.uint8)).labels.shape == (20, 30)
    assert not any(m.split(".")[0] == "rclpy" for m in sys.modules)
    print("ok")
    """
)


@pytest.mark.slow
def test_engine_and_offline_tools_import_without_ros():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
