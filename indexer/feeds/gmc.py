"""Google Merchant Center product feeds: text (tab- or comma-separated) and XML (RSS 2.0, ``g:`` namespace).

One item per product, named by its ``id``. ``image_link`` and the ``additional_image_link`` photos
(comma-separated in text feeds, repeated elements in XML) become the product's photos; ``price`` and
``sale_price`` ("49.00 USD") become numbers plus a ``currency`` field. Every other attribute
(availability, brand, gtin, mpn, color, size, product_type, google_product_category, item_group_id,
...) is kept as a keyword field, a list where it repeats.

Feeds come from anywhere, so XML is parsed with entity resolution, DTD loading and network access
off, and a feed that declares entities is refused outright (no XXE, no entity expansion).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lxml import etree

from ..catalog_items import CORE_COLUMNS, Catalog, CatalogError, Problems, build_catalog
from ..store import FieldKind
from .table import Table, cell
from .values import parse_money, split_list

G_NS = "http://base.google.com/ns/1.0"
MONEY = ("price", "sale_price")
_PHOTOS = ("image_link", "additional_image_link")
_SINGLE = ("id", "title", "description")

LineOf = Callable[[str], int]


def attribute_name(header: str) -> str:
    """``"g:image_link"``, ``"Image link"`` -> ``image_link``: text feeds spell attributes several ways."""
    name = header.strip().lower().removeprefix("g:")
    return "_".join(name.split())


def is_gmc(columns: Sequence[str]) -> bool:
    names = {attribute_name(c) for c in columns}
    return "id" in names and "image_link" in names


def gmc_record(attrs: Mapping[str, list[str]], line_of: LineOf, problems: Problems, columns: Mapping[str, str]):
    """The catalog row of one item's attributes (attribute -> its values, in feed order)."""
    row: dict[str, Any] = {}
    for attr, values in attrs.items():
        if attr.startswith("_"):
            problems.add(line_of(attr), columns.get(attr, attr), "attribute names starting with '_' are reserved")
        elif attr in MONEY:
            _money(row, attr, values[0], line_of, problems, columns)
        elif attr not in _PHOTOS:
            row[attr] = values[0] if attr in _SINGLE or len(values) == 1 else values
    main = attrs.get("image_link", [])
    # No image_link means no photo, whatever else is listed: the main photo is Merchant Center's required one.
    row["image"] = main[0] if main else None
    row["images"] = [*main[1:], *attrs.get("additional_image_link", [])] if main else None
    return row


def _money(row: dict[str, Any], attr: str, text: str, line_of: LineOf, problems: Problems, columns: Mapping[str, str]):
    try:
        amount, currency = parse_money(text)
    except ValueError as exc:
        problems.add(line_of(attr), columns.get(attr, attr), str(exc))
        return
    row[attr] = amount
    if currency is not None:
        known = row.setdefault("currency", currency)
        if known != currency:
            problems.add(line_of(attr), columns.get(attr, attr), f"currency {currency} differs from {known}")


def _kinds(records: list[tuple[int, dict[str, Any]]], overrides: Mapping[str, FieldKind]) -> dict[str, FieldKind]:
    kinds: dict[str, FieldKind] = {}
    for _, row in records:
        for key in row:
            if key not in CORE_COLUMNS and key not in kinds:
                kinds[key] = overrides.get(key) or ("float" if key in MONEY else "keyword")
    return kinds


_PHOTO_KEYS = {"image": "image_link", "images": "additional_image_link"}


# --------------------------------------------------------------------------- text feeds


def read_gmc_table(table: Table, overrides: Mapping[str, FieldKind]) -> Catalog:
    name = table.name
    attrs_of = [attribute_name(c) for c in table.columns]
    columns = {attr: column for attr, column in zip(attrs_of, table.columns, strict=True) if attr}
    missing = [a for a in ("id", "image_link") if a not in columns]
    if missing:
        listed = ", ".join(repr(c) for c in table.columns if c) or "none"
        raise CatalogError([f"{name}:1: a Merchant Center feed needs {' and '.join(missing)}; found columns: {listed}"])
    problems = Problems(name)
    table.check(problems)
    columns = {**{k: columns[v] for k, v in _PHOTO_KEYS.items() if v in columns}, **columns}
    records = []
    for ln, values in table.rows:
        attrs: dict[str, list[str]] = {}
        for i, attr in enumerate(attrs_of):
            if attr and (value := cell(values, i)):
                attrs.setdefault(attr, []).extend(split_list(value) if attr == "additional_image_link" else [value])
        records.append((ln, gmc_record(attrs, lambda _attr, ln=ln: ln, problems, columns)))
    return build_catalog(table.path, records, _kinds(records, overrides), problems, columns)


# --------------------------------------------------------------------------- XML feeds


def read_gmc_xml(path: Path, overrides: Mapping[str, FieldKind]) -> Catalog:
    """Read an RSS 2.0 feed item by item; a feed that is not well-formed XML is named by its line."""
    name = path.name
    problems = Problems(name)
    records: list[tuple[int, dict[str, Any]]] = []
    columns: dict[str, str] = {}
    etree.clear_error_log()  # the log is kept per thread across parses; _syntax_error reads this parse's
    try:
        with path.open("rb") as fh:
            events = etree.iterparse(
                fh,
                events=("start", "end"),
                resolve_entities=False,
                load_dtd=False,
                no_network=True,
                huge_tree=False,
                remove_comments=True,
                remove_pis=True,
            )
            for event, el in events:
                if event == "start":
                    if el.getparent() is None:
                        _check_root(el, name)
                elif el.tag == "item":
                    attrs, lines = _item_attributes(el, name, columns)
                    records.append(
                        (el.sourceline, gmc_record(attrs, _line_of(lines, el.sourceline), problems, columns))
                    )
                    _forget(el)
    except etree.XMLSyntaxError as exc:
        raise _syntax_error(exc, name) from None
    columns.update({k: columns.get(v, f"g:{v}") for k, v in _PHOTO_KEYS.items()})
    return build_catalog(path, records, _kinds(records, overrides), problems, columns)


def _syntax_error(exc: etree.XMLSyntaxError, name: str) -> CatalogError:
    # Reading incrementally, lxml can raise with a later, vaguer message ("no element found"); the
    # parser's first error is the one that names the line to fix.
    first = next((e for e in exc.error_log if e.level >= etree.ErrorLevels.ERROR), None)
    line, column, message = (first.line, first.column, first.message) if first else (*exc.position, exc.msg)
    # An empty file fails before its first line: it is still named by line 1.
    return CatalogError([f"{name}:{max(line, 1)}: not well-formed XML (character {column}): {message}"])


def _check_root(root: Any, name: str) -> None:
    dtd = root.getroottree().docinfo.internalDTD
    entities = [e.name for e in dtd.iterentities()] if dtd is not None else []
    if entities:
        listed = ", ".join(repr(e) for e in entities)
        raise CatalogError(
            [f"{name}: the feed declares XML entities ({listed}); feeds with entity declarations are refused"]
        )
    if etree.QName(root).localname != "rss":
        raise CatalogError(
            [
                f"{name}:{root.sourceline}: the root element is <{root.tag}>, not <rss>; XML catalogs are "
                "Merchant Center feeds in RSS 2.0 with the g: namespace"
            ]
        )


def _item_attributes(item: Any, name: str, columns: dict[str, str]) -> tuple[dict[str, list[str]], dict[str, int]]:
    """attribute -> values, and attribute -> line of its first element, of one <item>."""
    attrs: dict[str, list[str]] = {}
    lines: dict[str, int] = {}
    entity = next(item.iter(etree.Entity), None)
    if entity is not None:
        # An entity of an external DTD, which is never loaded: refused rather than read as empty text.
        line = entity.getparent().sourceline
        raise CatalogError(
            [f"{name}:{line}: entity reference {entity.text} is refused: feeds may use only XML's built-in entities"]
        )
    for child in item:
        qname = etree.QName(child)
        # Nested attributes (shipping, tax, ...) are not kept; other namespaces belong to other tools.
        if qname.namespace not in (None, G_NS) or len(child):
            continue
        text = (child.text or "").strip()
        if text:
            attrs.setdefault(qname.localname, []).append(text)
            lines.setdefault(qname.localname, child.sourceline)
            columns.setdefault(qname.localname, f"g:{qname.localname}" if qname.namespace else qname.localname)
    return attrs, lines


def _line_of(lines: Mapping[str, int], default: int) -> LineOf:
    return lambda attr: lines.get(attr, default)


def _forget(item: Any) -> None:
    """Free an item once read, and the siblings before it, so a large feed is read in constant memory."""
    item.clear(keep_tail=True)
    parent = item.getparent()
    while parent is not None and item.getprevious() is not None:
        del parent[0]
