"""``lookalike.json`` of an embedded store: its models, vector sizes, payload indexes and the facet fields
combined into keys (facet_keys.py), written so that a crash leaves the old file or the new one."""

from __future__ import annotations

import json
from pathlib import Path

from . import store_codec as codec
from .files import atomic_write_text
from .store import FieldKind, StoreError, StoreSchema

META_FILE = "lookalike.json"
COMBINED = "combined_facets"


def read(path: Path) -> tuple[StoreSchema, dict[str, FieldKind], list[str] | None]:
    """The schema, payload indexes and combined facet fields (None: a store made before them) at ``path``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise StoreError(f"{path}: cannot read store metadata: {e}") from e
    schema, indexes = codec.meta_from_json(data, str(path))
    combined = data.get(COMBINED)
    if combined is not None and not (isinstance(combined, list) and all(isinstance(f, str) for f in combined)):
        raise StoreError(f"{path}: {COMBINED!r} must be a list of field names, got {combined!r}")
    return schema, indexes, combined


def write(path: Path, schema: StoreSchema, indexes: dict[str, FieldKind], combined: list[str] | None) -> None:
    data = codec.meta_to_json(schema, indexes)
    if combined is not None:
        data[COMBINED] = combined
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))
