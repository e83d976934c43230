"""Gives this interpreter's rclpy (Jazzy or later) the shape of Humble's rclpy 3.3 for
everything but rclpy itself, before any other module is imported.

Python imports ``sitecustomize`` at start-up from the first folder on ``sys.path`` that has
one: ``test/test_distributions.py`` puts this folder first on a child's ``PYTHONPATH``.

- ``rclpy.event_handler`` (Iron and later) cannot be imported from outside rclpy: an import
  from any other module raises ``ModuleNotFoundError``, as on Humble, and is noted on stderr
  (``humble shape: refused ...``). rclpy's own modules still import it.
- ``rclpy.qos_event`` is Humble's module: the event names Humble has, no deprecation warning.
- The QoS names Humble lacks are removed: ``BEST_AVAILABLE`` of the reliability, durability
  and liveliness policies, the ``BEST_AVAILABLE`` and ``DEFAULT`` preset profiles,
  ``qos_profile_best_available``, ``DeadlineBestAvailable`` and the liveliness lease constant.

It writes ``humble shape: applied`` to stderr once done.
"""

from __future__ import annotations

import builtins
import sys
import types
import warnings

HIDDEN = "rclpy.event_handler"
# The names Humble's rclpy/qos_event.py defines (its QoSEventHandler is Iron's EventHandler).
HUMBLE_EVENT_NAMES = (
    "QoSPublisherEventType",
    "QoSSubscriptionEventType",
    "QoSRequestedDeadlineMissedInfo",
    "QoSLivelinessChangedInfo",
    "QoSMessageLostInfo",
    "QoSRequestedIncompatibleQoSInfo",
    "QoSOfferedDeadlineMissedInfo",
    "QoSLivelinessLostInfo",
    "QoSOfferedIncompatibleQoSInfo",
    "UnsupportedEventTypeError",
    "SubscriptionEventCallbacks",
    "PublisherEventCallbacks",
)


def _remove_enum_member(enum_class: type, name: str) -> None:
    member = enum_class.__members__.get(name)
    if member is None:
        return
    type.__delattr__(enum_class, name)  # EnumType refuses ``del``; this is what it guards
    enum_class._member_map_.pop(name, None)
    if name in enum_class._member_names_:
        enum_class._member_names_.remove(name)
    try:
        if enum_class._value2member_map_.get(member.value) is member:
            del enum_class._value2member_map_[member.value]
    except TypeError:  # an unhashable value (a profile): not in the value map
        pass


def _shape_qos() -> None:
    import rclpy.qos as qos

    for policy in (qos.ReliabilityPolicy, qos.DurabilityPolicy, qos.LivelinessPolicy):
        _remove_enum_member(policy, "BEST_AVAILABLE")
    for preset in ("BEST_AVAILABLE", "DEFAULT"):
        _remove_enum_member(qos.QoSPresetProfiles, preset)
    for name in (
        "qos_profile_best_available",
        "DeadlineBestAvailable",
        "LivelinessLeaseDurationeBestAvailable",  # sic, rclpy's spelling
    ):
        vars(qos).pop(name, None)


def _shape_qos_event() -> None:
    import rclpy
    import rclpy.event_handler as handlers

    module = types.ModuleType("rclpy.qos_event", "Humble's QoS event names (humble shape).")
    for name in HUMBLE_EVENT_NAMES:
        setattr(module, name, getattr(handlers, name))
    module.QoSEventHandler = handlers.EventHandler
    sys.modules["rclpy.qos_event"] = module
    rclpy.qos_event = module


def _importer(globals_: dict | None) -> str:
    return str((globals_ or {}).get("__name__", ""))


_real_import = builtins.__import__


def _import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0:
        importer = _importer(globals)
        asked = name == HIDDEN or (name == "rclpy" and "event_handler" in (fromlist or ()))
        if asked and not (importer == "rclpy" or importer.startswith("rclpy.")):
            sys.stderr.write(f"humble shape: refused import of {HIDDEN} from {importer}\n")
            sys.stderr.flush()
            raise ModuleNotFoundError(f"No module named {HIDDEN!r}", name=HIDDEN)
    return _real_import(name, globals, locals, fromlist, level)


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    _shape_qos()
    _shape_qos_event()
builtins.__import__ = _import
sys.stderr.write("humble shape: applied\n")
sys.stderr.flush()
