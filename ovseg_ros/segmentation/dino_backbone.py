"""DINO ViT through timm: building (real or tiny) and the last block's value features.

LPOSS builds its patch graph from the value features of DINO ViT-B/16's last attention block.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone_check import DINO_PARTS, check_structure
from .clip_backbone import _torch_dtype, interpolate_pos_embed
from .weights import dino_source, loading, resolve

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_dino(config) -> nn.Module:
    """Build the DINO ViT a resolved :class:`SegmenterConfig` asks for, on its device.

    ``preset="full"``: timm's ``dino_model`` with weights from ``dino_weights`` or the hub cache.
    ``preset="tiny"``: the same timm factory with a tiny width/depth and seeded random weights.
    ``preset="random"``: the real architecture with seeded random weights (benchmarks).
    """
    import timm

    if config.preset == "tiny":
        width = config.tiny_width
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 1)
            model = timm.create_model(
                config.dino_model,
                pretrained=False,
                num_classes=0,
                embed_dim=width,
                depth=config.tiny_layers,
                num_heads=max(1, width // 32),
            )
    elif config.preset == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 1)
            model = timm.create_model(config.dino_model, pretrained=False, num_classes=0)
    else:
        path = resolve(
            dino_source(config.dino_model),
            config.dino_weights,
            config.weights_cache_dir,
            config.allow_download,
            "dino_weights",
        )
        model = timm.create_model(config.dino_model, pretrained=False, num_classes=0)
        with loading(path, f"DINO {config.dino_model}"):  # one line, not a traceback
            _load_state(model, path)
    check_structure(model, DINO_PARTS, "timm", f"DINO {config.dino_model}")
    model.eval().requires_grad_(False)
    return model.to(device=config.device, dtype=_torch_dtype(config.dtype))


def _load_state(model: nn.Module, path: str) -> None:
    """Load a timm or original-DINO checkpoint safely (safetensors or ``weights_only``)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "teacher"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
        state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    state = checkpoint_filter_fn(state, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head")]
    unexpected = [k for k in unexpected if not k.startswith("head")]
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit {type(model).__name__}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )


def dino_value_features(
    model: nn.Module, images: torch.Tensor
) -> tuple[torch.Tensor, tuple[int, int]]:
    """L2-normalised value features of the last block's attention, one per patch.

    Args:
        images: ``[B, 3, H, W]`` ImageNet-normalised, ``H`` and ``W`` multiples of the patch.
    Returns:
        ``[B, h*w, C]`` float32 and the grid ``(h, w)``.
    """
    embed = model.patch_embed
    x = embed.proj(images.to(embed.proj.weight.dtype))
    grid = (x.shape[-2], x.shape[-1])
    x = embed.norm(x.flatten(2).transpose(1, 2))
    cls = model.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)
    x = torch.cat([cls, x], dim=1)
    x = x + interpolate_pos_embed(model.pos_embed[0], grid, pearl_style=True).to(x.dtype)
    x = model.norm_pre(model.pos_drop(x))
    for block in model.blocks[:-1]:
        x = block(x)
    last = model.blocks[-1]
    c = x.shape[-1]
    # The qkv projection's last third is the value projection.
    qkv = last.attn.qkv
    bias = qkv.bias[2 * c :] if qkv.bias is not None else None
    value = F.linear(last.norm1(x), qkv.weight[2 * c :], bias)
    return F.normalize(value[:, 1:].float(), dim=-1), grid
