"""Shopify product CSV exports (Products > Export): one product per Handle.

A product's first row holds its columns (Title, Body (HTML), Vendor, Type, Tags, ...). The rows after
it with the same Handle add variants (option values, SKU, barcode, price) and photos (Image Src at an
Image Position), with the product columns left blank. Problems with a product as a whole are named by
its first row; a bad price or position by its own row.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..catalog_items import CORE_COLUMNS, Catalog, CatalogError, Problems, build_catalog
from ..store import FieldKind
from .table import Table, cell
from .values import html_to_text, parse_price, split_list, unique

HANDLE = "Handle"
# With a Handle column, any of these marks a file as a Shopify export.
MARKERS = ("Variant Price", "Variant SKU", "Image Src", "Body (HTML)")
OPTION_COUNT = 3  # Shopify products have at most three options
# Shopify names the lone option of a product without variants "Title", valued "Default Title".
DEFAULT_OPTION = "Default Title"

# payload field -> column, for product fields taken as they are
PRODUCT_FIELDS = {
    "brand": "Vendor",
    "product_type": "Type",
    "product_category": "Product Category",
    "status": "Status",
    "published": "Published",
}
KINDS: dict[str, FieldKind] = {
    **dict.fromkeys(PRODUCT_FIELDS, "keyword"),
    "published": "bool",
    "tags": "keyword",
    "sku": "keyword",
    "barcode": "keyword",
    "price": "float",
    "price_max": "float",
}
COLUMNS = {
    "id": HANDLE,
    "title": "Title",
    "description": "Body (HTML)",
    "image": "Image Src",
    "images": "Image Src",
    **PRODUCT_FIELDS,
    "tags": "Tags",
    "sku": "Variant SKU",
    "barcode": "Variant Barcode",
    "price": "Variant Price",
    "price_max": "Variant Price",
}
_TEXT_COLUMNS = ("Title", "Body (HTML)", "Tags", *PRODUCT_FIELDS.values())

Cell = Callable[[str], str]


def is_shopify(columns: Sequence[str]) -> bool:
    return HANDLE in columns and any(marker in columns for marker in MARKERS)


@dataclass
class _Product:
    handle: str
    line: int
    text: dict[str, str] = field(default_factory=dict)  # product column -> its first non-blank cell
    option_names: dict[int, str] = field(default_factory=dict)
    option_values: dict[int, list[str]] = field(default_factory=dict)
    skus: list[str] = field(default_factory=list)
    barcodes: list[str] = field(default_factory=list)
    prices: list[Decimal] = field(default_factory=list)
    photos: list[tuple[float, int, str]] = field(default_factory=list)  # (position, arrival, source)

    def add_row(self, ln: int, get: Cell, problems: Problems) -> None:
        for column in _TEXT_COLUMNS:
            if column not in self.text and (value := get(column)):
                self.text[column] = value
        for n in range(1, OPTION_COUNT + 1):
            if n not in self.option_names and (name := get(f"Option{n} Name")):
                self.option_names[n] = name
            if value := get(f"Option{n} Value"):
                self.option_values.setdefault(n, []).append(value)
        self.skus.append(get("Variant SKU"))
        self.barcodes.append(get("Variant Barcode"))
        if price := get("Variant Price"):
            try:
                self.prices.append(parse_price(price))
            except ValueError as exc:
                problems.add(ln, "Variant Price", str(exc))
        self._add_photo(ln, get, problems)

    def _add_photo(self, ln: int, get: Cell, problems: Problems) -> None:
        position: float = float("inf")  # photos without a position follow the others, in file order
        if raw := get("Image Position"):
            if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
                problems.add(ln, "Image Position", f"expected a whole number from 1, got {raw!r}")
            else:
                position = int(raw)
        for source in (get("Image Src"), get("Variant Image")):
            if source:
                self.photos.append((position, len(self.photos), source))
                position = float("inf")  # a variant's own photo has no position of its own

    def record(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": self.handle,
            "title": self.text.get("Title"),
            "description": html_to_text(self.text.get("Body (HTML)", "")),
            "images": unique(source for _, _, source in sorted(self.photos)),
            "tags": split_list(self.text.get("Tags", "")),
            "sku": unique(self.skus),
            "barcode": unique(self.barcodes),
        }
        row.update({key: self.text.get(column) for key, column in PRODUCT_FIELDS.items()})
        if self.prices:
            row["price"], row["price_max"] = min(self.prices), max(self.prices)
        for n, name in self.option_names.items():
            values = [v for v in unique(self.option_values.get(n, [])) if v != DEFAULT_OPTION]
            if values:
                row[option_key(name)] = values
        return row


def option_key(name: str) -> str:
    """``"Colour"`` -> ``colour``, ``"Shoe Size"`` -> ``shoe_size``; a name that would take the place of
    a catalog field (title, price, ...) gets an ``option_`` prefix."""
    key = re.sub(r"\s+", "_", name.strip().lower())
    return f"option_{key}" if key in CORE_COLUMNS or key in KINDS or key.startswith("_") else key


def read_shopify(table: Table, overrides: Mapping[str, FieldKind]) -> Catalog:
    """One catalog item per Handle, with every variant's options, SKUs, barcodes and prices."""
    name = table.name
    positions = table.index()
    if HANDLE not in positions:
        listed = ", ".join(repr(c) for c in positions) or "none"
        raise CatalogError([f"{name}:1: a Shopify export needs a {HANDLE!r} column; found columns: {listed}"])
    problems = Problems(name)
    table.check(problems)
    products: dict[str, _Product] = {}
    for ln, values in table.rows:

        def get(column: str, values: list[str] = values) -> str:
            return cell(values, positions.get(column))

        handle = get(HANDLE)
        if not handle:
            problems.add(ln, HANDLE, "missing Handle: every row names the product it belongs to")
            continue
        product = products.setdefault(handle, _Product(handle, ln))
        product.add_row(ln, get, problems)

    records = [(p.line, p.record()) for p in products.values()]
    kinds = dict(KINDS)
    for _, row in records:
        kinds.update({key: "keyword" for key in row if key not in kinds and key not in CORE_COLUMNS})
    kinds = {key: overrides.get(key) or kind for key, kind in kinds.items()}
    columns = {
        **COLUMNS,
        **{option_key(n): f"Option{i} Value" for p in products.values() for i, n in p.option_names.items()},
    }
    return build_catalog(table.path, records, kinds, problems, columns)
