"""Scores -> probabilities and labels, with synonym reduction and the background threshold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def clean_scores(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` as float32 with NaN -> 0 and +-inf -> +-1e4, in place when already float32:
    a broken score stays harmless, and finite scores are unchanged (no device query needed)."""
    return torch.nan_to_num_(scores.float(), nan=0.0, posinf=1e4, neginf=-1e4)


def reduce_scores(
    scores: torch.Tensor,
    query_to_entry: torch.Tensor,
    num_entries: int,
    *,
    logit_scale: float = 40.0,
    prob_threshold: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Labels, confidence and per-entry probabilities from per-synonym scores.

    As both official codes do: softmax over all synonyms of ``logit_scale * scores``; an
    entry's probability is the max over its synonyms; a pixel whose best entry probability is
    below ``prob_threshold`` gets entry 0 (the background entry); probabilities are then
    renormalised to sum to 1 over entries.

    Args:
        scores: ``[Q, H, W]`` one map per synonym (query).
        query_to_entry: ``[Q]`` long, the entry each query belongs to.
    Returns:
        labels ``[H, W]`` long, confidence ``[H, W]`` (the label's probability) and
        probabilities ``[C, H, W]``.
    """
    scores = clean_scores(scores.to(torch.float32, copy=True))  # one copy, any dtype
    probs = torch.softmax(logit_scale * scores, dim=0)
    if num_entries != probs.shape[0]:
        index = query_to_entry.view(-1, 1, 1).expand_as(probs)
        reduced = probs.new_zeros((num_entries, *probs.shape[1:]))
        probs = reduced.scatter_reduce(0, index, probs, reduce="amax", include_self=False)
    best, labels = probs.max(dim=0)
    if prob_threshold > 0:
        labels = torch.where(best < prob_threshold, torch.zeros_like(labels), labels)
    probs = probs / probs.sum(dim=0, keepdim=True).clamp_min(1e-12)
    confidence = probs.gather(0, labels[None])[0]
    return labels, confidence, probs


# --- at the output size, without C x H x W ------------------------------------------------------

# Elements of one upsampled chunk of classes (64 MB in float32): bounds the peak memory of
# ``reduce_upsampled`` at ``CHUNK_ELEMENTS + ~6 H W`` values, whatever the number of classes.
CHUNK_ELEMENTS = 1 << 24


@dataclass
class OutputMaps:
    """Labels and confidence at the output size, plus what per-entry probabilities need.

    ``probability(e) = exp(logit_scale * score_e - max_logit) / norm`` with ``score_e`` the
    max over ``e``'s synonyms of the upsampled scores (all ``[H, W]``).
    """

    labels: torch.Tensor  # [H, W] int32
    confidence: torch.Tensor  # [H, W] float32
    max_logit: torch.Tensor  # [H, W] float32: max over queries of logit_scale * score
    norm: torch.Tensor  # [H, W] float32: sum over entries of exp(scale * score_e - max_logit)


def entry_offsets(query_to_entry: Sequence[int], num_entries: int) -> list[int]:
    """``[num_entries + 1]`` start of each entry's queries, the queries being grouped by entry
    in entry order (as ``Vocabulary.queries`` lists them); ``ValueError`` otherwise."""
    counts = [0] * num_entries
    previous = 0
    for entry in query_to_entry:
        if entry < previous or entry >= num_entries:
            raise ValueError("queries must be grouped by entry, in entry order")
        counts[entry] += 1
        previous = entry
    if min(counts, default=1) == 0:
        raise ValueError("every entry needs at least one query")
    offsets = [0]
    for count in counts:
        offsets.append(offsets[-1] + count)
    return offsets


def upsample_chunk(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[Qc, h, w]`` -> ``[Qc, *size]`` bilinear (the same call, per channel, as upsampling all
    channels at once: each output value is computed the same way, so results are identical)."""
    if tuple(scores.shape[-2:]) == tuple(size):
        return scores.clone()
    return F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]


def _entry_scores(
    scores: torch.Tensor,
    offsets: Sequence[int],
    first: int,
    last: int,
    size: tuple[int, int],
    query_to_entry: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries ``first..last-1``: scores upsampled to ``size`` and reduced over synonyms
    ``[Ec, H, W]``, and the per-query upsampled scores ``[Qc, H, W]`` (the same tensor when
    every entry has one synonym). ``query_to_entry`` ``[Q]`` on the scores' device gives the
    synonyms' entries without a host-to-device copy (a synchronisation on CUDA); ``None``:
    built from ``offsets``."""
    q0, q1 = offsets[first], offsets[last]
    # NaN / inf cleaned as in ``reduce_scores``; a no-op on finite scores, and cheaper than
    # asking the device whether there are any (a synchronisation).
    queries = clean_scores(upsample_chunk(scores[q0:q1], size))
    if q1 - q0 == last - first:
        return queries, queries
    if query_to_entry is not None:
        owner = query_to_entry[q0:q1] - first
    else:
        owner = torch.repeat_interleave(
            torch.arange(last - first),
            torch.tensor(offsets[first + 1 : last + 1]) - torch.tensor(offsets[first:last]),
        ).to(queries.device)
    index = owner.view(-1, 1, 1).expand_as(queries)  # a view: no Qc x H x W index tensor
    entries = queries.new_empty((last - first, *queries.shape[1:]))
    entries = entries.scatter_reduce_(0, index, queries, reduce="amax", include_self=False)
    return entries, queries


def _exp_shifted(x: torch.Tensor, scale: float, max_logit: torch.Tensor) -> torch.Tensor:
    """``exp(scale * x - max_logit)`` in place of ``x``: the numerator of ``reduce_scores``'
    softmax, operation for operation (exactly 1 at the maximum)."""
    return x.mul_(scale).sub_(max_logit).exp_()


def _chunks(offsets: Sequence[int], pixels: int, chunk_elements: int) -> list[tuple[int, int]]:
    """Consecutive entry ranges whose queries fill about ``chunk_elements`` values each."""
    per_chunk = max(1, chunk_elements // max(pixels, 1))
    ranges, first = [], 0
    num_entries = len(offsets) - 1
    while first < num_entries:
        last = first + 1
        while last < num_entries and offsets[last + 1] - offsets[first] <= per_chunk:
            last += 1
        ranges.append((first, last))
        first = last
    return ranges


def reduce_upsampled(
    scores: torch.Tensor,
    size: tuple[int, int],
    offsets: Sequence[int],
    *,
    logit_scale: float = 40.0,
    prob_threshold: float = 0.0,
    chunk_elements: int = CHUNK_ELEMENTS,
    query_to_entry: torch.Tensor | None = None,
    unlabeled_id: int | None = None,
) -> OutputMaps:
    """``reduce_scores(upsample(scores, size), ...)``'s labels and confidence, never holding
    the ``C x H x W`` upsampled scores or probabilities.

    Classes go through in chunks of about ``chunk_elements`` values, once: each chunk is
    upsampled (bilinear, bit-identical to upsampling all classes at once) and folded into
    running per-pixel maps: the max score ``m`` so far and the first entry reaching it, and,
    with ``v = logit_scale * score - logit_scale * m`` (as the softmax computes it),
    ``Z = sum_q exp(v_q)`` (the softmax normaliser) and ``S = sum_e exp(v_e)`` over entries
    (``v_e``: max over the entry's synonyms), rescaled by ``exp(logit_scale * (m_old - m))``
    when a chunk raises ``m`` (online softmax: with one chunk, the usual case, exactly the
    softmax's operations; with several, each class is upsampled once instead of twice, within
    ~1e-7). Then, as in ``reduce_scores``, the best entry's probability is ``1 / Z`` (checked
    against ``prob_threshold``) and the label's after renormalisation ``exp(v_label) / S``.
    Peak memory: one chunk plus about seven ``[H, W]`` maps.

    Args:
        scores: ``[Q, h, w]`` per-query scores at any resolution.
        size: ``(H, W)`` output size.
        offsets: ``entry_offsets`` of the vocabulary (queries grouped by entry).
        query_to_entry: ``[Q]`` long, the same grouping on the scores' device (optional:
            saves a host-to-device copy per chunk when entries have synonyms).
        unlabeled_id: the label of pixels below ``prob_threshold``, their confidence the
            best entry's probability; None: entry 0 and its probability, as
            ``reduce_scores`` (the papers' background convention).
    Returns:
        ``OutputMaps`` at ``size``; labels agree with ``reduce_scores`` (a label can differ only
        where two entries' probabilities tie to the last bit), confidence to ~1e-7.
    """
    ranges = _chunks(offsets, size[0] * size[1], chunk_elements)
    # The max compares raw scores: x -> logit_scale * x is monotone, so the max and the first
    # entry reaching it are those of the logits.
    best_score = labels = first_score = max_logit = norm = softmax_norm = None
    for first, last in ranges:
        entries, queries = _entry_scores(scores, offsets, first, last, size, query_to_entry)
        if last - first == 1:
            best, index = entries[0], None
        else:
            best, index = entries.max(dim=0)  # first maximum on ties, as reduce_scores
        if first == 0 and prob_threshold > 0 and unlabeled_id is None:
            first_score = entries[0].clone()  # the background entry's score
        if best_score is None:
            best_score = best.clone()
            labels = (index if index is not None else torch.zeros_like(best)).to(torch.int32)
            rescale = None
        else:
            better = best > best_score  # strict: an earlier entry wins a tie
            if index is None:
                labels.masked_fill_(better, first)
            else:
                labels = torch.where(better, index.to(torch.int32) + first, labels)
            best_score = torch.maximum(best_score, best, out=best_score)
        # Rounding is monotone, so this is bit for bit the max of logit_scale * score so far.
        new_max = best_score * logit_scale
        if max_logit is not None:
            rescale = max_logit.sub_(new_max).exp_()  # exp(old max - new max) <= 1
        max_logit = new_max
        if prob_threshold > 0:
            if queries is entries:
                queries = queries.clone()
            part = _exp_shifted(queries, logit_scale, max_logit).sum(dim=0)
            softmax_norm = part if softmax_norm is None else softmax_norm.mul_(rescale).add_(part)
        part = _exp_shifted(entries, logit_scale, max_logit).sum(dim=0)
        norm = part if norm is None else norm.mul_(rescale).add_(part)
        del entries, queries, best, index, part
    if softmax_norm is None:
        confidence = norm.reciprocal()
    elif unlabeled_id is not None:
        # The best entry's probability after renormalisation is exp(0) / norm.
        below = softmax_norm.reciprocal_() < prob_threshold
        labels.masked_fill_(below, unlabeled_id)
        confidence = norm.reciprocal()
    else:
        below = softmax_norm.reciprocal_() < prob_threshold  # the best entry's probability
        labels.masked_fill_(below, 0)
        numerator = torch.where(below, first_score.mul_(logit_scale).sub_(max_logit), 0.0)
        confidence = numerator.exp_().div_(norm)
    return OutputMaps(labels, confidence, max_logit, norm)


def entry_probability(
    scores: torch.Tensor,
    maps: OutputMaps,
    offsets: Sequence[int],
    entry: int,
    *,
    logit_scale: float = 40.0,
    query_to_entry: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[H, W]`` probability of one entry at the output size (``reduce_scores``'s value)."""
    if not 0 <= entry < len(offsets) - 1:
        raise IndexError(f"entry {entry} out of range for {len(offsets) - 1} entries")
    size = tuple(maps.max_logit.shape)
    entries, _ = _entry_scores(scores, offsets, entry, entry + 1, size, query_to_entry)
    # Upsampled alone, the entry's scores may differ from the chunk's by rounding (LPOSS's
    # propagated scores reach ~20, times logit_scale 40): never a probability above 1.
    return _exp_shifted(entries[0], logit_scale, maps.max_logit).div_(maps.norm).clamp_(max=1.0)


# --- scores <-> distributions over queries (stages between scoring and reduction) --------------


def query_probabilities(scores: torch.Tensor, logit_scale: float = 40.0) -> torch.Tensor:
    """``[Q, h, w]`` scores -> ``[Q, h, w]`` float32 ``softmax(logit_scale * scores)`` over
    queries: the distribution the reduction (``reduce_scores``, ``reduce_upsampled``) reads,
    NaN / inf cleaned as there."""
    scores = clean_scores(scores.to(torch.float32, copy=True))  # one copy, any dtype
    return torch.softmax(scores.mul_(logit_scale), dim=0)


def scores_from_probabilities(
    probabilities: torch.Tensor, logit_scale: float = 40.0
) -> torch.Tensor:
    """``[Q, h, w]`` distributions over queries (each pixel sums to 1) -> ``[Q, h, w]`` scores
    that the reduction turns back into them.

    ``log(p) / logit_scale``: the softmax over queries of ``logit_scale`` times it is ``p``
    again, the synonym reduction, ``prob_threshold`` and the unlabeled value then apply
    unchanged. The log differs from the original scores by a per-pixel constant, which the
    softmax ignores, also after bilinear upsampling (a per-pixel weighted sum of constants is
    a constant per output pixel): for ``p = softmax(logit_scale * s)`` the labels and
    confidence at the image size equal those of ``s`` to float rounding. Probabilities below
    the float32 ``tiny`` (about 1e-38) are clamped to it.
    """
    tiny = torch.finfo(torch.float32).tiny
    return probabilities.float().clamp_min(tiny).log_().div_(logit_scale)
