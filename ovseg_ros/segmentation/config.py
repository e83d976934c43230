"""Segmenter configuration: every knob of PEARL / LPOSS / LPOSS+ with the papers' defaults.

Each field carries its documentation, type, allowed values or range and whether changing it
needs a new segmenter in its ``dataclasses.field`` metadata; :func:`field_specs` exposes them
as :class:`FieldSpec` records, which feed the validation below, the ROS parameter descriptors,
the command-line help and the test that ``config/segment.yaml`` documents every field.

Fields left at ``None`` take the method's default from the official code (``resolved()``,
see :mod:`.methods`): PEARL resizes to a short side of 336 and refines with TLP; LPOSS
resizes to 448 and uses the LAION-2B CLIP weights its official MaskCLIP config loads.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, fields
from typing import Any

from .methods import DATASETS, METHODS, dataset_preset, method_spec

DTYPES = ("fp32", "fp16", "bf16")
SOLVERS = ("polar", "svd")
PRESETS = ("full", "tiny", "random")
TEMPLATES = ("imagenet80", "single")
FIELD_TYPES = (bool, int, float, str, list[str])
MAX_IMAGE_SIDE = 16384  # px: the largest image side the engine takes; larger is a corrupt header

__all__ = [
    "DATASETS",
    "DTYPES",
    "METHODS",
    "PRESETS",
    "REBUILD_FIELDS",
    "FieldSpec",
    "SegmenterConfig",
    "dataset_preset",
    "field_specs",
]


@dataclass(frozen=True)
class FieldSpec:
    """What one setting is: the single source of its documentation and constraints.

    ``type`` is one of ``FIELD_TYPES``. ``optional``: ``None`` is allowed and means "the
    method's default"; in ROS parameters and YAML files it is written ``unset`` (``""`` for
    strings, ``-1`` for integers, ``"auto"`` for booleans). ``minimum`` / ``maximum`` bound
    numbers (inclusive unless ``min_open`` / ``max_open``); ``max_items`` bounds the length of
    a list. ``rebuild``: changing it needs a new segmenter (read-only for the node); the others
    change at runtime.
    """

    name: str
    type: Any
    default: Any
    doc: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    min_open: bool = False
    max_open: bool = False
    rebuild: bool = False
    optional: bool = False
    max_items: int | None = None

    @property
    def unset(self) -> Any:
        """How ``None`` is written in a ROS parameter / params file (``None`` if not optional)."""
        if not self.optional:
            return None
        return {str: "", int: -1, float: -1.0, bool: "auto"}[self.type]

    @property
    def constraints(self) -> str:
        """Human-readable allowed values, e.g. ``"one of fp32, fp16, bf16"``, ``"in [0, 1)"``."""
        parts = []
        if self.choices:
            parts.append("one of " + ", ".join(self.choices))
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            left, right = "(" if self.min_open else "[", ")" if self.max_open else "]"
            parts.append(f"in {left}{_number(low)}, {_number(high)}{right}")
        elif low is not None:
            parts.append(f"{'>' if self.min_open else '>='} {_number(low)}")
        elif high is not None:
            parts.append(f"{'<' if self.max_open else '<='} {_number(high)}")
        if self.max_items is not None:
            parts.append(f"at most {self.max_items} entries")
        if self.optional:
            parts.append(f"{self.unset!r} = method default")
        return "; ".join(parts)

    def check(self, value: Any) -> None:
        """Raise ``ValueError`` naming the field when ``value`` breaks its choices or range."""
        if value is None:
            if not self.optional:
                raise ValueError(f"{self.name} must be set")
            return
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{self.name} must be a finite number, got {value}")
        if self.max_items is not None and len(value) > self.max_items:
            raise ValueError(
                f"{self.name} has {len(value)} entries: at most {self.max_items} are allowed"
            )
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.name} must be one of {list(self.choices)}, got {value!r}")
        low, high = self.minimum, self.maximum
        below = low is not None and (value <= low if self.min_open else value < low)
        above = high is not None and (value >= high if self.max_open else value > high)
        if below or above:
            raise ValueError(f"{self.name} must be {self.constraints.split(';')[0]}, got {value}")


def _number(value: float) -> str:
    """``4294967295`` rather than ``4.29497e+09`` for whole numbers; ``0.01`` as it is."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _setting(
    default: Any,
    doc: str,
    *,
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    rebuild: bool = False,
) -> Any:
    """A dataclass field whose metadata holds everything :class:`FieldSpec` reports."""
    meta = {
        "doc": doc,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "min_open": min_open,
        "max_open": max_open,
        "rebuild": rebuild,
    }
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class SegmenterConfig:
    """All settings of a :class:`~ovseg_ros.segmentation.segmenter.Segmenter`.

    Unknown keys are an error (``from_dict``); ``None`` means "the method's official default".
    """

    # Models and weights (changing any of them builds a new segmenter).
    method: str = _setting("pearl", "Segmentation method.", choices=METHODS, rebuild=True)
    preset: str = _setting(
        "full",
        "Models: real weights (full), tiny random ones for tests (tiny), or the real "
        "architectures with random weights for timing (random).",
        choices=PRESETS,
        rebuild=True,
    )
    device: str = _setting(
        "auto", "Torch device: auto (cuda if available), cpu, cuda, cuda:N.", rebuild=True
    )
    dtype: str = _setting(
        "fp32",
        "Backbone precision (propagation always runs in fp32).",
        choices=DTYPES,
        rebuild=True,
    )
    clip_model: str = _setting("ViT-B-16", "open_clip model name.", rebuild=True)
    clip_pretrained: str | None = _setting(
        None,
        "open_clip pretrained tag (pearl: openai; lposs, maskclip: laion2b_s34b_b88k).",
        rebuild=True,
    )
    clip_weights: str = _setting(
        "",
        "Local CLIP weights file (.safetensors preferred); overrides clip_pretrained.",
        rebuild=True,
    )
    dino_model: str = _setting(
        "vit_base_patch16_224.dino", "timm DINO model name (lposs, lposs_plus).", rebuild=True
    )
    dino_weights: str = _setting(
        "", "Local DINO weights file (.safetensors); '' = Hugging Face cache.", rebuild=True
    )
    allow_download: bool = _setting(
        False, "Download missing weights when building (needs network).", rebuild=True
    )
    weights_cache_dir: str = _setting(
        "", "Where downloaded weights live; '' = the Hugging Face hub cache.", rebuild=True
    )
    text_cache_dir: str = _setting(
        "",
        "Disk cache of class-name embeddings; '' = ~/.cache/ovseg_ros/text, 'none' = off.",
        rebuild=True,
    )
    templates: str = _setting(
        "imagenet80",
        "Prompt templates: CLIP's 80 ImageNet ones, or 'a photo of a {}.'.",
        choices=TEMPLATES,
        rebuild=True,
    )
    seed: int = _setting(
        0,
        "Seed of the tiny and random presets' weights.",
        minimum=0,
        maximum=2**32 - 1,
        rebuild=True,
    )

    # Image geometry.
    short_side: int | None = _setting(
        None, "Resize so the image's short side is this (0 = keep size).", minimum=0, maximum=2048
    )
    max_long_side: int = _setting(
        2048, "Upper bound of the long side after resizing.", minimum=32, maximum=4096
    )  # mmseg's Resize(scale=(2048, short_side), keep_ratio=True)
    window_size: int = _setting(
        224,
        "Sliding window size in pixels (ViT-B/16 was trained at 224).",
        minimum=32,
        maximum=1024,
    )
    window_stride: int = _setting(
        112,
        "Sliding window stride in pixels: from a quarter of window_size (at most 16 windows "
        "cover a pixel) to window_size.",
        minimum=8,
        maximum=1024,
    )
    whole_image: bool = _setting(
        False, "One forward pass over the whole image instead of windows (PEARL on VOC)."
    )

    # Scores -> probabilities.
    logit_scale: float = _setting(
        40.0,
        "Probabilities = softmax(logit_scale * cosine).",
        minimum=0.0,
        maximum=1000.0,
        min_open=True,
    )
    prob_threshold: float = _setting(
        0.0,
        "Pixels whose best class's probability is below this are unlabeled: 255 / 65535 in "
        "the node's and replay's label images, entry 0 (background) in evaluation.",
        minimum=0.0,
        maximum=1.0,
    )

    # PEARL: Procrustes-aligned attention in the last block.
    alpha_kk: float = _setting(
        0.08,
        "PEARL: weight of the key-key attention term (0.3 outdoors).",
        minimum=0.0,
        maximum=10.0,
    )
    use_kk: bool = _setting(True, "PEARL: add the key-key attention term.")
    procrustes_solver: str = _setting(
        "polar", "PEARL: orthogonal factor solver (Newton-Schulz or SVD).", choices=SOLVERS
    )
    polar_iters: int = _setting(
        5,
        "PEARL: Newton-Schulz iterations (quadratic convergence: more than a few dozen change "
        "nothing).",
        minimum=0,
        maximum=50,
    )

    # PEARL: text-aware Laplacian propagation (a refiner usable after any method).
    tlp: bool | None = _setting(None, "Text-aware Laplacian propagation (pearl: on).")
    tlp_grid: int = _setting(80, "TLP: grid size (224 for Cityscapes).", minimum=8, maximum=512)
    tlp_iters: int = _setting(25, "TLP: conjugate-gradient steps.", minimum=0, maximum=200)

    # LPOSS: one kNN graph over the patches of all windows.
    lposs_k: int = _setting(400, "LPOSS: nearest neighbours per patch.", minimum=1, maximum=1000)
    lposs_gamma: float = _setting(3.0, "LPOSS: similarity exponent.", minimum=0.0, maximum=10.0)
    lposs_sigma: float = _setting(
        0.01, "LPOSS: spatial decay per pixel.", minimum=0.0, maximum=10.0
    )
    lposs_alpha: float = _setting(
        0.95, "LPOSS: propagation strength.", minimum=0.0, maximum=1.0, max_open=True
    )
    lposs_iters: int = _setting(10, "LPOSS: conjugate-gradient steps.", minimum=0, maximum=200)

    # LPOSS+: pixel-level propagation (a refiner usable after any method).
    pixel_refine: bool | None = _setting(None, "LPOSS+ pixel-level refinement (lposs_plus: on).")
    pixel_radius: int = _setting(
        6,
        "LPOSS+: neighbourhood radius (6 -> 13x13; the stencil is tested up to 8).",
        minimum=0,
        maximum=8,
    )
    pixel_tau: float = _setting(
        0.01, "LPOSS+: colour distance temperature.", minimum=0.0, maximum=10.0, min_open=True
    )
    pixel_alpha: float = _setting(
        0.95, "LPOSS+: propagation strength.", minimum=0.0, maximum=1.0, max_open=True
    )
    pixel_iters: int = _setting(10, "LPOSS+: conjugate-gradient steps.", minimum=0, maximum=200)

    # Backbone acceleration (segmentation/accel.py): off until measured faster on the GPU used.
    compile: bool = _setting(
        False,
        "torch.compile the backbone for the fixed window batch (first frame compiles, slow); "
        "falls back to eager with a warning if compiling fails.",
        rebuild=True,
    )
    cuda_graphs: bool = _setting(
        False,
        "Replay the backbone's fixed-shape window batch as a CUDA graph (CUDA only; "
        "elsewhere, or if capture fails, eager with a warning).",
        rebuild=True,
    )

    # Tiny preset sizes (random weights, same architectures).
    tiny_width: int = _setting(
        64,
        "Tiny preset: transformer width (a multiple of 32).",
        minimum=32,
        maximum=1024,
        rebuild=True,
    )
    tiny_layers: int = _setting(
        2, "Tiny preset: transformer layers.", minimum=1, maximum=24, rebuild=True
    )

    def __post_init__(self) -> None:
        for spec in field_specs():
            spec.check(getattr(self, spec.name))
        if self.window_stride > self.window_size:
            raise ValueError("window_stride must not exceed window_size (windows would leave gaps)")
        if 4 * self.window_stride < self.window_size:
            raise ValueError(
                f"window_stride must be at least a quarter of window_size "
                f"({-(-self.window_size // 4)} for {self.window_size}): smaller strides multiply "
                "the windows without changing the result much"
            )
        if self.tiny_width % 32:
            raise ValueError(f"tiny_width must be a multiple of 32, got {self.tiny_width}")

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SegmenterConfig:
        """Build from a mapping; unknown keys raise ``ValueError`` naming them."""
        return cls().replace(**values)

    def replace(self, **changes: Any) -> SegmenterConfig:
        known = self.field_names()
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ValueError(f"unknown SegmenterConfig keys: {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **{k: _coerce(k, v) for k, v in changes.items()})

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.field_names()}

    def resolved(self) -> SegmenterConfig:
        """Fill every ``None`` with the method's official default and pick the device."""
        defaults = method_spec(self.method).defaults
        changes = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        if self.device == "auto":
            import torch

            changes["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        return dataclasses.replace(self, **changes) if changes else self


@functools.cache
def field_specs() -> tuple[FieldSpec, ...]:
    """One :class:`FieldSpec` per :class:`SegmenterConfig` field, in declaration order."""
    hints = typing.get_type_hints(SegmenterConfig)
    specs = []
    for f in fields(SegmenterConfig):
        kind, optional = _base_type(hints[f.name])
        if kind not in FIELD_TYPES:
            raise TypeError(f"SegmenterConfig.{f.name}: unsupported type {hints[f.name]}")
        specs.append(FieldSpec(f.name, kind, f.default, optional=optional, **f.metadata))
    return tuple(specs)


def field_spec(name: str) -> FieldSpec:
    """The :class:`FieldSpec` of field ``name`` (``KeyError`` if there is none)."""
    return _specs_by_name()[name]


@functools.cache
def _specs_by_name() -> dict[str, FieldSpec]:
    return {spec.name: spec for spec in field_specs()}


def _base_type(hint: Any) -> tuple[Any, bool]:
    """``int | None`` -> ``(int, True)``; ``float`` -> ``(float, False)``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


# Settings that shape the models or the text cache: changing them needs a new Segmenter.
# Every other field is an inference knob that ``Segmenter.update_config`` changes at runtime.
REBUILD_FIELDS = frozenset(spec.name for spec in field_specs() if spec.rebuild)

_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
_UNSET_WORDS = ("", "auto", "default")


def _coerce(name: str, value: Any) -> Any:
    """Accept the loose types YAML and ROS parameters produce (int for float, '' for None)."""
    spec = _specs_by_name().get(name)
    if spec is None:
        return value
    if spec.optional and (value is None or value == spec.unset or value in _UNSET_WORDS):
        return None
    if spec.type is bool:
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a boolean, got {value!r}")
        return value
    if spec.type is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if not float(value).is_integer():
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if spec.type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        return float(value)
    if spec.type is str and not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    return value
