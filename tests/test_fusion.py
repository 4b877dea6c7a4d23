"""Fusion, negatives and dedup: hand-computed cases, properties, and agreement with Qdrant's own fusion."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from qdrant_client.http import models
from qdrant_client.hybrid.fusion import distribution_based_score_fusion, reciprocal_rank_fusion

from search.fusion import (
    FusedHit,
    dbsf,
    fuse,
    mmr_dedup,
    penalise,
    weighted_rrf,
    weighted_sum,
)

# --- hand-computed examples -------------------------------------------------------------------------


def test_weighted_rrf_hand_computed():
    channels = {"image": [("a", 0.9), ("b", 0.8), ("c", 0.7)], "text": [("b", 0.3), ("d", 0.2)]}
    hits = weighted_rrf(channels, {"image": 0.6, "text": 0.4}, k=60)
    expected = {"a": 0.6 / 61, "b": 0.6 / 62 + 0.4 / 61, "c": 0.6 / 63, "d": 0.4 / 62}
    assert [h.id for h in hits] == ["b", "a", "c", "d"]
    for hit in hits:
        assert hit.score == pytest.approx(expected[hit.id], rel=1e-12)
    b = hits[0]
    assert b.channels["image"] == {"raw": 0.8, "rank": 2, "contribution": pytest.approx(0.6 / 62)}
    assert b.channels["text"] == {"raw": 0.3, "rank": 1, "contribution": pytest.approx(0.4 / 61)}
    d = hits[-1]
    assert d.channels["image"] == {"raw": None, "rank": None, "contribution": 0.0}
    assert d.best_rank == 2


def test_dbsf_hand_computed():
    # mean 0.5, sample std 0.4: the window is [-0.7, 1.7], 2.4 wide.
    channels = {"image": [("a", 0.9), ("b", 0.5), ("c", 0.1)], "text": [("c", 0.25)]}
    hits = {h.id: h for h in dbsf(channels, {"image": 1.0, "text": 2.0})}
    assert hits["a"].score == pytest.approx(1.6 / 2.4)
    assert hits["b"].score == pytest.approx(0.5)
    # A channel with one item maps it to 0.5, as in Qdrant.
    assert hits["c"].score == pytest.approx(0.8 / 2.4 + 2.0 * 0.5)
    assert hits["c"].channels["text"]["contribution"] == pytest.approx(1.0)


def test_weighted_sum_hand_computed():
    channels = {"image": [("a", 0.9), ("b", 0.7), ("c", 0.4)], "text": [("c", 0.5), ("a", 0.3), ("e", 0.1)]}
    hits = weighted_sum(channels, {"image": 3.0, "text": 1.0})
    scores = {h.id: h.score for h in hits}
    assert scores == pytest.approx({"a": 3.0 * 1.0 + 0.5, "b": 3.0 * 0.6, "c": 0.0 + 1.0, "e": 0.0})
    assert [h.id for h in hits] == ["a", "b", "c", "e"]


def test_no_spread_maps_to_half():
    # The float mean of three 0.7s is not 0.7, so a std test alone would see a spurious spread here.
    channels = {"image": [("a", 0.7), ("b", 0.7), ("c", 0.7)]}
    assert [h.score for h in weighted_sum(channels, {"image": 1.0})] == [0.5, 0.5, 0.5]
    assert [h.score for h in dbsf(channels, {"image": 1.0})] == [0.5, 0.5, 0.5]
    channels = {"image": [("a", 0.4), ("b", 0.4)]}
    assert [h.score for h in weighted_sum(channels, {"image": 1.0})] == [0.5, 0.5]
    assert [h.score for h in dbsf(channels, {"image": 1.0})] == [0.5, 0.5]


def test_ties_break_by_best_rank_then_id():
    # n (rank 2 in image) and p (rank 1 in text) both score exactly 0.5; p's better rank wins over id order.
    channels = {"image": [("m", 3.0), ("n", 2.0), ("o", 1.0)], "text": [("p", 7.0)]}
    assert [h.id for h in weighted_sum(channels, {"image": 1.0, "text": 1.0})] == ["m", "p", "n", "o"]
    # Same score, same best rank: by id.
    swapped = {"image": [("y", 1.0), ("x", 0.0)], "text": [("x", 1.0), ("y", 0.0)]}
    assert [h.id for h in weighted_rrf(swapped, {"image": 1.0, "text": 1.0})] == ["x", "y"]


def test_zero_weight_channel_is_ignored():
    channels = {"image": [("a", 0.9)], "text": [("z", 0.9), ("a", 0.1)]}
    hits = weighted_rrf(channels, {"image": 1.0, "text": 0.0})
    assert [h.id for h in hits] == ["a"]
    assert set(hits[0].channels) == {"image"}
    assert weighted_rrf(channels, {"image": 0.0, "text": 0.0}) == []


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_bad_weight_is_refused(bad):
    with pytest.raises(ValueError, match="weight for channel 'text'"):
        fuse("rrf", {"image": [("a", 1.0)], "text": []}, {"image": 1.0, "text": bad})


def test_missing_weight_and_bad_score_are_refused():
    with pytest.raises(ValueError, match=r"no weight for channel\(s\) \['text'\]"):
        dbsf({"image": [], "text": []}, {"image": 1.0})
    with pytest.raises(ValueError, match="channel 'image' position 2"):
        weighted_sum({"image": [("a", 1.0), ("b", math.nan)]}, {"image": 1.0})


def test_extra_weights_are_allowed():
    hits = weighted_rrf({"image": [("a", 1.0)]}, {"image": 1.0, "semantic": 0.5})
    assert [h.id for h in hits] == ["a"]


def test_repeated_id_in_a_channel_counts_once_at_its_first_rank():
    hits = weighted_rrf({"image": [("a", 0.9), ("b", 0.8), ("a", 0.7)]}, {"image": 1.0}, k=0)
    assert {h.id: h.score for h in hits} == {"a": 1.0, "b": 0.5}


def test_fuse_dispatch():
    channels = {"image": [("a", 0.9), ("b", 0.1)], "text": [("b", 0.5)]}
    weights = {"image": 1.0, "text": 1.0}
    assert fuse("rrf", channels, weights, k=1) == weighted_rrf(channels, weights, k=1)
    assert fuse("dbsf", channels, weights) == dbsf(channels, weights)
    assert fuse("sum", channels, weights) == weighted_sum(channels, weights)
    with pytest.raises(ValueError, match="unknown fusion method 'max'"):
        fuse("max", channels, weights)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"fusion 'dbsf' has no option\(s\) \['k'\]"):
        fuse("dbsf", channels, weights, k=60)
    with pytest.raises(ValueError, match="RRF k"):
        fuse("rrf", channels, weights, k=-1)


# --- agreement with Qdrant's reference implementation ---------------------------------------------------

ID_POOL = [f"i{n}" for n in range(12)]


# Store scores come from float32 vectors: a handful of significant digits, no subnormal spreads.
cosines = st.floats(-1, 1).map(lambda x: round(x, 6))


@st.composite
def channel_lists(draw, min_channels=1, max_channels=3):
    n = draw(st.integers(min_channels, max_channels))
    out = {}
    for c in range(n):
        ids = draw(st.lists(st.sampled_from(ID_POOL), unique=True, max_size=len(ID_POOL)))
        raw = sorted(draw(st.lists(cosines, min_size=len(ids), max_size=len(ids))), reverse=True)
        out[f"c{c}"] = list(zip(ids, raw, strict=True))
    return out


def _as_qdrant(rows):
    return [models.ScoredPoint(id=n, version=0, score=s) for n, s in rows]


def _to_numeric(channels):
    """qdrant_client wants int or UUID point ids."""
    return {name: [(ID_POOL.index(i), s) for i, s in rows] for name, rows in channels.items()}


@settings(max_examples=60, deadline=None)
@given(channel_lists(), st.integers(1, 100))
def test_unweighted_rrf_matches_qdrant(channels, k):
    ours = {h.id: h.score for h in weighted_rrf(channels, dict.fromkeys(channels, 1.0), k=k)}
    numeric = _to_numeric(channels)
    # Qdrant counts positions from 0: its 1 / (k' + position) is ours with k' = k + 1.
    ref = reciprocal_rank_fusion([_as_qdrant(r) for r in numeric.values()], limit=100, ranking_constant_k=k + 1)
    assert {ID_POOL[p.id]: p.score for p in ref} == pytest.approx(ours, rel=1e-9)


def _without_spread(rows) -> bool:
    # The cosine strategy's 6 decimals put any two different scores at least 1e-6 apart, far above rounding.
    return len({score for _, score in rows}) <= 1


@settings(max_examples=60, deadline=None)
@given(channel_lists())
@example({"c0": [("i0", 0.054688), ("i1", 0.054688), ("i2", 0.054688)]})
@example({"c0": [("i0", 0.054688), ("i1", 0.054688), ("i2", 0.054688)], "c1": [("i1", 0.9), ("i3", 0.1)]})
def test_dbsf_matches_qdrant(channels):
    """Qdrant's reference on every channel with a spread; channels without one add 0.5 per item.

    qdrant-client's Python reference scores three equal 0.054688 as 0.625 each (its mean is off by rounding),
    so it is not the reference for those channels: ``test_dbsf_channel_without_real_spread_maps_to_half`` is.
    """
    ours = {h.id: h.score for h in dbsf(channels, dict.fromkeys(channels, 1.0))}
    numeric = _to_numeric(channels)
    spread = [_as_qdrant(numeric[name]) for name, rows in channels.items() if not _without_spread(rows)]
    expected = {ID_POOL[p.id]: p.score for p in distribution_based_score_fusion(spread, limit=100)}
    for rows in channels.values():
        if _without_spread(rows):
            for item_id, _ in rows:
                expected[item_id] = expected.get(item_id, 0.0) + 0.5
    assert expected == pytest.approx(ours, rel=1e-6, abs=1e-9)


def test_dbsf_three_equal_scores_map_to_half():
    # The scores hypothesis found where qdrant-client's reference gives 0.625.
    channels = {"c0": [("i0", 0.054688), ("i1", 0.054688), ("i2", 0.054688)]}
    assert [h.score for h in dbsf(channels, {"c0": 1.0})] == [0.5, 0.5, 0.5]


def _ulps_away(value: float, steps: int) -> float:
    direction = math.inf if steps > 0 else -math.inf
    for _ in range(abs(steps)):
        value = math.nextafter(value, direction)
    return value


@settings(max_examples=100, deadline=None)
@given(
    st.floats(-1, 1, width=32),
    st.lists(st.integers(-4, 4), min_size=1, max_size=len(ID_POOL)),
    st.floats(0.1, 10.0),
)
def test_dbsf_channel_without_real_spread_maps_to_half(score, ulps, weight):
    """Scores a few float64 ulps apart are one float32 score plus rounding: 0.5 each, like an exact tie."""
    scores = sorted((_ulps_away(score, k) for k in ulps), reverse=True)
    channel = list(zip(ID_POOL, scores, strict=False))
    hits = dbsf({"c0": channel, "c1": [("i0", 0.9), ("i1", 0.2)]}, {"c0": weight, "c1": 1.0})
    for hit in hits:
        assert hit.channels["c0"]["contribution"] == (0.5 * weight if hit.channels["c0"]["rank"] else 0.0)


@settings(max_examples=100, deadline=None)
@given(st.floats(-1, 1, width=32))
def test_dbsf_neighbouring_float32_scores_are_a_real_spread(score):
    """The smallest difference float32 scores can have is a difference between items, not rounding."""
    above = float(np.nextafter(np.float32(score), np.float32(math.inf)))
    hits = {h.id: h.score for h in dbsf({"c0": [("a", above), ("b", score)]}, {"c0": 1.0})}
    assert hits["a"] > 0.5 > hits["b"]
    assert hits["a"] + hits["b"] == pytest.approx(1.0)


# --- properties ---------------------------------------------------------------------------------------

METHODS = {"rrf": weighted_rrf, "dbsf": dbsf, "sum": weighted_sum}
weights_st = st.floats(0.0, 5.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(channel_lists(), st.data())
def test_fused_result_is_consistent(channels, data):
    weights = {name: data.draw(weights_st) for name in channels}
    method = data.draw(st.sampled_from(sorted(METHODS)))
    hits = METHODS[method](channels, weights)
    active = {name for name, w in weights.items() if w > 0}
    expected_ids = {i for name in active for i, _ in channels[name]}
    assert len(hits) == len({h.id for h in hits})
    assert {h.id for h in hits} == expected_ids
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
    for hit in hits:
        assert set(hit.channels) == active
        assert hit.score == pytest.approx(sum(p["contribution"] for p in hit.channels.values()), abs=1e-12)
        for name, part in hit.channels.items():
            if part["rank"] is not None:
                assert channels[name][part["rank"] - 1] == (hit.id, part["raw"])


@settings(max_examples=60, deadline=None)
@given(channel_lists(), st.data())
def test_score_is_monotone_in_each_weight(channels, data):
    method = data.draw(st.sampled_from(["rrf", "sum"]))
    weights = {name: data.draw(st.floats(0.01, 5.0)) for name in channels}
    bumped_name = data.draw(st.sampled_from(sorted(channels)))
    bumped = {**weights, bumped_name: weights[bumped_name] + data.draw(st.floats(0.01, 5.0))}
    before = {h.id: h.score for h in METHODS[method](channels, weights)}
    after = {h.id: h.score for h in METHODS[method](channels, bumped)}
    for item_id, score in before.items():
        assert after[item_id] >= score - 1e-12


@settings(max_examples=60, deadline=None)
@given(channel_lists(), st.floats(0.01, 100.0), st.floats(-10.0, 10.0))
def test_rrf_ignores_raw_score_scale(channels, scale, shift):
    weights = dict.fromkeys(channels, 1.0)
    rescaled = {n: [(i, s * scale + shift) for i, s in rows] for n, rows in channels.items()}
    assert [(h.id, h.score) for h in weighted_rrf(channels, weights)] == [
        (h.id, h.score) for h in weighted_rrf(rescaled, weights)
    ]


@settings(max_examples=60, deadline=None)
@given(channel_lists(), st.floats(0.1, 10.0), st.floats(-1.0, 1.0))
def test_normalised_fusions_ignore_affine_rescaling(channels, scale, shift):
    weights = dict.fromkeys(channels, 1.0)
    rescaled = {n: [(i, s * scale + shift) for i, s in rows] for n, rows in channels.items()}
    for fusion in (dbsf, weighted_sum):
        a = {h.id: h.score for h in fusion(channels, weights)}
        b = {h.id: h.score for h in fusion(rescaled, weights)}
        assert b == pytest.approx(a, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(channel_lists(min_channels=1, max_channels=1), st.floats(0.1, 10.0))
def test_weight_scales_a_single_channel_linearly(channels, w):
    for fusion in (dbsf, weighted_sum, weighted_rrf):
        one = {h.id: h.score for h in fusion(channels, dict.fromkeys(channels, 1.0))}
        scaled = {h.id: h.score for h in fusion(channels, dict.fromkeys(channels, w))}
        assert scaled == pytest.approx({i: s * w for i, s in one.items()}, rel=1e-9, abs=1e-12)


# --- negatives -----------------------------------------------------------------------------------------


def _hits():
    return weighted_sum({"image": [("a", 1.0), ("b", 0.5), ("c", 0.0), ("d", 0.25)]}, {"image": 1.0})


def test_penalise_pushes_down_and_drops():
    # scores: a 1.0, b 0.5, d 0.25, c 0.0
    out = penalise(_hits(), {"a": 0.9, "b": 0.1, "c": -0.5, "d": 0.95}, weight=1.0, threshold=0.92)
    assert [h.id for h in out] == ["b", "a", "c"]
    by_id = {h.id: h for h in out}
    assert by_id["a"].score == pytest.approx(0.1)
    assert by_id["a"].penalty == pytest.approx(0.9)
    assert by_id["a"].negative == 0.9
    assert by_id["b"].score == pytest.approx(0.4)
    # Unlike the negative is not a bonus.
    assert by_id["c"].score == 0.0 and by_id["c"].penalty == 0.0


def test_penalise_keeps_items_without_negative_score_and_replaces_old_penalty():
    once = penalise(_hits(), {"a": 0.8}, weight=1.0)
    twice = penalise(once, {"a": 0.8}, weight=0.5)
    by_id = {h.id: h for h in twice}
    assert by_id["a"].score == pytest.approx(1.0 - 0.4)
    assert by_id["b"] == next(h for h in _hits() if h.id == "b")
    with pytest.raises(ValueError, match="weight"):
        penalise(_hits(), {}, weight=-1.0)
    with pytest.raises(ValueError, match="not a finite number"):
        penalise(_hits(), {"a": math.nan}, weight=1.0)


def test_penalise_without_threshold_drops_nothing():
    out = penalise(_hits(), {"a": 5.0, "b": 5.0, "c": 5.0, "d": 5.0}, weight=0.1, threshold=None)
    assert len(out) == 4
    assert all(isinstance(h, FusedHit) for h in out)


# --- dedup ---------------------------------------------------------------------------------------------


def test_mmr_dedup_hand_computed():
    e1, e2 = np.eye(3)[0], np.eye(3)[1]
    near = np.array([0.99, math.sqrt(1 - 0.99**2), 0.0])  # cos 0.99 to e1
    vectors = np.stack([e1, e2, near, -e1, 2.0 * e2])  # the last is e2 unnormalised
    result = mmr_dedup(["a", "b", "c", "d", "e"], vectors, threshold=0.95)
    assert result.kept == [0, 1, 3]
    assert result.duplicate_of == {2: 0, 4: 1}
    assert result.kept_ids == ["a", "b", "d"]
    assert result.duplicate_ids == {"c": "a", "e": "b"}
    assert mmr_dedup(["a", "b", "c", "d", "e"], vectors, threshold=0.995).kept == [0, 1, 2, 3]


def test_mmr_dedup_threshold_one_keeps_exact_copies():
    v = np.tile(np.array([[0.6, 0.8]]), (3, 1))
    assert mmr_dedup(["a", "b", "c"], v, threshold=1.0).kept == [0, 1, 2]
    assert mmr_dedup(["a", "b", "c"], v, threshold=0.999).kept == [0]


def test_mmr_dedup_bad_input():
    with pytest.raises(ValueError, match="shape"):
        mmr_dedup(["a"], np.zeros((2, 3)), 0.9)
    with pytest.raises(ValueError, match="non-finite"):
        mmr_dedup(["a"], np.array([[np.nan, 1.0]]), 0.9)
    assert mmr_dedup([], np.zeros((0, 4)), 0.9).kept == []


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 25), st.integers(2, 6), st.floats(-0.5, 0.99), st.integers(0, 2**32 - 1))
def test_mmr_dedup_properties(n, d, threshold, seed):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(max(n // 3, 1), d))
    # Clusters of near-copies, so duplicates actually occur.
    v = base[rng.integers(0, len(base), size=n)] + 0.05 * rng.normal(size=(n, d))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    result = mmr_dedup([f"x{i}" for i in range(n)], v, threshold)
    assert sorted(result.kept + list(result.duplicate_of)) == list(range(n))
    kept = v[result.kept]
    gram = kept @ kept.T - 2 * np.eye(len(result.kept))
    assert (gram <= threshold + 1e-9).all()
    for dropped, kept_index in result.duplicate_of.items():
        assert kept_index < dropped and kept_index in result.kept
        assert v[dropped] @ v[kept_index] > threshold - 1e-9


def test_calibrated_mean_is_a_weighted_mean_of_relevances():
    from search.fusion import calibrated_mean

    channels = {"image": [("a", 0.9), ("b", 0.2)], "text": [("b", 0.8), ("a", 0.5)]}
    hits = calibrated_mean(channels, {"image": 0.6, "text": 0.4})
    scores = {h.id: h.score for h in hits}
    assert scores["a"] == pytest.approx(0.6 * 0.9 + 0.4 * 0.5)
    assert scores["b"] == pytest.approx(0.6 * 0.2 + 0.4 * 0.8)
    assert [h.id for h in hits] == ["a", "b"]
    # Scale-free in the weights: doubling both leaves a mean.
    assert calibrated_mean(channels, {"image": 1.2, "text": 0.8})[0].score == pytest.approx(scores["a"])


def test_first_of_groups():
    from search.collapse import first_of_groups

    assert first_of_groups(["a", None, "b", "a", "b", None, "a"]) == {3: 0, 4: 2, 6: 0}
    # Kept positions (products named by code) are never collapsed, and a kept one can open its group.
    assert first_of_groups(["a", "a", "a"], keep={1}) == {2: 0}
    assert first_of_groups([None, "a", "a"], keep={1}) == {2: 1}
    assert first_of_groups([]) == {}
