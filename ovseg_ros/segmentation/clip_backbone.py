"""CLIP through open_clip: building (real or tiny), dense patch features and text embeddings.

Dense features come from two variants of the last visual block:

* PEARL "reduced" block: ``out_proj(PA-attention(ln_1(x)))`` only (no residual, no MLP),
  then ``ln_post`` on every token and the visual projection.
* MaskCLIP value path (as LPOSS's MaskCLIP computes it): ``v = out_proj(v_proj(ln_1(x))) + x``,
  ``v = v + mlp(ln_2(v))``, then ``ln_post`` and the projection.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone_check import CLIP_PARTS, check_structure
from .pearl import procrustes_attention
from .weights import (
    WeightsNotFoundError,
    clip_needs_quick_gelu,
    clip_source,
    loading,
    resolve,
)

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TEXT_BATCH = 1024  # prompts per text forward pass (templates x names): bounds its memory


@dataclass
class ClipBundle:
    """A CLIP model, its tokenizer and a key naming its weights (for the text cache)."""

    model: nn.Module
    tokenizer: object
    weights_key: str
    patch_size: int
    pretrained: str | None = None  # the pretrained tag whose weights were loaded


def tiny_clip_kwargs(width: int, layers: int) -> dict:
    """open_clip config overrides for a tiny CLIP with ViT-B/16's layout (224 px, 16 px patches)."""
    return {
        "embed_dim": width // 2,
        "vision_cfg": {
            "image_size": 224,
            "layers": layers,
            "width": width,
            "head_width": 32,
            "patch_size": 16,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": width,
            "heads": max(1, width // 32),
            "layers": layers,
        },
    }


class _NoRandomInitWarning(logging.Filter):
    """open_clip warns on the root logger whenever it builds without weights, which we always
    do before loading our own (or, for the tiny preset, on purpose)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def _create_model(name: str, **kwargs) -> nn.Module:
    import open_clip

    quiet = _NoRandomInitWarning()
    logging.getLogger().addFilter(quiet)
    try:
        return open_clip.create_model(name, pretrained=None, require_pretrained=False, **kwargs)
    finally:
        logging.getLogger().removeFilter(quiet)


def build_clip(config, fallback_pretrained: tuple[str, ...] = ()) -> ClipBundle:
    """Build the CLIP model a resolved :class:`SegmenterConfig` asks for, on its device.

    ``preset="full"``: open_clip's architecture ``clip_model`` with weights from
    ``clip_weights`` or the hub cache (loaded with ``weights_only=True`` / safetensors).
    ``preset="tiny"``: the same factory with tiny widths and seeded random weights.
    ``preset="random"``: the real architecture with seeded random weights (benchmarks).
    ``fallback_pretrained``: tags tried, with a warning, when ``clip_pretrained``'s weights are
    missing and no file is named (e.g. OpenAI's weights for LPOSS when LAION's are absent).
    """
    import open_clip

    pretrained = config.clip_pretrained

    if config.preset == "tiny":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = _create_model(
                config.clip_model, **tiny_clip_kwargs(config.tiny_width, config.tiny_layers)
            )
        key = f"tiny-{config.clip_model}-w{config.tiny_width}-l{config.tiny_layers}-s{config.seed}"
    elif config.preset == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = _create_model(
                config.clip_model,
                force_quick_gelu=clip_needs_quick_gelu(config.clip_model, config.clip_pretrained),
            )
        key = f"random-{config.clip_model}-s{config.seed}"
    else:
        path, pretrained = _clip_checkpoint(config, fallback_pretrained)
        model = _create_model(
            config.clip_model,
            force_quick_gelu=clip_needs_quick_gelu(config.clip_model, pretrained),
        )
        with loading(path, f"CLIP {config.clip_model}"):  # one line, not a traceback
            open_clip.load_checkpoint(model, path, weights_only=True)
        key = f"{config.clip_model}-{pretrained}"
        if config.clip_weights:
            stat = _file_stamp(path)
            key = f"{config.clip_model}-file-{stat}"
    check_structure(model, CLIP_PARTS, "open_clip_torch", f"CLIP {config.clip_model}")
    model.eval().requires_grad_(False)
    model.to(config.device)
    # The text tower runs rarely (its outputs are cached): keep it fp32 for accurate embeddings.
    model.visual.to(dtype=_torch_dtype(config.dtype))
    patch = model.visual.patch_size
    patch = patch[0] if isinstance(patch, tuple) else patch
    tokenizer = open_clip.get_tokenizer(config.clip_model)
    return ClipBundle(model, tokenizer, key, int(patch), pretrained)


def _clip_checkpoint(config, fallback_pretrained: tuple[str, ...]) -> tuple[str, str]:
    """(weights file, pretrained tag): the configured weights, else a cached fallback tag."""
    try:
        source = clip_source(config.clip_model, config.clip_pretrained)
        path = resolve(
            source,
            config.clip_weights,
            config.weights_cache_dir,
            config.allow_download,
            "clip_weights",
        )
        return path, config.clip_pretrained
    except WeightsNotFoundError as missing:
        if config.clip_weights:
            raise
        for tag in fallback_pretrained:
            try:
                path = resolve(
                    clip_source(config.clip_model, tag), "", config.weights_cache_dir, False, ""
                )
            except WeightsNotFoundError:
                continue
            log.warning(
                "%s; using the cached %s/%s weights instead (results will differ from the "
                "official setting; run download_weights to get the intended ones)",
                missing,
                config.clip_model,
                tag,
            )
            return path, tag
        raise


def _file_stamp(path: str) -> str:
    import os

    st = os.stat(path)
    return f"{os.path.basename(path)}-{st.st_size}-{int(st.st_mtime)}"


def _torch_dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


# --- dense image features --------------------------------------------------------------------


def interpolate_pos_embed(
    pos_embed: torch.Tensor, grid: tuple[int, int], *, pearl_style: bool
) -> torch.Tensor:
    """Bicubic resize of a ViT positional embedding to a ``grid`` of patches.

    Args:
        pos_embed: ``[1 + N, C]`` with a square ``sqrt(N) x sqrt(N)`` patch grid.
        grid: target ``(h, w)``.
        pearl_style: PEARL's (and DINO's) convention, a scale factor of ``(h + 0.1) / sqrt(N)``;
            otherwise the target size directly (MaskCLIP / LPOSS).
    Returns:
        ``[1 + h*w, C]`` (unchanged when the grid already matches).
    """
    n = pos_embed.shape[0] - 1
    side = int(math.sqrt(n))
    h, w = grid
    if (h, w) == (side, side):
        return pos_embed
    patch = pos_embed[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    if pearl_style:
        patch = F.interpolate(
            patch,
            scale_factor=((h + 0.1) / side, (w + 0.1) / side),
            mode="bicubic",
            align_corners=False,
            recompute_scale_factor=False,
        )
    else:
        patch = F.interpolate(patch, size=(h, w), mode="bicubic", align_corners=False)
    patch = patch.permute(0, 2, 3, 1).reshape(h * w, -1).to(pos_embed.dtype)
    return torch.cat([pos_embed[:1], patch], dim=0)


def tokens_before_last_block(
    visual: nn.Module, images: torch.Tensor, *, pearl_style: bool
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Run the ViT up to (not including) its last block.

    Args:
        images: ``[B, 3, H, W]`` CLIP-normalised; ``H // patch x W // patch`` patches are used.
    Returns:
        tokens ``[B, 1 + h*w, C]`` (CLS first) and the patch grid ``(h, w)``.
    """
    x = visual.conv1(images.to(visual.conv1.weight.dtype))
    grid = (x.shape[-2], x.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + interpolate_pos_embed(visual.positional_embedding, grid, pearl_style=pearl_style).to(
        x.dtype
    )
    x = visual.ln_pre(x)
    blocks = visual.transformer.resblocks
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in blocks[:-1]:
        x = block(x)
    if not batch_first:
        x = x.transpose(0, 1)
    return x, grid


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, c = x.shape
    return x.reshape(b, t, heads, c // heads).transpose(1, 2).reshape(b * heads, t, c // heads)


def _merge_heads(x: torch.Tensor, batch: int) -> torch.Tensor:
    bh, t, d = x.shape
    heads = bh // batch
    return x.reshape(batch, heads, t, d).transpose(1, 2).reshape(batch, t, heads * d)


def _project(visual: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    tokens = visual.ln_post(tokens)
    return tokens @ visual.proj if visual.proj is not None else tokens


def pearl_last_block(
    visual: nn.Module,
    tokens: torch.Tensor,
    *,
    alpha_kk: float = 0.08,
    solver: str = "polar",
    iters: int = 5,
) -> torch.Tensor:
    """PEARL's reduced last block on ``tokens`` ``[B, T, C]`` (CLS first).

    ``out_proj(procrustes_attention(ln_1(x)))`` with no residual and no MLP, then ``ln_post``
    and the projection on every token.

    Returns:
        L2-normalised patch embeddings ``[B, T - 1, D]`` (float32).
    """
    block = visual.transformer.resblocks[-1]
    attn = block.attn
    z = block.ln_1(tokens)
    q, k, v = F.linear(z, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    heads = attn.num_heads
    out = procrustes_attention(
        _split_heads(q, heads),
        _split_heads(k, heads),
        _split_heads(v, heads),
        alpha_kk=alpha_kk,
        solver=solver,
        iters=iters,
    )
    out = attn.out_proj(_merge_heads(out, tokens.shape[0]).to(z.dtype))
    return F.normalize(_project(visual, out)[:, 1:].float(), dim=-1)


def maskclip_patch_features(
    visual: nn.Module, images: torch.Tensor
) -> tuple[torch.Tensor, tuple[int, int]]:
    """MaskCLIP dense features (value path of the last block, as LPOSS's MaskCLIP computes it).

    Args:
        images: ``[B, 3, H, W]`` CLIP-normalised.
    Returns:
        L2-normalised patch embeddings ``[B, h*w, D]`` and the grid ``(h, w)``.
    """
    x, grid = tokens_before_last_block(visual, images, pearl_style=False)
    block = visual.transformer.resblocks[-1]
    attn = block.attn
    c = x.shape[-1]
    value = F.linear(block.ln_1(x), attn.in_proj_weight[2 * c :], attn.in_proj_bias[2 * c :])
    v = attn.out_proj(value) + x
    v = v + block.mlp(block.ln_2(v))
    return F.normalize(_project(visual, v)[:, 1:].float(), dim=-1), grid


# --- text ------------------------------------------------------------------------------------


def prompt_templates(name: str) -> list:
    """The prompt templates: the 80 ImageNet templates of CLIP, or a single one."""
    if name == "imagenet80":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return list(OPENAI_IMAGENET_TEMPLATES)
    if name == "single":
        return [lambda c: f"a photo of a {c}."]
    raise ValueError(f"unknown templates {name!r}")


@torch.no_grad()
def encode_class_names(
    bundle: ClipBundle, names: list[str], templates: list, *, max_batch: int = TEXT_BATCH
) -> torch.Tensor:
    """Class embeddings: each template's embedding L2-normalised, averaged, normalised again.

    Returns:
        ``[len(names), D]`` float32 on the model's device.
    """
    model = bundle.model
    device = next(model.parameters()).device
    prompts = [template(name) for name in names for template in templates]
    chunks = []
    for start in range(0, len(prompts), max_batch):
        tokens = bundle.tokenizer(prompts[start : start + max_batch]).to(device)
        chunks.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    per_prompt = torch.cat(chunks).reshape(len(names), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)
