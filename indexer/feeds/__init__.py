"""One small reader per catalog layout, each yielding the same catalog records.

``plain`` reads CSV/TSV/JSONL/Parquet files and folders of images, ``shopify`` Shopify product exports,
``gmc`` Google Merchant Center feeds (text and XML). :func:`indexer.catalog.read_catalog` picks one.
"""

from .gmc import is_gmc, read_gmc_table, read_gmc_xml
from .plain import read_folder, read_jsonl, read_parquet, read_plain_table
from .shopify import is_shopify, read_shopify
from .table import Table, read_table

__all__ = [
    "Table",
    "is_gmc",
    "is_shopify",
    "read_folder",
    "read_gmc_table",
    "read_gmc_xml",
    "read_jsonl",
    "read_parquet",
    "read_plain_table",
    "read_shopify",
    "read_table",
]
