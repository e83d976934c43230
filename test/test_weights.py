"""Weights from the Hugging Face cache layout, the LPOSS fallback, download_weights, and
one-line errors for weights files that cannot be used (unsafe pickle, truncated, wrong model)."""

import logging
import os
import pickle
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from ovseg_ros.segmentation import SegmenterConfig, WeightsNotFoundError, build_segmenter
from ovseg_ros.segmentation.weights import (
    WeightsLoadError,
    clip_source,
    dino_source,
    sources_for,
)
from ovseg_ros.tools.download_weights import main


def put_in_hub_cache(cache, repo_id: str, filename: str, state: dict) -> None:
    """Write ``state`` where huggingface_hub puts a downloaded file (refs + snapshot)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / filename))


def test_sources_name_the_hub_files():
    openai = clip_source("ViT-B-16", "openai")
    assert openai.repo_id == "timm/vit_base_patch16_clip_224.openai"
    assert openai.filenames[0] == "open_clip_model.safetensors"
    assert dino_source("vit_base_patch16_224.dino").repo_id == "timm/vit_base_patch16_224.dino"
    with pytest.raises(ValueError, match="no pretrained tag"):
        clip_source("ViT-B-16", "nonsense")
    lposs = sources_for(SegmenterConfig(method="lposs_plus", device="cpu"))
    assert [s.repo_id for s, _, _ in lposs] == [
        "laion/CLIP-ViT-B-16-laion2B-s34B-b88K",
        "timm/vit_base_patch16_224.dino",
    ]


@pytest.fixture(scope="module")
def real_clip():
    """A real-size CLIP ViT-B/16 with random weights (made once: seconds of init each)."""
    import open_clip

    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)


@pytest.mark.slow
def test_lposs_builds_from_the_hub_cache_with_the_openai_fallback(tmp_path, caplog, real_clip):
    """Real-size random weights saved in the hub cache layout load through the real path."""
    import timm

    clip = real_clip
    dino = timm.create_model("vit_base_patch16_224.dino", pretrained=False, num_classes=0)
    put_in_hub_cache(
        tmp_path,
        "timm/vit_base_patch16_clip_224.openai",
        "open_clip_model.safetensors",
        clip.state_dict(),
    )
    put_in_hub_cache(
        tmp_path, "timm/vit_base_patch16_224.dino", "model.safetensors", dino.state_dict()
    )
    cfg = SegmenterConfig(method="lposs", device="cpu", weights_cache_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING):
        seg = build_segmenter(cfg)
    # LAION weights (the official LPOSS choice) are absent: OpenAI's are used, with a warning.
    assert seg.config.clip_pretrained == "openai"
    assert "laion" in caplog.text.lower() and "openai" in caplog.text
    assert torch.equal(seg._clip.model.visual.conv1.weight, clip.visual.conv1.weight)
    assert torch.equal(seg._dino.patch_embed.proj.weight, dino.patch_embed.proj.weight)
    # Asking for LAION explicitly never falls back.
    with pytest.raises(WeightsNotFoundError, match="laion2b"):
        build_segmenter(cfg.replace(clip_pretrained="laion2b_s34b_b88k"))
    # PEARL uses the OpenAI weights directly.
    pearl = build_segmenter(cfg.replace(method="pearl"))
    assert pearl.config.clip_pretrained == "openai"
    # download_weights finds what a params file needs already cached (no network involved).
    params = tmp_path / "segment.yaml"
    params.write_text("/**:\n  ros__parameters:\n    method: pearl\n    qos_depth: 5\n")
    assert main(["--params", str(params), "--cache-dir", str(tmp_path)]) == 0
    assert (
        main(["--method", "lposs", "--clip-pretrained", "openai", "--cache-dir", str(tmp_path)])
        == 0
    )


def test_download_weights_cli_parses_and_reports(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "offline" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--method", "sam"])


def test_download_weights_reads_a_namespaced_params_file(tmp_path, monkeypatch, capsys):
    """Issue 8's bug: a namespaced lposs_plus file must fetch LPOSS+'s weights (LAION + DINO)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = tmp_path / "segment.yaml"
    params.write_text("robot:\n  ovseg:\n    ros__parameters:\n      method: lposs_plus\n")
    assert main(["--params", str(params), "--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "laion/CLIP-ViT-B-16-laion2B-s34B-b88K" in err and "vit_base_patch16_224.dino" in err


# -- weights files that cannot be used ------------------------------------------------------------


class _Payload:
    """Unpickling this runs ``os.system``: what a malicious "weights" file does."""

    def __reduce__(self):
        return (os.system, ("echo PWNED > /dev/null",))


def evil_pickle(path):
    torch.save({"visual.conv1.weight": torch.zeros(1), "x": _Payload()}, path)
    return path


def truncated_safetensors(path):
    save_file({"w": torch.zeros(4096)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _build_error(config) -> str:
    with pytest.raises(WeightsLoadError) as info:
        build_segmenter(config)
    message = str(info.value)
    assert "\n" not in message and "weights_only" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    return message


@pytest.mark.slow
def test_unusable_weights_files_give_one_line_naming_the_file(tmp_path, real_clip):
    base = SegmenterConfig(method="pearl", device="cpu", clip_pretrained="openai")
    evil = evil_pickle(tmp_path / "evil.pt")
    message = _build_error(base.replace(clip_weights=str(evil)))
    assert message.startswith(str(evil)) and "pickle" in message and "posix.system" in message
    cut = truncated_safetensors(tmp_path / "clip.safetensors")
    message = _build_error(base.replace(clip_weights=str(cut)))
    assert message.startswith(str(cut)) and "truncated or corrupt safetensors" in message
    # DINO weights of another architecture (a tiny ViT) for the ViT-B/16 LPOSS expects.
    import timm

    tiny = timm.create_model(
        "vit_base_patch16_224.dino", pretrained=False, num_classes=0, embed_dim=64, depth=2,
        num_heads=2,
    )  # fmt: skip
    wrong = tmp_path / "dino.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(wrong))
    clip = tmp_path / "clip_ok.safetensors"
    save_file({k: v.contiguous() for k, v in real_clip.state_dict().items()}, str(clip))
    lposs = SegmenterConfig(
        method="lposs", device="cpu", clip_pretrained="openai", clip_weights=str(clip)
    )
    message = _build_error(lposs.replace(dino_weights=str(wrong)))
    assert message.startswith(str(wrong)) and "another architecture" in message
    assert "DINO vit_base_patch16_224.dino" in message


def test_the_evil_pickle_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class Marker:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "marker.pt"
    torch.save({"x": Marker()}, path)
    with pytest.raises(WeightsLoadError, match="pickle"):
        build_segmenter(SegmenterConfig(device="cpu", clip_weights=str(path)))
    assert not marker.exists()
    raw = tmp_path / "raw.pkl"  # a plain (non-zip) pickle, the legacy torch format
    raw.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(WeightsLoadError, match="pickle"):
        build_segmenter(SegmenterConfig(device="cpu", clip_weights=str(raw)))


def test_download_weights_reports_an_unusable_cached_file_and_exits_1(tmp_path, capsys):
    put_in_hub_cache(
        tmp_path,
        "timm/vit_base_patch16_clip_224.openai",
        "open_clip_model.safetensors",
        {"w": torch.zeros(4096)},
    )
    repo = tmp_path / "models--timm--vit_base_patch16_clip_224.openai" / "snapshots" / ("0" * 40)
    truncated_safetensors(repo / "open_clip_model.safetensors")
    code = main(["--method", "pearl", "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "truncated or corrupt safetensors" in err and "Traceback" not in err


@pytest.mark.slow
def test_download_weights_offline_says_so_at_once(tmp_path):
    """HF_HUB_OFFLINE=1: one clear line and exit 1, in a fresh process (no retries)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)}
    code = "from ovseg_ros.tools.download_weights import main; raise SystemExit(main())"
    argv = [sys.executable, "-c", code, "--method", "lposs", "--cache-dir", str(tmp_path)]
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert "HF_HUB_OFFLINE" in lines[0] and "laion" in lines[0] and "DINO" in lines[0]
