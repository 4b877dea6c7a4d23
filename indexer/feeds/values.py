"""Values as shops export them: prices with thousands separators and currencies, HTML bodies, lists."""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal

# "1299", "1299.00", "1,299.00": a comma only ever groups thousands, so "12,99" is refused rather
# than silently read as 1299.
_AMOUNT_RE = re.compile(r"^(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$")
_CURRENCY_RE = re.compile(r"^[A-Za-z]{3}$")


def parse_price(text: str) -> Decimal:
    """``"1,299.00"`` -> ``Decimal("1299.00")``; ValueError naming the text when it is not a price."""
    amount = text.strip()
    if not _AMOUNT_RE.match(amount):
        raise ValueError(f"cannot parse {text!r} as a price; expected digits like 1299.00 or 1,299.00")
    return Decimal(amount.replace(",", ""))


def parse_money(text: str) -> tuple[Decimal, str | None]:
    """``"49.00 USD"`` (or ``"USD 49.00"``, or a bare amount) -> (amount, ISO 4217 code or None)."""
    parts = text.split()
    currency = None
    if len(parts) == 2:
        at = 1 if _CURRENCY_RE.match(parts[1]) else 0  # the code usually follows the amount
        if _CURRENCY_RE.match(parts[at]):
            currency = parts.pop(at).upper()
    try:
        if len(parts) != 1:
            raise ValueError
        return parse_price(parts[0]), currency
    except ValueError:
        raise ValueError(
            f"cannot parse {text!r} as a price; expected an amount and a currency, like 49.00 USD"
        ) from None


def html_to_text(html: str) -> str:
    """The readable text of an HTML fragment (a Shopify body): tags dropped, entities decoded, scripts and
    styles left out, whitespace collapsed to single spaces."""
    if not html.strip():
        return ""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    return " ".join(soup.get_text(" ").split())


def split_list(text: str, separator: str = ",") -> list[str]:
    """``"red, blue,,red"`` -> ``["red", "blue"]``: trimmed, blanks and repeats dropped, order kept."""
    return unique(part.strip() for part in text.split(separator))


def unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))
