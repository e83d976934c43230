"""PEARL: Procrustes-aligned attention and text-aware Laplacian propagation (TLP).

Both functions are pure: tensors in, tensors out. They follow the PEARL paper and agree with
the official implementation on identical inputs, including its exact choices:

* the Procrustes weights are the query norms with the CLS token's weight set to zero,
  normalised with a 1e-6 guard; Newton–Schulz runs on ``K_c^T Q_c`` scaled by its Frobenius
  norm with a 1e-6 ridge;
* TLP's "text agreement" ``p^T G p`` uses only the diagonal of ``G`` (the official einsum
  ``'cc,bcij->bcij'`` reads the diagonal), the image-gradient term is normalised by the mean
  over the whole batch, and the 25 CG steps start from the logits, with one inner product
  over all classes of an image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .cg import conjugate_gradient

_EPS = 1e-6


def polar_factor(m: torch.Tensor, *, solver: str = "polar", iters: int = 5) -> torch.Tensor:
    """Orthogonal polar factor ``R = U V^T`` of ``m = U S V^T``.

    Args:
        m: ``[B, d, d]`` matrices.
        solver: ``"svd"`` (exact) or ``"polar"`` (``iters`` coupled Newton–Schulz steps on
            ``m^T m``, SVD-free and GPU friendly; PEARL's default).
    Returns:
        ``[B, d, d]``.
    """
    if solver == "svd":
        u, _, vh = torch.linalg.svd(m, full_matrices=False)
        return u @ vh
    if solver != "polar":
        raise ValueError(f"solver must be 'polar' or 'svd', got {solver!r}")
    eye = torch.eye(m.shape[-1], device=m.device, dtype=m.dtype).expand_as(m)
    gram = m.transpose(-1, -2) @ m
    norm = torch.linalg.matrix_norm(gram).clamp_min(_EPS)[:, None, None]
    # Newton–Schulz for the inverse square root of the scaled Gram matrix (Higham's iteration):
    # y -> a^(1/2), z -> a^(-1/2); then R = m (m^T m)^(-1/2).
    y = gram / norm + _EPS * eye
    z = eye
    for _ in range(iters):
        t = 0.5 * (3.0 * eye - z @ y)
        y = y @ t
        z = t @ z
    return m @ (z / norm.sqrt())


def procrustes_rotation(
    q: torch.Tensor, k: torch.Tensor, *, solver: str = "polar", iters: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation aligning keys to queries, and the centred keys.

    Args:
        q, k: ``[BH, T, d]``; token 0 is the CLS token (given zero weight).
    Returns:
        ``R`` ``[BH, d, d]`` minimising ``||K_c R - Q_c||_F`` over orthogonal matrices, and
        ``K_c`` ``[BH, T, d]`` (keys minus their query-norm-weighted mean).
    """
    weights = q.norm(dim=-1, keepdim=True)
    weights[:, :1] = 0.0
    weights = weights / (weights.sum(dim=1, keepdim=True) + _EPS)
    q_centred = q - (weights * q).sum(dim=1, keepdim=True)
    k_centred = k - (weights * k).sum(dim=1, keepdim=True)
    cross = k_centred.transpose(1, 2) @ q_centred
    return polar_factor(cross, solver=solver, iters=iters), k_centred


def procrustes_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    alpha_kk: float = 0.08,
    solver: str = "polar",
    iters: int = 5,
) -> torch.Tensor:
    """Self-attention with Procrustes-aligned keys (PEARL, Eq. of the PA block).

    ``softmax((Q (K R)^T + alpha_kk K_c K_c^T) / sqrt(d)) V``, computed in fp32. Both score
    terms are folded into one fused scaled-dot-product attention by concatenating features:
    ``[Q, sqrt(a) K_c] [K R, sqrt(a) K_c]^T = Q (K R)^T + a K_c K_c^T``.

    Args:
        q, k, v: ``[B*heads, T, d]``; token 0 is the CLS token.
        alpha_kk: weight of the key-key term (0.08; 0.3 for ADE20K and Cityscapes).
    Returns:
        ``[B*heads, T, d]`` in the dtype of ``q``.
    """
    if alpha_kk < 0:
        raise ValueError(f"alpha_kk must be >= 0, got {alpha_kk}")
    out_dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()
    rotation, k_centred = procrustes_rotation(q, k, solver=solver, iters=iters)
    out = attend(q, k @ rotation, k_centred, v, alpha_kk=alpha_kk, fused=q.is_cuda)
    return out.to(out_dtype)


def attend(
    q: torch.Tensor,
    k_aligned: torch.Tensor,
    k_centred: torch.Tensor,
    v: torch.Tensor,
    *,
    alpha_kk: float,
    fused: bool,
) -> torch.Tensor:
    """``softmax((Q K_a^T + alpha_kk K_c K_c^T) / sqrt(d)) V`` for ``[BH, T, d]`` inputs.

    ``fused``: one scaled-dot-product-attention call on concatenated features (a fused
    kernel on the GPU); otherwise two batched matmuls, which is faster on the CPU.
    """
    scale = q.shape[-1] ** -0.5
    if fused:
        if alpha_kk > 0:
            root = math.sqrt(alpha_kk)
            q = torch.cat([q, root * k_centred], dim=-1)
            k_aligned = torch.cat([k_aligned, root * k_centred], dim=-1)
        return F.scaled_dot_product_attention(
            q[:, None], k_aligned[:, None], v[:, None], scale=scale
        )[:, 0]
    if alpha_kk > 0:
        key_key = torch.bmm(k_centred, k_centred.transpose(1, 2))
        scores = torch.baddbmm(
            key_key, q, k_aligned.transpose(1, 2), beta=alpha_kk * scale, alpha=scale
        )
    else:
        scores = torch.bmm(q, k_aligned.transpose(1, 2)).mul_(scale)
    return torch.bmm(torch.softmax(scores, dim=-1), v)


# --- text-aware Laplacian propagation ---------------------------------------------------------


def text_prior(text_embeddings: torch.Tensor, *, temperature: float = 0.5, boost: float = 10.0):
    """Class-relation prior ``G = rownorm(softmax(T T^T / temperature) + boost I)``.

    Args:
        text_embeddings: ``[C, D]`` (normalised here).
    Returns:
        ``[C, C]``.
    """
    t = F.normalize(text_embeddings.float(), dim=-1)
    g = torch.softmax(t @ t.T / temperature, dim=1)
    g = g + boost * torch.eye(g.shape[0], device=g.device, dtype=g.dtype)
    return g / (g.sum(dim=1, keepdim=True) + _EPS)


def tlp_pool_factors(h: int, w: int, grid: int) -> tuple[int, int]:
    """Average-pooling kernel (= stride) ``(sh, sw)`` that takes an ``h x w`` map to about
    ``grid x grid`` cells; ``(1, 1)`` means TLP works at full resolution."""
    return max(1, round(h / grid)), max(1, round(w / grid))


def _laplacian(x: torch.Tensor, w_h: torch.Tensor, w_v: torch.Tensor) -> torch.Tensor:
    """Weighted 4-neighbour graph Laplacian ``L x`` on a grid (no wrap-around).

    x ``[B, C, H, W]``; w_h ``[B, 1, H, W-1]`` edge weights (i, j)-(i, j+1); w_v ``[B, 1, H-1, W]``.
    """
    flow_h = w_h * (x[..., :, 1:] - x[..., :, :-1])
    flow_v = w_v * (x[..., 1:, :] - x[..., :-1, :])
    out = torch.zeros_like(x)
    out[..., :, 1:] += flow_h
    out[..., :, :-1] -= flow_h
    out[..., 1:, :] += flow_v
    out[..., :-1, :] -= flow_v
    return out


def text_aware_propagation(
    image: torch.Tensor,
    logits: torch.Tensor,
    text_embeddings: torch.Tensor,
    *,
    grid: int = 80,
    iters: int = 25,
    edge_scale: float = 5.0,
    min_confidence: float = 0.05,
) -> torch.Tensor:
    """PEARL's TLP: refine dense logits by a text-aware, confidence-weighted Laplacian solve.

    On a grid of about ``grid x grid`` cells (average pooling, ``tlp_pool_factors``), then
    ``tlp_solve``, then upsampled back to the input size.

    Args:
        image: ``[B, 3, H, W]`` the image as fed to the model (CLIP-normalised RGB).
        logits: ``[B, C, H, W]`` raw cosine similarities.
        text_embeddings: ``[C, D]`` class embeddings, one per logit channel.
    Returns:
        refined logits ``[B, C, H, W]`` in the dtype of ``logits``.
    """
    b, c, h, w = logits.shape
    if image.shape[0] != b or image.shape[-2:] != (h, w):
        raise ValueError(f"image {tuple(image.shape)} does not match logits {tuple(logits.shape)}")
    out_dtype = logits.dtype
    sh, sw = tlp_pool_factors(h, w, grid)
    img_s, log_s = image.float(), logits.float()
    if sh > 1 or sw > 1:
        img_s = F.avg_pool2d(img_s, (sh, sw), stride=(sh, sw))
        log_s = F.avg_pool2d(log_s, (sh, sw), stride=(sh, sw))
    refined = tlp_solve(
        img_s,
        log_s,
        text_embeddings,
        iters=iters,
        edge_scale=edge_scale,
        min_confidence=min_confidence,
    )
    if sh > 1 or sw > 1:
        refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)
    return refined.to(out_dtype)


def tlp_solve(
    image: torch.Tensor,
    logits: torch.Tensor,
    text_embeddings: torch.Tensor,
    *,
    iters: int = 25,
    edge_scale: float = 5.0,
    min_confidence: float = 0.05,
) -> torch.Tensor:
    """TLP's solve on the (already pooled) grid, without the final upsampling.

    With ``p = softmax(logits)``: data weight ``rho = max(max_c p, 0.05)^2 (1 + agree(p, p))``,
    4-neighbour edge weights ``clamp(exp(-5 |grad gray| / mean|grad gray|) (1 +
    agree(p_i, p_j)), 0, 1)``, and ``(diag(rho) + L) F = rho Z`` solved by ``iters`` CG steps
    from ``Z``. The official code runs one image at a time and normalises the gradients by
    their mean over the batch; for ``B > 1`` the mean is taken per image, so every image of a
    batch is refined exactly as it would be alone.

    Args:
        image: ``[B, 3, h, w]`` pooled CLIP-normalised image (float32).
        logits: ``[B, C, h, w]`` pooled logits (float32).
        text_embeddings: ``[C, D]``.
    Returns:
        refined logits ``[B, C, h, w]`` float32.
    """
    b, c, h, w = logits.shape
    if image.shape[0] != b or image.shape[-2:] != (h, w):
        raise ValueError(f"image {tuple(image.shape)} does not match logits {tuple(logits.shape)}")
    if text_embeddings.shape[0] != c:
        raise ValueError(f"{text_embeddings.shape[0]} text embeddings for {c} logit channels")
    prior_diag = torch.diagonal(text_prior(text_embeddings.to(logits.device)))[None, :, None, None]
    img_s, log_s = image.float(), logits.float()

    probs = torch.softmax(log_s, dim=1)
    weighted = prior_diag * probs  # the diagonal of G acting on p (see module docstring)
    agree = (probs * weighted).sum(dim=1, keepdim=True).clamp(0.0, 1.0)
    rho = probs.amax(dim=1, keepdim=True).clamp_min(min_confidence).square() * (1.0 + agree)

    if img_s.shape[1] == 3:
        gray = 0.299 * img_s[:, 0:1] + 0.587 * img_s[:, 1:2] + 0.114 * img_s[:, 2:3]
    else:
        gray = img_s[:, :1]
    grad_h = (gray[..., :, 1:] - gray[..., :, :-1]).abs()
    grad_v = (gray[..., 1:, :] - gray[..., :-1, :]).abs()
    # Normalise first, then scale: the official order of operations. CG amplifies one-ulp
    # differences in the weights, so the order matters for bit-level agreement.
    edge_h = torch.exp(-edge_scale * (grad_h / (_mean_per_image(grad_h) + _EPS)))
    edge_v = torch.exp(-edge_scale * (grad_v / (_mean_per_image(grad_v) + _EPS)))
    gate_h = (probs[..., :, 1:] * weighted[..., :, :-1]).sum(dim=1, keepdim=True).clamp(0.0, 1.0)
    gate_v = (probs[..., 1:, :] * weighted[..., :-1, :]).sum(dim=1, keepdim=True).clamp(0.0, 1.0)
    w_h = (edge_h * (1.0 + gate_h)).clamp(0.0, 1.0)
    w_v = (edge_v * (1.0 + gate_v)).clamp(0.0, 1.0)

    return conjugate_gradient(
        lambda x: rho * x + _laplacian(x, w_h, w_v),
        rho * log_s,
        x0=log_s,
        iters=iters,
        reduce_dims=(1, 2, 3),
        eps=1e-12,
    )


def _mean_per_image(x: torch.Tensor) -> torch.Tensor:
    """Mean over all elements for one image (the official reduction, bit for bit), else per
    image ``[B, 1, 1, 1]``."""
    if x.shape[0] == 1:
        return x.mean()
    return x.mean(dim=(1, 2, 3), keepdim=True)
