"""This process's side of a node under test, in one rclpy node spinning on a daemon thread:
a camera publisher, recorders of labels, vocabulary and ``/diagnostics``, and clients of the
node's lifecycle and parameter services.

Graph queries (publisher counts, a subscription's reliability) are for before and after a
measurement, never polled during one: a benchmark waits for discovery first.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from sensor_msgs.msg import Image
from std_msgs.msg import String

from ovseg_ros.harness.frames import stamped_frame
from ovseg_ros.harness.process import HarnessError, wait_until
from ovseg_ros.stamps import stamp_ns

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(
    depth=16, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
DIAGNOSTICS = QoSProfile(depth=100)


FATES = ("frames_processed", "frames_dropped", "frames_invalid", "inference_errors")


def counters(values: dict[str, str]) -> dict[str, int]:
    """The frame counters of a node status: ``frames_received`` and every fate of a frame."""
    return {key: int(values.get(key, 0)) for key in ("frames_received", *FATES)}


def frames_in_flight(values: dict[str, str]) -> int:
    """Frames the node has received but not yet processed, dropped or refused."""
    count = counters(values)
    return count["frames_received"] - sum(count[key] for key in FATES)


def node_path(name: str, namespace: str = "") -> str:
    """The fully qualified name of node ``name`` in ``namespace`` (``/ns/name``)."""
    if name.startswith("/"):
        return name
    return f"{namespace.rstrip('/')}/{name}" if namespace.strip("/") else f"/{name}"


class NodeClient:
    """Camera, recorder, lifecycle manager and parameter client for node ``node`` (a name
    or ``/ns/name``).

    Records, from construction on: ``<node>/labels`` (whole messages, or with
    ``labels="stamps"`` only each stamp's first arrival time, for long runs of big frames),
    ``<node>/vocabulary`` (latched) and the node's ``/diagnostics`` status. ``image_topic``:
    also a camera publisher, :attr:`image_pub` (``camera_qos``, reliable by default).
    ``context``: an initialised rclpy context; :meth:`on_domain` makes and owns one.
    ``client_name``, ``namespace``: this client's own node (a planner's, say).
    """

    def __init__(
        self,
        context: Context,
        node: str = "ovseg",
        *,
        image_topic: str | None = "/image",
        camera_qos: QoSProfile = RELIABLE,
        labels: str = "messages",
        client_name: str = "ovseg_client",
        namespace: str = "",
    ) -> None:
        if labels not in ("messages", "stamps"):
            raise ValueError(f"labels must be 'messages' or 'stamps', got {labels!r}")
        self.context = context
        self.path = node_path(node)
        self.name = self.path.rsplit("/", 1)[-1]
        self.labels_topic = f"{self.path}/labels"
        self.vocabulary_topic = f"{self.path}/vocabulary"
        self.node = rclpy.create_node(client_name, namespace=namespace, context=context)
        self.lock = threading.Lock()
        self._received: dict[str, list[tuple[float, Any]]] = {}
        self._arrivals: dict[str, dict[int, int]] = {}
        self._diagnostics: list[tuple[int, dict[str, str]]] = []
        self._subscriptions: dict[str, Any] = {}
        self._owns_context = False
        self.image_pub = (
            self.node.create_publisher(Image, image_topic, camera_qos) if image_topic else None
        )
        if labels == "stamps":
            self.track_stamps(self.labels_topic)
        else:
            self.subscribe(Image, self.labels_topic)
        self.subscribe(String, self.vocabulary_topic, LATCHED)
        self.node.create_subscription(
            DiagnosticArray, "/diagnostics", self._on_diagnostics, DIAGNOSTICS
        )
        self.change_state = self.node.create_client(ChangeState, f"{self.path}/change_state")
        self.get_state = self.node.create_client(GetState, f"{self.path}/get_state")
        self.set_params = self.node.create_client(SetParameters, f"{self.path}/set_parameters")
        self.get_params = self.node.create_client(GetParameters, f"{self.path}/get_parameters")
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self._spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self._spinner.start()

    @classmethod
    def on_domain(cls, domain: int, node: str = "ovseg", **kwargs: Any) -> NodeClient:
        """A client with its own rclpy context on ``domain`` (shut down by :meth:`close`)."""
        context = Context()
        rclpy.init(context=context, domain_id=domain)
        try:
            client = cls(context, node, **kwargs)
        except BaseException:
            rclpy.try_shutdown(context=context)
            raise
        client._owns_context = True
        return client

    # -- recording ---------------------------------------------------------------------------

    def subscribe(self, msg_type: Any, topic: str, qos: QoSProfile = RELIABLE) -> Any:
        """Record every message of ``topic`` with its arrival time (``time.monotonic()``)."""
        self._received.setdefault(topic, [])

        def callback(msg: Any, topic: str = topic) -> None:
            with self.lock:
                self._received[topic].append((time.monotonic(), msg))

        subscription = self.node.create_subscription(msg_type, topic, callback, qos)
        self._subscriptions[topic] = subscription
        return subscription

    def track_stamps(self, topic: str, qos: QoSProfile = RELIABLE) -> Any:
        """Record only when each stamp of ``topic`` (Images) first arrived (wall clock, ns)."""
        self._arrivals.setdefault(topic, {})

        def callback(msg: Image, topic: str = topic) -> None:
            now = time.time_ns()
            with self.lock:
                self._arrivals[topic].setdefault(stamp_ns(msg.header.stamp), now)

        subscription = self.node.create_subscription(Image, topic, callback, qos)
        self._subscriptions[topic] = subscription
        return subscription

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        now = time.time_ns()
        name = f"{self.name}: segmentation"
        for status in msg.status:
            if status.name == name:
                with self.lock:
                    self._diagnostics.append((now, {kv.key: kv.value for kv in status.values}))

    def reset(self) -> None:
        """Forget everything recorded so far (the latched vocabulary too)."""
        with self.lock:
            for received in self._received.values():
                received.clear()
            for arrivals in self._arrivals.values():
                arrivals.clear()
            self._diagnostics.clear()

    def messages(self, topic: str) -> list:
        with self.lock:
            return [m for _, m in self._received[topic]]

    def timed(self, topic: str) -> list[tuple[float, Any]]:
        """``(arrival time.monotonic(), message)`` in arrival order."""
        with self.lock:
            return list(self._received[topic])

    def arrivals(self, topic: str) -> dict[int, int]:
        """Of a :meth:`track_stamps` topic: stamp (ns) -> first arrival (wall clock, ns)."""
        with self.lock:
            return dict(self._arrivals[topic])

    def labels(self) -> list[Image]:
        return self.messages(self.labels_topic)

    def labels_at(self, sec: int) -> list[Image]:
        return [m for m in self.labels() if m.header.stamp.sec == sec]

    def vocabularies(self) -> list[dict]:
        """Every vocabulary message received, parsed (``version``, ``classes``, ...)."""
        return [json.loads(m.data) for m in self.messages(self.vocabulary_topic)]

    def diagnostics(self) -> list[dict[str, str]]:
        """The values of every status of this node received so far."""
        with self.lock:
            return [values for _, values in self._diagnostics]

    def timed_diagnostics(self) -> list[tuple[int, dict[str, str]]]:
        """``(arrival wall clock ns, values)`` of every status of this node so far."""
        with self.lock:
            return list(self._diagnostics)

    def fresh_diagnostics(self, timeout: float = 30.0) -> dict[str, str]:
        """The first status that arrives after this call (:class:`HarnessError` if none)."""
        since = time.time_ns()

        def fresh() -> list[dict[str, str]]:
            return [values for at, values in self.timed_diagnostics() if at > since]

        if not wait_until(fresh, timeout):
            raise HarnessError(f"no /diagnostics from {self.path} within {timeout:.0f} s")
        return fresh()[0]

    def settled_diagnostics(self, since_ns: int, timeout: float = 30.0) -> dict[str, str]:
        """The first status received after ``since_ns`` (wall clock) with no frame in flight:
        every frame received is processed, dropped, invalid or failed. Ask once the camera
        has stopped. :class:`HarnessError` (with the last status) if none within ``timeout``."""
        settled: list[dict[str, str]] = []

        def done() -> bool:
            for at, values in self.timed_diagnostics():
                if at > since_ns and frames_in_flight(values) == 0:
                    settled.append(values)
                    return True
            return False

        if not wait_until(done, timeout, poll=0.1):
            last = self.diagnostics()[-1:] or [{}]
            raise HarnessError(f"{self.path} did not settle within {timeout:.0f} s: {last[0]}")
        return settled[0]

    # -- the graph (before or after a measurement) ---------------------------------------------

    def publisher_count(self, topic: str) -> int:
        """Publishers of a topic this client subscribes to."""
        return self._subscriptions[topic].get_publisher_count()

    def subscription_reliability(self, topic: str, node_name: str) -> str | None:
        """``reliable`` / ``best_effort`` of ``node_name``'s subscription to ``topic``."""
        for info in self.node.get_subscriptions_info_by_topic(topic):
            if info.node_name == node_name:
                return info.qos_profile.reliability.name.lower()
        return None

    def node_names(self) -> set[tuple[str, str]]:
        """``(name, namespace)`` of every node in the graph now."""
        return set(self.node.get_node_names_and_namespaces())

    # -- services ------------------------------------------------------------------------------

    def call(self, client: Any, request: Any, timeout: float = 30.0) -> Any:
        """``request`` to a service; its response (:class:`HarnessError` on a timeout)."""
        if not client.wait_for_service(timeout_sec=timeout):
            raise HarnessError(f"{client.srv_name} not available")
        future = client.call_async(request)
        if not wait_until(future.done, timeout):
            raise HarnessError(f"{client.srv_name}: no response")
        return future.result()

    def transition_async(self, transition_id: int = 0, label: str = "") -> Future:
        if not self.change_state.wait_for_service(timeout_sec=30):
            raise HarnessError(f"{self.change_state.srv_name} not available")
        request = ChangeState.Request(transition=Transition(id=transition_id, label=label))
        return self.change_state.call_async(request)

    def transition(self, transition_id: int = 0, label: str = "") -> bool:
        """A lifecycle transition by id or label; whether the node accepted it."""
        request = ChangeState.Request(transition=Transition(id=transition_id, label=label))
        return self.call(self.change_state, request).success

    def state(self) -> str:
        return self.call(self.get_state, GetState.Request()).current_state.label

    def set_parameters(self, *parameters: Parameter) -> list:
        """SetParameters: one ``SetParametersResult`` per parameter."""
        request = SetParameters.Request(parameters=[p.to_parameter_msg() for p in parameters])
        return self.call(self.set_params, request).results

    def get_parameters(self, *names: str) -> list[Any]:
        """GetParameters: the values (as Python values) in the order asked."""
        response = self.call(self.get_params, GetParameters.Request(names=list(names)))
        return [
            Parameter.from_parameter_msg(ParameterMsg(name=name, value=value)).value
            for name, value in zip(names, response.values, strict=True)
        ]

    # -- the camera ----------------------------------------------------------------------------

    def stream_until_labels(
        self, first_sec: int, timeout: float = 120.0, period: float = 0.5, **size: int
    ) -> Image:
        """Publish test frames stamped ``first_sec``, ``first_sec + 1``, ... (one every
        ``period`` s) until labels of one of them arrive (a slow frame's may come after newer
        frames were sent); the first such labels. ``size``: ``width``, ``height``."""
        deadline = time.monotonic() + timeout
        sec = first_sec

        def since() -> list[Image]:
            return [m for m in self.labels() if m.header.stamp.sec >= first_sec]

        while time.monotonic() < deadline:
            self.image_pub.publish(stamped_frame(sec, **size))
            if wait_until(since, period):
                return since()[0]
            sec += 1
        raise HarnessError(f"no labels from {self.path} within {timeout:.0f} s")

    def close(self) -> None:
        self.executor.shutdown()
        self._spinner.join(5.0)
        self.node.destroy_node()
        if self._owns_context:
            rclpy.try_shutdown(context=self.context)
