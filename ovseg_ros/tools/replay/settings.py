"""The settings of an ``ovseg-replay`` run: the flags over the node's params file, checked
before any model loads, and the segmenter they describe.

Shared by the single-bag run, the many-bags run and the Ray actors (which build their own
segmenter from :attr:`ReplaySettings.config` on their own device).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovseg_ros.image_conversion import MAX_IMAGE_PIXELS
from ovseg_ros.pipeline import string_list
from ovseg_ros.points_stage import PointsSettings
from ovseg_ros.temporal import DEFAULT_RESET_S, MAX_WARMUP, TemporalSettings, opencv_problem
from ovseg_ros.tools.cli import read_params
from ovseg_ros.tools.replay.plan import (
    DepthOptions,
    ReplayError,
    ReplayOptions,
    absolute_topic,
    output_class_topics,
    stderr_log,
)


@dataclass(frozen=True)
class ReplaySettings:
    """The flags and params file of a run, checked."""

    config: Any  # SegmenterConfig (unresolved: each Ray actor resolves its own device)
    classes: list[str]
    vocabulary: Any  # Vocabulary of ``classes`` (version 0), to check names against
    options: ReplayOptions  # with several bags, a template: input/output are set per bag


def read_settings(args: argparse.Namespace, input_bag: Path, output_bag: Path) -> ReplaySettings:
    """Engine config, classes and :class:`ReplayOptions` from ``ovseg-replay``'s parsed flags
    and params file; bad classes or params values are a :class:`ReplayError`."""
    flags = {"method": args.method, "preset": args.preset, "device": args.device}
    loaded = read_params(args.params, args.params_node, flags)
    params, config = loaded.node, loaded.config
    classes = args.classes or _string_list(params.get("classes"), "classes")
    if not classes:
        raise ReplayError("no classes: give --classes, or --params with a 'classes' list")
    from ovseg_ros.segmentation.vocabulary import build_vocabulary

    try:
        draft = build_vocabulary(classes, version=0)  # validates before the models load
    except ValueError as exc:
        raise ReplayError(f"invalid classes: {exc}") from exc
    options = _options(args, params, draft, input_bag, output_bag)
    output_class_topics(draft, options)
    return ReplaySettings(config, list(classes), draft, options)


def build_replay_segmenter(settings: ReplaySettings) -> Any:
    """The segmenter of ``settings`` on this machine's device, with the run's vocabulary;
    missing weights or an unavailable device are a :class:`ReplayError`."""
    from ovseg_ros.segmentation import WeightsNotFoundError, build_segmenter

    try:
        segmenter = build_segmenter(settings.config.resolved())
        segmenter.set_vocabulary(settings.classes)
    except (WeightsNotFoundError, ValueError) as exc:  # ValueError: e.g. cuda without a GPU
        raise ReplayError(str(exc)) from exc
    return segmenter


def _string_list(value: Any, name: str) -> list[str]:
    try:
        return string_list(value, name)
    except ValueError as exc:
        raise ReplayError(f"params file: {exc}") from None


def _options(
    args: argparse.Namespace,
    params: dict[str, Any],
    vocabulary: Any,
    input_bag: Path,
    output_bag: Path,
) -> ReplayOptions:
    """ReplayOptions from the flags; params-file confidence or mask classes not in the
    vocabulary are dropped with a warning (as the node does), unknown --confidence-classes or
    --mask-classes are an error."""
    confidence = _class_names(args.confidence_classes, params, "confidence", vocabulary)
    masks = _class_names(args.mask_classes, params, "mask", vocabulary)
    alpha = args.overlay_alpha
    if alpha is None:
        try:
            alpha = float(params.get("publish_overlay_alpha", 0.5))
        except (TypeError, ValueError) as exc:
            raise ReplayError(
                f"params file: publish_overlay_alpha must be a number: {exc}"
            ) from exc
    as_given = ("namespace", "overlay", "copy_input", "storage", "overwrite", "limit")
    return ReplayOptions(
        input=input_bag,
        output=output_bag,
        **{name: getattr(args, name) for name in as_given},
        image_topics=tuple(args.image_topic),
        confidence_classes=tuple(confidence),
        mask_classes=tuple(masks),
        overlay_alpha=alpha,
        depth=depth_options(args, params),
        max_image_pixels=_max_image_pixels(args, params),
        temporal=temporal_settings(args, params),
        temporal_warmup=args.temporal_warmup,
    )


def _class_names(
    given: list[str] | None, params: dict[str, Any], kind: str, vocabulary: Any
) -> list[str]:
    """``--<kind>-classes`` as given, else the params file's ``<kind>_classes`` that are in
    the vocabulary (the others dropped with a warning)."""
    if given is not None:
        return [c.strip() for c in given if c.strip()]
    names = []
    for name in _string_list(params.get(f"{kind}_classes"), f"{kind}_classes"):
        try:
            vocabulary.index(name)
            names.append(name)
        except KeyError:
            stderr_log(f"warning: params file {kind} class {name!r} not in --classes")
    return names


def _max_image_pixels(args: argparse.Namespace, params: dict[str, Any]) -> int:
    """``--max-image-pixels``, else the params file's ``max_image_pixels``, else 8K."""
    if args.max_image_pixels is not None:
        return args.max_image_pixels
    value = params.get("max_image_pixels", MAX_IMAGE_PIXELS)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ReplayError(f"params file: max_image_pixels must be an integer >= 1, got {value!r}")
    return value


def temporal_settings(args: argparse.Namespace, params: dict[str, Any]) -> TemporalSettings:
    """``--temporal-alpha`` / ``--temporal-reset-s`` over the params file's
    ``temporal_alpha`` / ``temporal_reset_s``, checked (fusion on needs OpenCV)."""
    alpha = args.temporal_alpha
    if alpha is None:
        alpha = params.get("temporal_alpha", 0.0)
    reset_s = args.temporal_reset_s
    if reset_s is None:
        reset_s = params.get("temporal_reset_s", DEFAULT_RESET_S)
    try:
        settings = TemporalSettings(float(alpha), float(reset_s))
    except (TypeError, ValueError) as exc:
        raise ReplayError(f"temporal fusion: {exc}") from None
    problem = opencv_problem() if settings.enabled else ""
    if problem:
        raise ReplayError(problem)
    warmup = args.temporal_warmup
    if warmup is not None and not 0 <= warmup <= MAX_WARMUP:
        raise ReplayError(f"--temporal-warmup must be in [0, {MAX_WARMUP}], got {warmup}")
    return settings


def depth_options(args: argparse.Namespace, params: dict[str, Any]) -> DepthOptions | None:
    """``--depth-topic`` and friends (flags win over the params file), checked."""
    if args.depth_topic is None and args.camera_info_topic is None:
        if args.objects:
            raise ReplayError("--objects needs --depth-topic and --camera-info-topic")
        return None
    if not args.depth_topic or not args.camera_info_topic:
        raise ReplayError("--depth-topic and --camera-info-topic go together")
    flags = {
        "points_stride": args.points_stride,
        "points_organized": args.points_organized,
        "depth_min": args.depth_min,
        "depth_max": args.depth_max,
        "points_classes": args.points_classes,
        "depth_sync_tolerance": args.depth_sync_tolerance,
        "objects_classes": args.objects_classes,
        "objects_min_points": args.objects_min_points,
        "objects_depth_gap": args.objects_depth_gap,
    }
    values = {k: params[k] for k in flags if params.get(k) is not None}
    values.update({k: v for k, v in flags.items() if v is not None})
    values["objects"] = bool(args.objects)  # only when asked, as --depth-topic: not from params
    try:
        settings = PointsSettings.from_values(values)
        tolerance = float(values.get("depth_sync_tolerance", 0.02))
        if not tolerance >= 0.0:
            raise ValueError(f"depth_sync_tolerance must be >= 0 seconds, got {tolerance}")
    except (TypeError, ValueError) as exc:
        raise ReplayError(f"point cloud / objects options: {exc}") from None
    return DepthOptions(
        absolute_topic(args.depth_topic),
        absolute_topic(args.camera_info_topic),
        tolerance,
        settings,
    )
