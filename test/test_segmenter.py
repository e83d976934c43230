"""The Segmenter facade end to end with tiny random models built by the real code path."""

import threading

import numpy as np
import pytest
import torch

from ovseg_ros.segmentation import (
    SegmenterConfig,
    WeightsNotFoundError,
    build_segmenter,
    tiny_config,
)
from ovseg_ros.segmentation.postprocess import reduce_scores

VOCAB = ["background; sky; wall", "person; man; woman", "chair"]


def scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A synthetic frame: colored blocks plus noise."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = (200, 60, 40)
    img[h // 2 :, : w // 2] = (30, 160, 90)
    img[h // 2 :, w // 2 :] = (40, 70, 210)
    noise = rng.integers(-20, 20, size=img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module", params=["pearl", "maskclip", "lposs", "lposs_plus"])
def segmenter(request):
    # The long side capped at 1024 (mmseg's cap is 2048): a 300x40 frame is still resized
    # to an odd 1024x137 (448 would make it 3360x448, a second of LPOSS+ per frame on a CPU).
    seg = build_segmenter(tiny_config(request.param, max_long_side=1024))
    seg.set_vocabulary(VOCAB)
    return seg


@pytest.mark.parametrize(("h", "w"), [(120, 160), (97, 211), (300, 40), (17, 23)])
def test_every_method_segments_odd_shapes(segmenter, h, w):
    res = segmenter.segment(scene(h, w))
    assert res.labels.shape == (h, w) and res.labels.dtype == np.int32
    assert res.labels.min() >= 0 and res.labels.max() < 3
    assert res.probabilities.shape == (3, h, w) and res.probabilities.dtype == np.float32
    assert np.allclose(res.probabilities.sum(0), 1.0, atol=1e-4)
    assert res.confidence.shape == (h, w) and np.isfinite(res.confidence).all()
    assert (res.confidence > 0).all() and (res.confidence <= 1 + 1e-6).all()
    # Labels and confidence come from a chunked reduction at the image size; probabilities
    # from the full-size formula (softmax of all upsampled scores): they must agree.
    assert np.array_equal(res.labels, res.probabilities.argmax(0))
    assert np.abs(res.confidence - res.probabilities.max(0)).max() <= 1e-6
    for index in range(3):
        # One entry upsampled alone vs all at once (and the thread count) round the scores
        # differently by a few ulps; softmax(logit_scale * s) turns that into at most
        # logit_scale * ulps of probability: ~1e-6 for PEARL's cosines, ~1e-3 for LPOSS+'s
        # propagated scores (up to ~150).
        ulp = np.spacing(np.float32(np.abs(res._scores.numpy()).max()))
        single = res.probability_of(index)
        assert np.abs(single - res.probabilities[index]).max() <= 1e-6 + 40 * 8 * ulp
        assert single.max() <= 1.0
    assert res.vocabulary.names == ["background", "person", "chair"]
    assert set(res.timings) == {"total"} and res.timings["total"] > 0  # untimed: total only


def test_method_stages_are_timed(segmenter):
    timings = segmenter.segment(scene(64, 64), timed=True).timings
    stages = set(timings)
    assert {"preprocess", "backbone", "stitch", "postprocess", "total"} <= stages
    assert all(seconds >= 0 for seconds in timings.values())
    assert sum(v for k, v in timings.items() if k != "total") <= timings["total"]
    method = segmenter.config.method
    expected = {
        "pearl": {"attention", "tlp"},
        "maskclip": {"backbone"},
        "lposs": {"patch_propagation"},
        "lposs_plus": {"patch_propagation", "pixel_refine"},
    }[method]
    assert expected <= stages


def test_pearl_with_pixel_refiner_and_maskclip_with_tlp():
    for method, extra in [("pearl", {"pixel_refine": True}), ("maskclip", {"tlp": True})]:
        seg = build_segmenter(tiny_config(method, **extra))
        seg.set_vocabulary(VOCAB)
        res = seg.segment(scene(90, 120), timed=True)
        assert res.labels.shape == (90, 120)
        assert ("pixel_refine" if method == "pearl" else "tlp") in res.timings


def test_whole_image_mode_and_dataset_preset():
    from ovseg_ros.segmentation import dataset_preset

    seg = build_segmenter(tiny_config("pearl").replace(**dataset_preset("voc21", "pearl")))
    seg.set_vocabulary(VOCAB)
    assert seg.segment(scene(75, 100)).labels.shape == (75, 100)


def test_synonym_reduction_takes_the_max_over_synonyms():
    # Two entries: A = {a1, a2}, B = {b}. Scores favour a2 at pixel 0, b at pixel 1.
    scores = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 1.0]]).view(3, 1, 2)
    mapping = torch.tensor([0, 0, 1])
    labels, confidence, probs = reduce_scores(scores, mapping, 2, logit_scale=2.0)
    soft = torch.softmax(2.0 * scores, dim=0)
    expected = torch.stack([torch.maximum(soft[0], soft[1]), soft[2]])
    expected = expected / expected.sum(0)
    assert torch.allclose(probs, expected, atol=1e-6)
    assert labels.flatten().tolist() == [0, 1]
    assert torch.allclose(confidence, probs.max(0).values)


def test_background_threshold_relabels_unsure_pixels():
    # Three entries, pixel 0 confident for entry 2, pixel 1 unsure between entries 1 and 2.
    scores = torch.tensor([[0.0, 0.0], [0.0, 0.5], [5.0, 0.52]]).view(3, 1, 2)
    mapping = torch.arange(3)
    labels, confidence, _ = reduce_scores(scores, mapping, 3, logit_scale=1.0, prob_threshold=0.5)
    assert labels.flatten().tolist() == [2, 0]
    labels, _, _ = reduce_scores(scores, mapping, 3, logit_scale=1.0, prob_threshold=0.0)
    assert labels.flatten().tolist() == [2, 2]


def test_nan_scores_do_not_crash():
    scores = torch.full((2, 3, 3), float("nan"))
    labels, confidence, probs = reduce_scores(scores, torch.arange(2), 2)
    assert torch.isfinite(probs).all() and torch.isfinite(confidence).all()


def test_vocabulary_versions_and_text_cache_hits():
    seg = build_segmenter(tiny_config("maskclip"))
    v1 = seg.set_vocabulary(VOCAB)
    assert seg.text_cache.last_encoded == [
        "background",
        "sky",
        "wall",
        "person",
        "man",
        "woman",
        "chair",
    ]
    v2 = seg.set_vocabulary(VOCAB[:2] + ["chair", "door"])
    assert seg.text_cache.last_encoded == ["door"]  # only the new name is encoded
    assert (v1.version, v2.version) == (1, 2)
    assert seg.segment(scene(40, 40)).vocabulary.version == 2
    with pytest.raises(ValueError, match="duplicate"):
        seg.set_vocabulary(["chair", "chair"])
    assert seg.vocabulary.version == 2  # a refused change leaves everything as it was
    v3 = seg.set_vocabulary(["door"])
    assert seg.text_cache.last_encoded == [] and v3.version == 3
    assert seg.segment(scene(40, 40)).labels.max() == 0


def test_text_cache_persists_on_disk(tmp_path):
    cfg = tiny_config("maskclip", text_cache_dir=str(tmp_path))
    first = build_segmenter(cfg)
    first.set_vocabulary(["chair", "table"])
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    second = build_segmenter(cfg)
    second.set_vocabulary(["table", "chair", "lamp"])
    assert second.text_cache.last_encoded == ["lamp"]
    assert torch.allclose(second.text_cache.get(["chair"]), first.text_cache.get(["chair"]))
    # A different model (seed) never reads another model's embeddings.
    other = build_segmenter(cfg.replace(seed=1))
    other.set_vocabulary(["chair"])
    assert other.text_cache.last_encoded == ["chair"]
    # A corrupt file is ignored, not fatal.
    for f in tmp_path.glob("*.safetensors"):
        f.write_bytes(b"garbage")
    build_segmenter(cfg).set_vocabulary(["chair"])


def test_text_embeddings_are_normalised_template_means():
    seg = build_segmenter(tiny_config("pearl", templates="single"))
    emb = seg.text_cache.get(["chair"])
    assert torch.allclose(emb.norm(dim=-1), torch.ones(1), atol=1e-5)
    model, tok = seg._clip.model, seg._clip.tokenizer
    with torch.no_grad():
        direct = model.encode_text(tok(["a photo of a chair."])).float()
    assert torch.allclose(emb, torch.nn.functional.normalize(direct, dim=-1), atol=1e-5)


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((10, 10), np.uint8), "shape"),
        (np.zeros((10, 10, 4), np.uint8), "shape"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        ([[1, 2, 3]], "numpy"),
    ],
)
def test_bad_images_raise_value_error(image, reason):
    seg = build_segmenter(tiny_config("maskclip"))
    seg.set_vocabulary(["chair"])
    with pytest.raises(ValueError, match=reason):
        seg.segment(image)


def test_segment_needs_a_vocabulary_and_release_frees():
    seg = build_segmenter(tiny_config("maskclip"))
    with pytest.raises(RuntimeError, match="vocabulary"):
        seg.segment(scene(20, 20))
    seg.set_vocabulary(["chair"])
    seg.release()
    assert seg.released
    with pytest.raises(RuntimeError, match="released"):
        seg.segment(scene(20, 20))


def test_missing_weights_fail_at_once_with_instructions(tmp_path):
    for method in ("pearl", "lposs"):
        cfg = SegmenterConfig(method=method, device="cpu", weights_cache_dir=str(tmp_path))
        with pytest.raises(WeightsNotFoundError) as info:
            build_segmenter(cfg)
        message = str(info.value)
        assert "download_weights" in message and "clip_weights" in message
        assert "open_clip_model.safetensors" in message
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        build_segmenter(SegmenterConfig(device="cpu", clip_weights=str(tmp_path / "nope.pt")))


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory):
    """A full ViT-B/16 CLIP state dict (random) as safetensors, made once: ``(path, conv1)``."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None, require_pretrained=False)
    path = tmp_path_factory.mktemp("clip") / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model.state_dict()["visual.conv1.weight"].clone()


def test_dino_weights_missing_is_named(clip_checkpoint, tmp_path):
    # Give CLIP a real (random) checkpoint file so the DINO lookup is what fails.
    path, _ = clip_checkpoint
    cfg = SegmenterConfig(
        method="lposs", device="cpu", clip_weights=str(path), weights_cache_dir=str(tmp_path)
    )
    with pytest.raises(WeightsNotFoundError, match="DINO vit_base_patch16_224.dino"):
        build_segmenter(cfg)


def test_local_clip_checkpoint_loads_through_the_real_path(clip_checkpoint):
    """A full ViT-B/16 state dict saved as safetensors is loaded (weights_only path)."""
    path, conv1 = clip_checkpoint
    seg = build_segmenter(SegmenterConfig(method="maskclip", device="cpu", clip_weights=str(path)))
    assert torch.equal(seg._clip.model.state_dict()["visual.conv1.weight"], conv1)


def test_unavailable_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="CUDA is not available"):
        build_segmenter(tiny_config("pearl", device="cuda"))


def test_vocabulary_change_during_segmentation_is_atomic():
    seg = build_segmenter(tiny_config("maskclip"))
    seg.set_vocabulary(["chair"])
    errors = []

    def flip():
        try:
            for i in range(20):
                seg.set_vocabulary(["chair", "table", "door"] if i % 2 else ["chair"])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=flip)
    thread.start()
    for _ in range(10):
        res = seg.segment(scene(48, 64))
        assert res.labels.max() < len(res.vocabulary)
        assert res.probabilities.shape[0] == len(res.vocabulary)
    thread.join()
    assert not errors


def test_update_config_changes_knobs_from_the_next_frame():
    seg = build_segmenter(tiny_config("pearl"))
    seg.set_vocabulary(VOCAB)
    before = seg.segment(scene(40, 50), timed=True)
    assert "tlp" in before.timings
    cfg = seg.update_config(tlp=False, logit_scale=1e-3, prob_threshold=0.9)
    assert cfg is seg.config and cfg.tlp is False and cfg.device == "cpu"
    after = seg.segment(scene(40, 50), timed=True)
    assert "tlp" not in after.timings and after.labels.max() == 0  # nobody is 90% sure
    with pytest.raises(ValueError, match="cannot change at runtime"):
        seg.update_config(method="lposs")
    with pytest.raises(ValueError, match="window_stride"):
        seg.update_config(window_stride=500)
    assert seg.config is cfg  # refused changes leave the config as it was
    assert seg.update_config(short_side=-1).short_side == 336  # back to the method default


def test_warmup_runs_a_blank_frame():
    seg = build_segmenter(tiny_config("maskclip"))
    seg.set_vocabulary(["chair"])
    assert seg.warmup(32, 48) > 0


def test_text_cache_is_bounded_in_bytes(tmp_path):
    """A caller changing the classes again and again cannot grow the cache (memory or disk)
    past its bound: the least recently used names go, never those being returned."""
    from ovseg_ros.segmentation.text_cache import TextEmbeddingCache

    encoded = []

    def encode(names):
        encoded.extend(names)
        return torch.ones(len(names), 8)  # 32 bytes per name

    cache = TextEmbeddingCache(encode, "k", tmp_path, batch_names=4, max_bytes=10 * 32)
    assert cache.get([f"a{i}" for i in range(6)]).shape == (6, 8)
    assert cache.get([f"b{i}" for i in range(6)]).shape == (6, 8)  # 12 names: 2 over
    assert cache.nbytes == 10 * 32 and cache.missing(["a0", "a1"]) == ["a0", "a1"]
    assert cache.missing(["a2", "b5"]) == []
    assert cache.get([f"c{i}" for i in range(20)]).shape == (20, 8)  # larger than the bound
    assert cache.nbytes == 20 * 32  # the request's own names are kept
    reloaded = TextEmbeddingCache(encode, "k", tmp_path, max_bytes=10 * 32)
    assert reloaded.nbytes == 10 * 32  # the file holds what memory held, trimmed on load
