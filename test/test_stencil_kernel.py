"""The fused Triton pixel stencil equals the torch stencil (run by Triton's CPU interpreter)."""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.slow]

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import torch
    from ovseg_ros.segmentation import lposs, stencil_kernel

    g = torch.Generator().manual_seed(0)
    cases = [((3, 21, 29), 6, 5), ((3, 9, 40), 6, 19), ((3, 30, 4), 2, 3), ((3, 5, 5), 6, 2),
             ((3, 19, 23), 8, 4)]  # radius 8: the largest pixel_radius allowed
    for (shape, radius, classes) in cases:
        img = torch.rand(*shape, generator=g)
        graph = lposs.pixel_affinity(img, radius=radius)
        x = torch.randn(classes, *shape[1:], generator=g)
        assert stencil_kernel.available(x)
        lposs._FUSED["enabled"] = False
        ref = graph.matvec(x)
        lposs._FUSED["enabled"] = True
        out = graph.matvec(x)
        assert lposs._FUSED["enabled"], "fused kernel failed and fell back"
        err = (out - ref).abs().max().item()
        assert err < 1e-5, (shape, radius, classes, err)
    # The whole propagation agrees too (one small case: each CG step is a matvec, and the
    # interpreter runs every program of every matvec in Python).
    img = torch.rand(3, 5, 5, generator=g)
    scores = torch.randn(2, 5, 5, generator=g)
    fused = lposs.pixel_propagation(img, scores, radius=6)
    lposs._FUSED["enabled"] = False
    plain = lposs.pixel_propagation(img, scores, radius=6)
    lposs._FUSED["enabled"] = True
    assert (fused - plain).abs().max().item() < 1e-4
    print("ok")
    """
)


def test_fused_stencil_matches_torch_stencil():
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
