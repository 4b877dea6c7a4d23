"""The demo catalog written as shops export their products: a Shopify product CSV, or a Google Merchant
Center feed (tab-separated text or RSS 2.0 XML).

Each product gets the variants a shop would list (sizes for clothes and shoes, one variant for bags)
with SKUs, barcodes and prices, and all its photos. Photo paths stay relative to the feed file, which
is how ``lookalike index`` resolves them.
"""

from __future__ import annotations

import csv
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lxml import etree

from .feeds.gmc import G_NS

Row = dict[str, Any]

SHOP_URL = "https://shop.example.com/products"
CURRENCY = "USD"
_CLOTHES = ("S", "M", "L")
_SHOES = ("38", "40", "42")
# demo category -> (Google product taxonomy path, used by Shopify too; sizes)
CATEGORY_INFO: dict[str, tuple[str, tuple[str, ...]]] = {
    "t-shirt": ("Apparel & Accessories > Clothing > Shirts & Tops", _CLOTHES),
    "trousers": ("Apparel & Accessories > Clothing > Pants", _CLOTHES),
    "pullover": ("Apparel & Accessories > Clothing > Shirts & Tops", _CLOTHES),
    "dress": ("Apparel & Accessories > Clothing > Dresses", _CLOTHES),
    "coat": ("Apparel & Accessories > Clothing > Outerwear > Coats & Jackets", _CLOTHES),
    "sandal": ("Apparel & Accessories > Shoes", _SHOES),
    "shirt": ("Apparel & Accessories > Clothing > Shirts & Tops", _CLOTHES),
    "sneaker": ("Apparel & Accessories > Shoes", _SHOES),
    "bag": ("Apparel & Accessories > Handbags, Wallets & Cases > Handbags", ()),
    "ankle boot": ("Apparel & Accessories > Shoes", _SHOES),
}
SHOPIFY_COLUMNS = (
    "Handle", "Title", "Body (HTML)", "Vendor", "Product Category", "Type", "Tags", "Published",
    "Option1 Name", "Option1 Value", "Option2 Name", "Option2 Value", "Variant SKU", "Variant Inventory Qty",
    "Variant Price", "Variant Barcode", "Image Src", "Image Position", "Image Alt Text", "Status",
)  # fmt: skip
GMC_COLUMNS = (
    "id", "title", "description", "link", "image_link", "additional_image_link", "availability", "price",
    "brand", "gtin", "condition", "google_product_category", "product_type", "color",
)  # fmt: skip
# The larger sizes cost a little more, as they often do, so a product has a price range.
LARGEST_SIZE_SURCHARGE = 5.0


def ean13(number: int) -> str:
    """A valid EAN-13 in the 20-29 range, which GS1 keeps for in-store numbers: never a real product's."""
    digits = f"20{number:010d}"
    odd, even = sum(int(d) for d in digits[0::2]), sum(int(d) for d in digits[1::2])
    return digits + str((10 - (odd + 3 * even) % 10) % 10)


def _variants(row: Row, number: int) -> list[dict[str, str]]:
    """Per variant: size ("" for one-size products), SKU, barcode, price."""
    sizes = CATEGORY_INFO[row["category"]][1] or ("",)
    out = []
    for k, size in enumerate(sizes):
        price = row["price"] + (LARGEST_SIZE_SURCHARGE if size and k == len(sizes) - 1 else 0.0)
        sku = f"{row['id']}-{size}".upper() if size else row["id"].upper()
        out.append({"size": size, "sku": sku, "barcode": ean13(number * 10 + k), "price": f"{price:,.2f}"})
    return out


def write_shopify(path: Path, rows: Sequence[Row], photos: Sequence[Sequence[str]]) -> None:
    """One product per Handle: its columns on the first row, then a row per further variant or photo."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=SHOPIFY_COLUMNS)
        writer.writeheader()
        for number, (row, shots) in enumerate(zip(rows, photos, strict=True)):
            writer.writerows(_shopify_rows(row, shots, number))


def _shopify_rows(row: Row, shots: Sequence[str], number: int) -> list[dict[str, str]]:
    variants = _variants(row, number)
    lines: list[dict[str, str]] = []
    for k in range(max(len(variants), len(shots))):
        line = {"Handle": row["id"]}
        if k == 0:
            line.update(
                {
                    "Title": row["title"],
                    "Body (HTML)": f"<p>{html.escape(row['description'])}</p>",
                    "Vendor": row["brand"],
                    "Product Category": CATEGORY_INFO[row["category"]][0],
                    "Type": row["category"],
                    "Tags": f"{row['colour']}, {row['pattern']}",
                    "Published": "TRUE",
                    "Option1 Name": "Color",
                    "Option2 Name": "Size" if variants[0]["size"] else "",
                    "Status": "active",
                }
            )
        if k < len(variants):
            v = variants[k]
            line.update(
                {
                    "Option1 Value": row["colour"],
                    "Option2 Value": v["size"],
                    "Variant SKU": v["sku"],
                    "Variant Inventory Qty": "5" if row["in_stock"] else "0",
                    "Variant Price": v["price"],
                    "Variant Barcode": v["barcode"],
                }
            )
        if k < len(shots):
            line.update({"Image Src": shots[k], "Image Position": str(k + 1), "Image Alt Text": row["title"]})
        lines.append(line)
    return lines


def _gmc_item(row: Row, shots: Sequence[str], number: int) -> dict[str, Any]:
    """Merchant Center attributes of one product (additional_image_link as a list)."""
    return {
        "id": row["id"],
        "title": row["title"],
        "description": row["description"],
        "link": f"{SHOP_URL}/{row['id']}",
        "image_link": shots[0],
        "additional_image_link": list(shots[1:]),
        "availability": "in_stock" if row["in_stock"] else "out_of_stock",
        "price": f"{row['price']:.2f} {CURRENCY}",
        "brand": row["brand"],
        "gtin": ean13(number * 10),
        "condition": "new",
        "google_product_category": CATEGORY_INFO[row["category"]][0],
        "product_type": row["category"],
        "color": row["colour"],
    }


def write_gmc_tsv(path: Path, rows: Sequence[Row], photos: Sequence[Sequence[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(GMC_COLUMNS)
        for number, (row, shots) in enumerate(zip(rows, photos, strict=True)):
            item = _gmc_item(row, shots, number)
            item["additional_image_link"] = ",".join(item["additional_image_link"])
            writer.writerow([item[c] for c in GMC_COLUMNS])


def write_gmc_xml(path: Path, rows: Sequence[Row], photos: Sequence[Sequence[str]]) -> None:
    """RSS 2.0 with the g: namespace; additional_image_link repeats once per photo."""
    rss = etree.Element("rss", version="2.0", nsmap={"g": G_NS})
    channel = etree.SubElement(rss, "channel")
    for tag, text in (("title", "lookalike demo shop"), ("link", SHOP_URL), ("description", "Demo products")):
        etree.SubElement(channel, tag).text = text
    for number, (row, shots) in enumerate(zip(rows, photos, strict=True)):
        item = etree.SubElement(channel, "item")
        for attr, value in _gmc_item(row, shots, number).items():
            # RSS's own elements carry title, link and description; the rest are Merchant Center's.
            tag = attr if attr in ("title", "link", "description") else f"{{{G_NS}}}{attr}"
            for text in value if isinstance(value, list) else [value]:
                etree.SubElement(item, tag).text = text
    etree.ElementTree(rss).write(str(path), encoding="utf-8", xml_declaration=True, pretty_print=True)
