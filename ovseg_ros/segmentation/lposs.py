"""LPOSS / LPOSS+ label propagation (Stojnic et al., CVPR 2025).

Both steps solve ``(I - alpha S) Y* = Y`` per class with a few conjugate-gradient steps,
``S = D^-1/2 W D^-1/2`` the symmetrically normalised affinity (zero diagonal, degree 0
counted as 1), following the official code:

- LPOSS (patches of all sliding windows in ONE graph): ``W_ij = max(f_i.f_j, 0)^gamma *
  exp(-sigma * ||c_i - c_j||^dist_pow)`` for ``j`` among the ``k`` nearest neighbours of
  ``i`` by inner product (self included, as a kNN search returns it), then
  ``W <- W + W^T`` and the diagonal is dropped. The paper writes ``exp(-d^2 / sigma)`` with
  ``sigma = 100``; the official code (followed here) uses ``exp(-0.01 * d)``.
- LPOSS+ (pixels): every pixel linked to all pixels of its ``(2r+1) x (2r+1)`` window that
  lie inside the image, ``W_ij = exp(-||lab_i - lab_j||_2 / tau)`` with Lab scaled by
  ``(100, 128, 128)``. Applied as a stencil, never as an N x N matrix.

CG: ``x0 = 0``, at most ``iters`` steps, a class stops once ``||r|| <= tol ||b||`` (cupy's
``cg(tol=1e-6, maxiter=10)`` in the official code). The official solver runs in float64
(its ``eye`` is float64); here float32 is used unless the scores are float64 - after 10
steps of this well-conditioned system the two differ by ~1e-6 relative.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import stencil_kernel
from .cg import conjugate_gradient
from .color import rgb_to_lab

__all__ = [
    "PixelGraph",
    "knn_affinity",
    "label_propagation",
    "patch_centers",
    "patch_propagation",
    "patch_propagation_batch",
    "pixel_affinity",
    "pixel_propagation",
]

# Lab channels scaled to roughly [0, 1] before the pixel distances (official choice).
_LAB_SCALE = (100.0, 128.0, 128.0)


def _work_dtype(t: Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _inv_sqrt_degree(degree: Tensor) -> Tensor:
    """``D^-1/2`` with isolated nodes (degree 0) treated as degree 1."""
    return torch.where(degree > 0, degree, torch.ones_like(degree)).rsqrt()


def label_propagation(
    apply_s: Callable[[Tensor], Tensor],
    scores: Tensor,
    *,
    alpha: float,
    iters: int,
    tol: float,
    reduce_dims: Sequence[int],
) -> Tensor:
    """Solve ``(I - alpha S) X = scores`` by CG from ``X = 0``.

    Args:
        apply_s: ``x -> S x`` for the normalised symmetric affinity ``S`` (shape-preserving).
        scores: right-hand sides ``Y``, any shape (e.g. ``[N, C]`` or ``[C, H, W]``).
        alpha: propagation strength in ``(0, 1)``.
        iters: CG steps; tol: per-system relative tolerance (see ``conjugate_gradient``).
        reduce_dims: dims of the graph nodes (the others index independent systems).

    Returns:
        ``X`` shaped like ``scores``.
    """
    return conjugate_gradient(
        lambda x: x - alpha * apply_s(x), scores, iters=iters, tol=tol, reduce_dims=reduce_dims
    )


# --------------------------------------------------------------------------------------
# LPOSS: joint kNN graph over the patches of all windows
# --------------------------------------------------------------------------------------


def patch_centers(
    origins: Tensor | Sequence[Sequence[float]],
    grids: Sequence[Sequence[int]],
    patch_size: int = 16,
    *,
    device: torch.device | str | None = None,
) -> Tensor:
    """Pixel coordinates of the patch centres of several windows, windows concatenated.

    Window ``w`` with top-left corner ``(y1, x1)`` and a patch grid of ``h x w`` gives its
    patches in row-major order, centre ``(y1 + patch_size // 2 + patch_size * i,
    x1 + patch_size // 2 + patch_size * j)`` (as the official code computes them).

    Args:
        origins: ``[num_windows, 2]`` window corners ``(y1, x1)`` in image pixels.
        grids: ``num_windows`` pairs ``(h, w)``: the window's patch grid.
        patch_size: ViT patch size in pixels.
        device: output device (default: that of ``origins`` if a tensor, else CPU).

    Returns:
        ``[N, 2]`` float32 centres ``(y, x)``, ``N = sum(h * w)``.
    """
    if isinstance(origins, Tensor):
        device = origins.device if device is None else device
        origins = origins.detach().to("cpu", torch.float64).tolist()
    if len(origins) != len(grids):
        raise ValueError(f"{len(origins)} window origins but {len(grids)} grids")
    half = patch_size // 2
    parts = []
    for (y1, x1), (h, w) in zip(origins, grids, strict=True):
        ys = y1 + half + patch_size * torch.arange(h, dtype=torch.float32, device=device)
        xs = x1 + half + patch_size * torch.arange(w, dtype=torch.float32, device=device)
        parts.append(torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2))
    if not parts:
        return torch.zeros(0, 2, dtype=torch.float32, device=device)
    return torch.cat(parts, dim=0)


def knn_affinity(
    features: Tensor,
    centers: Tensor,
    *,
    k: int = 400,
    gamma: float = 3.0,
    sigma: float = 0.01,
    dist_pow: float = 1.0,
) -> Tensor:
    """Normalised LPOSS patch affinity ``S = D^-1/2 (W + W^T - diag) D^-1/2`` (sparse).

    The kNN is exact: a dense ``N x N`` inner-product matrix and ``topk`` on the features'
    device (a few thousand patches: cheap). ``k`` includes the node itself and is clamped
    to ``N``.

    Args:
        features: ``[N, D]`` L2-normalised patch features (used as given).
        centers: ``[N, 2]`` patch-centre pixel coordinates ``(y, x)``.
        k: neighbours per node, self included.
        gamma: exponent of the (non-negative) similarities.
        sigma: geometric decay, weight factor ``exp(-sigma * d^dist_pow)``, ``d`` in pixels.
        dist_pow: power of the pixel distance (1 in the official config).

    Returns:
        ``[N, N]`` sparse CSR tensor, symmetric, zero diagonal, in float32 (float64 for
        float64 features), on the features' device.
    """
    if features.ndim != 2 or centers.shape != (features.shape[0], 2):
        raise ValueError(
            f"expected features [N, D] and centers [N, 2], got {tuple(features.shape)} "
            f"and {tuple(centers.shape)}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    dtype = _work_dtype(features)
    feats = features.to(dtype)
    n = feats.shape[0]
    k = min(k, n)

    sims, nbrs = torch.topk(feats @ feats.T, k, dim=1)  # [N, k] each, self among them
    ctr = centers.to(device=feats.device, dtype=dtype)
    dist = (ctr[:, None, :] - ctr[nbrs]).norm(dim=-1)  # [N, k] pixel distance to neighbour
    weights = sims.clamp(min=0).pow(gamma) * torch.exp(-sigma * dist.pow(dist_pow))

    rows = torch.arange(n, device=feats.device).repeat_interleave(k)
    cols = nbrs.reshape(-1)
    vals = weights.reshape(-1)
    off_diag = rows != cols  # self-loops are removed after W + W^T anyway
    rows, cols, vals = rows[off_diag], cols[off_diag], vals[off_diag]
    # W + W^T: list every edge in both directions; coalescing sums mutual-neighbour pairs.
    w = torch.sparse_coo_tensor(
        torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])]),
        torch.cat([vals, vals]),
        (n, n),
        check_invariants=False,  # built from valid indices
    ).coalesce()
    idx, val = w.indices(), w.values()
    degree = torch.zeros(n, dtype=dtype, device=feats.device).index_add_(0, idx[0], val)
    dinv = _inv_sqrt_degree(degree)
    s = torch.sparse_coo_tensor(
        idx, val * dinv[idx[0]] * dinv[idx[1]], (n, n), is_coalesced=True, check_invariants=False
    )
    # CSR: its matmul with [N, C] is ~15x faster than COO on CPU.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return s.to_sparse_csr()


def patch_propagation(
    features: Tensor,
    scores: Tensor,
    centers: Tensor,
    *,
    k: int = 400,
    gamma: float = 3.0,
    sigma: float = 0.01,
    alpha: float = 0.95,
    iters: int = 10,
    tol: float = 1e-6,
) -> Tensor:
    """LPOSS: propagate patch scores over the joint kNN graph of all windows' patches.

    Args:
        features: ``[N, D]`` L2-normalised graph features (DINO values) of all patches.
        scores: ``[N, C]`` initial per-patch class scores (MaskCLIP logits).
        centers: ``[N, 2]`` patch-centre pixel coordinates ``(y, x)`` in the image
            (see ``patch_centers``).
        k, gamma, sigma: graph parameters (see ``knn_affinity``).
        alpha: propagation strength; iters, tol: CG steps and per-class relative tolerance.

    Returns:
        ``[N, C]`` propagated scores, dtype and device of ``scores``.
    """
    if scores.ndim != 2 or scores.shape[0] != features.shape[0]:
        raise ValueError(
            f"expected scores [N, C] with N = {features.shape[0]}, got {tuple(scores.shape)}"
        )
    return patch_propagation_batch(
        features[None], scores[None], centers, k=k, gamma=gamma, sigma=sigma, alpha=alpha,
        iters=iters, tol=tol,
    )[0]  # fmt: skip


def patch_propagation_batch(
    features: Tensor,
    scores: Tensor,
    centers: Tensor,
    *,
    k: int = 400,
    gamma: float = 3.0,
    sigma: float = 0.01,
    alpha: float = 0.95,
    iters: int = 10,
    tol: float = 1e-6,
) -> Tensor:
    """``patch_propagation`` for ``B`` images of the same window layout at once.

    Each image keeps its own kNN graph; the graphs are put on the diagonal of one sparse
    matrix, so one CG solves every (image, class) system together (its inner products and
    stopping rule are per image and class, as when the images are solved one by one).

    Args:
        features: ``[B, N, D]``; scores: ``[B, N, C]``; centers: ``[N, 2]`` (shared layout).
    Returns:
        ``[B, N, C]``, dtype and device of ``scores``.
    """
    b, n, c = scores.shape
    if n == 0:
        return scores.clone()
    dtype = _work_dtype(scores)
    feats = features.to(device=scores.device, dtype=dtype)
    graphs = [knn_affinity(feats[i], centers, k=k, gamma=gamma, sigma=sigma) for i in range(b)]
    s = graphs[0] if b == 1 else _block_diagonal(graphs)
    out = label_propagation(
        lambda x: (s @ x.reshape(b * n, c)).reshape(b, n, c),
        scores.to(dtype),
        alpha=alpha,
        iters=iters,
        tol=tol,
        reduce_dims=(1,),
    )
    return out.to(scores.dtype)


def _block_diagonal(graphs: Sequence[Tensor]) -> Tensor:
    """``B`` sparse CSR ``[N, N]`` matrices -> the CSR ``[B N, B N]`` with them on the diagonal."""
    n = graphs[0].shape[0]
    crow, col, val, nnz = [graphs[0].crow_indices()], [], [], 0
    for i, graph in enumerate(graphs):
        if i:
            crow.append(graph.crow_indices()[1:] + nnz)
        col.append(graph.col_indices() + i * n)
        val.append(graph.values())
        nnz += graph.values().numel()
    size = len(graphs) * n
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.cat(crow), torch.cat(col), torch.cat(val), (size, size), check_invariants=False
        )


# --------------------------------------------------------------------------------------
# LPOSS+: pixel graph as a stencil
# --------------------------------------------------------------------------------------


def _half_offsets(radius: int) -> list[tuple[int, int]]:
    """One offset of each ``(o, -o)`` pair of the window: ``dy > 0``, or ``dy = 0, dx > 0``."""
    offs = [(0, dx) for dx in range(1, radius + 1)]
    offs += [(dy, dx) for dy in range(1, radius + 1) for dx in range(-radius, radius + 1)]
    return offs


def _pair_slices(dy: int, dx: int, h: int, w: int) -> tuple[tuple[slice, slice], ...]:
    """Slices of the pixels ``p`` and of their partners ``p + (dy, dx)``, both in bounds."""
    src = (slice(0, h - dy), slice(max(0, -dx), w - max(0, dx)))
    dst = (slice(dy, h), slice(max(0, dx), w + min(0, dx)))
    return src, dst


@dataclass
class PixelGraph:
    """Normalised LPOSS+ pixel affinity stored as a symmetric stencil.

    The graph is symmetric, so only one offset of each pair ``(o, -o)`` is kept:
    ``weights[m, y, x]`` is the edge between pixel ``(y, x)`` and ``(y, x) + offsets[m]``
    (0 where the partner is outside the image). That halves the memory: ``2 r (r + 1)``
    planes instead of ``(2r+1)^2 - 1`` (84 for r = 6, ~0.1 GB at 480x640 in float32).
    Offsets that do not fit in the image at all are left out.

    Attributes:
        offsets: ``M`` offsets ``(dy, dx)`` with ``dy > 0`` or ``dy = 0, dx > 0``.
        weights: ``[M, H, W]`` un-normalised edge weights ``W``.
        inv_sqrt_degree: ``[H, W]`` ``D^-1/2`` (isolated pixels: 1).
    """

    offsets: list[tuple[int, int]]
    weights: Tensor
    inv_sqrt_degree: Tensor
    _offsets: Tensor | None = field(default=None, repr=False)  # device copy for the kernel

    def matvec(self, x: Tensor) -> Tensor:
        """``S x`` for ``x`` ``[..., H, W]`` (e.g. ``[C, H, W]``: all classes at once)."""
        h, w = self.inv_sqrt_degree.shape
        z = x * self.inv_sqrt_degree
        if self._fused_ok(z):
            try:
                out = stencil_kernel.stencil_apply(z.reshape(-1, h, w), self.weights, self._offsets)
                return out.reshape(z.shape) * self.inv_sqrt_degree
            except Exception as exc:  # noqa: BLE001 - a kernel that cannot build must not stop us
                _disable_fused(exc)
        out = torch.zeros_like(z)
        for m, (dy, dx) in enumerate(self.offsets):
            src, dst = _pair_slices(dy, dx, h, w)
            wm = self.weights[m][src]
            # Edge (p, p+o) feeds both ends: S is symmetric.
            out[..., src[0], src[1]].addcmul_(wm, z[..., dst[0], dst[1]])
            out[..., dst[0], dst[1]].addcmul_(wm, z[..., src[0], src[1]])
        return out * self.inv_sqrt_degree

    def _fused_ok(self, z: Tensor) -> bool:
        if not _FUSED["enabled"] or z.dtype != torch.float32 or not self.offsets:
            return False
        if not stencil_kernel.available(z):
            return False
        if self._offsets is None or self._offsets.device != z.device:
            self._offsets = _device_constant(tuple(self.offsets), torch.int32, z.device)
        return True


@functools.lru_cache(maxsize=64)
def _device_constant(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.tensor(values)`` on ``device``, made once: a host-to-device copy per frame
    would synchronise the CUDA stream. Shared: never write to it."""
    return torch.tensor(values, dtype=dtype, device=device)


# Process-wide switch: a kernel that failed to build once is not retried on every frame.
_FUSED = {"enabled": True}


def _disable_fused(exc: Exception) -> None:
    _FUSED["enabled"] = False
    warnings.warn(
        f"fused pixel-stencil kernel unavailable ({exc}); using the torch path", stacklevel=3
    )


def pixel_affinity(image: Tensor, *, radius: int = 6, tau: float = 0.01) -> PixelGraph:
    """Build the LPOSS+ pixel graph of one image.

    Args:
        image: ``[3, H, W]`` RGB in ``[0, 1]``.
        radius: window half-size ``r``: each pixel links to its ``(2r+1)^2 - 1`` neighbours
            inside the image (official ``neigh = 13 // 2``).
        tau: weight ``exp(-||lab_i - lab_j|| / tau)``, Lab scaled by ``(100, 128, 128)``.

    Returns:
        ``PixelGraph`` on the image's device, float32 (float64 for float64 images).
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected image [3, H, W], got {tuple(image.shape)}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    dtype = _work_dtype(image)
    _, h, w = image.shape
    scale = _device_constant(_LAB_SCALE, dtype, image.device)[:, None, None]
    lab = rgb_to_lab(image.to(dtype)) / scale

    offsets = [(dy, dx) for dy, dx in _half_offsets(radius) if dy < h and abs(dx) < w]
    weights = torch.zeros(len(offsets), h, w, dtype=dtype, device=image.device)
    degree = torch.zeros(h, w, dtype=dtype, device=image.device)
    for m, (dy, dx) in enumerate(offsets):
        src, dst = _pair_slices(dy, dx, h, w)
        diff = lab[:, src[0], src[1]] - lab[:, dst[0], dst[1]]
        # sqrt of the summed squares (torch.linalg.vector_norm over dim 0 is ~30x slower)
        wm = diff.square().sum(dim=0).sqrt().div(-tau).exp()
        weights[m][src] = wm
        degree[src] += wm
        degree[dst] += wm
    return PixelGraph(offsets, weights, _inv_sqrt_degree(degree))


def pixel_propagation(
    image: Tensor,
    scores: Tensor,
    *,
    radius: int = 6,
    tau: float = 0.01,
    alpha: float = 0.95,
    iters: int = 10,
    tol: float = 1e-6,
) -> Tensor:
    """LPOSS+: refine per-pixel scores by propagation over the local Lab pixel graph.

    Args:
        image: ``[3, H, W]`` RGB in ``[0, 1]`` (the image the scores belong to).
        scores: ``[C, H, W]`` initial per-pixel scores (e.g. upsampled LPOSS output).
        radius, tau: graph parameters (see ``pixel_affinity``).
        alpha: propagation strength; iters, tol: CG steps and per-class relative tolerance.

    Returns:
        ``[C, H, W]`` refined scores, dtype and device of ``scores``.
    """
    if scores.ndim != 3 or scores.shape[1:] != image.shape[1:]:
        raise ValueError(
            f"expected scores [C, H, W] matching image {tuple(image.shape)}, "
            f"got {tuple(scores.shape)}"
        )
    dtype = _work_dtype(scores)
    graph = pixel_affinity(image.to(device=scores.device, dtype=dtype), radius=radius, tau=tau)
    out = label_propagation(
        graph.matvec, scores.to(dtype), alpha=alpha, iters=iters, tol=tol, reduce_dims=(1, 2)
    )
    return out.to(scores.dtype)
