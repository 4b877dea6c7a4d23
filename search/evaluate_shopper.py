"""Eval queries as shoppers type them: brand + category, brand alone, price words + category (+ colour),
and item codes; ground truth from the catalog's own fields.

Each type draws from its own random stream, so adding these leaves the other generated rows' queries
unchanged.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any

from .evaluate import COLOUR_KEYS, EvalQuery, K
from .query import Query
from .understand import plural

CODE_KEYS = ("sku", "gtin", "barcode", "mpn")
# (phrasing, bound) for one threshold X; "{c}" is the category (or colour + category).
PRICE_BELOW = ("{c} under {x} dollars", "{c} under ${x}", "{c} below {x}", "{c} less than {x} eur", "{c} max {x}")
PRICE_ABOVE = ("{c} over {x}", "{c} above ${x}", "{c} more than {x} dollars", "{c} from {x}")


def shopper_queries(items: list[dict[str, Any]], per_type: int = 150, seed: int = 0) -> list[EvalQuery]:
    """Every shopper query type the catalog's fields allow (brand, category, price, colour, codes)."""
    return [
        *brand_queries(items, per_type, seed),
        *price_queries(items, per_type, seed),
        *code_queries(items, per_type, seed),
    ]


def _index(items: list[dict[str, Any]], *keys: str) -> dict[tuple, set[str]]:
    by: dict[tuple, set[str]] = defaultdict(set)
    for it in items:
        if all(it.get(k) is not None for k in keys):
            by[tuple(it[k] for k in keys)].add(it["_id"])
    return by


def _noun(category: str, rng: random.Random) -> str:
    return plural(category) if rng.random() < 0.5 else category


def brand_queries(items: list[dict[str, Any]], per_type: int, seed: int) -> list[EvalQuery]:
    if not any("brand" in it for it in items) or not any("category" in it for it in items):
        return []
    rng = random.Random(f"{seed}-brand")
    pairs = _index(items, "brand", "category")
    keys = sorted(k for k, v in pairs.items() if len(v) >= K)
    out = []
    for brand, category in rng.sample(keys, min(per_type, len(keys))):
        noun = _noun(category, rng)
        text = rng.choice((f"{brand} {noun}", f"{noun} by {brand}", f"{brand.lower()} {noun}"))
        out.append(EvalQuery("text: brand category", Query(text=text, k=K), pairs[(brand, category)], category))
    brands = _index(items, "brand")
    for (brand,) in rng.choices(sorted(brands), k=min(per_type, 10 * len(brands))):
        text = brand if rng.random() < 0.5 else brand.lower()
        out.append(EvalQuery("text: brand", Query(text=text, k=K), brands[(brand,)]))
    return out


def price_queries(items: list[dict[str, Any]], per_type: int, seed: int) -> list[EvalQuery]:
    colour_key = next((k for k in COLOUR_KEYS if any(k in it for it in items)), None)
    priced = [it for it in items if isinstance(it.get("price"), int | float) and "category" in it]
    if not priced:
        return []
    rng = random.Random(f"{seed}-price")
    out = []
    for _ in range(per_type * 3):
        if len(out) >= per_type:
            break
        it = rng.choice(priced)
        with_colour = colour_key is not None and rng.random() < 0.5
        same = [
            o
            for o in priced
            if o["category"] == it["category"] and (not with_colour or o.get(colour_key) == it.get(colour_key))
        ]
        made = _price_query(same, it, with_colour and colour_key, rng)
        if made is not None:
            out.append(made)
    return out


def _price_query(same: list[dict[str, Any]], it: dict[str, Any], colour_key: str | bool, rng: random.Random):
    """One price phrase around a price of the group, or None when it would leave fewer than K relevant."""
    prices = sorted(o["price"] for o in same)
    n = len(prices)
    noun = _noun(it["category"], rng)
    words = f"{it[colour_key]} {noun}" if colour_key else noun
    kind = rng.choice(("below", "above", "between"))
    if kind == "between":
        lo, hi = math.floor(prices[n // 4]), math.ceil(prices[3 * n // 4])
        text = rng.choice((f"{words} between {lo} and {hi}", f"{words} between ${lo} and ${hi}"))
        bounds = {"gte": lo, "lte": hi}
    elif kind == "below":
        x = math.ceil(prices[rng.randrange(n // 4, max(n // 4 + 1, n // 2))])
        text = rng.choice(PRICE_BELOW).format(c=words, x=x)
        bounds = {"lte": x} if " max " in text else {"lt": x}
    else:
        x = math.floor(prices[rng.randrange(n // 2, max(n // 2 + 1, 3 * n // 4))])
        text = rng.choice(PRICE_ABOVE).format(c=words, x=x)
        bounds = {"gte": x} if " from " in text else {"gt": x}
    relevant = {o["_id"] for o in same if within(o["price"], bounds)}
    if len(relevant) < K:
        return None
    name = "text: price colour category" if colour_key else "text: price category"
    return EvalQuery(name, Query(text=text, k=K), relevant, it["category"])


def within(value: float, bounds: dict[str, float]) -> bool:
    checks = {"gt": value > bounds.get("gt", -math.inf), "gte": value >= bounds.get("gte", -math.inf)}
    checks |= {"lt": value < bounds.get("lt", math.inf), "lte": value <= bounds.get("lte", math.inf)}
    return all(checks.values())


def code_queries(items: list[dict[str, Any]], per_type: int, seed: int) -> list[EvalQuery]:
    """An item's id or code, alone or among a few words (its category), typed as it is or lower-cased."""
    rng = random.Random(f"{seed}-code")
    out = []
    for it in rng.sample(items, min(per_type, len(items))):
        codes = [str(it["_id"])] + [str(it[k]) for k in CODE_KEYS if it.get(k) not in (None, "")]
        code = rng.choice(codes)
        code = code.lower() if rng.random() < 0.25 else code
        text = f"{code} {it['category']}" if "category" in it and rng.random() < 0.3 else code
        out.append(EvalQuery("code lookup", Query(text=text, k=K), {it["_id"]}))
    return out
