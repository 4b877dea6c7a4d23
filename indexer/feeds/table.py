"""Delimited text files (CSV, TSV, tab-separated .txt) read as a header and rows with their file lines.

Every text reader starts here, so an encoding error, a malformed quote or a row longer than the header
is reported the same way whatever the layout. Lines are 1-based file lines; the header is line 1, and
a row whose quoted cell spans lines is named by its first line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..catalog_items import MAX_REPORTED, CatalogError, Problems

DELIMITERS = {".csv": ",", ".tsv": "\t"}


@dataclass
class Table:
    path: Path
    columns: list[str]  # header names, stripped
    rows: list[tuple[int, list[str]]]  # (first file line, cells); blank rows are left out

    @property
    def name(self) -> str:
        return self.path.name

    def index(self) -> dict[str, int]:
        """Column name -> position, for the named columns (a repeated name keeps its first position)."""
        positions: dict[str, int] = {}
        for i, column in enumerate(self.columns):
            if column:
                positions.setdefault(column, i)
        return positions

    def check(self, problems: Problems) -> None:
        """Report cells under unnamed columns (trailing delimiters are fine) and rows longer than the header."""
        for i, column in enumerate(self.columns):
            if not column and any(i < len(v) and v[i].strip() for _, v in self.rows):
                problems.add(1, None, f"column {i + 1} has values but no name in the header")
        extra = [(ln, len(v)) for ln, v in self.rows if len(v) > len(self.columns)]
        for ln, n in extra[:MAX_REPORTED]:
            problems.add(ln, None, f"row has {n} values but the header has {len(self.columns)} columns")
        problems.total += max(0, len(extra) - MAX_REPORTED)


def cell(values: list[str], i: int | None) -> str:
    return values[i].strip() if i is not None and i < len(values) else ""


def read_table(path: Path) -> Table:
    """Read a whole delimited file; the delimiter follows the suffix, and a .txt file's header decides."""
    name = path.name
    delimiter = DELIMITERS.get(path.suffix.lower()) or _sniff_delimiter(path)
    rows: list[tuple[int, list[str]]] = []
    line = 1
    try:
        with path.open("rb") as fh:
            reader = csv.reader(utf8_lines(fh, name), delimiter=delimiter)
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
    return Table(path, [h.strip() for h in header], rows)


def _sniff_delimiter(path: Path) -> str:
    # Merchant Center's text feeds are tab-separated .txt files; a comma-separated one has no tab in its header.
    with path.open("rb") as fh:
        first = fh.readline()
    return "\t" if b"\t" in first else ","


def utf8_lines(fh: IO[bytes], name: str) -> Iterator[str]:
    """Decoded lines, so an encoding error names its own line rather than a read buffer's."""
    for ln, raw in enumerate(fh, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CatalogError([f"{name}:{ln}: not valid UTF-8 text ({exc.reason})"]) from None
        yield text.removeprefix("\ufeff") if ln == 1 else text
