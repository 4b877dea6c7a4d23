"""Translation between lookalike's store types and Qdrant's point model.

Both adapters speak Qdrant (the embedded engine and the server), so what a record,
a filter and the recorded schema look like on the Qdrant side is decided once, here.
The two Python bindings have different model classes but the same shapes, so the
filter builder takes the classes of one binding as a :class:`FilterModels`.

Payload contract: the payload is returned as stored, including ``_id`` (the catalog id)
and ``_hash``; code that shows a payload to a person drops :data:`RESERVED_KEYS`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, get_args

import numpy as np

from .store import (
    ID_KEY,
    FieldKind,
    Filter,
    Record,
    SchemaMismatch,
    ScoredPoint,
    SearchRequest,
    SparseVector,
    StoreError,
    StoreSchema,
    point_id,
)

# A binding's own sparse vector class, made from lookalike's SparseVector.
SparseMaker = Callable[[SparseVector], Any]

FIELD_KINDS: tuple[str, ...] = get_args(FieldKind)
_RANGE_KEYS = frozenset({"gt", "gte", "lt", "lte"})
META_FORMAT = 1
# New collections keep an int8 copy of each vector in RAM (values clipped to their 0.99 quantile);
# searches walk the graph on the copies, then rescore the best OVERSAMPLING x limit on the float32
# originals, so the scores a search returns are exact (a union's candidates skip that step: each is
# scored exactly afterwards). On 20k random vectors a 3-channel search took
# 1.2-1.4 ms instead of 2.7-3.0 ms and the HNSW build half the time, for a quarter more vector memory.
QUANTILE = 0.99
OVERSAMPLING = 2.0
# A filtered search scans the filter's matches one by one, instead of searching the graph (dense) or the
# inverted index (sparse) and testing the filter at each step, when the engine expects fewer than this
# many. Qdrant's default (10,000 KB of vectors: 5,000 512-d ones; 5,000 sparse) sits where the combined
# facet keys of a 2M catalog fall (a category, colour and pattern: ~5,000 items, 0.25%), and so rare a
# filter costs the graph and the inverted index far more than the scan (300k items, a key of 750,
# scale.py's text query: 6.6 ms scanned, 23 ms with the graph and the index).
FULL_SCAN_POINTS = 10_000


def full_scan_kb(size: int) -> int:
    """The engine's full-scan threshold (in KB of float32 vectors) that is FULL_SCAN_POINTS ``size``-d vectors."""
    return -(-FULL_SCAN_POINTS * size * 4 // 1024)


# -- schema -------------------------------------------------------------------------------------


def meta_to_json(schema: StoreSchema, payload_indexes: dict[str, FieldKind]) -> dict[str, Any]:
    return {
        "format": META_FORMAT,
        "vectors": dict(schema.vectors),
        "models": dict(schema.models),
        "sparse": dict(schema.sparse),
        "multi": dict(schema.multi),
        "payload_indexes": dict(payload_indexes),
    }


def meta_from_json(data: Any, where: str) -> tuple[StoreSchema, dict[str, FieldKind]]:
    """Read what :func:`meta_to_json` wrote; ``where`` names the file or collection in errors."""
    try:
        vectors = {str(k): int(v) for k, v in data["vectors"].items()}
        models = {str(k): str(v) for k, v in data["models"].items()}
        # Stores made before the lexical channel record no sparse vectors.
        sparse = {str(k): str(v) for k, v in data.get("sparse", {}).items()}
        # ... and stores made before several photos per product, no multivectors.
        multi = {str(k): str(v) for k, v in data.get("multi", {}).items()}
        indexes = {str(k): v for k, v in data.get("payload_indexes", {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise StoreError(f"{where}: unreadable lookalike store metadata ({e!r})") from e
    bad = {k: v for k, v in indexes.items() if v not in FIELD_KINDS}
    if bad:
        raise StoreError(f"{where}: unknown payload index kinds {bad}; expected one of {FIELD_KINDS}")
    unknown = sorted(set(multi) - set(vectors))
    if unknown:
        raise StoreError(f"{where}: multivectors {unknown} have no recorded size")
    return StoreSchema(vectors=vectors, models=models, sparse=sparse, multi=multi), indexes


def check_schema(stored: StoreSchema, requested: StoreSchema, where: str, fix: str) -> None:
    """Raise :class:`SchemaMismatch` unless ``requested``'s dense vectors are what the store was built with."""
    if stored.dense() == requested.dense():
        return
    raise SchemaMismatch(
        f"{where} was built with other models or vector sizes: "
        f"{stored.describe_difference(requested)}. Vectors from different models cannot be mixed; {fix}"
    )


def additions(stored: StoreSchema, requested: StoreSchema) -> tuple[list[str], list[str], StoreSchema]:
    """The sparse vectors and multivectors ``requested`` adds to a store made before them, and the schema
    then recorded, with the added vectors marked unfilled until every stored item has them."""
    sparse = [name for name in requested.sparse if name not in stored.sparse]
    multi = [name for name in requested.multi if name not in stored.multi]
    schema = StoreSchema(
        {**stored.vectors, **{n: requested.vectors[n] for n in multi}},
        {**stored.models, **{n: requested.models[n] for n in multi}},
        {**stored.sparse, **dict.fromkeys(sparse, "")},
        {**stored.multi, **dict.fromkeys(multi, "")},
    )
    return sparse, multi, schema


def check_field_kind(key: str, kind: str) -> None:
    if kind not in FIELD_KINDS:
        raise StoreError(f"payload index on {key!r}: unknown kind {kind!r}; expected one of {FIELD_KINDS}")


# -- points -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointData:
    """One record in Qdrant's terms, before it is wrapped in a binding's point class."""

    id: str
    vectors: dict[str, Any]  # dense: list of floats; sparse: the binding's sparse vector
    payload: dict[str, Any]


def _plain(value: Any) -> Any:
    # numpy scalars reach payloads from pandas/pyarrow readers; neither binding serialises them
    return value.item() if isinstance(value, np.generic) else value


def to_points(
    records: Sequence[Record], schema: StoreSchema, sparse: SparseMaker, payload: bool = True
) -> list[PointData]:
    """Check every record against the schema and convert it; errors name the catalog id.
    Without ``payload``, the points carry vectors only (an update of stored items' vectors)."""
    points = []
    for rec in records:
        if not isinstance(rec.id, str) or not rec.id:
            raise StoreError(f"record id must be a non-empty string, got {rec.id!r}")
        if not rec.vectors:
            raise StoreError(f"item {rec.id!r}: no vectors to store")
        vectors = {name: _vector(schema, name, vec, f"item {rec.id!r}", sparse) for name, vec in rec.vectors.items()}
        values = {k: _plain(v) for k, v in rec.payload.items()} if payload else {}
        if payload:
            values[ID_KEY] = rec.id
        points.append(PointData(id=point_id(rec.id), vectors=vectors, payload=values))
    return points


def query_vector(schema: StoreSchema | None, name: str, vector: Any, sparse: SparseMaker) -> Any:
    if schema is None:
        raise StoreError("the store is empty: index a catalog before searching it")
    if name in schema.multi and np.ndim(vector) == 1:
        # One query vector against a multivector: its best row's cosine (max-sim over one row).
        vector = np.asarray(vector, dtype=np.float32)[None, :]
    return _vector(schema, name, vector, "query", sparse)


def _vector(schema: StoreSchema, name: str, vec: Any, what: str, sparse: SparseMaker) -> Any:
    if name in schema.sparse:
        if not isinstance(vec, SparseVector):
            raise StoreError(f"{what}: vector {name!r} is sparse; give a SparseVector, not {type(vec).__name__}")
        if len(vec.indices) != len(vec.values) or not all(math.isfinite(v) for v in vec.values):
            raise StoreError(f"{what}: sparse vector {name!r} needs one finite value per index")
        return sparse(vec)
    if name not in schema.vectors:
        known = sorted([*schema.vectors, *schema.sparse])
        raise StoreError(f"{what}: unknown vector {name!r}; the store has {known}")
    arr = np.asarray(vec, dtype=np.float32)
    if name in schema.multi:
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] != schema.vectors[name]:
            raise StoreError(
                f"{what}: multivector {name!r} has shape {arr.shape}, "
                f"the store expects (rows >= 1, {schema.vectors[name]})"
            )
    elif arr.ndim != 1 or arr.shape[0] != schema.vectors[name]:
        raise StoreError(f"{what}: vector {name!r} has shape {arr.shape}, the store expects ({schema.vectors[name]},)")
    if not np.isfinite(arr).all():
        raise StoreError(f"{what}: vector {name!r} holds NaN or infinity")
    return arr.tolist()


def _vectors_out(raw: Any) -> dict[str, Any]:
    if not raw:
        return {}
    return {name: _vector_out(v) for name, v in raw.items()}


def _vector_out(value: Any) -> Any:
    # Either binding's sparse vector has indices and values; a dense one is a list of floats.
    if hasattr(value, "indices"):
        return SparseVector(tuple(int(i) for i in value.indices), tuple(float(v) for v in value.values))
    return np.asarray(value, dtype=np.float32)


def to_record(payload: dict[str, Any] | None, vectors: Any = None) -> Record:
    payload = dict(payload or {})
    return Record(id=str(payload.get(ID_KEY, "")), payload=payload, vectors=_vectors_out(vectors))


def payload_wanted(keys: Iterable[str] | None, named: bool = False) -> bool | list[str]:
    """The payload to fetch: True for all of it, else ``keys`` plus the catalog id; False when only
    the catalog id is wanted (``keys=[]``) of items the caller ``named``, since their point ids say
    which they are and no payload need be read (the costly part of a small fetch or search)."""
    if named and keys is not None and not list(keys):
        return False
    selected = payload_keys(keys)
    return True if selected is None else selected


def ids_only(request: SearchRequest) -> bool:
    return payload_wanted(request.keys, named=request.ids is not None) is False


def point_names(ids: Iterable[str]) -> dict[str, str]:
    """Point id -> catalog id for the items ``ids``, in their order, each once."""
    return {point_id(i): i for i in ids}


def by_point_id(ids: Sequence[str], names: dict[str, str], found: Iterable[tuple[Any, Any]]) -> list[Record]:
    """Records for (point id, vectors) pairs fetched without payload, named through ``names``
    (:func:`point_names` of ``ids``), in the order of ``ids``."""
    records = (Record(names[str(pid)], {ID_KEY: names[str(pid)]}, _vectors_out(vectors)) for pid, vectors in found)
    return in_order(ids, records)


def to_scored_list(
    request: SearchRequest, hits: Iterable[tuple[Any, float, Any, Any]], names: Mapping[Any, str] | None = None
) -> list[ScoredPoint]:
    """A binding's (point id, score, payload, vector) hits for ``request`` as ScoredPoints.

    Hits fetched without payload are named through ``names`` (point id -> catalog id), by default the
    ids the request named; a hit with no name (deleted since it was found) is left out."""
    if names is None and ids_only(request):
        names = point_names(request.ids or ())
    if names is not None:
        return [
            ScoredPoint(name, float(score), {ID_KEY: name}, _vectors_out(vector) or None)
            for pid, score, _, vector in hits
            if (name := names.get(pid)) is not None
        ]
    return [to_scored(score, payload, vector if request.with_vectors else None) for _, score, payload, vector in hits]


def union_lists(
    names: Sequence[str], lists: Sequence[Sequence[tuple[Any, float, Any]]], catalog: Mapping[Any, str] | None = None
) -> dict[str, list[ScoredPoint]]:
    """:meth:`search_union` results: (point id, score, payload) lists, the first carrying the payloads,
    or ``catalog`` naming the point ids; points without a name are left out."""
    if not names:
        return {}
    if not lists or not lists[0]:
        return {name: [] for name in names}  # an empty union: nothing to score on the other vectors
    if catalog is None:
        catalog = {pid: str((payload or {}).get(ID_KEY, "")) for pid, _, payload in lists[0]}
    out = {}
    for name, hits in zip(names, lists, strict=True):
        points = [ScoredPoint(catalog[p], float(score), {ID_KEY: catalog[p]}) for p, score, _ in hits if p in catalog]
        # The union is merged in no fixed order: equal scores are ordered by id so pages stay stable.
        out[name] = sorted(points, key=lambda point: (-point.score, point.id))
    return out


def to_scored(score: float, payload: dict[str, Any] | None, vectors: Any = None) -> ScoredPoint:
    payload = dict(payload or {})
    return ScoredPoint(
        id=str(payload.get(ID_KEY, "")),
        score=float(score),
        payload=payload,
        vectors=_vectors_out(vectors) if vectors else None,
    )


def scored_on_vectors(request: SearchRequest, points: list[ScoredPoint]) -> list[ScoredPoint]:
    """``points`` scored again on the vectors they came back with: the cosine of the request's dense
    query vector to each (to its best row for a multivector), best first."""
    query = np.asarray(request.vector, dtype=np.float32)
    query = query / max(float(np.linalg.norm(query)), 1e-12)

    def cosine(point: ScoredPoint) -> float:
        rows = np.atleast_2d(np.asarray((point.vectors or {})[request.vector_name], dtype=np.float32))
        norms = np.maximum(np.linalg.norm(rows, axis=1), 1e-12)
        return float(np.max(rows @ query / norms))

    rescored = [replace(p, score=cosine(p)) for p in points]
    return sorted(rescored, key=lambda p: -p.score)


def in_order(ids: Sequence[str], records: Iterable[Record]) -> list[Record]:
    """Records in the order of ``ids``; ids with no record are skipped."""
    by_id = {r.id: r for r in records}
    return [by_id[i] for i in ids if i in by_id]


def payload_keys(keys: Iterable[str] | None) -> list[str] | None:
    """Payload keys to fetch: ``keys`` plus the catalog id, or None for all."""
    if keys is None:
        return None
    return sorted({*keys, ID_KEY})


# -- filters ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FilterModels:
    """The filter classes of one Qdrant binding (both take these keyword arguments)."""

    Filter: Any
    FieldCondition: Any
    MatchValue: Any
    MatchAny: Any
    Range: Any
    has_id: Callable[[list[str]], Any]  # a condition matching these point ids
    supports_bool_match: bool = True


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _number_eq(m: FilterModels, key: str, value: Any) -> Any:
    # a range, not MatchValue, so that 3 matches 3.0: catalog numbers may be stored either way
    if not math.isfinite(float(value)):
        raise StoreError(f"filter on {key!r}: {value!r} is not a finite number")
    return m.FieldCondition(key=key, range=m.Range(gte=float(value), lte=float(value)))


def to_condition(m: FilterModels, cond: Any) -> Any:
    """One lookalike :class:`Condition` as the binding's condition."""
    key, op, value = cond.key, cond.op, _plain(cond.value)
    if key == ID_KEY and op in ("eq", "in"):
        # The catalog id is the point id (hashed): matched on the id itself, no payload read.
        return m.has_id([point_id(str(v)) for v in (value if op == "in" else [value])])
    if op == "eq":
        if isinstance(value, bool) and not m.supports_bool_match:
            raise StoreError(
                f"filter on {key!r}: equality on true/false is not supported by the embedded store "
                "(qdrant-edge-py reads True as 1); store the field as a keyword such as 'yes'/'no'"
            )
        if _is_number(value):
            return _number_eq(m, key, value)
        if isinstance(value, str | bool):
            return m.FieldCondition(key=key, match=m.MatchValue(value=value))
        raise StoreError(f"filter on {key!r}: 'eq' needs a string, number or bool, got {value!r}")
    if op == "in":
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise StoreError(f"filter on {key!r}: 'in' needs a list of values, got {value!r}")
        values = [_plain(v) for v in value]
        if all(isinstance(v, str) for v in values):
            return m.FieldCondition(key=key, match=m.MatchAny(any=values))
        if all(_is_number(v) for v in values):
            return m.Filter(should=[_number_eq(m, key, v) for v in values])
        raise StoreError(f"filter on {key!r}: 'in' needs all strings or all numbers, got {values!r}")
    if op == "range":
        if not isinstance(value, dict) or not value or not set(value) <= _RANGE_KEYS:
            raise StoreError(
                f"filter on {key!r}: 'range' needs a dict with some of {sorted(_RANGE_KEYS)}, got {value!r}"
            )
        bad = {k: v for k, v in value.items() if not _is_number(_plain(v))}
        if bad:
            raise StoreError(f"filter on {key!r}: range bounds must be numbers, got {bad}")
        return m.FieldCondition(key=key, range=m.Range(**{k: float(v) for k, v in value.items()}))
    raise StoreError(f"filter on {key!r}: unknown operator {op!r}; use 'eq', 'in' or 'range'")


def to_filter(flt: Filter | None, m: FilterModels, ids: Sequence[str] | None = None) -> Any:
    """A lookalike :class:`Filter` (and, if given, a restriction to the items ``ids``) as the
    binding's filter, or None when there is no condition."""
    must = [to_condition(m, c) for c in flt.must] if flt else []
    must_not = [to_condition(m, c) for c in flt.must_not] if flt else []
    if ids is not None:
        must.append(m.has_id([point_id(i) for i in ids]))
    if not (must or must_not):
        return None
    return m.Filter(must=must or None, must_not=must_not or None)


def vector_selector(with_vectors: Any) -> bool | list[str]:
    """``with_vectors`` (True, False or vector names) as both bindings take it."""
    return with_vectors if isinstance(with_vectors, bool) else list(with_vectors)
