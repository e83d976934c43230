"""Refuse lifecycle requests that are not valid now, instead of letting them stop the node.

rclpy's ``~/change_state`` service hands any transition id to the state machine, which raises
``RCLError('Transition is not registered')`` for one that does not start in the current state
(``activate`` while active): the exception leaves the service callback, stops the executor,
and the node shuts down with exit status 0. A lifecycle manager that retries does that.

:func:`guard_change_state` wraps the service: a transition not available in the current state,
or asked while another transition is in progress, is answered ``success: false`` with a
warning naming the state and the transitions that are available; the node keeps running.
The service gets its own :class:`~.executor.SlowCallbackGroup`: the node's executor runs it
off the spinning thread, so a request that arrives during a long transition (``configure``
loads the models) is answered at once instead of being queued, and frames and diagnostics
keep flowing meanwhile.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from lifecycle_msgs.srv import ChangeState
from rclpy.lifecycle import LifecycleNode

from ovseg_ros.ros.executor import SlowCallbackGroup


def available_transitions(node: LifecycleNode) -> dict[int, str]:
    """Transition id -> label of the transitions that start in the node's current state."""
    # rclpy exposes the state machine only as a private attribute of LifecycleNode.
    return {t[0]: t[1] for t in node._state_machine.available_transitions}


def refusal(node: LifecycleNode, request: Any, busy: bool) -> str | None:
    """Why ``request`` (a ChangeState request) cannot run now, or None if it can."""
    state_id, state = node._state_machine.current_state
    transition = request.transition
    asked = transition.label or str(transition.id)
    if busy:
        return f"transition {asked!r} refused: another transition is in progress ({state})"
    available = available_transitions(node)
    if transition.label:
        valid = transition.label in available.values()
    else:
        valid = transition.id in available
    if valid:
        return None
    names = ", ".join(sorted(set(available.values()))) or "none"
    return f"transition {asked!r} refused: not valid in state {state!r} (valid: {names})"


def guard_change_state(node: LifecycleNode, warn: Callable[[str], None]) -> None:
    """Wrap ``node``'s ``~/change_state`` service (see the module docstring).

    ``warn(reason)`` is called for every refused request.
    """
    service = getattr(node, "_service_change_state", None)  # None without the services
    if service is None:
        return
    original = service.callback
    in_progress = threading.Lock()

    def on_change_state(request: ChangeState.Request, response: ChangeState.Response):
        if not in_progress.acquire(blocking=False):
            warn(refusal(node, request, busy=True))
            response.success = False
            return response
        try:
            reason = refusal(node, request, busy=False)
            if reason is not None:
                warn(reason)
                response.success = False
                return response
            return original(request, response)
        except Exception as exc:  # noqa: BLE001 - whatever rcl says, the node keeps running
            warn(f"transition {request.transition.label or request.transition.id} failed: {exc}")
            response.success = False
            return response
        finally:
            in_progress.release()

    service.callback = on_change_state
    # Move the service out of the node's default (mutually exclusive) group: requests during
    # a transition are then answered (refused) at once, and get_state answers meanwhile.
    old_group = service.callback_group
    old_group.entities.discard(weakref.ref(service))
    group = SlowCallbackGroup()
    group.add_entity(service)
    service.callback_group = group
