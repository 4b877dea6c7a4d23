"""Catalog readers: CSV/TSV, JSONL, Parquet files and plain folders of images.

A catalog row has ``id``, ``image`` (required), ``title`` and ``description``; every
other column becomes a payload field that searches can filter on. Bad rows are all
collected and reported together, each as ``FILE:LINE: column 'NAME': problem``, so a
catalog team can fix everything in one pass. Lines are 1-based file lines (the CSV
header is line 1); for Parquet the number is the 1-based row.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from .images import is_url
from .store import FieldKind

CORE_COLUMNS = ("id", "title", "description", "image")
REQUIRED_COLUMNS = ("id", "image")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif"})
FILE_TYPES = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet")
MAX_REPORTED = 20

_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_INT_RE = re.compile(r"^[+-]?\d+$")
# "00123" is a code (SKU, zip), not the number 123: such columns stay keywords.
_LEADING_ZERO_RE = re.compile(r"^[+-]?0\d")
_INT64 = 2**63 - 1


@dataclass(frozen=True)
class CatalogItem:
    id: str
    title: str
    description: str
    image: str  # absolute path or http(s) URL
    payload: dict[str, Any]
    source: str  # "catalog.csv:12": where the row came from, for error reports


@dataclass
class Catalog:
    path: Path
    items: list[CatalogItem]
    fields: dict[str, FieldKind]  # payload field -> kind, for fields with at least one value

    def __len__(self) -> int:
        return len(self.items)


class CatalogError(ValueError):
    """A catalog that cannot be read; ``problems`` lists up to MAX_REPORTED of ``total`` problems."""

    def __init__(self, problems: list[str], total: int | None = None, name: str = "catalog") -> None:
        self.problems = problems
        self.total = total if total is not None else len(problems)
        if self.total == 1:
            message = problems[0]
        else:
            lines = "\n  ".join(problems)
            more = f"\n  ... and {self.total - len(problems)} more" if self.total > len(problems) else ""
            message = f"{name}: {self.total} problems:\n  {lines}{more}"
        super().__init__(message)


class _Problems:
    def __init__(self, name: str) -> None:
        self.name = name
        self.shown: list[str] = []
        self.total = 0

    def add(self, line: int | None, column: str | None, message: str) -> None:
        self.total += 1
        if len(self.shown) < MAX_REPORTED:
            where = f"{self.name}:{line}" if line is not None else self.name
            col = f" column {column!r}:" if column is not None else ""
            self.shown.append(f"{where}:{col} {message}")

    def raise_if_any(self) -> None:
        if self.total:
            raise CatalogError(self.shown, self.total, self.name)


def read_catalog(path: Path | str, field_kinds: Mapping[str, FieldKind] | None = None) -> Catalog:
    """Read a catalog file or image folder. ``field_kinds`` overrides the inferred kind of payload fields."""
    path = Path(path)
    overrides = dict(field_kinds or {})
    if path.is_dir():
        return _read_folder(path)
    if not path.exists():
        raise CatalogError([f"{path}: no such catalog file or folder"])
    suffix = path.suffix.lower()
    match suffix:
        case ".csv" | ".tsv":
            return _read_csv(path, "\t" if suffix == ".tsv" else ",", overrides)
        case ".jsonl" | ".ndjson":
            return _read_jsonl(path, overrides)
        case ".parquet":
            return _read_parquet(path, overrides)
    kinds = ", ".join(FILE_TYPES)
    raise CatalogError([f"{path.name}: unsupported catalog type {suffix!r}; use {kinds} or a folder of images"])


# --------------------------------------------------------------------------- per-format readers


def _read_csv(path: Path, delimiter: str, overrides: dict[str, FieldKind]) -> Catalog:
    name = path.name
    rows: list[tuple[int, list[str]]] = []
    line = 1
    try:
        with path.open("rb") as fh:
            reader = csv.reader(_utf8_lines(fh, name), delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise CatalogError([f"{name}: the file is empty; expected a header row with id, image, ..."])
            line = reader.line_num
            for values in reader:
                start, line = line + 1, reader.line_num
                if any(v.strip() for v in values):
                    rows.append((start, values))
    except csv.Error as exc:
        raise CatalogError([f"{name}:{line + 1}: malformed CSV: {exc}"]) from None

    problems = _Problems(name)
    columns = [h.strip() for h in header]
    used: list[int] = []  # indexes of named columns; unnamed ones must be empty (trailing delimiters)
    for i, col in enumerate(columns):
        if col:
            used.append(i)
        elif any(i < len(v) and v[i].strip() for _, v in rows):
            problems.add(1, None, f"column {i + 1} has values but no name in the header")
    keys = _normalise_columns([columns[i] for i in used], name, problems, line=1)
    extra = [(ln, len(v)) for ln, v in rows if len(v) > len(columns)]
    for ln, n in extra[:MAX_REPORTED]:
        problems.add(ln, None, f"row has {n} values but the header has {len(columns)} columns")
    problems.total += max(0, len(extra) - MAX_REPORTED)
    problems.raise_if_any()

    def cell(values: list[str], i: int) -> str:
        return values[i].strip() if i < len(values) else ""

    records = [(ln, {key: cell(v, i) for key, i in zip(keys, used, strict=True)}) for ln, v in rows]
    kinds: dict[str, FieldKind] = {}
    for key in keys:
        if key not in CORE_COLUMNS:
            kinds[key] = overrides.get(key) or _csv_kind([r[key] for _, r in records])
    return _build(path, records, kinds, problems)


def _read_jsonl(path: Path, overrides: dict[str, FieldKind]) -> Catalog:
    name = path.name
    problems = _Problems(name)
    records: list[tuple[int, dict[str, Any]]] = []
    seen_reserved: set[str] = set()
    with path.open("rb") as fh:
        for ln, text in enumerate(_utf8_lines(fh, name), start=1):
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
            row: dict[str, Any] = {}
            for raw_key, value in obj.items():
                key = _column_key(raw_key.strip())
                if key.startswith("_"):
                    if key not in seen_reserved:
                        seen_reserved.add(key)
                        problems.add(ln, key, "field names starting with '_' are reserved")
                    continue
                if key in row:
                    problems.add(ln, key, "field appears twice")
                row[key] = value
            records.append((ln, row))

    found = dict.fromkeys(k for _, r in records for k in r)
    _check_required(found, name, None)
    counts: dict[str, Counter[str]] = {}
    for _, row in records:
        for key, value in row.items():
            if key in CORE_COLUMNS:
                continue
            kind_counts = counts.get(key)
            if kind_counts is None:
                kind_counts = counts[key] = Counter()
            # Nested values count for no kind; converting them reports the row.
            for v in value if isinstance(value, list) else [value]:
                native = _native_kind(v)
                if native not in (None, "nested"):
                    kind_counts[native] += 1
    kinds = {key: overrides.get(key) or _resolve_native(c) for key, c in counts.items()}
    return _build(path, records, kinds, problems)


def _read_parquet(path: Path, overrides: dict[str, FieldKind]) -> Catalog:
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = path.name
    problems = _Problems(name)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise CatalogError([f"{name}: cannot read as Parquet: {exc}"]) from None
    schema = pf.schema_arrow
    keys = _normalise_columns([f.name for f in schema], name, problems, line=None)
    kinds: dict[str, FieldKind] = {}
    for key, fld in zip(keys, schema, strict=True):
        kind = _arrow_kind(fld.type, pa)
        if key == "id" and kind not in ("keyword", "integer"):
            problems.add(None, key, f"ids must be strings or integers, not {fld.type}")
        elif key in ("image", "title", "description") and kind != "keyword":
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
                yield row_no, dict(zip(keys, row.values(), strict=True))

    return _build(path, records(), kinds, problems)


def _read_folder(root: Path) -> Catalog:
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


# --------------------------------------------------------------------------- shared row handling


def _build(
    path: Path,
    records: Iterable[tuple[int, dict[str, Any]]],
    kinds: dict[str, FieldKind],
    problems: _Problems,
) -> Catalog:
    name = path.name
    base_dir = str(path.parent.absolute())
    first_line: dict[str, int] = {}
    items: list[CatalogItem] = []
    present: set[str] = set()
    for ln, row in records:
        ok = True
        item_id = _text(row.get("id"))
        if item_id is None:
            problems.add(ln, "id", "missing id")
            ok = False
        elif not isinstance(row.get("id"), (str, int)) or isinstance(row.get("id"), bool):
            problems.add(ln, "id", f"ids must be strings or integers, got {row.get('id')!r}")
            ok = False
        elif item_id in first_line:
            problems.add(ln, "id", f"duplicate id {item_id!r} (first on line {first_line[item_id]})")
            ok = False
        else:
            first_line[item_id] = ln
        image = _image(row.get("image"), base_dir, ln, problems)
        payload: dict[str, Any] = {}
        for key, kind in kinds.items():
            value = row.get(key)
            try:
                converted = _convert_list(value, kind) if isinstance(value, (list, tuple)) else _convert(value, kind)
            except ValueError as exc:
                problems.add(ln, key, str(exc))
                ok = False
                continue
            if converted is not None:
                payload[key] = converted
        if image is None or not ok or problems.total:
            continue  # once anything is wrong only problems are collected, not items
        present.update(payload)
        items.append(
            CatalogItem(
                id=item_id,  # type: ignore[arg-type]
                title=_text(row.get("title")) or "",
                description=_text(row.get("description")) or "",
                image=image,
                payload=payload,
                source=f"{name}:{ln}",
            )
        )
    problems.raise_if_any()
    if not items:
        raise CatalogError([f"{name}: the catalog has no products"])
    return Catalog(path, items, {k: v for k, v in kinds.items() if k in present})


def _image(value: Any, base_dir: str, ln: int, problems: _Problems) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        problems.add(ln, "image", "missing image")
        return None
    if not isinstance(value, str):
        problems.add(ln, "image", f"expected a file path or http(s) URL, got {value!r}")
        return None
    value = value.strip()
    if is_url(value):
        scheme = value.split(":", 1)[0].lower()
        if scheme not in ("http", "https"):
            problems.add(ln, "image", f"unsupported URL scheme {scheme!r} in {value!r}; use http(s) or a path")
            return None
        return value
    # normpath, not resolve(): symlinked image folders keep the paths the catalog names.
    return os.path.normpath(os.path.join(base_dir, value))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value.strip() if isinstance(value, str) else str(value)
    return text or None


def _utf8_lines(fh: IO[bytes], name: str) -> Iterator[str]:
    """Decoded lines, so an encoding error names its own line rather than a read buffer's."""
    for ln, raw in enumerate(fh, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CatalogError([f"{name}:{ln}: not valid UTF-8 text ({exc.reason})"]) from None
        yield text.removeprefix("\ufeff") if ln == 1 else text


@lru_cache(maxsize=4096)
def _column_key(column: str) -> str:
    return column.lower() if column.lower() in CORE_COLUMNS else column


def _normalise_columns(columns: list[str], name: str, problems: _Problems, line: int | None) -> list[str]:
    keys = [_column_key(c) for c in columns]
    for key, count in Counter(keys).items():
        if count > 1:
            problems.add(line, key, f"column appears {count} times")
    for key in keys:
        if key.startswith("_"):
            problems.add(line, key, "column names starting with '_' are reserved")
    _check_required(dict.fromkeys(keys), name, line)
    return keys


def _check_required(found: Mapping[str, Any], name: str, line: int | None) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in found]
    if missing:
        where = f"{name}:{line}" if line is not None else name
        listed = ", ".join(repr(c) for c in found) or "none"
        raise CatalogError(
            [f"{where}: missing required column(s) {', '.join(map(repr, missing))}; found columns: {listed}"]
        )


# --------------------------------------------------------------------------- typing


def _csv_kind(values: list[str]) -> FieldKind:
    """Kind of a CSV column from its text: numbers if most values are, bools if all are true/false."""
    filled = [v for v in values if v]
    if not filled:
        return "keyword"
    if all(v.lower() in ("true", "false") for v in filled):
        return "bool"
    if any(_LEADING_ZERO_RE.match(v) for v in filled):
        return "keyword"
    numbers = [v for v in filled if _NUMBER_RE.match(v)]
    # A majority of numbers means a number column with a few bad values, which are reported;
    # fewer means text that happens to contain some numbers (sizes like "M", "42").
    if not numbers or len(numbers) * 2 <= len(filled):
        return "keyword"
    if all(_INT_RE.match(v) and abs(int(v)) <= _INT64 for v in numbers):
        return "integer"
    return "float"


def _native_kind(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "keyword"
    return "nested"


def _resolve_native(counts: Counter[str]) -> FieldKind:
    """Kind of a JSON field from the native types of its values; the majority decides on a mix."""
    numeric = counts["integer"] + counts["float"]
    if counts["keyword"] >= numeric + counts["bool"]:
        return "keyword"
    if counts["bool"] > numeric:
        return "bool"
    return "float" if counts["float"] else "integer"


def _arrow_kind(t: Any, pa: Any) -> FieldKind | None:
    if pa.types.is_dictionary(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        return _arrow_kind(t.value_type, pa)
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_temporal(t):
        return "keyword"
    return None


def _convert_list(values: Any, kind: FieldKind) -> list[Any] | None:
    out = [c for c in (_convert(v, kind) for v in values) if c is not None]
    return out or None


def _convert(value: Any, kind: FieldKind) -> Any:
    """Value as ``kind``, None when empty; ValueError with a readable message when it does not fit."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
    if isinstance(value, (dict, list, tuple)):
        raise ValueError("nested objects and lists are not supported; flatten them into fields")
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        value = value.isoformat()
    if isinstance(value, decimal.Decimal):
        value = float(value)
    match kind:
        case "keyword":
            if isinstance(value, bool):
                return "true" if value else "false"
            return str(value)
        case "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ValueError(f"expected true or false, got {value!r}")
        case "integer" | "float":
            return _number(value, kind)
    raise ValueError(f"unknown field kind {kind!r}")


def _number(value: Any, kind: FieldKind) -> int | float | None:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    if isinstance(value, str):
        if not _NUMBER_RE.match(value):
            raise ValueError(f"cannot parse {value!r} as a number")
        number: int | float = int(value) if _INT_RE.match(value) else float(value)
    elif isinstance(value, (int, float)):
        number = value
    else:
        raise ValueError(f"cannot parse {value!r} as a number")
    if kind == "float":
        number = float(number)
        # NaN/inf cannot be filtered on; treat them as "no value" the way an empty cell is.
        return number if math.isfinite(number) else None
    if isinstance(number, float):
        if not number.is_integer():
            raise ValueError(f"expected a whole number, got {value!r}")
        number = int(number)
    if abs(number) > _INT64:
        raise ValueError(f"integer {value!r} is out of the 64-bit range")
    return number
