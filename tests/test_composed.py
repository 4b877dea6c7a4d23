"""Composed-query scoring maths on hand-made vectors, where the expected order can be worked out."""

from __future__ import annotations

import numpy as np
import pytest

from search.composed import (
    Attribute,
    ComposedWeights,
    TextSide,
    agreement,
    arithmetic_query,
    composed_scores,
    find_attribute,
    project_out,
)


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float64)
    return v / np.linalg.norm(v)


# Axes: 0 red, 1 blue, 2 dress, 3 bag, 4 striped, 5 plain.
COLOURS = np.stack([unit(1, 0, 0, 0, 0, 0), unit(0, 1, 0, 0, 0, 0)])
CATEGORIES = np.stack([unit(0, 0, 1, 0, 0, 0), unit(0, 0, 0, 1, 0, 0)])
PATTERNS = np.stack([unit(0, 0, 0, 0, 1, 0), unit(0, 0, 0, 0, 0, 1)])
BLUE = Attribute("colour", ("red", "blue"), COLOURS, target=1)
MODIFIER = COLOURS[1]


def test_find_attribute_matches_whole_words_longest_label_first():
    sets = [("category", ("shirt", "t-shirt"), CATEGORIES), ("colour", ("red", "blue"), COLOURS)]
    assert find_attribute("this but a t-shirt", sets).target == 1
    assert find_attribute("in Blue, please", sets).name == "colour"
    assert find_attribute("bluest", sets) is None


def test_project_out_removes_the_basis_and_keeps_unit_length():
    v = project_out(unit(1, 0, 1, 0, 0, 0)[None, :], COLOURS)
    assert v[0] @ COLOURS[0] == pytest.approx(0) and np.linalg.norm(v) == pytest.approx(1)
    assert v[0] @ unit(0, 0, 1, 0, 0, 0) == pytest.approx(1)
    # A rank-deficient basis (centred label vectors) removes only its own span, nothing else.
    centred = COLOURS - COLOURS.mean(axis=0)
    w = project_out(unit(0, 0, 1, 1, 1, 1)[None, :], centred)
    assert w[0] == pytest.approx(unit(0, 0, 1, 1, 1, 1))


def test_agreement_prefers_candidates_whose_kept_labels_match_the_reference():
    reference = unit(1, 0, 1, 0, 1, 0)  # red striped dress
    candidates = np.stack([unit(0, 1, 1, 0, 1, 0), unit(0, 1, 1, 0, 0, 1), unit(0, 1, 0, 1, 1, 0)])
    score = agreement(reference, candidates, [CATEGORIES, PATTERNS], scale=20.0)
    assert score[0] > score[1] and score[0] > score[2]
    assert score[0] == pytest.approx(0, abs=0.01)  # log of a near-certain agreement
    assert agreement(reference, candidates, [], 20.0) == pytest.approx(np.zeros(3))


def test_arithmetic_baseline_swaps_the_reference_label_for_the_modifier():
    q = arithmetic_query(unit(1, 0, 1, 0, 0, 0), MODIFIER, BLUE)
    assert q @ COLOURS[1] > 0 > q @ COLOURS[0] and q @ unit(0, 0, 1, 0, 0, 0) > 0


def scores(candidates, text=None, kept=()):
    reference = unit(1, 0, 1, 0.2, 0, 0)  # a red dress that looks a little like a bag
    return composed_scores(reference, candidates, MODIFIER, BLUE, ComposedWeights(), 20.0, None, kept, text)


# Two blue candidates: one whose picture is closer to the reference's, one whose description agrees.
IMAGES = np.stack([unit(0, 1, 0.8, 0.6, 0, 0), unit(0, 1, 1, 0, 0, 0)])
IMAGES_BAG_CLOSER = np.stack([unit(0, 1, 0.9, 0.45, 0, 0), unit(0, 1, 0.8, 0.6, 0, 0)])


def test_known_attribute_puts_the_requested_label_first_and_orders_by_structure():
    candidates = np.stack([unit(1, 0, 1, 0, 0, 0), *IMAGES])  # a red dress, then two blue items
    s = scores(candidates)
    assert s.verify is not None and s.verify[0] < 0.01 < s.verify[1]
    assert int(np.argmax(s.score)) == 2 and s.score[0] < s.score[1]


def test_the_reference_description_decides_between_look_alikes():
    ref_text = unit(1, 0, 1, 0, 0, 0)  # "red dress"
    texts = np.stack([unit(0, 1, 0, 1, 0, 0), unit(0, 1, 1, 0, 0, 0)])  # blue bag, blue dress
    pixels_only = scores(IMAGES_BAG_CLOSER)
    assert int(np.argmax(pixels_only.score)) == 0
    own = scores(IMAGES_BAG_CLOSER, TextSide(ref_text, texts))
    assert int(np.argmax(own.score)) == 1
    # The colour words of the descriptions are projected off: "blue dress" matches "red dress" fully.
    assert own.structure[1] - pixels_only.structure[1] == pytest.approx(1.0)


def test_kept_labels_count_only_when_the_description_is_borrowed_or_absent():
    kept = [CATEGORIES]
    texts = np.stack([unit(0, 1, 1, 0, 0, 0), unit(0, 1, 1, 0, 0, 0)])
    ref_text = unit(1, 0, 1, 0, 0, 0)
    plain = scores(IMAGES, TextSide(ref_text, texts)).score
    assert scores(IMAGES, TextSide(ref_text, texts), kept).score == pytest.approx(plain)
    borrowed = scores(IMAGES, TextSide(ref_text, texts, borrowed=True), kept).score
    assert not np.allclose(borrowed, plain)
    assert not np.allclose(scores(IMAGES, None, kept).score, scores(IMAGES).score)


def test_unknown_attribute_uses_z_scored_structure_and_modifier_without_descriptions():
    reference = unit(1, 0, 1, 0, 0, 0)
    texts = np.stack([unit(0, 0, 0, 1, 0, 0), unit(0, 0, 1, 0, 0, 0)])
    without = composed_scores(reference, IMAGES, MODIFIER, None, ComposedWeights())
    with_text = composed_scores(reference, IMAGES, MODIFIER, None, ComposedWeights(), text=TextSide(reference, texts))
    assert without.verify is None
    assert with_text.score == pytest.approx(without.score)
