"""Retrieval metrics against hand-computed values, plus their invariants."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from search.metrics import (
    ndcg_at_k,
    precision_at_k,
    query_metrics,
    recall_at_k,
    reciprocal_rank,
    summarise,
)

RANKED = ["a", "x", "b", "y", "c"]
RELEVANT = {"a", "b", "c", "d"}


def test_hand_computed():
    assert precision_at_k(RANKED, RELEVANT, 5) == 3 / 5
    assert precision_at_k(RANKED, RELEVANT, 2) == 1 / 2
    assert recall_at_k(RANKED, RELEVANT, 5) == 3 / 4
    assert recall_at_k(RANKED, RELEVANT, 1) == 1 / 4
    # DCG = 1/log2(2) + 1/log2(4) + 1/log2(6); ideal = four hits at ranks 1-4.
    dcg = 1 + 0.5 + 1 / math.log2(6)
    ideal = 1 + 1 / math.log2(3) + 0.5 + 1 / math.log2(5)
    assert ndcg_at_k(RANKED, RELEVANT, 5) == pytest.approx(dcg / ideal)
    assert ndcg_at_k(RANKED, RELEVANT, 5) == pytest.approx(0.7365897, abs=1e-7)
    assert reciprocal_rank(RANKED, RELEVANT) == 1.0
    assert reciprocal_rank(["x", "y", "b"], RELEVANT) == pytest.approx(1 / 3)
    assert reciprocal_rank(["x", "y", "b"], RELEVANT, k=2) == 0.0
    assert reciprocal_rank(["x"], RELEVANT) == 0.0


def test_short_lists_count_gaps_as_misses():
    assert precision_at_k(["a"], {"a"}, 10) == 0.1
    assert recall_at_k(["a"], {"a"}, 10) == 1.0
    assert ndcg_at_k(["a"], {"a"}, 10) == 1.0
    assert ndcg_at_k(["x", "a"], {"a"}, 10) == pytest.approx(1 / math.log2(3))


def test_repeated_ids_count_once():
    assert precision_at_k(["a", "a", "a"], {"a"}, 3) == pytest.approx(1 / 3)
    assert recall_at_k(["a", "a"], {"a", "b"}, 2) == 0.5
    assert ndcg_at_k(["a", "a", "b"], {"a", "b"}, 3) == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))


def test_bad_input():
    for metric in (precision_at_k, recall_at_k, ndcg_at_k):
        with pytest.raises(ValueError, match="relevant"):
            metric(["a"], set(), 1)
        with pytest.raises(ValueError, match="k must"):
            metric(["a"], {"a"}, 0)
    with pytest.raises(ValueError, match="relevant"):
        reciprocal_rank(["a"], [])


def test_query_metrics_and_summarise():
    q1 = query_metrics(RANKED, RELEVANT, ks=(1, 5))
    assert q1 == {
        "p@1": 1.0,
        "r@1": 0.25,
        "ndcg@1": 1.0,
        "p@5": 0.6,
        "r@5": 0.75,
        "ndcg@5": pytest.approx(0.7365897, abs=1e-7),
        "mrr": 1.0,
    }
    q2 = query_metrics(["x", "a"], {"a"}, ks=(1, 5))
    summary = summarise([q1, q2])
    assert summary["n"] == 2
    assert summary["p@1"] == 0.5
    assert summary["p@5"] == pytest.approx((0.6 + 0.2) / 2)
    assert summary["mrr"] == pytest.approx(0.75)
    assert summarise([]) == {"n": 0}
    with pytest.raises(ValueError, match="query 1 has metrics"):
        summarise([q1, {"p@1": 1.0}])
    with pytest.raises(ValueError, match="not a finite number"):
        summarise([{"p@1": math.nan}])


ids = st.sampled_from([f"i{n}" for n in range(15)])


@settings(max_examples=200, deadline=None)
@given(st.lists(ids, max_size=20), st.sets(ids, min_size=1), st.integers(1, 25))
def test_metrics_are_in_unit_interval_and_agree(ranked, relevant, k):
    p, r, n = (
        precision_at_k(ranked, relevant, k),
        recall_at_k(ranked, relevant, k),
        ndcg_at_k(ranked, relevant, k),
    )
    rr = reciprocal_rank(ranked, relevant, k)
    for value in (p, r, n, rr):
        assert 0.0 <= value <= 1.0 + 1e-12
    # All three see the same hits: none, or some.
    assert (p == 0) == (r == 0) == (n == 0) == (rr == 0)
    # Hits in the top k = p * k = r * |relevant|.
    assert p * k == pytest.approx(r * len(relevant))
    # Recall never falls as k grows.
    assert recall_at_k(ranked, relevant, k + 1) >= r


@settings(max_examples=100, deadline=None)
@given(st.sets(ids, min_size=1), st.lists(ids, max_size=10), st.integers(1, 25))
def test_perfect_rankings_score_one(relevant, tail, k):
    ranked = sorted(relevant) + [i for i in tail if i not in relevant]
    assert ndcg_at_k(ranked, relevant, k) == pytest.approx(1.0)
    assert reciprocal_rank(ranked, relevant) == 1.0
    if k <= len(relevant):
        assert precision_at_k(ranked, relevant, k) == 1.0
    if k >= len(relevant):
        assert recall_at_k(ranked, relevant, k) == 1.0


@settings(max_examples=100, deadline=None)
@given(st.lists(ids, unique=True, min_size=2, max_size=10), st.data())
def test_moving_a_hit_up_never_lowers_ndcg(ranked, data):
    relevant = {data.draw(st.sampled_from(ranked))}
    pos = ranked.index(next(iter(relevant)))
    if pos == 0:
        return
    better = ranked.copy()
    better[pos - 1], better[pos] = better[pos], better[pos - 1]
    k = len(ranked)
    assert ndcg_at_k(better, relevant, k) > ndcg_at_k(ranked, relevant, k)
    assert reciprocal_rank(better, relevant) > reciprocal_rank(ranked, relevant)
