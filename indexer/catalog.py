"""Reading catalogs: CSV/TSV, JSONL and Parquet files, Shopify product exports, Google Merchant Center
feeds (text or XML), and plain folders of images.

The layout of a delimited file is detected from its header (a ``Handle`` column and Shopify's variant
columns mean a Shopify export; ``id`` with ``image_link`` a Merchant Center feed) unless
:class:`FeedOptions` names it. Every layout has its own small reader in :mod:`indexer.feeds`, and each
yields the same :class:`CatalogItem` records. Bad rows are all collected and reported together, each as
``FILE:LINE: column 'NAME': problem``, so a catalog team can fix everything in one pass. Lines are
1-based file lines (the CSV header is line 1); for Parquet the number is the 1-based row.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from .catalog_items import MAX_REPORTED, Catalog, CatalogError, CatalogItem, FeedFormat, FeedOptions, parse_mapping
from .feeds import (
    Table,
    is_gmc,
    is_shopify,
    read_folder,
    read_gmc_table,
    read_gmc_xml,
    read_jsonl,
    read_parquet,
    read_plain_table,
    read_shopify,
    read_table,
)
from .feeds.plain import IMAGE_EXTENSIONS
from .store import FieldKind

__all__ = [
    "FILE_TYPES",
    "IMAGE_EXTENSIONS",
    "MAX_REPORTED",
    "Catalog",
    "CatalogError",
    "CatalogItem",
    "FeedFormat",
    "FeedOptions",
    "detect_format",
    "parse_mapping",
    "read_catalog",
]

log = logging.getLogger(__name__)

# .txt (Merchant Center's tab-separated feeds) is read too, but is not listed: a README.txt in an
# uploaded zip must not pass for a catalog.
FILE_TYPES = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet", ".xml")


def detect_format(columns: Sequence[str]) -> FeedFormat:
    """The layout a delimited file's header shows: ``shopify``, ``gmc`` or ``plain``."""
    if is_shopify(columns):
        return "shopify"
    if is_gmc(columns):
        return "gmc"
    return "plain"


def read_catalog(
    path: Path | str,
    field_kinds: Mapping[str, FieldKind] | None = None,
    options: FeedOptions | None = None,
) -> Catalog:
    """Read a catalog file or image folder. ``field_kinds`` overrides the inferred kind of payload fields;
    ``options`` names the layout (default: detected) and, for plain catalogs, a column mapping."""
    path = Path(path)
    options = options or FeedOptions()
    overrides = dict(field_kinds or {})
    if path.is_dir():
        _plain_only(path, options, "a folder of images", mapping=False)
        return read_folder(path)
    if not path.exists():
        raise CatalogError([f"{path}: no such catalog file or folder"])
    suffix = path.suffix.lower()
    match suffix:
        case ".csv" | ".tsv" | ".txt":
            return _read_table(read_table(path), options, overrides)
        case ".xml":
            if options.format == "plain" or options.mapping:
                raise CatalogError(
                    [f"{path.name}: XML catalogs are Merchant Center feeds (format gmc), read without a column mapping"]
                )
            return read_gmc_xml(path, overrides)
        case ".jsonl" | ".ndjson":
            _plain_only(path, options, "a JSONL file")
            return read_jsonl(path, options.mapping, overrides)
        case ".parquet":
            _plain_only(path, options, "a Parquet file")
            return read_parquet(path, options.mapping, overrides)
    kinds = ", ".join(FILE_TYPES)
    raise CatalogError([f"{path.name}: unsupported catalog type {suffix!r}; use {kinds} or a folder of images"])


def _read_table(table: Table, options: FeedOptions, overrides: dict[str, FieldKind]) -> Catalog:
    if options.format != "auto":
        layout = options.format
    elif options.mapping:
        layout = "plain"  # a mapping describes a layout of the user's own
    else:
        layout = detect_format(table.columns)
        log.info("%s: read as a %s catalog (detected from the header)", table.name, layout)
    if options.mapping and layout != "plain":
        raise CatalogError([f"{table.name}: a column mapping is for plain catalogs; {layout} feeds have fixed columns"])
    match layout:
        case "shopify":
            return read_shopify(table, overrides)
        case "gmc":
            return read_gmc_table(table, overrides)
    return read_plain_table(table, options.mapping, overrides)


def _plain_only(path: Path, options: FeedOptions, what: str, mapping: bool = True) -> None:
    if options.format not in ("auto", "plain"):
        raise CatalogError([f"{path.name}: {what} is read as a plain catalog, not as {options.format}"])
    if options.mapping and not mapping:
        raise CatalogError([f"{path.name}: {what} has no columns to map"])
