"""Catalog records and the row checks every reader shares.

Each reader (plain CSV/TSV/JSONL/Parquet, Shopify, Google Merchant Center) turns its file into rows:
``(line, {"id": ..., "image": ..., "images": [...], "title": ..., "description": ..., field: value})``
plus the kind of each payload field. :func:`build_catalog` checks every row the same way and turns
them into :class:`CatalogItem` records, so the pipeline, hashing and stores never see a format.
Bad rows are all collected and reported together, each as ``FILE:LINE: column 'NAME': problem``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from .images import is_url
from .store import FieldKind

CORE_COLUMNS = ("id", "title", "description", "image", "images")
MAX_REPORTED = 20

FeedFormat = Literal["auto", "plain", "shopify", "gmc"]
FEED_FORMATS: tuple[str, ...] = get_args(FeedFormat)

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
    image: str  # the main photo: absolute path or http(s) URL
    payload: dict[str, Any]
    source: str  # "catalog.csv:12": where the row came from, for error reports
    images: tuple[str, ...] = ()  # every photo, the main one first; left empty it is just (image,)

    def __post_init__(self) -> None:
        if not self.images:
            object.__setattr__(self, "images", (self.image,))
        elif self.images[0] != self.image:
            raise ValueError(f"{self.source}: the first of images must be the main image {self.image!r}")


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


class Problems:
    """The bad rows of one file, collected so that all of them are reported at once."""

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


@dataclass(frozen=True)
class FeedOptions:
    """How to read a catalog file: its layout (``auto`` detects it from the header) and, for any other
    layout, which source column holds each catalog field (``{"id": "sku", "image": "Main Image"}``)."""

    format: FeedFormat = "auto"
    mapping: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in FEED_FORMATS:
            raise CatalogError([f"unknown catalog format {self.format!r}; use one of {', '.join(FEED_FORMATS)}"])
        for name in self.mapping:
            if not name or name.startswith("_"):
                raise CatalogError(
                    [f"mapping {name}={self.mapping[name]}: field names must not be empty or start with '_'"]
                )


def parse_mapping(pairs: Sequence[str]) -> dict[str, str]:
    """``["id=sku", "image=Main Image"]`` -> ``{"id": "sku", "image": "Main Image"}``."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        name, sep, column = pair.partition("=")
        name, column = name.strip(), column.strip()
        if not sep or not name or not column:
            raise CatalogError([f"mapping {pair!r}: expected FIELD=COLUMN, e.g. id=sku"])
        if name in mapping:
            raise CatalogError([f"mapping {pair!r}: field {name!r} is mapped twice"])
        mapping[name] = column
    return mapping


# --------------------------------------------------------------------------- rows -> items


def build_catalog(
    path: Path,
    records: Iterable[tuple[int, dict[str, Any]]],
    kinds: Mapping[str, FieldKind],
    problems: Problems,
    columns: Mapping[str, str] | None = None,
) -> Catalog:
    """Check and convert every row; ``columns`` names the source column of a key, for error reports."""
    rows = _RowChecker(path, kinds, problems, columns or {})
    items = [item for ln, row in records if (item := rows.item(ln, row)) is not None]
    problems.raise_if_any()
    if not items:
        raise CatalogError([f"{path.name}: the catalog has no products"])
    return Catalog(path, items, {k: v for k, v in kinds.items() if k in rows.present})


class _RowChecker:
    def __init__(self, path: Path, kinds: Mapping[str, FieldKind], problems: Problems, columns: Mapping[str, str]):
        self.name = path.name
        self.base_dir = str(path.parent.absolute())
        self.kinds = kinds
        self.problems = problems
        self.columns = columns
        self.first_line: dict[str, int] = {}
        self.present: set[str] = set()

    def add(self, ln: int, key: str, message: str) -> None:
        self.problems.add(ln, self.columns.get(key, key), message)

    def item(self, ln: int, row: dict[str, Any]) -> CatalogItem | None:
        item_id = self._id(ln, row.get("id"))
        photos = self._photos(ln, row.get("image"), row.get("images"))
        payload: dict[str, Any] = {}
        ok = item_id is not None and bool(photos)
        for key, kind in self.kinds.items():
            value = row.get(key)
            try:
                converted = _convert_list(value, kind) if isinstance(value, (list, tuple)) else _convert(value, kind)
            except ValueError as exc:
                self.add(ln, key, str(exc))
                ok = False
                continue
            if converted is not None:
                payload[key] = converted
        if not ok or self.problems.total:
            return None  # once anything is wrong only problems are collected, not items
        self.present.update(payload)
        return CatalogItem(
            id=item_id,  # type: ignore[arg-type]
            title=_text(row.get("title")) or "",
            description=_text(row.get("description")) or "",
            image=photos[0],
            payload=payload,
            source=f"{self.name}:{ln}",
            images=tuple(photos),
        )

    def _id(self, ln: int, value: Any) -> str | None:
        item_id = _text(value)
        if item_id is None:
            self.add(ln, "id", "missing id")
        elif not isinstance(value, (str, int)) or isinstance(value, bool):
            self.add(ln, "id", f"ids must be strings or integers, got {value!r}")
        elif item_id in self.first_line:
            self.add(ln, "id", f"duplicate id {item_id!r} (first on line {self.first_line[item_id]})")
        else:
            self.first_line[item_id] = ln
            return item_id
        return None

    def _photos(self, ln: int, image: Any, images: Any) -> list[str]:
        """The main photo first, then the others in order, each once; [] (and a problem) when there is none."""
        if isinstance(images, str):
            # One text cell: "a.jpg|b.jpg", or "a.jpg,b.jpg" when no '|' is used (URLs may hold commas).
            images = images.split("|") if "|" in images else images.split(",")
        if images is not None and not isinstance(images, (list, tuple)):
            self.add(ln, "images", f"expected a list of file paths or http(s) URLs, got {images!r}")
            return []
        sources = [("image", image)] if _text(image) is not None or images is None else []
        sources += [("images", v) for v in images or () if v is not None and not (isinstance(v, str) and not v.strip())]
        if not sources:
            self.add(ln, "image", "missing image")
            return []
        photos = [self._photo(ln, key, value) for key, value in sources]
        if any(p is None for p in photos):
            return []
        return list(dict.fromkeys(photos))  # type: ignore[arg-type]

    def _photo(self, ln: int, key: str, value: Any) -> str | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            self.add(ln, key, "missing image")
            return None
        if not isinstance(value, str):
            self.add(ln, key, f"expected a file path or http(s) URL, got {value!r}")
            return None
        value = value.strip()
        if is_url(value):
            scheme = value.split(":", 1)[0].lower()
            if scheme not in ("http", "https"):
                self.add(ln, key, f"unsupported URL scheme {scheme!r} in {value!r}; use http(s) or a path")
                return None
            return value
        # normpath, not resolve(): symlinked image folders keep the paths the catalog names.
        return os.path.normpath(os.path.join(self.base_dir, value))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value.strip() if isinstance(value, str) else str(value)
    return text or None


def check_required(found: Mapping[str, Any], name: str, line: int | None) -> None:
    """A catalog needs an ``id`` and an ``image`` (or ``images``) column."""
    missing = [c for c in ("id", "image") if c not in found and not (c == "image" and "images" in found)]
    if missing:
        where = f"{name}:{line}" if line is not None else name
        listed = ", ".join(repr(c) for c in found) or "none"
        raise CatalogError(
            [f"{where}: missing required column(s) {', '.join(map(repr, missing))}; found columns: {listed}"]
        )


# --------------------------------------------------------------------------- typing


def csv_kind(values: list[str]) -> FieldKind:
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


def native_kind(value: Any) -> str | None:
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


def resolve_native(counts: Counter[str]) -> FieldKind:
    """Kind of a JSON field from the native types of its values; the majority decides on a mix."""
    numeric = counts["integer"] + counts["float"]
    if counts["keyword"] >= numeric + counts["bool"]:
        return "keyword"
    if counts["bool"] > numeric:
        return "bool"
    return "float" if counts["float"] else "integer"


def arrow_kind(t: Any, pa: Any) -> FieldKind | None:
    if pa.types.is_dictionary(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        return arrow_kind(t.value_type, pa)
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
