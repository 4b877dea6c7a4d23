"""Plain catalogs: CSV/TSV, JSONL and Parquet files with ``id``, ``image`` (or ``images``), ``title`` and
``description`` columns, and folders of images.

Every other column becomes a payload field that searches can filter on. A mapping names the source
column of a field when a file uses other names (``{"id": "sku", "image": "Main Image"}``); a mapped
column then feeds only its fields. For Parquet the line of a problem is the 1-based row.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..catalog_items import (
    CORE_COLUMNS,
    Catalog,
    CatalogError,
    CatalogItem,
    Problems,
    arrow_kind,
    build_catalog,
    check_required,
    csv_kind,
    native_kind,
    resolve_native,
)
from ..store import FieldKind
from .table import Table, cell, utf8_lines

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif"})


@lru_cache(maxsize=4096)
def column_key(column: str) -> str:
    return column.lower() if column.lower() in CORE_COLUMNS else column


def column_plan(
    columns: Sequence[str], mapping: Mapping[str, str], name: str, line: int | None
) -> dict[str, list[str]]:
    """Source column -> the catalog keys it feeds: mapped fields from their columns, every other column
    under its own name unless a mapped field takes that name. A mapping naming no column is refused."""
    missing = [f"{field}={column!r}" for field, column in mapping.items() if column not in columns]
    if missing:
        where = f"{name}:{line}" if line is not None else name
        listed = ", ".join(repr(c) for c in dict.fromkeys(columns) if c) or "none"
        raise CatalogError([f"{where}: mapping {', '.join(missing)} names no column; the columns are: {listed}"])
    fields = {column_key(f): column for f, column in mapping.items()}
    plan: dict[str, list[str]] = {}
    for column in dict.fromkeys(columns):
        key = column_key(column)
        if column in fields.values():
            plan[column] = [f for f, source in fields.items() if source == column]
        elif key in fields:
            log.info("%s: column %r is replaced by the mapping %s=%r", name, column, key, fields[key])
            plan[column] = []
        else:
            plan[column] = [key]
    return plan


def check_keys(keys: list[str], name: str, problems: Problems, line: int | None) -> None:
    for key, count in Counter(keys).items():
        if count > 1:
            problems.add(line, key, f"column appears {count} times")
    for key in keys:
        if key.startswith("_"):
            problems.add(line, key, "column names starting with '_' are reserved")
    check_required(dict.fromkeys(keys), name, line)


def read_plain_table(table: Table, mapping: Mapping[str, str], overrides: Mapping[str, FieldKind]) -> Catalog:
    name = table.name
    problems = Problems(name)
    table.check(problems)
    plan = column_plan(table.columns, mapping, name, line=1)
    pairs = [(key, i) for i, column in enumerate(table.columns) if column for key in plan[column]]
    check_keys([key for key, _ in pairs], name, problems, line=1)
    problems.raise_if_any()

    records = [(ln, {key: cell(v, i) for key, i in pairs}) for ln, v in table.rows]
    kinds: dict[str, FieldKind] = {}
    for key, _ in pairs:
        if key not in CORE_COLUMNS:
            kinds[key] = overrides.get(key) or csv_kind([r[key] for _, r in records])
    return build_catalog(table.path, records, kinds, problems, _sources(plan))


def read_jsonl(path: Path, mapping: Mapping[str, str], overrides: Mapping[str, FieldKind]) -> Catalog:
    name = path.name
    problems = Problems(name)
    objects: list[tuple[int, dict[str, Any]]] = []
    with path.open("rb") as fh:
        for ln, text in enumerate(utf8_lines(fh, name), start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                problems.add(ln, None, f"invalid JSON: {exc.msg} (character {exc.colno})")
                continue
            if not isinstance(obj, dict):
                problems.add(ln, None, f"expected a JSON object, got {type(obj).__name__}")
                continue
            objects.append((ln, obj))

    plan = column_plan(list(dict.fromkeys(k.strip() for _, obj in objects for k in obj)), mapping, name, None)
    records: list[tuple[int, dict[str, Any]]] = []
    seen_reserved: set[str] = set()
    for ln, obj in objects:
        row: dict[str, Any] = {}
        for raw_key, value in obj.items():
            for key in plan[raw_key.strip()]:
                if key.startswith("_"):
                    if key not in seen_reserved:
                        seen_reserved.add(key)
                        problems.add(ln, key, "field names starting with '_' are reserved")
                    continue
                if key in row:
                    problems.add(ln, key, "field appears twice")
                row[key] = value
        records.append((ln, row))

    check_required(dict.fromkeys(k for _, r in records for k in r), name, None)
    counts: dict[str, Counter[str]] = {}
    for _, row in records:
        for key, value in row.items():
            if key in CORE_COLUMNS:
                continue
            kind_counts = counts.setdefault(key, Counter())
            # Nested values count for no kind; converting them reports the row.
            for v in value if isinstance(value, list) else [value]:
                native = native_kind(v)
                if native not in (None, "nested"):
                    kind_counts[native] += 1
    kinds = {key: overrides.get(key) or resolve_native(c) for key, c in counts.items()}
    return build_catalog(path, records, kinds, problems, _sources(plan))


def read_parquet(path: Path, mapping: Mapping[str, str], overrides: Mapping[str, FieldKind]) -> Catalog:
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = path.name
    problems = Problems(name)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise CatalogError([f"{name}: cannot read as Parquet: {exc}"]) from None
    schema = pf.schema_arrow
    plan = column_plan([f.name for f in schema], mapping, name, line=None)
    pairs = [(key, i) for i, fld in enumerate(schema) for key in plan[fld.name]]
    check_keys([key for key, _ in pairs], name, problems, line=None)
    kinds: dict[str, FieldKind] = {}
    for key, i in pairs:
        fld = schema.field(i)
        kind = arrow_kind(fld.type, pa)
        if key == "id" and kind not in ("keyword", "integer"):
            problems.add(None, key, f"ids must be strings or integers, not {fld.type}")
        elif key in ("image", "images", "title", "description") and kind != "keyword":
            problems.add(None, key, f"must be a string column, not {fld.type}")
        elif key not in CORE_COLUMNS:
            if kind is None:
                problems.add(None, key, f"unsupported Parquet type {fld.type}")
            else:
                kinds[key] = overrides.get(key) or kind
    problems.raise_if_any()

    def records() -> Iterator[tuple[int, dict[str, Any]]]:
        row_no = 0
        for batch in pf.iter_batches(batch_size=8192):
            for row in batch.to_pylist():
                row_no += 1
                values = list(row.values())
                yield row_no, {key: values[i] for key, i in pairs}

    return build_catalog(path, records(), kinds, problems, _sources(plan))


def read_folder(root: Path) -> Catalog:
    items: list[CatalogItem] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Hidden folders hold thumbnails and tool state (.git, .thumbnails), never products.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for filename in sorted(filenames):
            if filename.startswith(".") or Path(filename).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            rel = filename if rel_dir == "." else f"{rel_dir}/{filename}"
            title = " ".join(re.sub(r"[_-]+", " ", Path(filename).stem).split())
            payload = {} if rel_dir == "." else {"folder": rel_dir}
            image = os.path.abspath(os.path.join(dirpath, filename))
            items.append(CatalogItem(rel, title, "", image, payload, rel))
    if not items:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise CatalogError([f"{root}: no images ({exts}) found in this folder"])
    fields: dict[str, FieldKind] = {"folder": "keyword"} if any(i.payload for i in items) else {}
    return Catalog(root, items, fields)


def _sources(plan: Mapping[str, list[str]]) -> dict[str, str]:
    """Catalog key -> the column it came from, where they differ, so problems name the user's column."""
    return {key: column for column, keys in plan.items() for key in keys if key != column_key(column)}
