"""A build-time check that open_clip / timm gave us the model structure our backbone code uses.

The dense-feature code reaches into the models' internals (open_clip's ``resblocks`` and
``attn.in_proj_weight``, timm's ``blocks`` and ``attn.qkv``). Both packages are pinned to the
release series we test (``SUPPORTED``, mirrored in setup.py); should a release inside or
outside that range rename a part, building fails at once with one error naming the package,
its version and every missing part, instead of an ``AttributeError`` on the first frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata

import torch.nn as nn

# Tested release series (setup.py's install_requires carries the same ranges).
SUPPORTED = {"open_clip_torch": ">=3.0,<4", "timm": ">=1.0,<2"}

# Dotted paths from the CLIP model; "[-1]" indexes the last element of a sequence.
CLIP_PARTS: tuple[str, ...] = (
    "encode_text",
    "visual.conv1.weight",
    "visual.class_embedding",
    "visual.positional_embedding",
    "visual.ln_pre",
    "visual.transformer.resblocks[-1].ln_1",
    "visual.transformer.resblocks[-1].ln_2",
    "visual.transformer.resblocks[-1].mlp",
    "visual.transformer.resblocks[-1].attn.in_proj_weight",
    "visual.transformer.resblocks[-1].attn.in_proj_bias",
    "visual.transformer.resblocks[-1].attn.out_proj",
    "visual.transformer.resblocks[-1].attn.num_heads",
    "visual.ln_post",
    "visual.proj",
    "visual.patch_size",
)

# Dotted paths from the timm VisionTransformer (DINO).
DINO_PARTS: tuple[str, ...] = (
    "patch_embed.proj.weight",
    "patch_embed.norm",
    "cls_token",
    "pos_embed",
    "pos_drop",
    "norm_pre",
    "blocks[-1].norm1",
    "blocks[-1].attn.qkv.weight",
    "blocks[-1].attn.qkv.bias",
)


class BackboneStructureError(RuntimeError):
    """The installed open_clip / timm built a model without the parts our code uses."""


def missing_parts(model: nn.Module, parts: Sequence[str]) -> list[str]:
    """The entries of ``parts`` that ``model`` lacks (an empty list when all are there).

    A part whose value is ``None`` (``visual.proj``, a bias) exists; an empty block list
    has no ``[-1]``.
    """
    return [path for path in parts if not _exists(model, path)]


def check_structure(model: nn.Module, parts: Sequence[str], package: str, what: str) -> None:
    """Raise :class:`BackboneStructureError` naming ``package``'s version and every missing
    part when ``model`` (``what``, e.g. "CLIP ViT-B-16") lacks one of ``parts``."""
    missing = missing_parts(model, parts)
    if missing:
        raise BackboneStructureError(
            f"{package} {package_version(package)} built {what} ({type(model).__name__}) "
            f"without parts ovseg_ros uses: {', '.join(missing)}. ovseg_ros is tested with "
            f"{package}{SUPPORTED[package]}; install a release in that range "
            f"(pip install '{package}{SUPPORTED[package]}')."
        )


def package_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def _exists(node: object, path: str) -> bool:
    for name in path.split("."):
        last = name.endswith("[-1]")
        name = name.removesuffix("[-1]")
        if not hasattr(node, name):
            return False
        node = getattr(node, name)
        if last:
            try:
                node = node[-1]
            except (TypeError, IndexError, KeyError):
                return False
    return True
