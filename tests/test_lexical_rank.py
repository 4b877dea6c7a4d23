"""The lexical channel's ranking steps as pure functions: relative scores, code promotion, facet boost."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from search import Hit
from search.fusion import mmr_dedup
from search.lexical import CodeMatch, boost_scores, promote_codes, relative_scores

PROPERTY = settings(derandomize=True, max_examples=200, deadline=None)
scores = st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=30)


def hits(values: list[float]) -> list[Hit]:
    return [Hit(f"h{i}", s, {}, {"ranked_by": "rrf"}) for i, s in enumerate(sorted(values, reverse=True))]


def test_relative_scores():
    np.testing.assert_allclose(relative_scores(np.array([4.0, 2.0, 0.0])), [1.0, 0.5, 0.0])
    np.testing.assert_allclose(relative_scores(np.zeros(3)), [0.0, 0.0, 0.0])
    assert relative_scores(np.array([])).size == 0


@PROPERTY
@given(scores, st.lists(st.tuples(st.integers(0, 40), st.floats(-1, 1)), max_size=5))
def test_code_matches_come_first_and_scores_never_increase(values, picked):
    ranked = hits(values)
    matches = [CodeMatch(f"h{i}", "sku", "X-1", sim) for i, sim in dict(picked).items()]
    out = promote_codes(ranked, matches)
    assert sorted(h.id for h in out) == sorted({h.id for h in ranked} | {m.id for m in matches})
    n = len(matches)
    assert {h.id for h in out[:n]} == {m.id for m in matches}
    assert all(h.explanation["ranked_by"] == "code match" and h.relevance == 1.0 for h in out[:n])
    got = [h.score for h in out]
    assert got == sorted(got, reverse=True)
    # Hits that were not codes keep their order and scores.
    rest = [h for h in ranked if h.id not in {m.id for m in matches}]
    assert out[n:] == rest


def test_a_promoted_hit_keeps_its_channels():
    ranked = [Hit("a", 0.9, {"t": 1}, {"ranked_by": "calibrated", "channels": {"image": {}}}), Hit("b", 0.5, {}, {})]
    (first, second) = promote_codes(ranked, [CodeMatch("b", "id", "b", 0.3)])
    assert first.id == "b" and first.score == pytest.approx(0.9 + 1.3)
    assert first.explanation["code"] == {"field": "id", "value": "b", "products": 1}
    assert second == ranked[0]


@PROPERTY
@given(scores, st.data())
def test_facet_boost_adds_at_most_weight_times_the_top_score(values, data):
    matched = data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=len(values), max_size=len(values)))
    out = boost_scores(values, matched, 0.5)
    top = max(max(values), 0.0)
    for before, after, m in zip(values, out, matched, strict=True):
        assert after == pytest.approx(before + 0.5 * top * m)
    # At weight 1 (scores >= 0), a hit with every named facet is never below one with none.
    strong = boost_scores([abs(v) for v in values], matched, 1.0)
    full = [s for s, m in zip(strong, matched, strict=True) if m == 1.0]
    none = [s for s, m in zip(strong, matched, strict=True) if m == 0.0]
    if full and none:
        assert min(full) >= max(none)


def test_dedup_never_collapses_the_positions_it_must_keep():
    v = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert mmr_dedup(["a", "b", "c", "d"], v, 0.999).kept == [0, 3]
    kept = mmr_dedup(["a", "b", "c", "d"], v, 0.999, keep=[1])
    assert kept.kept == [0, 1, 3] and kept.duplicate_ids == {"c": "a"}
