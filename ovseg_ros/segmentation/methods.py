"""The method table: what each segmentation method is made of, in one record per method.

Code that behaves differently per method asks its record (``method_spec(name).needs_dino``)
instead of comparing method names, so adding a method means adding a row here.
Defaults follow the official code (PGSmall/PEARL configs, vladan-stojnic/LPOSS configs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


def _frozen(values: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(values))


@dataclass(frozen=True)
class Method:
    """One segmentation method.

    ``scorer``: how the initial per-window patch scores are computed: ``"pearl"``
    (Procrustes-aligned attention in the last CLIP block) or ``"maskclip"`` (the value path
    of the last block). ``patch_graph``: the scores are propagated over one DINO kNN graph of
    all windows' patches (LPOSS), which needs the DINO backbone. ``pad_windows``: crops are
    zero-padded to a multiple of the patch size (LPOSS / MaskCLIP); otherwise the partial last
    patch is dropped (PEARL). ``defaults``: values of the config fields left at ``None``
    (including which refiners run: ``tlp``, ``pixel_refine``). ``benchmark``: whose official
    benchmark protocol applies (class-name lists and dataset settings): ``"pearl"`` or
    ``"lposs"``.
    """

    name: str
    title: str
    scorer: str
    patch_graph: bool
    pad_windows: bool
    defaults: Mapping[str, Any] = field(default_factory=dict)
    benchmark: str = "lposs"

    @property
    def needs_dino(self) -> bool:
        return self.patch_graph

    @property
    def clip_pretrained(self) -> str:
        """The open_clip pretrained tag of the official weights."""
        return str(self.defaults["clip_pretrained"])

    @property
    def refiners(self) -> tuple[str, ...]:
        """The refiners on by default, in the order they run."""
        return tuple(name for name in ("pixel_refine", "tlp") if self.defaults.get(name))


_LPOSS_DEFAULTS = {"short_side": 448, "clip_pretrained": "laion2b_s34b_b88k", "tlp": False}

METHOD_TABLE: Mapping[str, Method] = _frozen(
    {
        m.name: m
        for m in (
            Method(
                name="pearl",
                title="PEARL (Procrustes attention + text-aware Laplacian propagation)",
                scorer="pearl",
                patch_graph=False,
                pad_windows=False,
                defaults=_frozen(
                    {
                        "short_side": 336,
                        "clip_pretrained": "openai",
                        "tlp": True,
                        "pixel_refine": False,
                    }
                ),
                benchmark="pearl",
            ),
            Method(
                name="maskclip",
                title="MaskCLIP (LPOSS's initial predictions, no propagation)",
                scorer="maskclip",
                patch_graph=False,
                pad_windows=True,
                defaults=_frozen({**_LPOSS_DEFAULTS, "pixel_refine": False}),
            ),
            Method(
                name="lposs",
                title="LPOSS (MaskCLIP + patch-level label propagation over a DINO graph)",
                scorer="maskclip",
                patch_graph=True,
                pad_windows=True,
                defaults=_frozen({**_LPOSS_DEFAULTS, "pixel_refine": False}),
            ),
            Method(
                name="lposs_plus",
                title="LPOSS+ (LPOSS + pixel-level propagation)",
                scorer="maskclip",
                patch_graph=True,
                pad_windows=True,
                defaults=_frozen({**_LPOSS_DEFAULTS, "pixel_refine": True}),
            ),
        )
    }
)
METHODS: tuple[str, ...] = tuple(METHOD_TABLE)

# Dataset settings of the official evaluations, per benchmark protocol. PEARL: its
# configs/cfg_*.py; LPOSS evaluates every dataset with 448 short side, 224/112 windows and a
# plain argmax.
_PEARL_DATASETS: Mapping[str, Mapping[str, Any]] = _frozen(
    {
        "voc21": {"whole_image": True, "prob_threshold": 0.1},
        "voc20": {"whole_image": True},
        "context60": {"prob_threshold": 0.1},
        "context59": {},
        "coco_object": {"prob_threshold": 0.1},
        "coco_stuff": {},
        "cityscapes": {"alpha_kk": 0.3, "tlp_grid": 224, "short_side": 560},
        "ade20k": {"alpha_kk": 0.3},
    }
)
DATASETS: tuple[str, ...] = tuple(_PEARL_DATASETS)
_PROTOCOLS: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Mapping[str, Any]]]] = _frozen(
    {
        "pearl": ({"short_side": 336}, _PEARL_DATASETS),
        "lposs": ({"short_side": 448, "whole_image": False, "prob_threshold": 0.0}, {}),
    }
)


def method_spec(name: str) -> Method:
    """The record of method ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return METHOD_TABLE[name]
    except (KeyError, TypeError):
        raise ValueError(f"method must be one of {list(METHODS)}, got {name!r}") from None


def dataset_preset(dataset: str, method: str) -> dict[str, Any]:
    """Config overrides that reproduce ``method``'s official evaluation setting on ``dataset``."""
    if dataset not in _PEARL_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {list(DATASETS)}")
    base, per_dataset = _PROTOCOLS[method_spec(method).benchmark]
    return {**base, **per_dataset.get(dataset, {})}
