"""Runtime parameter changes (a set-parameters request): validated in full before anything
applies them, split by what applies them (:class:`Change`), refused with the reason of the
first problem."""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter

from ovseg_ros.outputs import MASK
from ovseg_ros.pipeline import string_list
from ovseg_ros.points_stage import PointsSettings
from ovseg_ros.ros.parameters import (
    NODE_SPECS,
    POINTS_PARAMETERS,
    TEMPORAL_PARAMETERS,
    check_budget,
    engine_values,
    points_settings,
    temporal_settings,
    value,
)
from ovseg_ros.ros.topic_names import camera_names, check_camera_topics, class_topic_problems
from ovseg_ros.segmentation.config import SegmenterConfig
from ovseg_ros.segmentation.vocabulary import build_vocabulary, parse_entries
from ovseg_ros.temporal import TemporalSettings

T = TypeVar("T")


@dataclass
class Change:
    """An accepted set-parameters request, split by what applies it."""

    classes: list[str] | None = None
    confidence: list[str] | None = None
    masks: list[str] | None = None
    overlay_alpha: float | None = None
    knobs: dict[str, Any] | None = None
    points: PointsSettings | None = None  # new cloud settings, when any of them changed
    temporal: TemporalSettings | None = None  # new fusion settings, when any of them changed


def check_request(
    node: Node, parameters: list[Parameter], cameras: list[str]
) -> tuple[SetParametersResult, Change]:
    """Validate a set-parameters request in full before anything applies it: the values
    (:func:`check_change`), the cloud parameters, the frame memory budget, and that the
    per-class topics of every camera in ``cameras`` can be created. Refused with the reason
    of the first problem, so a change applies to every camera or to none."""
    result, change = check_change(parameters, engine_values(node))
    if result.successful:
        result, change.points = check_points_change(node, parameters)
    if result.successful:
        result, change.temporal = check_temporal_change(node, parameters)
    if not result.successful:
        return result, change
    classes = change.classes if change.classes is not None else value(node, "classes") or []
    if change.knobs or change.classes is not None or change.temporal is not None:
        config = SegmenterConfig.from_dict({**engine_values(node), **(change.knobs or {})})
        alpha = change.temporal.alpha if change.temporal is not None else None
        try:
            check_budget(node, config, list(classes), alpha)
        except ValueError as exc:
            return _refused(str(exc)), change
    if cameras and any(v is not None for v in (change.classes, change.confidence, change.masks)):
        confidence, masks = change.confidence, change.masks
        if confidence is None:
            confidence = string_list(value(node, "confidence_classes"), "confidence_classes")
        if masks is None:
            masks = string_list(value(node, "mask_classes"), "mask_classes")
        vocabulary = build_vocabulary(classes, 0)
        problems = class_topic_problems(node, cameras, vocabulary, confidence, masks)
        if problems:
            which = "mask_classes" if f"/{MASK}/" in problems[0] else "confidence_classes"
            return _refused(f"{which}: {problems[0]}"), change
    return result, change


def check_change(
    parameters: list[Parameter], current_engine: dict[str, Any]
) -> tuple[SetParametersResult, Change]:
    """Validate a set-parameters request; the result is refused with a reason if invalid.

    Types, ranges and read-only are enforced by rclpy from the descriptors; this checks what
    they cannot express (vocabulary rules, engine cross-field rules).
    """
    change = Change(knobs={})
    engine_fields = set(current_engine)
    node_specs = {spec.name: spec for spec in NODE_SPECS}
    for param in parameters:
        name, new = param.name, param.value
        if name in node_specs and new is not None:
            spec = node_specs[name]
            try:  # ranges, list lengths, NaN / inf: rclpy's descriptors do not cover them all
                spec.check(list(new) if spec.type == list[str] else new)
            except (ValueError, TypeError) as exc:
                return _refused(str(exc)), change
        if name == "classes":
            if param.type_ != Parameter.Type.STRING_ARRAY:
                return _refused("classes must be a non-empty list of strings"), change
            try:
                parse_entries(list(new))
            except ValueError as exc:
                return _refused(f"classes: {exc}"), change
            change.classes = list(new)
        elif name in ("confidence_classes", "mask_classes"):
            if param.type_ not in (Parameter.Type.STRING_ARRAY, Parameter.Type.NOT_SET):
                return _refused(f"{name} must be a list of strings"), change
            if name == "mask_classes":
                change.masks = string_list(new, name)
            else:
                change.confidence = string_list(new, name)
        elif name == "publish_overlay_alpha":
            if not 0.0 <= float(new) <= 1.0:
                return _refused("publish_overlay_alpha must be in [0, 1]"), change
            change.overlay_alpha = float(new)
        elif name in engine_fields:
            change.knobs[name] = new
    if change.knobs:
        try:
            SegmenterConfig.from_dict({**current_engine, **change.knobs})
        except (ValueError, TypeError) as exc:
            return _refused(str(exc)), change
    return SetParametersResult(successful=True), change


def check_points_change(
    node: Node, parameters: list[Parameter]
) -> tuple[SetParametersResult, PointsSettings | None]:
    """Validate a runtime change of the cloud parameters against the current values.

    ``(accepted, new settings)``; settings None when the request changes none of them.
    """

    def settings(changed: dict[str, Any]) -> PointsSettings:
        new = points_settings(node, changed)
        if new.objects.enabled and not value(node, "objects"):  # the topics are new
            cameras = camera_names(value(node, "cameras")) or [""]
            check_camera_topics(node, cameras, objects=True)
        return new

    return _check_group(parameters, POINTS_PARAMETERS, settings)


def check_temporal_change(
    node: Node, parameters: list[Parameter]
) -> tuple[SetParametersResult, TemporalSettings | None]:
    """Validate a runtime change of the fusion parameters against the current values.

    ``(accepted, new settings)``; settings None when the request changes none of them.
    """
    return _check_group(parameters, TEMPORAL_PARAMETERS, partial(temporal_settings, node))


def _check_group(
    parameters: list[Parameter], names: Container[str], settings: Callable[[dict[str, Any]], T]
) -> tuple[SetParametersResult, T | None]:
    """``(accepted, settings(changed values))`` for the request's parameters in ``names``;
    ``(accepted, None)`` when it changes none of them, refused with the ``ValueError``'s
    reason."""
    changed = {p.name: p.value for p in parameters if p.name in names}
    if not changed:
        return SetParametersResult(successful=True), None
    try:
        return SetParametersResult(successful=True), settings(changed)
    except ValueError as exc:
        return _refused(str(exc)), None


def _refused(reason: str) -> SetParametersResult:
    return SetParametersResult(successful=False, reason=reason)
