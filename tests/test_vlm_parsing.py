"""Pure functions: tolerant JSON, re-rank scores, citation checks, "cannot tell", image fitting, blending."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vlm import check_citations, extract_json, fit_image, parse_scores
from vlm.parsing import cannot_tell, cited_ids, split_sentences
from vlm.rerank import blend

SCORES = {"scores": [{"id": "p001", "score": 8, "reason": "red dress"}, {"id": "p002", "score": 3, "reason": "bag"}]}
IDS = ["p001", "p002", "p003"]


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(SCORES),
        "```json\n" + json.dumps(SCORES, indent=2) + "\n```",
        "Sure! Here are the scores:\n```\n" + json.dumps(SCORES) + "\n```\nHope this helps.",
        "Here you go: " + json.dumps(SCORES) + " -- let me know [if] you need more.",
        json.dumps(SCORES)[:-2] + ",]}",  # trailing comma
        "```json\n" + json.dumps(SCORES),  # fence never closed
    ],
)
def test_extract_json_finds_the_object_in_fences_and_prose(text):
    assert extract_json(text) == SCORES


def test_extract_json_keeps_the_complete_part_of_a_cut_off_reply():
    full = json.dumps(SCORES)
    cut_in_reason = full[: full.index("bag") + 2]  # ... "reason": "ba
    assert extract_json(cut_in_reason)["scores"][1] == {"id": "p002", "score": 3, "reason": "ba"}
    cut_in_key = full[: full.index('"reason": "bag"') + 4]  # ... "score": 3, "rea
    assert extract_json(cut_in_key)["scores"][1] == {"id": "p002", "score": 3}
    cut_after_colon = full[: full.index('"score": 3') + 9]
    assert extract_json(cut_after_colon)["scores"] == [SCORES["scores"][0], {"id": "p002"}]


@pytest.mark.parametrize("text", ["", "no json here", "I think p001 is best", "{not: json}", "[1, 2", "}{"])
def test_extract_json_gives_none_or_a_value_never_raises(text):
    value = extract_json(text)
    # "[1, 2" may have been "[1, 25]": a trailing number of a cut reply is dropped, never trusted.
    assert value is None or value == [1]


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"p[0-9]{3}", fullmatch=True),
        st.tuples(st.integers(0, 10), st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20)),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from(["{}", "```json\n{}\n```", "Scores:\n{}\nDone.", "{}\n\nReasoning: [p001] looks right"]),
    st.data(),
)
def test_scores_survive_wrapping_and_truncation(judged, wrapper, data):
    ids = sorted(judged)
    body = json.dumps({"scores": [{"id": i, "score": s, "reason": r} for i, (s, r) in judged.items()]})
    parsed = parse_scores(wrapper.replace("{}", body, 1), ids)
    assert {i: j.score for i, j in parsed.items()} == {i: float(s) for i, (s, _) in judged.items()}
    assert {i: j.reason for i, j in parsed.items()} == {i: r for i, (_, r) in judged.items()}
    # Cut anywhere: whatever is parsed is a correct subset, never an invented or wrong score.
    cut = data.draw(st.integers(1, len(body)))
    partial = parse_scores(body[:cut], ids)
    assert all(judged[i][0] == j.score for i, j in partial.items())


def test_parse_scores_accepts_the_shapes_models_write():
    assert {i: j.score for i, j in parse_scores('{"p001": 7, "p002": "4/10", "zzz": 9}', IDS).items()} == {
        "p001": 7.0,
        "p002": 4.0,
    }
    mapping = parse_scores('{"p001": {"score": 12, "reason": "x"}, "p003": {"rating": -2}}', IDS)
    assert mapping["p001"].score == 10.0 and mapping["p003"].score == 0.0  # clamped to 0-10
    listed = parse_scores('[{"product_id": "[p002]", "relevance": "6"}, {"id": "p001", "score": true}]', IDS)
    assert {i: j.score for i, j in listed.items()} == {"p002": 6.0}  # a bool is not a score
    assert parse_scores('{"scores": [{"id": "p001", "score": "high"}]}', IDS) == {}
    assert parse_scores("garbage", IDS) == {}
    assert parse_scores('{"scores": [{"id": "p001", "score": NaN}]}', IDS) == {}


def test_check_citations_removes_and_reports_invented_ids():
    text = "The red dress [p001] is cotton [p999]. The bag [p002, p777] is leather. See [sic]."
    checked = check_citations(text, IDS)
    assert checked.cited == ["p001", "p002"]
    assert checked.invented == ["p999", "p777", "sic"]
    assert checked.text == "The red dress [p001] is cotton. The bag [p002] is leather. See."
    assert check_citations("[id: p003] and [Product p001]", IDS).cited == ["p003", "p001"]
    assert check_citations("a [link](http://x) stays", IDS).text == "a [link](http://x) stays"


def test_sentences_keep_trailing_citations_and_cannot_tell_is_found():
    text = "The dress is red. [p001]\nI cannot tell the fabric from the image [p001]. The bag is blue [p002]!"
    sentences = split_sentences(text)
    assert sentences == [
        "The dress is red. [p001]",
        "I cannot tell the fabric from the image [p001].",
        "The bag is blue [p002]!",
    ]
    assert [cited_ids(s) for s in sentences] == [["p001"], ["p001"], ["p002"]]
    assert cannot_tell(text) == ["I cannot tell the fabric from the image [p001]."]
    assert cannot_tell("It's not clear which is larger.") and cannot_tell("Unable to determine the size.")
    assert cannot_tell("The dress is clearly red and I can tell it is silk.") == []


def test_fit_image_shrinks_the_short_side_and_never_enlarges():
    assert fit_image(Image.new("RGB", (1000, 800)), 448).size == (560, 448)
    assert fit_image(Image.new("RGB", (800, 1001)), 448).size == (448, 561)
    assert fit_image(Image.new("L", (100, 50)), 448).size == (100, 50)
    assert fit_image(Image.new("RGBA", (900, 900)), 336).mode == "RGB"


def test_blend_weights_retrieval_and_vlm_scores():
    assert blend(0.8, 10, 0.0) == pytest.approx(0.8)
    assert blend(0.8, 10, 1.0) == pytest.approx(1.0)
    assert blend(0.2, 5, 0.5) == pytest.approx(0.35)
