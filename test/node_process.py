"""``segment_node`` as a subprocess on a private DDS domain, and an in-process client node that
plays camera, lifecycle manager and parameter client (real rclpy over DDS, nothing mocked).

The node's log goes to a file (read with :meth:`NodeProcess.log`), its peak memory comes from
``/proc/<pid>/status`` (``VmHWM``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import SetParameters
from rclpy.context import Context
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from ros_harness import REPO, spin_in_thread, wait_until
from sensor_msgs.msg import Image
from std_msgs.msg import String

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(
    depth=16, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


def make_image(sec: int, width: int = 64, height: int = 48) -> Image:
    """An rgb8 frame stamped ``sec``: red left half, blue right half, some noise."""
    rng = np.random.default_rng(sec)
    pixels = np.empty((height, width, 3), np.int16)
    pixels[:, : width // 2] = (200, 40, 40)
    pixels[:, width // 2 :] = (40, 40, 200)
    pixels += rng.integers(-20, 21, pixels.shape, dtype=np.int16)
    msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
    msg.header.frame_id = "camera"
    msg.header.stamp.sec = sec
    msg.data = pixels.clip(0, 255).astype(np.uint8).tobytes()
    return msg


class NodeProcess:
    """``python -m ovseg_ros.ros.main`` with ``params`` (``-p k:=v``) on ``domain``."""

    def __init__(self, domain: int, log_path: Path, params: dict, *ros_args: str) -> None:
        env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        env["ROS_DOMAIN_ID"] = str(domain)
        env["RCUTILS_LOGGING_BUFFERED_STREAM"] = "0"
        command = [sys.executable, "-m", "ovseg_ros.ros.main", "--ros-args", *ros_args]
        command += [a for k, v in params.items() for a in ("-p", f"{k}:={_param_text(v)}")]
        self.log_path = log_path
        self._log_file = open(log_path, "w")  # noqa: SIM115 - open for the process's lifetime
        self.process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=self._log_file, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def peak_rss_mib(self) -> float:
        """``VmHWM``: the process's peak resident memory so far."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def stop(self, timeout: float = 60) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log_file.close()
        return code


def _param_text(value) -> str:
    return json.dumps(value) if isinstance(value, (list, bool)) else str(value)


class Client:
    """Camera + lifecycle manager + parameter client for node ``/<name>`` (in this process)."""

    def __init__(self, context: Context, name: str = "ovseg", image_topic: str = "/image") -> None:
        self.name = name
        self.node = rclpy.create_node("ovseg_client", context=context)
        self.lock = threading.Lock()
        self.received: dict[str, list] = {}
        self.image_pub = self.node.create_publisher(Image, image_topic, RELIABLE)
        self.subscribe(Image, f"/{name}/labels")
        self.subscribe(String, f"/{name}/vocabulary", LATCHED)
        self.subscribe(DiagnosticArray, "/diagnostics", QoSProfile(depth=100))
        self.change_state = self.node.create_client(ChangeState, f"/{name}/change_state")
        self.get_state = self.node.create_client(GetState, f"/{name}/get_state")
        self.set_params = self.node.create_client(SetParameters, f"/{name}/set_parameters")
        self.executor = spin_in_thread(self.node, context)

    def subscribe(self, msg_type, topic: str, qos: QoSProfile = RELIABLE):
        self.received.setdefault(topic, [])

        def callback(msg, topic=topic) -> None:
            with self.lock:
                self.received[topic].append((time.monotonic(), msg))

        return self.node.create_subscription(msg_type, topic, callback, qos)

    def messages(self, topic: str) -> list:
        with self.lock:
            return [m for _, m in self.received[topic]]

    def timed(self, topic: str) -> list[tuple[float, object]]:
        """``(arrival time.monotonic(), message)`` in arrival order."""
        with self.lock:
            return list(self.received[topic])

    def labels(self) -> list[Image]:
        return self.messages(f"/{self.name}/labels")

    def labels_at(self, sec: int) -> list[Image]:
        return [m for m in self.labels() if m.header.stamp.sec == sec]

    def vocabularies(self) -> list[dict]:
        return [json.loads(m.data) for m in self.messages(f"/{self.name}/vocabulary")]

    def diagnostics(self) -> list[dict[str, str]]:
        """The values of every status of this node received so far."""
        name = f"{self.name}: segmentation"
        return [
            {kv.key: kv.value for kv in status.values}
            for array in self.messages("/diagnostics")
            for status in array.status
            if status.name == name
        ]

    def call(self, client, request, timeout: float = 30.0):
        assert client.wait_for_service(timeout_sec=timeout), f"{client.srv_name} not available"
        future = client.call_async(request)
        assert wait_until(future.done, timeout), f"{client.srv_name}: no response"
        return future.result()

    def transition_async(self, transition_id: int = 0, label: str = ""):
        assert self.change_state.wait_for_service(timeout_sec=30)
        request = ChangeState.Request(transition=Transition(id=transition_id, label=label))
        return self.change_state.call_async(request)

    def transition(self, transition_id: int = 0, label: str = "") -> bool:
        request = ChangeState.Request(transition=Transition(id=transition_id, label=label))
        return self.call(self.change_state, request).success

    def state(self) -> str:
        return self.call(self.get_state, GetState.Request()).current_state.label

    def set_parameters(self, *parameters: Parameter):
        request = SetParameters.Request(parameters=[p.to_parameter_msg() for p in parameters])
        return self.call(self.set_params, request).results

    def stream_until_labels(self, first_sec: int, timeout: float = 120.0, **kwargs) -> Image:
        """Publish frames (stamps ``first_sec``, ``first_sec + 1``, ...; one every 0.5 s)
        until labels of one of them arrive (a slow frame's may come after newer frames were
        sent); the first such labels."""
        deadline = time.monotonic() + timeout
        sec = first_sec
        while time.monotonic() < deadline:
            self.image_pub.publish(make_image(sec, **kwargs))
            if wait_until(lambda: self._labels_since(first_sec), 0.5):
                return self._labels_since(first_sec)[0]
            sec += 1
        raise AssertionError("no labels arrived")

    def _labels_since(self, first_sec: int) -> list[Image]:
        return [m for m in self.labels() if m.header.stamp.sec >= first_sec]

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
