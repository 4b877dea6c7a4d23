"""Combined facet keys: a filter that also names them matches exactly what it matched before, on the
pure functions and on a real qdrant-edge shard."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import qdrant_edge as qe
from test_store_contract import resolved_to_ids

from indexer import facet_keys
from indexer.store import Condition, Filter, Record, StoreSchema
from indexer.store_edge import META_FILE, EdgeStore

SCHEMA = StoreSchema({"image": 4}, {"image": "test"})
COLOURS = ["red", "blue", "green", "teal", "pink", "black"]


def payloads(n: int) -> list[dict]:
    rng = np.random.default_rng(5)
    out = []
    for i in range(n):
        p = {"category": ["dress", "coat", "bag"][i % 3], "pattern": ["plain", "striped"][i // 3 % 2], "sku": f"S{i}"}
        # Some items come in several colours, a few in so many that they get the wildcard key.
        k = 1 if i % 5 else int(rng.integers(2, 5))
        p["colour"] = COLOURS[i % 6] if k == 1 else list(rng.choice(COLOURS, k, replace=False))
        if i % 7 == 0:
            p["category"] = ["dress", "coat", "bag"]
        if i % 13 == 0:  # 3 x 6 values: past MAX_KEYS
            p["category"], p["colour"] = ["dress", "coat", "bag"], list(COLOURS)
        if i % 11 == 0:
            del p["pattern"]
        out.append(p)
    return out


def holds(payload: dict, c: Condition) -> bool:
    """A condition as the engine reads it: the field holds the value (or one of them)."""
    held = payload.get(c.key, [])
    held = set(held) if isinstance(held, list) else {held}
    return bool(held & ({c.value} if c.op == "eq" else set(c.value)))


def matches(payload: dict, flt: Filter) -> bool:
    return all(holds(payload, c) for c in flt.must) and not any(holds(payload, c) for c in flt.must_not)


FILTERS = [
    Filter(must=(Condition("category", "eq", "dress"), Condition("colour", "eq", "red"))),
    Filter(
        must=(
            Condition("category", "eq", "coat"),
            Condition("colour", "in", ["red", "teal"]),
            Condition("pattern", "eq", "plain"),
        )
    ),
    Filter(
        must=(Condition("colour", "eq", "blue"), Condition("pattern", "eq", "striped")),
        must_not=(Condition("category", "eq", "bag"),),
    ),
    Filter(must=(Condition("category", "eq", "bag"), Condition("colour", "eq", "mauve"))),
]


def condition_keys(condition) -> list[str]:
    """The payload keys an engine filter tests, nested filters included."""
    if isinstance(condition, qe.Filter):
        parts = [*(condition.must or []), *(condition.should or []), *(condition.must_not or [])]
        return [key for c in parts for key in condition_keys(c)]
    return [getattr(condition, "key", "")]


def test_facet_fields_are_the_few_valued_keyword_fields_fewest_first():
    sample = payloads(300)
    assert facet_keys.facet_fields(sample, ["sku", "colour", "category", "pattern", "title"]) == [
        "pattern",
        "category",
        "colour",
    ]
    assert facet_keys.facet_fields(sample, ["colour", "sku"]) == []  # one facet: nothing to combine


def test_a_filter_with_the_keys_matches_the_same_points():
    fields = ["pattern", "category", "colour"]
    points = [(p, {**p, facet_keys.KEY: facet_keys.point_keys(p, fields)}) for p in payloads(300)]
    wildcards = 0
    for flt in FILTERS:
        narrowed = facet_keys.narrowed(flt, fields)
        added = narrowed.must[len(flt.must) :]
        assert added and all(c.key == facet_keys.KEY for c in added) and narrowed.must_not == flt.must_not
        for plain, keyed in points:
            assert matches(plain, flt) == matches(keyed, narrowed)
        # ... and the keys alone leave little to test: only points with a wildcard match them wrongly.
        keys_only, must_only = Filter(must=added), Filter(must=flt.must)
        wild = {facet_keys._wildcard(c) for c in [*itertools.combinations(fields, 2), tuple(fields)]}
        wrong = [k for p, k in points if matches(k, keys_only) and not matches(p, must_only)]
        assert all(wild & set(k[facet_keys.KEY]) for k in wrong)
        wildcards += len(wrong)
    assert wildcards  # the data has points with the wildcard
    # A filter on one facet, a facet not combined, or no facet at all, is left as it is.
    for flt in (
        Filter(must=(Condition("colour", "eq", "red"),)),
        Filter(must=(Condition("sku", "eq", "S1"), Condition("colour", "eq", "red"))),
        None,
    ):
        assert facet_keys.narrowed(flt, fields) is flt


def test_the_widest_combination_is_named_and_every_one_of_that_width():
    fields = ["pattern", "category", "colour"]
    three = Filter(must=tuple(Condition(f, "eq", "x") for f in fields))
    assert len(facet_keys.narrowed(three, fields).must) == 3 + 1
    two = Filter(must=(Condition("colour", "eq", "x"), Condition("category", "eq", "y")))
    assert len(facet_keys.narrowed(two, fields).must) == 2 + 1
    # A point's keys: every pair and triple of its values (here one value each: 3 pairs + 1 triple).
    assert len(facet_keys.point_keys({"pattern": "a", "category": "b", "colour": "c"}, fields)) == 4
    many = {"pattern": "a", "category": ["b", "c", "d", "e", "f"], "colour": list("ghijk")}
    keys = facet_keys.point_keys(many, fields)
    assert facet_keys._wildcard(("category", "colour")) in keys and facet_keys._wildcard(tuple(fields)) in keys
    assert len(keys) == 5 + 5 + 1 + 1  # two pairs with pattern in full, the rest as wildcards


def records(n: int) -> list[Record]:
    rng = np.random.default_rng(2)
    vecs = rng.standard_normal((n, 4)).astype(np.float32)
    return [Record(f"r{i}", p, {"image": vecs[i]}) for i, p in enumerate(payloads(n))]


def fill(path, recs: list[Record], facets: bool = True) -> EdgeStore:
    s = EdgeStore(path)
    s.ensure_schema(SCHEMA)
    for key in ("category", "colour", "pattern", "sku"):
        s.ensure_payload_index(key, "keyword")
    if not facets:
        s._combined = []  # as a store filled before the keys
    s.upsert(recs[:200])
    s.upsert(recs[200:])
    return s


@pytest.mark.parametrize("optimized", [False, True])
def test_edge_store_with_the_keys_finds_what_it_finds_without_them(tmp_path, optimized):
    recs = records(400)
    with fill(tmp_path / "keys", recs) as keyed, fill(tmp_path / "plain", recs, facets=False) as plain:
        assert keyed._combined == ["pattern", "category", "colour"] and plain._combined == []
        if optimized:
            keyed.optimize()
            plain.optimize()
        q = np.ones(4, dtype=np.float32)
        for flt in FILTERS:
            expected = sum(matches(r.payload, flt) for r in recs)
            assert keyed.count(flt) == plain.count(flt) == expected
            got = keyed.search_union({"image": q}, 50, flt)["image"]
            assert [h.id for h in got] == [h.id for h in plain.search_union({"image": q}, 50, flt)["image"]]
        # The keys are the store's own: no payload read back carries them.
        assert all(facet_keys.KEY not in r.payload for r in keyed.scroll())
        assert facet_keys.KEY not in keyed.retrieve(["r3"])[0].payload
        assert facet_keys.KEY not in keyed.payload_indexes()
    meta = json.loads((tmp_path / "keys" / META_FILE).read_text())
    assert meta["combined_facets"] == ["pattern", "category", "colour"]
    with EdgeStore(tmp_path / "keys") as reopened:
        assert reopened._combined == meta["combined_facets"]
        # A rewritten item gets its keys anew (its old ones would match its old values).
        reopened.upsert(
            [Record("r1", {"category": "bag", "colour": "teal", "pattern": "plain"}, {"image": np.ones(4)})]
        )
        flt = Filter(
            must=(
                Condition("category", "eq", "bag"),
                Condition("colour", "eq", "teal"),
                Condition("pattern", "eq", "plain"),
            )
        )
        assert "r1" in {h.id for h in reopened.search_union({"image": np.ones(4)}, 400, flt)["image"]}


def test_a_store_filled_before_the_keys_gets_none(tmp_path):
    recs = records(50)
    with fill(tmp_path / "s", recs) as s:
        pass
    meta_path = tmp_path / "s" / META_FILE
    meta = json.loads(meta_path.read_text())
    del meta["combined_facets"]  # a store made before them
    meta_path.write_text(json.dumps(meta))
    with EdgeStore(tmp_path / "s") as s:
        s.upsert(recs[:1])
        assert s._combined == []  # its items have no keys, so none is asked for
        flt = FILTERS[0]
        assert s.count(flt) == sum(matches(r.payload, flt) for r in recs)


def test_every_combination_of_a_points_values_is_a_key():
    fields = ["a", "b", "c"]
    p = {"a": ["1", "2"], "b": "3", "c": ["4", "5"]}
    keys = set(facet_keys.point_keys(p, fields))
    for size in (2, 3):
        for combo in itertools.combinations(fields, size):
            for values in itertools.product(*([p[f]] if isinstance(p[f], str) else p[f] for f in combo)):
                assert facet_keys._key(combo, values) in keys


def test_a_search_names_the_keys_only_where_the_engine_scans_what_they_leave(tmp_path, monkeypatch):
    from indexer import edge_config
    from indexer.store import SearchRequest

    def keyed(condition) -> bool:
        return facet_keys.KEY in condition_keys(condition)

    recs = records(400)
    flt = FILTERS[1]
    with fill(tmp_path / "s", recs) as s:
        assert keyed(s._filter(flt)) and keyed(s._filter(flt, searched=False))
        monkeypatch.setattr(edge_config, "KEYED_MAX", 0)  # as if every key's list were past the scan
        assert not keyed(s._filter(flt)) and keyed(s._filter(flt, searched=False))
        assert s.count(flt) == sum(matches(r.payload, flt) for r in recs)
        # A filtered search on the graph steps over non-matching points (ACORN) with a wider beam.
        q = np.ones(4, dtype=np.float32)
        assert s._search_params(SearchRequest("image", q, 5, filter=flt), False) is edge_config.RESCORED_FILTERED
        assert s._search_params(SearchRequest("image", q, 5), False) is edge_config.RESCORED


def test_a_fused_querys_keyed_filter_is_not_resolved_to_ids(tmp_path, monkeypatch):
    """A combined key's short list is scanned in each channel: nothing to save by finding its points
    first, though the engine's estimate of the whole filter (its conditions taken as independent) is
    far below the list. Past edge.KEYED_MAX the filter has no key, and its walk is worth resolving."""
    from indexer import edge_config

    recs = records(400)
    q = np.ones(4, dtype=np.float32)
    monkeypatch.setattr(edge_config, "RESOLVED_WALK", 1)
    with fill(tmp_path / "s", recs) as s:
        engine = {i: s.search_union({"image": q}, 50, flt)["image"] for i, flt in enumerate(FILTERS[:3])}
        assert not any(resolved_to_ids(s, f) for f in FILTERS)
        monkeypatch.setattr(edge_config, "KEYED_MAX", 0)
        assert [resolved_to_ids(s, f) for f in FILTERS] == [True, True, True, False]
        for i, flt in enumerate(FILTERS[:3]):
            assert [h.id for h in s.search_union({"image": q}, 50, flt)["image"]] == [h.id for h in engine[i]]
            assert len(engine[i]) == min(50, sum(matches(r.payload, flt) for r in recs))


def test_a_key_stands_for_the_conditions_on_its_facets(tmp_path):
    """A point holding one of a filter's exact keys is not tested again on the facets the key covers;
    one holding the key's wildcard is. Where no point holds the wildcard, the key alone is the filter
    on its facets. Either way the store finds what it finds without keys."""
    recs = records(400)
    single = [
        Record(r.id, {k: v[0] if isinstance(v, list) else v for k, v in r.payload.items()}, r.vectors) for r in recs
    ]
    flt = FILTERS[1]  # a category, two colours and a pattern: one triple of facets
    q = np.ones(4, dtype=np.float32)
    with (
        fill(tmp_path / "wild", recs) as wild,
        fill(tmp_path / "single", single) as one,
        fill(tmp_path / "plain", single, facets=False) as plain,
    ):
        tested = wild._filter(flt)
        assert all(isinstance(c, qe.Filter) for c in tested.must)  # no facet tested outside the wildcard's branch
        assert sorted(set(condition_keys(tested))) == sorted([facet_keys.KEY, "category", "colour", "pattern"])
        assert condition_keys(one._filter(flt)) == [facet_keys.KEY]
        assert condition_keys(one._filter(FILTERS[2])) == [facet_keys.KEY, "category"]  # the must_not stays
        for f in FILTERS:
            expected = sum(matches(r.payload, f) for r in single)
            assert one.count(f) == plain.count(f) == expected
            found = one.search_union({"image": q}, 50, f)["image"]
            assert [h.id for h in found] == [h.id for h in plain.search_union({"image": q}, 50, f)["image"]]
            assert all(matches(r.payload, f) for r in one.retrieve([h.id for h in found]))
