"""LPOSS / LPOSS+ propagation against dense references built here from the equations."""

import math

import pytest
import torch
import torch.nn.functional as F

from ovseg_ros.segmentation.color import rgb_to_lab
from ovseg_ros.segmentation.lposs import (
    knn_affinity,
    patch_centers,
    patch_propagation,
    pixel_affinity,
    pixel_propagation,
)

# --------------------------------------------------------------------------------------
# Dense references (loops, float64)
# --------------------------------------------------------------------------------------


def _normalise(w: torch.Tensor) -> torch.Tensor:
    """D^-1/2 W D^-1/2 with degree 0 counted as 1."""
    deg = w.sum(dim=1)
    deg[deg == 0] = 1.0
    dm = torch.diag(deg.rsqrt())
    return dm @ w @ dm


def _dense_patch_s(feats, centers, k, gamma, sigma):
    f = feats.double()
    c = centers.double()
    n = f.shape[0]
    vals, idx = torch.topk(f @ f.T, k, dim=1)  # self included
    w = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for t in range(k):
            j = int(idx[i, t])
            d = math.dist(c[i].tolist(), c[j].tolist())
            w[i, j] = max(float(vals[i, t]), 0.0) ** gamma * math.exp(-sigma * d)
    w = w + w.T
    w.fill_diagonal_(0.0)
    return _normalise(w)


def _dense_pixel_s(image, radius, tau):
    lab = rgb_to_lab(image.double()) / torch.tensor([100.0, 128.0, 128.0]).double()[:, None, None]
    _, h, wd = image.shape
    lab = lab.permute(1, 2, 0).tolist()
    n = h * wd
    w = torch.zeros(n, n, dtype=torch.float64)
    for y in range(h):
        for x in range(wd):
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    yy, xx = y + dy, x + dx
                    if (dy, dx) == (0, 0) or not (0 <= yy < h and 0 <= xx < wd):
                        continue
                    d = math.dist(lab[y][x], lab[yy][xx])
                    w[y * wd + x, yy * wd + xx] = math.exp(-d / tau)
    return _normalise(w)


def _exact(s, y, alpha):
    return torch.linalg.solve(torch.eye(s.shape[0], dtype=s.dtype) - alpha * s, y)


def _dense_cg(s, y, alpha, iters, tol=1e-6):
    """Per-column CG from 0 on (I - alpha S), stop when ||r|| <= tol ||b|| (cupy/scipy rule)."""
    a = torch.eye(s.shape[0], dtype=s.dtype) - alpha * s
    out = torch.zeros_like(y)
    for j in range(y.shape[1]):
        b = y[:, j]
        x = torch.zeros_like(b)
        r = b.clone()
        p = r.clone()
        rs = r @ r
        for _ in range(iters):
            if rs.sqrt() <= tol * b.norm():
                break
            ap = a @ p
            step = rs / (p @ ap)
            x = x + step * p
            r = r - step * ap
            rs_new = r @ r
            p = r + rs_new / rs * p
            rs = rs_new
        out[:, j] = x
    return out


def _random_patches(n=60, d=16, c=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    scores = torch.randn(n, c, generator=g, dtype=dtype)
    centers = torch.rand(n, 2, generator=g, dtype=dtype) * 200
    return feats, scores, centers


# --------------------------------------------------------------------------------------
# LPOSS (patches)
# --------------------------------------------------------------------------------------


def test_patch_centers_follow_official_layout():
    c = patch_centers([(0, 0), (32, 112)], [(2, 3), (1, 2)], patch_size=16)
    expected = torch.tensor(
        [[8, 8], [8, 24], [8, 40], [24, 8], [24, 24], [24, 40], [40, 120], [40, 136]],
        dtype=torch.float32,
    )
    assert torch.equal(c, expected)
    ct = patch_centers(torch.tensor([[0.0, 0.0]]), [(1, 1)])
    assert torch.equal(ct, torch.tensor([[8.0, 8.0]]))


@pytest.mark.parametrize("k", [10, 25])
def test_knn_affinity_equals_dense_construction(k):
    feats, _, centers = _random_patches()
    s = knn_affinity(feats, centers, k=k, gamma=3.0, sigma=0.01)
    ref = _dense_patch_s(feats, centers, k, 3.0, 0.01)
    dense = s.to_dense()
    assert torch.allclose(dense, dense.T)
    assert torch.allclose(dense, ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_patch_propagation_converges_to_exact_solve(dtype, atol):
    feats, scores, centers = _random_patches(dtype=dtype)
    out = patch_propagation(feats, scores, centers, k=10, iters=500, tol=0.0)
    ref = _exact(_dense_patch_s(feats, centers, 10, 3.0, 0.01), scores.double(), 0.95)
    assert out.dtype == dtype
    assert (out.double() - ref).abs().max().item() < atol


def test_patch_propagation_default_iters_equals_dense_cg():
    feats, scores, centers = _random_patches(seed=1)
    out = patch_propagation(feats, scores, centers, k=10)  # iters=10, tol=1e-6
    s = _dense_patch_s(feats, centers, 10, 3.0, 0.01)
    ref = _dense_cg(s, scores, 0.95, iters=10)
    assert (out - ref).abs().max().item() < 1e-10
    # 10 steps are not the exact solution (so this test checks the truncation too).
    assert (out - _exact(s, scores, 0.95)).abs().max().item() > 1e-4
    out32 = patch_propagation(feats.float(), scores.float(), centers.float(), k=10)
    assert (out32.double() - ref).abs().max().item() < 1e-4


def test_k_is_clamped_to_n():
    feats, scores, centers = _random_patches(n=20)
    a = patch_propagation(feats, scores, centers, k=1000)
    b = patch_propagation(feats, scores, centers, k=20)
    assert torch.allclose(a, b, atol=1e-12, rtol=0)


def test_cross_window_edges_carry_labels():
    # Two windows over the same image region (same patch centres, identical features).
    # Window A has informative scores, window B has none: B can only get its labels
    # through edges between the windows.
    g = torch.Generator().manual_seed(3)
    h = w = 4
    labels = (torch.arange(h * w) % 3).long()  # 3 classes spread over the grid
    protos = F.normalize(torch.randn(3, 32, generator=g), dim=-1)
    feats_one = F.normalize(protos[labels] + 0.2 * torch.randn(h * w, 32, generator=g), dim=-1)
    feats = torch.cat([feats_one, feats_one])
    centers = patch_centers([(0, 0), (0, 0)], [(h, w), (h, w)])
    scores_a = F.one_hot(labels, 3).float() + 0.1 * torch.randn(h * w, 3, generator=g)
    scores = torch.cat([scores_a, torch.zeros(h * w, 3)])
    out = patch_propagation(feats, scores, centers, k=8)
    out_b = out[h * w :]
    assert out_b.abs().min() > 0  # B received mass
    assert torch.equal(out_b.argmax(dim=1), labels)
    # Every patch of B is linked to its twin in A.
    s = knn_affinity(feats, centers, k=8).to_dense()
    idx = torch.arange(h * w)
    assert (s[idx + h * w, idx] > 0).all()


# --------------------------------------------------------------------------------------
# LPOSS+ (pixels)
# --------------------------------------------------------------------------------------


def _smooth_image(h, wd, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([0.55, 0.4, 0.3], dtype=dtype)[:, None, None]
    return (base + 0.02 * torch.rand(3, h, wd, generator=g, dtype=dtype)).clamp(0, 1)


@pytest.mark.parametrize("radius", [2, 6, 8])  # 8: the largest pixel_radius allowed
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_pixel_propagation_converges_to_exact_solve(radius, dtype, rtol):
    # float32: tau = 0.01 turns float32 rounding of Lab (~1e-7) into ~1e-5 relative weight
    # noise, so compare relative to the largest value (about 4 here).
    h, wd, c = 9, 11, 3
    img = _smooth_image(h, wd, dtype=dtype)
    scores = torch.randn(c, h, wd, generator=torch.Generator().manual_seed(1), dtype=dtype)
    out = pixel_propagation(img, scores, radius=radius, iters=1000, tol=0.0)
    s = _dense_pixel_s(img.double(), radius, 0.01)
    ref = _exact(s, scores.double().reshape(c, -1).T, 0.95).T.reshape(c, h, wd)
    assert out.dtype == dtype
    assert (out.double() - ref).abs().max().item() < rtol * ref.abs().max().item()


def test_pixel_propagation_default_iters_equals_dense_cg():
    h, wd, c = 9, 11, 3
    img = torch.rand(3, h, wd, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    scores = torch.randn(c, h, wd, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = pixel_propagation(img, scores, radius=2, tau=0.5)
    s = _dense_pixel_s(img, 2, 0.5)
    ref = _dense_cg(s, scores.reshape(c, -1).T, 0.95, iters=10).T.reshape(c, h, wd)
    assert (out - ref).abs().max().item() < 1e-10


def test_radius_larger_than_image():
    img = _smooth_image(4, 3, seed=4)
    scores = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = pixel_propagation(img, scores, radius=6, iters=200, tol=0.0)
    ref = _exact(_dense_pixel_s(img, 6, 0.01), scores.reshape(2, -1).T, 0.95).T.reshape(2, 4, 3)
    assert (out - ref).abs().max().item() < 1e-9


def test_no_padding_links():
    # Uniform image: every weight is 1, so the degree counts the in-image neighbours only.
    r, h, wd = 2, 7, 8
    g = pixel_affinity(torch.full((3, h, wd), 0.3), radius=r)
    degree = g.inv_sqrt_degree.pow(-2)
    assert degree[0, 0].item() == pytest.approx((r + 1) ** 2 - 1)
    assert degree[h // 2, wd // 2].item() == pytest.approx((2 * r + 1) ** 2 - 1)
    assert degree[0, wd // 2].item() == pytest.approx((r + 1) * (2 * r + 1) - 1)
    assert len(g.offsets) == 2 * r * (r + 1) and g.weights.shape == (len(g.offsets), h, wd)


@pytest.mark.parametrize("transpose", [False, True])
def test_no_wrap_around(transpose):
    # Left and right border columns share one colour, the middle is sharply different, so
    # the borders connect to nothing but themselves. A wrap-around stencil (roll) would
    # link column 0 to the last column (same colour, weight 1) and leak its scores.
    h, wd, r = 6, 12, 2
    img = torch.zeros(3, h, wd)
    img[:, :, :2] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    img[:, :, -2:] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    img[:, :, 2:-2] = torch.tensor([0.1, 0.2, 0.9])[:, None, None]
    scores = torch.zeros(2, h, wd)
    scores[0, :, -2:] = 1.0  # only the right border carries class-0 evidence
    scores[1, :, 2:-2] = 1.0
    if transpose:
        img, scores = img.transpose(1, 2), scores.transpose(1, 2)
    out = pixel_propagation(img, scores, radius=r, iters=50, tol=0.0)
    left = out[:, :2, :] if transpose else out[:, :, :2]
    right = out[:, -2:, :] if transpose else out[:, :, -2:]
    assert torch.equal(left, torch.zeros_like(left))
    assert (right[0] > 0.5).all()


# --------------------------------------------------------------------------------------
# dtype / device
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_dtypes_are_preserved(dtype):
    feats, scores, centers = _random_patches(n=30, dtype=torch.float32)
    out = patch_propagation(feats.to(dtype), scores.to(dtype), centers, k=8)
    assert out.dtype == dtype and out.shape == scores.shape and torch.isfinite(out).all()
    img = _smooth_image(6, 7, dtype=torch.float32)
    sc = torch.randn(2, 6, 7).to(dtype)
    out = pixel_propagation(img, sc, radius=2)
    assert out.dtype == dtype and out.shape == sc.shape and torch.isfinite(out.float()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    feats, scores, centers = _random_patches(dtype=torch.float32)
    cpu = patch_propagation(feats, scores, centers, k=10)
    gpu = patch_propagation(feats.cuda(), scores.cuda(), centers.cuda(), k=10)
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() - cpu).abs().max().item() < 1e-4
    img = _smooth_image(20, 24, dtype=torch.float32)
    sc = torch.randn(3, 20, 24)
    cpu = pixel_propagation(img, sc)
    gpu = pixel_propagation(img.cuda(), sc.cuda())
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() - cpu).abs().max().item() < 1e-4
