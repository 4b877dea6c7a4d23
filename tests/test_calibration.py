"""Score calibration: the fitted mapping, its inverse, serialisation, background sampling, combining."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from search.calibration import (
    MIN_BACKGROUND,
    Calibration,
    background_scores,
    combine,
    fit_background,
)

SIGMOID_MINUS_3 = 1.0 / (1.0 + math.exp(3.0))


def test_fit_hand_computed():
    scores = np.arange(101) / 100.0  # median 0.5, quartiles 0.25 and 0.75
    cal = fit_background(scores, model="m", channel="image")
    scale = 0.5 / 1.3489795003921634
    assert cal.median == pytest.approx(0.5)
    assert cal.scale == pytest.approx(scale)
    assert cal.n == 101
    assert cal.apply(0.5) == pytest.approx(SIGMOID_MINUS_3)  # 0.047
    assert cal.apply(0.5 + 3 * scale) == pytest.approx(0.5)
    assert cal.apply(0.5 + 6 * scale) == pytest.approx(1.0 / (1.0 + math.exp(-3.0)))
    assert cal.inverse(0.5) == pytest.approx(0.5 + 3 * scale)
    assert cal.inverse(0.0) == -math.inf and cal.inverse(1.0) == math.inf
    assert cal.percentile(0.5) == pytest.approx(0.5)
    assert cal.percentile([-1.0, 2.0]).tolist() == [0.0, 1.0]


def test_apply_keeps_shape():
    cal = fit_background(np.linspace(-0.1, 0.3, 50))
    assert cal.apply(np.zeros((2, 3))).shape == (2, 3)
    assert cal.apply(0.1).shape == ()


def test_clip_like_channels_land_on_one_scale():
    """Text-to-image and image-to-image cosines live on different scales; calibrated, a match is a match."""
    rng = np.random.default_rng(0)
    text_bg = rng.normal(0.15, 0.03, 5000)
    image_bg = rng.normal(0.45, 0.10, 5000)
    text, image = fit_background(text_bg), fit_background(image_bg)
    # A typical good text match (0.30) and a typical good image match (0.95): 5 std above background.
    assert float(text.apply(0.30)) == pytest.approx(float(image.apply(0.95)), abs=0.03)
    assert float(text.apply(0.30)) > 0.85
    # The raw 0.30 that is a strong text match is an unremarkable image score.
    assert float(image.apply(0.30)) < 0.02
    # The background median maps to about 0.05; ordinary random pairs stay low.
    assert float(text.apply(np.median(text_bg))) == pytest.approx(SIGMOID_MINUS_3, abs=0.01)
    assert float(np.mean(text.apply(text_bg) > 0.5)) < 0.005


def test_robust_scale_resists_matching_pairs_in_the_background():
    rng = np.random.default_rng(1)
    unrelated = rng.normal(0.2, 0.03, 9000)
    matching = rng.normal(0.32, 0.02, 1000)  # same-category pairs among random ones
    cal = fit_background(np.concatenate([unrelated, matching]))
    assert cal.scale < 0.036 < cal.std  # IQR scale stays near the unrelated spread


def test_fit_refuses_bad_backgrounds():
    with pytest.raises(ValueError, match=f"at least {MIN_BACKGROUND}"):
        fit_background(np.zeros(MIN_BACKGROUND - 1))
    with pytest.raises(ValueError, match="no spread"):
        fit_background(np.full(100, 0.25))
    with pytest.raises(ValueError, match="non-finite"):
        fit_background(np.array([0.1] * 20 + [np.nan]))
    with pytest.raises(ValueError, match="non-finite"):
        fit_background(np.linspace(0, 1, 20)).apply([0.1, np.inf])


def test_mostly_tied_background_falls_back_to_std():
    scores = np.concatenate([np.full(90, 0.2), np.linspace(0.0, 1.0, 10)])
    cal = fit_background(scores)
    assert cal.scale == pytest.approx(np.std(scores, ddof=1))


def test_json_round_trip():
    cal = fit_background(np.random.default_rng(2).normal(size=200), model="openclip:x", channel="text")
    data = json.loads(json.dumps(cal.to_dict()))
    assert data["method"] == "robust-z-logistic" and data["version"] == 1
    back = Calibration.from_dict(data)
    assert back == cal
    raw = np.linspace(-3, 5, 17)
    np.testing.assert_array_equal(back.apply(raw), cal.apply(raw))
    minimal = Calibration.from_dict({"median": 0.1, "scale": 0.02})
    assert json.loads(json.dumps(minimal.to_dict()))["mean"] is None


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"scale": 0.1}, "median"),
        ({"median": 0.1, "scale": 0.0}, "scale"),
        ({"median": "0.1", "scale": 0.1}, "median"),
        ({"median": 0.1, "scale": 0.1, "width": -1}, "width"),
        ({"median": 0.1, "scale": 0.1, "method": "isotonic"}, "method"),
        ({"median": 0.1, "scale": 0.1, "version": 9}, "version"),
        ({"median": 0.1, "scale": 0.1, "n": -3}, "n"),
        ({"median": 0.1, "scale": 0.1, "quantile_levels": [0.5], "quantile_values": []}, "quantile"),
    ],
)
def test_from_dict_names_the_bad_field(data, field):
    with pytest.raises(ValueError, match=field):
        Calibration.from_dict(data)


backgrounds = arrays(
    np.float64,
    st.integers(MIN_BACKGROUND, 200),
    elements=st.floats(-1, 1).map(lambda x: round(x, 6)),
).filter(lambda a: np.ptp(a) > 0)


@settings(max_examples=80, deadline=None)
@given(backgrounds, arrays(np.float64, st.integers(1, 50), elements=st.floats(-1e3, 1e3)))
def test_apply_is_monotone_and_in_unit_interval(background, raw):
    cal = fit_background(background)
    ordered = np.sort(raw)
    out = cal.apply(ordered)
    assert ((out >= 0.0) & (out <= 1.0)).all()
    assert (np.diff(out) >= 0).all()
    assert float(cal.apply(cal.median)) <= 0.5
    assert float(cal.apply(cal.median + 20 * cal.scale)) > 0.999


@settings(max_examples=80, deadline=None)
@given(backgrounds, st.floats(0.001, 0.999))
def test_inverse_undoes_apply(background, p):
    cal = fit_background(background)
    assert float(cal.apply(cal.inverse(p))) == pytest.approx(p, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(backgrounds, arrays(np.float64, st.integers(1, 30), elements=st.floats(-2, 2)))
def test_percentile_is_monotone_in_unit_interval(background, raw):
    out = fit_background(background).percentile(np.sort(raw))
    assert ((out >= 0) & (out <= 1)).all() and (np.diff(out) >= 0).all()


def test_background_scores_never_pair_an_item_with_itself():
    # One-hot rows: a pair of different items scores 0, an item with itself 1.
    eye = np.eye(5)
    assert (background_scores(eye, eye, 2000, seed=3) == 0).all()
    with_self = background_scores(eye, eye, 2000, seed=3, exclude_same=False)
    assert 0.1 < float(np.mean(with_self == 1.0)) < 0.3


def test_background_scores_are_cosines_and_seeded():
    rng = np.random.default_rng(4)
    q, v = rng.normal(size=(50, 8)) * 3.0, rng.normal(size=(50, 8))
    a = background_scores(q, v, 300, seed=7)
    np.testing.assert_array_equal(a, background_scores(q, v, 300, seed=7))
    assert not np.array_equal(a, background_scores(q, v, 300, seed=8))
    assert a.shape == (300,) and (np.abs(a) <= 1 + 1e-12).all()
    # Unnormalised input is normalised: the scores match those of the normalised vectors.
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    np.testing.assert_allclose(a, background_scores(qn, v / np.linalg.norm(v, axis=1, keepdims=True), 300, seed=7))


def test_background_scores_bad_input():
    with pytest.raises(ValueError, match="same width"):
        background_scores(np.zeros((3, 4)), np.zeros((3, 5)), 10)
    with pytest.raises(ValueError, match="row-aligned"):
        background_scores(np.ones((3, 4)), np.ones((4, 4)), 10)
    with pytest.raises(ValueError, match="at least 2"):
        background_scores(np.ones((1, 4)), np.ones((1, 4)), 10)
    with pytest.raises(ValueError, match="n_pairs"):
        background_scores(np.ones((3, 4)), np.ones((3, 4)), 0)
    assert background_scores(np.ones((1, 4)), np.ones((3, 4)), 5, exclude_same=False).tolist() == [1.0] * 5


def test_combine():
    assert combine({"image": 0.9, "text": 0.4}, {"image": 0.6, "text": 0.4}) == pytest.approx(0.7)
    # Renormalised over the channels given: an image-only hit is not penalised for the missing text.
    assert combine({"image": 0.9}, {"image": 0.6, "text": 0.4}) == pytest.approx(0.9)
    assert combine({"image": 0.9, "text": 0.1}, {"image": 1.0, "text": 0.0}) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="no weight for channel 'semantic'"):
        combine({"semantic": 0.5}, {"image": 1.0})
    with pytest.raises(ValueError, match="positive weight"):
        combine({"text": 0.5}, {"text": 0.0})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        combine({"text": 1.5}, {"text": 1.0})
    with pytest.raises(ValueError, match="finite number >= 0"):
        combine({"text": 0.5}, {"text": -1.0})


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["image", "text", "semantic"]),
        st.tuples(st.floats(0, 1), st.floats(0.01, 10)),
        min_size=1,
    )
)
def test_combine_is_a_weighted_mean(parts):
    values = {k: v for k, (v, _) in parts.items()}
    weights = {k: w for k, (_, w) in parts.items()}
    out = combine(values, weights)
    assert min(values.values()) - 1e-12 <= out <= max(values.values()) + 1e-12
