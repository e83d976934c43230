"""The Segmenter facade: vocabulary in, RGB frames in, labels and probabilities out."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from . import accel
from . import clip_backbone as clip
from .batch import (
    batched_windows,
    dino_features,
    group_by_shape,
    maskclip_features,
    pearl_tokens,
    text_aware_refine,
)
from .config import MAX_IMAGE_SIDE, REBUILD_FIELDS, SegmenterConfig
from .geometry import (
    crop_windows,
    rescaled_size,
    resize_image,
    resize_rgb,
    stitch_patch_scores,
    window_boxes,
)
from .methods import method_spec
from .postprocess import entry_offsets, reduce_upsampled
from .result import SegmentationResult, host_maps
from .scored import ScoredBatch
from .sync import StageTimer
from .text_cache import EncodingCancelled, TextEmbeddingCache, default_cache_dir
from .vocabulary import Vocabulary, build_vocabulary, unlabeled_id
from .vocabulary_state import (
    PreparedVocabulary,
    VocabularyCancelled,
    as_cancel_check,
)

MAX_WINDOWS = 64  # windows per backbone forward pass (all frames of a batch together)


class Segmenter:
    """Training-free open-vocabulary segmentation with PEARL, MaskCLIP, LPOSS or LPOSS+.

    Thread safety: a vocabulary change may be prepared (``prepare_vocabulary``: validation
    and text encoding, possibly long) on one thread while another runs ``segment``; it takes
    effect with ``activate_vocabulary``, an atomic swap. Each ``segment`` call uses the
    vocabulary that was active when it started, so its labels refer to exactly one version.
    """

    def __init__(self, config: SegmenterConfig) -> None:
        self.config = config.resolved()
        cfg = self.config
        self.device = check_device(cfg.device)
        # LPOSS's official CLIP weights are LAION-2B; where only OpenAI's (the PEARL weights)
        # are on the machine and the user chose none, run with those rather than not at all.
        fallback = ("openai",) if config.clip_pretrained is None else ()
        self._clip = clip.build_clip(cfg, fallback_pretrained=fallback)
        if self._clip.pretrained != cfg.clip_pretrained and self._clip.pretrained is not None:
            self.config = cfg = dataclasses.replace(cfg, clip_pretrained=self._clip.pretrained)
        self._method = method_spec(cfg.method)
        self._dino = None
        if self._method.needs_dino:
            from .dino_backbone import build_dino

            self._dino = build_dino(cfg)
        templates = clip.prompt_templates(cfg.templates)
        if cfg.text_cache_dir.lower() == "none":
            directory = None
        else:
            directory = default_cache_dir() if not cfg.text_cache_dir else cfg.text_cache_dir
        if cfg.preset != "full" and not cfg.text_cache_dir:
            directory = None  # random weights: nothing worth keeping across runs
        self.text_cache = TextEmbeddingCache(
            lambda names: clip.encode_class_names(self._clip, names, templates),
            key=f"{self._clip.weights_key}|{cfg.templates}",
            directory=directory,
            # Names per text forward pass: about TEXT_BATCH prompts (templates x names).
            batch_names=max(1, clip.TEXT_BATCH // len(templates)),
        )
        self.max_windows = MAX_WINDOWS
        self._state: PreparedVocabulary | None = None
        self._version = 0
        self._requests = 0  # vocabulary changes asked for (a newer one supersedes the others)
        self._vocab_lock = threading.Lock()
        mean, std = torch.tensor(clip.CLIP_MEAN), torch.tensor(clip.CLIP_STD)
        self._clip_norm = (
            mean.view(1, 3, 1, 1).to(self.device),
            std.view(1, 3, 1, 1).to(self.device),
        )
        self._build_backbone_calls(cfg)

    def _build_backbone_calls(self, cfg: SegmenterConfig) -> None:
        """The window-batch functions, eager or accelerated (``accel``: compile, CUDA graphs).

        Each maps windows ``[n, 3, s, t]`` (in [0, 1]) to per-window tensors and the grid."""
        visual = self._clip.model.visual
        options = {"device": self.device, "compile": cfg.compile, "cuda_graphs": cfg.cuda_graphs}
        if self._method.scorer == "pearl":
            clip_fn = partial(pearl_tokens, visual, self._clip_norm)
        else:
            clip_fn = partial(maskclip_features, visual, self._clip_norm)
        self._clip_call = accel.wrap(clip_fn, name="CLIP backbone", **options)
        self._dino_call = None
        if self._dino is not None:
            from .dino_backbone import IMAGENET_MEAN, IMAGENET_STD

            norm = (
                torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1),
                torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1),
            )
            dino_fn = partial(dino_features, self._dino, norm)
            self._dino_call = accel.wrap(dino_fn, name="DINO backbone", **options)

    # -- vocabulary -----------------------------------------------------------------------------

    @property
    def vocabulary(self) -> Vocabulary | None:
        state = self._state
        return None if state is None else state.vocabulary

    def prepare_vocabulary(
        self,
        entries: Sequence[str],
        *,
        strict: bool = True,
        progress: Callable[[int, int], None] | None = None,
        cancel: object = None,
    ) -> PreparedVocabulary:
        """Validate and encode a vocabulary without touching the active one (any thread).

        Raises ``ValueError`` for an invalid list (empty, blank or duplicate names; nothing
        changes then). Only names never seen before are encoded, ``text_cache.batch_names``
        names (times the prompt templates) per forward pass; after each pass
        ``progress(done, total)`` is called with names encoded so far and names to encode.
        Raises ``VocabularyCancelled`` between passes when ``cancel`` (an Event or a callable)
        is set, or when a newer ``prepare_vocabulary`` call has started: a newer change
        supersedes a pending one. ``strict=False`` lets a name appear in several entries
        (benchmark class lists).
        """
        self._require_models()
        started = time.perf_counter()
        vocabulary = build_vocabulary(entries, version=0, strict=strict)
        with self._vocab_lock:
            self._requests += 1
            request = self._requests
        user_cancel = as_cancel_check(cancel)

        def stop() -> bool:
            if request < self._requests or self._clip is None:  # superseded, or released
                return True
            return user_cancel is not None and user_cancel()

        missing = self.text_cache.missing(vocabulary.queries)
        try:
            text = self.text_cache.get(vocabulary.queries, progress=progress, cancel=stop)
        except EncodingCancelled as exc:
            why = "superseded by a newer change" if request < self._requests else "cancelled"
            if self._clip is None:
                why = "stopped: the segmenter was released"
            raise VocabularyCancelled(f"vocabulary change {why} ({exc})") from None
        mapping = vocabulary.query_to_entry
        return PreparedVocabulary(
            vocabulary=vocabulary,
            text=text.to(self.device),
            query_to_entry=torch.tensor(mapping, device=self.device),
            offsets=tuple(entry_offsets(mapping, len(vocabulary))),
            request=request,
            encoded=len(missing),
            seconds=time.perf_counter() - started,
        )

    def activate_vocabulary(self, prepared: PreparedVocabulary) -> Vocabulary:
        """Make a prepared vocabulary the active one (atomic: a frame in progress keeps the
        one it started with); returns it with its new version number. Raises
        ``VocabularyCancelled`` if a newer change was asked for since it was prepared."""
        self._require_models()
        with self._vocab_lock:
            if prepared.request < self._requests:
                raise VocabularyCancelled("vocabulary change superseded by a newer change")
            vocabulary = dataclasses.replace(prepared.vocabulary, version=self._version + 1)
            self._version = vocabulary.version
            self._state = dataclasses.replace(prepared, vocabulary=vocabulary)
            return vocabulary

    def set_vocabulary(self, entries: Sequence[str], *, strict: bool = True) -> Vocabulary:
        """``prepare_vocabulary`` then ``activate_vocabulary``: install a new vocabulary and
        return it with a new version number. Raises ``ValueError`` (empty list, blank or
        duplicate names) and leaves the current vocabulary untouched."""
        return self.activate_vocabulary(self.prepare_vocabulary(entries, strict=strict))

    def update_config(self, **changes) -> SegmenterConfig:
        """Change inference knobs (windows, thresholds, PEARL / LPOSS settings) from the next
        frame on. Raises ``ValueError`` for invalid values or for settings that need new
        models (``config.REBUILD_FIELDS``); the current config is then left as it was."""
        rebuild = sorted(set(changes) & REBUILD_FIELDS)
        if rebuild:
            raise ValueError(f"{rebuild} cannot change at runtime: build a new segmenter")
        # Method defaults (None) resolve against this segmenter's method; device stays.
        updated = self.config.replace(**changes).resolved()
        self.config = updated
        return updated

    # -- inference ------------------------------------------------------------------------------

    def segment(
        self, rgb: np.ndarray, *, timed: bool = False, unlabeled: bool = False
    ) -> SegmentationResult:
        """Segment one ``uint8 [H, W, 3]`` RGB frame with the current vocabulary.

        ``timed``, ``unlabeled``: see ``segment_batch``."""
        return self.segment_batch([rgb], timed=timed, unlabeled=unlabeled)[0]

    def segment_batch(
        self, images: Sequence[np.ndarray], *, timed: bool = False, unlabeled: bool = False
    ) -> list[SegmentationResult]:
        """Segment several ``uint8 [H_i, W_i, 3]`` RGB frames (sizes may differ) together:
        ``finish_batch(score_batch(images))``.

        The windows of all frames go through the backbone together (up to ``max_windows``
        per forward pass); LPOSS's graph solve and TLP's solve run batched over frames of the
        same shape (LPOSS+'s pixel step runs per frame). Each result equals ``segment`` of
        that frame alone (to float rounding), and all use the same vocabulary. A bad frame
        raises ``ValueError`` naming its index before any work is done.

        ``timings`` are those of the whole batch (the same in every result): ``"total"``, the
        seconds until the results are on the host. ``timed=True`` adds each stage's seconds
        (CUDA events on CUDA, which cost no synchronisation of their own; for benchmarks).
        On CUDA the one explicit wait for the device is the copy of all frames' labels and
        confidence to the host (``sync``); PEARL and MaskCLIP wait nowhere else (LPOSS's kNN
        graph has data-dependent sizes, read from the device while it is built).

        Pixels whose best class is below ``prob_threshold`` get entry 0 (the papers' and the
        benchmarks' background convention); ``unlabeled=True`` gives them
        :func:`~.vocabulary.unlabeled_id` instead (255, or 65535 above 254 entries: a robot's
        entry 0 is a class like any other) and the best class's probability as confidence.
        """
        return self.finish_batch(self.score_batch(images, timed=timed), unlabeled=unlabeled)

    @torch.inference_mode()
    def score_batch(self, images: Sequence[np.ndarray], *, timed: bool = False) -> ScoredBatch:
        """The first half of ``segment_batch``: every frame's per-query scores ``[Q, h, w]`` at
        its processing resolution (after the method's refiners), on the device, with the
        vocabulary and settings they were made with (:class:`~.scored.ScoredBatch`). Nothing
        waits for the device. Bad frames raise ``ValueError`` as in ``segment_batch``."""
        self._require_models()
        state = self._state
        if state is None:
            raise RuntimeError("no vocabulary: call set_vocabulary() first")
        for index, rgb in enumerate(images):
            try:
                _check_image(rgb)
            except ValueError as exc:
                raise ValueError(f"frame {index}: {exc}" if len(images) > 1 else str(exc)) from None
        timer = StageTimer(self.device, timed=timed)
        cfg = self.config
        sizes = [tuple(rgb.shape[:2]) for rgb in images]
        if not images:
            return ScoredBatch([], [], state, cfg.logit_scale, cfg.prob_threshold, timer)
        frames = [self._preprocess(cfg, rgb) for rgb in images]  # [1, 3, h, w] in [0, 1]
        timer.lap("preprocess")

        if self._method.patch_graph:
            scores = self._lposs_scores(cfg, frames, state, timer)
        else:
            scores = self._clip_scores(cfg, frames, state, timer)  # [1, Q, h, w] each

        if cfg.pixel_refine:
            from .lposs import pixel_propagation

            scores = [
                pixel_propagation(
                    image[0],
                    score[0],
                    radius=cfg.pixel_radius,
                    tau=cfg.pixel_tau,
                    alpha=cfg.pixel_alpha,
                    iters=cfg.pixel_iters,
                )[None]
                for image, score in zip(frames, scores, strict=True)
            ]
            timer.lap("pixel_refine")

        if cfg.tlp:
            normalized = [self._normalize_clip(image) for image in frames]
            scores = text_aware_refine(
                normalized, scores, sizes, state.text, grid=cfg.tlp_grid, iters=cfg.tlp_iters
            )
            timer.lap("tlp")
        scores = [score[0] for score in scores]
        return ScoredBatch(scores, sizes, state, cfg.logit_scale, cfg.prob_threshold, timer)

    @torch.inference_mode()
    def finish_batch(
        self, batch: ScoredBatch, *, unlabeled: bool = False
    ) -> list[SegmentationResult]:
        """The second half of ``segment_batch``: each frame's scores reduced to labels and
        confidence at its image size, all copied to the host with one wait for the device.
        ``unlabeled``: as in ``segment_batch``."""
        if not batch.scores:
            return []
        state, timer = batch.state, batch.timer
        unlabeled_value = unlabeled_id(len(state.vocabulary)) if unlabeled else None
        maps = [
            reduce_upsampled(
                score,
                size,
                state.offsets,
                logit_scale=batch.logit_scale,
                prob_threshold=batch.prob_threshold,
                query_to_entry=state.query_to_entry,
                unlabeled_id=unlabeled_value,
            )
            for score, size in zip(batch.scores, batch.sizes, strict=True)
        ]
        timer.lap("postprocess")
        maps = host_maps(maps, len(state.vocabulary))  # the call's one wait for the device
        timings = timer.finish()
        return [
            SegmentationResult(
                frame_maps,
                score,
                state.vocabulary,
                dict(timings),
                offsets=state.offsets,
                query_to_entry=state.query_to_entry,
                logit_scale=batch.logit_scale,
                prob_threshold=batch.prob_threshold,
                unlabeled_id=unlabeled_value,
            )
            for frame_maps, score in zip(maps, batch.scores, strict=True)
        ]

    def warmup(self, height: int = 480, width: int = 640) -> float:
        """Segment one blank frame so one-time costs (CUDA context, cuBLAS handles, kernel
        compilation) are paid before the first real frame. Returns the seconds it took."""
        started = time.perf_counter()
        self.segment(np.zeros((height, width, 3), np.uint8))
        return time.perf_counter() - started

    def _preprocess(self, cfg: SegmenterConfig, rgb: np.ndarray) -> torch.Tensor:
        """``uint8 [H, W, 3]`` -> ``[1, 3, h, w]`` in [0, 1] at the processing size."""
        height, width = rgb.shape[:2]
        size = rescaled_size(height, width, cfg.short_side, cfg.max_long_side)
        # mmseg resizes the uint8 image with OpenCV before anything else; doing the same on
        # the host is exact and uploads the smaller image.
        resized = resize_rgb(rgb, size) if size != (height, width) else rgb
        host = rgb if resized is None else resized
        if not host.flags.writeable or not host.flags.c_contiguous:
            host = np.array(host, order="C")  # torch needs writable memory (ROS buffers are not)
        image = torch.from_numpy(host)
        if self.device.type == "cuda":
            # Staged in pinned memory (PyTorch's host cache: no allocation once warm), the
            # upload is asynchronous; from pageable memory non_blocking would not be.
            image = image.pin_memory()
        image = image.to(self.device, non_blocking=True)
        image = image.permute(2, 0, 1)[None].float()  # [1, 3, h, w] in 0..255
        if resized is None and size != (height, width):
            image = resize_image(image, size)
        return image / 255.0

    def _normalize_clip(self, image: torch.Tensor) -> torch.Tensor:
        mean, std = self._clip_norm
        return (image - mean) / std

    def _windows(self, cfg: SegmenterConfig, image: torch.Tensor):
        """Crops ``[N, 3, h, w]`` (in [0, 1]) and their boxes."""
        _, _, h, w = image.shape
        if cfg.whole_image:
            boxes = [(0, h, 0, w)]
        else:
            boxes = window_boxes(h, w, cfg.window_size, cfg.window_stride)
        crops = crop_windows(image, boxes)
        patch = self._clip.patch_size
        if self._method.pad_windows:
            # LPOSS pads a crop to a multiple of the patch size (zeros before normalisation).
            pad_h, pad_w = (-crops.shape[-2]) % patch, (-crops.shape[-1]) % patch
            if pad_h or pad_w:
                crops = F.pad(crops, (0, pad_w, 0, pad_h))
        elif crops.shape[-2] < patch or crops.shape[-1] < patch:
            # PEARL drops the partial last patch; a crop thinner than one patch is stretched.
            crops = F.interpolate(
                crops,
                size=(max(patch, crops.shape[-2]), max(patch, crops.shape[-1])),
                mode="bilinear",
                align_corners=False,
            )
        return crops, boxes

    def _clip_scores(self, cfg, frames, state, timer) -> list[torch.Tensor]:
        """PEARL / MaskCLIP: per-window cosine scores stitched into ``[1, Q, h, w]`` per frame."""
        windows = [self._windows(cfg, image) for image in frames]
        per_frame = batched_windows(self._clip_call, [c for c, _ in windows], self.max_windows)
        timer.lap("backbone")
        if self._method.scorer == "pearl":
            visual = self._clip.model.visual
            feats = [
                clip.pearl_last_block(
                    visual,
                    tokens,
                    alpha_kk=cfg.alpha_kk if cfg.use_kk else 0.0,
                    solver=cfg.procrustes_solver,
                    iters=cfg.polar_iters,
                )
                for tokens, _ in per_frame
            ]
            timer.lap("attention")
        else:
            feats = [f for f, _ in per_frame]
        stitched = []
        for f, (_, grid), (_, boxes), image in zip(feats, per_frame, windows, frames, strict=True):
            scores = f @ state.text.T  # [N, hw, Q]
            # Both official codes resize the (truncated or padded) patch grid onto the crop.
            stitched.append(stitch_patch_scores(scores, grid, boxes, image.shape[-2:]))
        timer.lap("stitch")
        return stitched

    def _lposs_scores(self, cfg, frames, state, timer) -> list[torch.Tensor]:
        """LPOSS: MaskCLIP scores propagated over one DINO kNN graph of each frame's patches."""
        from .lposs import patch_centers, patch_propagation_batch

        windows = [self._windows(cfg, image) for image in frames]
        crops = [c for c, _ in windows]
        clip_out = batched_windows(self._clip_call, crops, self.max_windows)
        dino_out = batched_windows(self._dino_call, crops, self.max_windows)
        for (_, grid), (_, dino_grid) in zip(clip_out, dino_out, strict=True):
            if dino_grid != grid:
                raise RuntimeError(f"CLIP grid {grid} and DINO grid {dino_grid} differ")
        timer.lap("backbone")
        propagated: list[torch.Tensor | None] = [None] * len(frames)
        # Frames with the same window layout share one batched propagation.
        layouts = [(tuple(image.shape[-2:]), tuple(out[0].shape)) for image, out in
                   zip(frames, clip_out, strict=True)]  # fmt: skip
        for group in group_by_shape(layouts):
            clip_feats = torch.stack([clip_out[i][0] for i in group])  # [B, n, hw, D]
            dino_feats = torch.stack([dino_out[i][0] for i in group])
            b, n, hw, _ = clip_feats.shape
            grid = clip_out[group[0]][1]
            boxes = windows[group[0]][1]
            # Built on the device: a host-to-device copy would synchronise on CUDA.
            centers = patch_centers(
                [(box[0], box[2]) for box in boxes],
                [grid] * n,
                self._clip.patch_size,
                device=self.device,
            )
            out = patch_propagation_batch(
                dino_feats.reshape(b, n * hw, -1),
                (clip_feats @ state.text.T).reshape(b, n * hw, -1),
                centers,
                k=cfg.lposs_k,
                gamma=cfg.lposs_gamma,
                sigma=cfg.lposs_sigma,
                alpha=cfg.lposs_alpha,
                iters=cfg.lposs_iters,
            )
            for row, i in enumerate(group):
                propagated[i] = out[row].reshape(n, hw, -1)
        timer.lap("patch_propagation")
        stitched = [
            stitch_patch_scores(p, grid, boxes, image.shape[-2:])
            for p, (_, grid), (_, boxes), image in zip(
                propagated, clip_out, windows, frames, strict=True
            )
        ]
        timer.lap("stitch")
        return stitched

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def released(self) -> bool:
        return self._clip is None

    def release(self) -> None:
        """Free the models (and GPU memory); the segmenter is unusable afterwards."""
        self._clip = None
        self._dino = None
        self._clip_call = self._dino_call = None  # they hold the models (and CUDA graphs)
        self._state = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _require_models(self) -> None:
        if self._clip is None:
            raise RuntimeError("this segmenter was released; build a new one")


def build_segmenter(config: SegmenterConfig | None = None, **overrides) -> Segmenter:
    """Build a :class:`Segmenter` (loads the models; fails at once if weights are missing)."""
    config = config or SegmenterConfig()
    if overrides:
        config = config.replace(**overrides)
    return Segmenter(config)


def check_device(name: str) -> torch.device:
    """``torch.device(name)``, or ``ValueError`` saying why it cannot be used here."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"invalid device {name!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) present")
    return device


def _check_image(rgb: object) -> None:
    if not isinstance(rgb, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {rgb.dtype}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image must have shape [H, W, 3], got {list(rgb.shape)}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"image is empty: shape {list(rgb.shape)}")
    if max(rgb.shape[:2]) > MAX_IMAGE_SIDE:
        raise ValueError(f"image side larger than {MAX_IMAGE_SIDE} px: {list(rgb.shape)}")
