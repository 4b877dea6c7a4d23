"""Fusion of per-channel rankings into one ranking, with an explanation for every hit.

A *channel* is the ranked result list of one named vector (``image``, ``text``, ``semantic``) as
``(item_id, raw_score)`` pairs, best first. The rank of an item is its 1-based position in that list.

Fusion methods (``fuse(method, ...)``):

- ``rrf``, weighted reciprocal rank fusion: ``sum_c w_c / (k + rank_c)``. It uses ranks only, so channels
  whose raw scores live on different scales (CLIP text-to-image cosines near 0.3, image-to-image near 0.9)
  combine fairly, and rescaling a channel's scores changes nothing. Ranks count from 1, as in the RRF
  paper; Qdrant counts positions from 0, so its ``Fusion.RRF(k)`` is ours with ``k - 1``, and its
  weighting (``1 / ((rank) / w + k - 1)``) differs from this one, so Python-side fusion is the reference.
- ``dbsf``, distribution-based score fusion as in Qdrant: each channel's scores are rescaled so that
  ``mean - 3 std`` maps to 0 and ``mean + 3 std`` to 1 (sample std; a single item, or a channel whose
  spread is only rounding, maps to 0.5), then summed with the weights. As in Qdrant nothing is clipped, so a
  rare outlier beyond 3 std lands slightly outside [0, 1]; results agree with a server-side ``Fusion.DBSF``.
- ``sum``, normalised weighted sum: each channel is min-max rescaled to [0, 1] (no spread maps to 0.5),
  then summed with the weights.

In every method an item missing from a channel contributes 0 for that channel. Weights need not sum to 1;
a channel with weight 0 is left out entirely; a negative weight is refused. Ties are broken by the best
rank the item reached in any channel, then by id, so the order is deterministic.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, TypedDict

import numpy as np

log = logging.getLogger(__name__)

Channel = Sequence[tuple[str, float]]
Channels = Mapping[str, Channel]
FusionMethod = Literal["rrf", "dbsf", "sum", "calibrated"]

DEFAULT_RRF_K = 60


class ChannelPart(TypedDict):
    """How one channel saw an item: its raw score and rank there (None when absent) and what it added."""

    raw: float | None
    rank: int | None
    contribution: float


@dataclass(frozen=True)
class FusedHit:
    """One fused result. ``channels`` explains the score: ``score == sum(contribution) - penalty``."""

    id: str
    score: float
    channels: dict[str, ChannelPart]
    negative: float | None = None
    penalty: float = 0.0

    @property
    def best_rank(self) -> int:
        ranks = [part["rank"] for part in self.channels.values() if part["rank"] is not None]
        return min(ranks) if ranks else math.inf  # type: ignore[return-value]


def _sort_key(hit: FusedHit) -> tuple[float, float, str]:
    return (-hit.score, hit.best_rank, hit.id)


def _check_weight(name: str, weight: float) -> float:
    w = float(weight)
    if not math.isfinite(w) or w < 0:
        raise ValueError(f"weight for channel {name!r} must be a finite number >= 0, got {weight!r}")
    return w


def _active_channels(channels: Channels, weights: Mapping[str, float]) -> dict[str, tuple[float, Channel]]:
    """Validated channels with a positive weight, in name order, duplicate ids removed."""
    checked = {name: _check_weight(name, w) for name, w in weights.items()}
    missing = sorted(set(channels) - set(checked))
    if missing:
        raise ValueError(f"no weight for channel(s) {missing}; weights were given for {sorted(checked)}")
    active: dict[str, tuple[float, Channel]] = {}
    for name in sorted(channels):
        if checked[name] == 0:
            continue
        seen: set[str] = set()
        rows: list[tuple[str, float]] = []
        for position, (item_id, raw) in enumerate(channels[name], start=1):
            score = float(raw)
            if not math.isfinite(score):
                raise ValueError(f"channel {name!r} position {position}: score {raw!r} is not a finite number")
            if item_id in seen:
                # A channel ranks each item once; a repeat can only rank lower, so the first one stands.
                log.debug("channel %r: id %r repeated at position %d, ignored", name, item_id, position)
                continue
            seen.add(item_id)
            rows.append((item_id, score))
        active[name] = (checked[name], rows)
    return active


def _combine(active: dict[str, tuple[float, Channel]], values: dict[str, list[float]]) -> list[FusedHit]:
    """Weighted sum of per-channel values (aligned with each channel's rows), with explanations."""
    parts: dict[str, dict[str, ChannelPart]] = {}
    for name, (weight, rows) in active.items():
        for rank, ((item_id, raw), value) in enumerate(zip(rows, values[name], strict=True), start=1):
            parts.setdefault(item_id, {})[name] = ChannelPart(raw=raw, rank=rank, contribution=weight * value)
    hits = []
    for item_id, seen in parts.items():
        explained = {name: seen.get(name, ChannelPart(raw=None, rank=None, contribution=0.0)) for name in active}
        # fsum is exact, hence independent of summation order: equal inputs give bit-equal scores.
        score = math.fsum(part["contribution"] for part in explained.values())
        hits.append(FusedHit(id=item_id, score=score, channels=explained))
    hits.sort(key=_sort_key)
    return hits


def weighted_rrf(channels: Channels, weights: Mapping[str, float], k: float = DEFAULT_RRF_K) -> list[FusedHit]:
    """Weighted reciprocal rank fusion: ``score = sum_c w_c / (k + rank_c)``."""
    k = float(k)
    if not math.isfinite(k) or k < 0:
        raise ValueError(f"RRF k must be a finite number >= 0, got {k!r}")
    active = _active_channels(channels, weights)
    values = {name: [1.0 / (k + rank) for rank in range(1, len(rows) + 1)] for name, (_, rows) in active.items()}
    return _combine(active, values)


# Below this spread relative to the scores' magnitude, a channel's scores count as equal (see _distribution_norm).
_NO_SPREAD_RTOL = 1e-10
_FLOAT32_SMALLEST = float(np.finfo(np.float32).smallest_subnormal)


def _distribution_norm(scores: np.ndarray) -> np.ndarray:
    # Store scores come from float32 vectors: about 7 significant digits, neighbouring float32 values are
    # 6e-8 to 1.2e-7 apart relative to their size. A spread far below that is float64 rounding (in the mean,
    # or upstream), not a difference between items, and 3-std scaling would stretch that noise over the
    # whole [0, 1] window. Three equal 0.054688 show it: qdrant-client's Python reference takes sum / n as
    # the mean, one ulp off, sees a 7e-35 variance and scores each 0.625; Qdrant's server (Welford's mean)
    # and this function give 0.5. So a spread under 1e-10 of the largest magnitude (a thousandth of float32's
    # resolution, a million times float64's), or under the smallest float32 near zero, is no spread: 0.5,
    # as for an exactly zero variance. Measured as max - min, because the computed std carries that rounding.
    if scores.size < 2:
        return np.full(scores.shape, 0.5)
    low, high = float(scores.min()), float(scores.max())
    if high - low < max(_NO_SPREAD_RTOL * max(abs(low), abs(high)), _FLOAT32_SMALLEST):
        return np.full(scores.shape, 0.5)
    # The window is invariant under rescaling; working in [0, 1] keeps tiny spreads from underflowing in std.
    unit = (scores - low) / (high - low)
    std = float(np.std(unit, ddof=1))
    return (unit - (float(np.mean(unit)) - 3.0 * std)) / (6.0 * std)


def _min_max_norm(scores: np.ndarray) -> np.ndarray:
    if scores.size == 0:
        return scores
    low, high = float(scores.min()), float(scores.max())
    if high == low:
        return np.full(scores.shape, 0.5)
    return (scores - low) / (high - low)


def _normalised_fusion(
    channels: Channels, weights: Mapping[str, float], norm: Callable[[np.ndarray], np.ndarray]
) -> list[FusedHit]:
    active = _active_channels(channels, weights)
    values = {
        name: norm(np.array([raw for _, raw in rows], dtype=np.float64)).tolist() for name, (_, rows) in active.items()
    }
    return _combine(active, values)


def dbsf(channels: Channels, weights: Mapping[str, float]) -> list[FusedHit]:
    """Distribution-based score fusion (Qdrant's): mean +/- 3 sample std rescaled to [0, 1], weighted sum."""
    return _normalised_fusion(channels, weights, _distribution_norm)


def weighted_sum(channels: Channels, weights: Mapping[str, float]) -> list[FusedHit]:
    """Min-max normalised weighted sum; an item missing from a channel gets 0 there."""
    return _normalised_fusion(channels, weights, _min_max_norm)


def calibrated_mean(channels: Channels, weights: Mapping[str, float]) -> list[FusedHit]:
    """Weighted mean of scores already calibrated to 0-1 relevance (the fused score stays a relevance).

    Channels must score the same candidates (exact cosines, not top-k lists); a missing item counts 0.
    """
    active = _active_channels(channels, weights)
    total = math.fsum(weight for weight, _ in active.values())
    values = {name: [raw / total for _, raw in rows] for name, (_, rows) in active.items()}
    return _combine(active, values)


FUSIONS: dict[str, Callable[..., list[FusedHit]]] = {
    "rrf": weighted_rrf,
    "dbsf": dbsf,
    "sum": weighted_sum,
    "calibrated": calibrated_mean,
}


def fuse(method: FusionMethod, channels: Channels, weights: Mapping[str, float], **params: float) -> list[FusedHit]:
    """Fuse with the named method; ``params`` are that method's options (``k`` for ``rrf``)."""
    try:
        fusion = FUSIONS[method]
    except KeyError:
        raise ValueError(f"unknown fusion method {method!r}; choose one of {sorted(FUSIONS)}") from None
    accepted = sorted(set(inspect.signature(fusion).parameters) - {"channels", "weights"})
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"fusion {method!r} has no option(s) {unknown}; it accepts {accepted or 'none'}")
    return fusion(channels, weights, **params)


def penalise(
    fused: Sequence[FusedHit],
    negative_scores: Mapping[str, float],
    weight: float,
    threshold: float | None = None,
) -> list[FusedHit]:
    """Push down items similar to a negative query ("not striped"), and drop the clear matches.

    ``negative_scores[id]`` is the item's similarity to the negative query, on the same scale as the fused
    score (for example calibrated relevance against a calibrated fused score). Each item loses
    ``weight * max(similarity, 0)``, so being unlike the negative never raises a score; an item whose
    similarity exceeds ``threshold`` is dropped. Items without a negative score are kept unchanged.
    """
    weight = _check_weight("negative", weight)
    if threshold is not None and math.isnan(threshold):
        raise ValueError("negative threshold must be a number or None, got nan")
    out = []
    for hit in fused:
        similarity = negative_scores.get(hit.id)
        if similarity is None:
            out.append(hit)
            continue
        similarity = float(similarity)
        if not math.isfinite(similarity):
            raise ValueError(f"negative score for {hit.id!r} is not a finite number: {similarity!r}")
        if threshold is not None and similarity > threshold:
            continue
        penalty = weight * max(similarity, 0.0)
        # A hit penalised before gets its old penalty back first, so penalising again replaces it.
        base = hit.score + hit.penalty
        out.append(replace(hit, score=base - penalty, negative=similarity, penalty=penalty))
    out.sort(key=_sort_key)
    return out


@dataclass(frozen=True)
class Dedup:
    """Result of ``mmr_dedup``: positions kept, and for each dropped position the kept one it duplicates."""

    kept: list[int]
    duplicate_of: dict[int, int]
    ids: Sequence[str]

    @property
    def kept_ids(self) -> list[str]:
        return [self.ids[i] for i in self.kept]

    @property
    def duplicate_ids(self) -> dict[str, str]:
        return {self.ids[i]: self.ids[j] for i, j in self.duplicate_of.items()}


def mmr_dedup(ids: Sequence[str], vectors: np.ndarray, threshold: float, keep: Collection[int] = ()) -> Dedup:
    """Collapse near-duplicates in a ranked page: keep an item unless its cosine to an item already kept
    exceeds ``threshold``; it is then recorded as a duplicate of the most similar kept item. Positions
    in ``keep`` (products asked for by name, such as code matches) are never collapsed.

    ``vectors`` is (N, d), row i for ``ids[i]``, best first; rows are L2-normalised here as well.
    """
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] != len(ids):
        raise ValueError(f"vectors must have shape ({len(ids)}, d) to match the ids, got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("vectors contain non-finite values")
    threshold = float(threshold)
    if math.isnan(threshold):
        raise ValueError("dedup threshold must be a number, got nan")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    v = np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)
    kept: list[int] = []
    duplicate_of: dict[int, int] = {}
    for i in range(v.shape[0]):
        if kept and i not in keep:
            # Rounding can put the cosine of identical unit vectors a hair above 1.
            sims = np.clip(v[kept] @ v[i], -1.0, 1.0)
            j = int(np.argmax(sims))
            if sims[j] > threshold:
                duplicate_of[i] = kept[j]
                continue
        kept.append(i)
    return Dedup(kept=kept, duplicate_of=duplicate_of, ids=ids)
