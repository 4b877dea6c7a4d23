"""Google Merchant Center feeds: text (TSV, CSV, .txt) and XML, their bad rows, and hostile XML."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from indexer import FeedOptions
from indexer.catalog import CatalogError, read_catalog

G = 'xmlns:g="http://base.google.com/ns/1.0"'
TSV_HEADER = [
    "id", "title", "description", "link", "image_link", "additional_image_link", "availability", "price",
    "sale_price", "brand", "gtin", "mpn", "color", "size", "product_type", "google_product_category",
    "item_group_id",
]  # fmt: skip


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def tsv(path: Path, rows: list[dict[str, str]], header: list[str] = TSV_HEADER) -> Path:
    lines = ["\t".join(header)] + ["\t".join(row.get(c, "") for c in header) for row in rows]
    return write(path, "\n".join(lines) + "\n")


def error_of(path: Path, **kwargs) -> str:
    with pytest.raises(CatalogError) as info:
        read_catalog(path, **kwargs)
    return str(info.value)


SHIRT_S = {
    "id": "shirt-s",
    "title": "Oxford shirt, S",
    "description": "Cotton oxford shirt.",
    "link": "https://shop.example.com/shirt",
    "image_link": "https://cdn.example.com/shirt.jpg",
    "additional_image_link": "https://cdn.example.com/shirt-back.jpg, photos/shirt-detail.jpg",
    "availability": "in_stock",
    "price": "1,049.00 USD",
    "sale_price": "899.00 USD",
    "brand": "Acme",
    "gtin": "00012345600012",
    "mpn": "OX-1",
    "color": "white",
    "size": "S",
    "product_type": "Apparel > Shirts",
    "google_product_category": "Apparel & Accessories > Clothing > Shirts & Tops",
    "item_group_id": "shirt",
}


def test_tsv_feed(tmp_path):
    shirt_m = {**SHIRT_S, "id": "shirt-m", "size": "M", "sale_price": "", "additional_image_link": ""}
    cat = read_catalog(tsv(tmp_path / "feed.tsv", [SHIRT_S, shirt_m]))
    s, m = cat.items
    assert (s.id, s.title, s.description, s.source) == (
        "shirt-s",
        "Oxford shirt, S",
        "Cotton oxford shirt.",
        "feed.tsv:2",
    )
    assert s.images == (
        "https://cdn.example.com/shirt.jpg",
        "https://cdn.example.com/shirt-back.jpg",
        str(tmp_path / "photos" / "shirt-detail.jpg"),
    )
    assert s.payload == {
        "link": "https://shop.example.com/shirt",
        "availability": "in_stock",
        "price": 1049.0,
        "currency": "USD",
        "sale_price": 899.0,
        "brand": "Acme",
        "gtin": "00012345600012",  # a code: leading zeros kept
        "mpn": "OX-1",
        "color": "white",
        "size": "S",
        "product_type": "Apparel > Shirts",
        "google_product_category": "Apparel & Accessories > Clothing > Shirts & Tops",
        "item_group_id": "shirt",
    }
    assert m.images == ("https://cdn.example.com/shirt.jpg",) and "sale_price" not in m.payload
    assert m.payload["item_group_id"] == "shirt"
    assert cat.fields["price"] == "float" and cat.fields["sale_price"] == "float"
    assert cat.fields["item_group_id"] == "keyword" and cat.fields["gtin"] == "keyword"


def test_csv_and_txt_feeds_with_other_header_spellings(tmp_path):
    text = 'g:id,Title,Image link,additional image link,Price\nx1,Lamp,lamp.jpg,"lamp2.jpg,lamp3.jpg",12.50 EUR\n'
    item = read_catalog(write(tmp_path / "feed.csv", text)).items[0]
    assert (item.id, item.title, item.payload) == ("x1", "Lamp", {"price": 12.5, "currency": "EUR"})
    assert item.images == tuple(str(tmp_path / n) for n in ("lamp.jpg", "lamp2.jpg", "lamp3.jpg"))
    txt = tsv(tmp_path / "products.txt", [SHIRT_S])  # Merchant Center's tab-separated .txt
    assert read_catalog(txt).items[0].payload["size"] == "S"


def test_text_feed_bad_rows(tmp_path):
    rows = [
        SHIRT_S,
        {**SHIRT_S, "id": "a", "price": "abc USD"},
        {**SHIRT_S, "id": "b", "sale_price": "10.00 EUR"},
        {**SHIRT_S, "id": "c", "image_link": ""},
        {**SHIRT_S, "id": ""},
        {**SHIRT_S, "id": "shirt-s"},
        {**SHIRT_S, "id": "d", "additional_image_link": "ftp://host/x.jpg"},
    ]
    msg = error_of(tsv(tmp_path / "feed.tsv", rows))
    assert msg.startswith("feed.tsv: 6 problems:")
    for expected in [
        "feed.tsv:3: column 'price': cannot parse 'abc USD' as a price",
        "feed.tsv:4: column 'sale_price': currency EUR differs from USD",
        "feed.tsv:5: column 'image_link': missing image",
        "feed.tsv:6: column 'id': missing id",
        "feed.tsv:7: column 'id': duplicate id 'shirt-s' (first on line 2)",
        "feed.tsv:8: column 'additional_image_link': unsupported URL scheme 'ftp'",
    ]:
        assert expected in msg


def test_a_feed_without_its_required_columns_lists_what_it_has(tmp_path):
    path = write(tmp_path / "feed.tsv", "id\ttitle\nx\ty\n")
    msg = error_of(path, options=FeedOptions(format="gmc"))
    assert msg == "feed.tsv:1: a Merchant Center feed needs image_link; found columns: 'id', 'title'"


# --------------------------------------------------------------------------- XML


FEED_XML = f"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" {G}>
  <channel>
    <title>Shop</title>
    <link>https://shop.example.com</link>
    <item>
      <g:id>mug-1</g:id>
      <title>Tea &amp; coffee mug</title>
      <description><![CDATA[Holds <350 ml> of tea]]></description>
      <g:image_link>https://cdn.example.com/mug.jpg</g:image_link>
      <g:additional_image_link>https://cdn.example.com/mug-side.jpg</g:additional_image_link>
      <g:additional_image_link>photos/mug-top.jpg</g:additional_image_link>
      <g:price>12.00 GBP</g:price>
      <g:availability>preorder</g:availability>
      <g:color>caf&#233;</g:color>
      <g:shipping><g:country>GB</g:country><g:price>3.00 GBP</g:price></g:shipping>
      <g:product_highlight>Dishwasher safe</g:product_highlight>
      <g:product_highlight>Stoneware</g:product_highlight>
      <other:note xmlns:other="urn:other">not a product attribute</other:note>
      <!-- a comment -->
    </item>
    <item>
      <g:id>mug-2</g:id>
      <g:title>Espresso cup</g:title>
      <g:image_link>cup.jpg</g:image_link>
      <g:item_group_id>cups</g:item_group_id>
    </item>
  </channel>
</rss>
"""


def test_xml_feed(tmp_path):
    cat = read_catalog(write(tmp_path / "feed.xml", FEED_XML))
    mug, cup = cat.items
    assert (mug.id, mug.title, mug.description) == ("mug-1", "Tea & coffee mug", "Holds <350 ml> of tea")
    assert mug.images == (
        "https://cdn.example.com/mug.jpg",
        "https://cdn.example.com/mug-side.jpg",
        str(tmp_path / "photos" / "mug-top.jpg"),
    )
    # Nested attributes (shipping) and other namespaces are left out; repeated ones become lists.
    assert mug.payload == {
        "price": 12.0,
        "currency": "GBP",
        "availability": "preorder",
        "color": "café",
        "product_highlight": ["Dishwasher safe", "Stoneware"],
    }
    assert mug.source == "feed.xml:6"  # the line of its <item>
    assert (cup.id, cup.title, cup.image, cup.payload) == (
        "mug-2",
        "Espresso cup",
        str(tmp_path / "cup.jpg"),
        {"item_group_id": "cups"},
    )


def test_xml_bad_items_name_their_lines(tmp_path):
    text = FEED_XML.replace("<g:price>12.00 GBP</g:price>", "<g:price>twelve</g:price>").replace(
        "<g:image_link>cup.jpg</g:image_link>", ""
    )
    msg = error_of(write(tmp_path / "feed.xml", text))
    assert "feed.xml:13: column 'g:price': cannot parse 'twelve' as a price" in msg
    assert "feed.xml:22: column 'g:image_link': missing image" in msg


def test_malformed_xml_names_its_line(tmp_path):
    text = FEED_XML.replace("<g:availability>preorder</g:availability>", "<g:availability>preorder</g:avail>")
    assert error_of(write(tmp_path / "feed.xml", text)).startswith("feed.xml:14: not well-formed XML")
    undefined = FEED_XML.replace("caf&#233;", "&cafe;")
    msg = error_of(write(tmp_path / "feed.xml", undefined))
    assert msg.startswith("feed.xml:15: not well-formed XML") and "Entity 'cafe' not defined" in msg
    assert error_of(write(tmp_path / "feed.xml", "")).startswith("feed.xml:")


def test_xml_must_be_an_rss_feed(tmp_path):
    atom = write(tmp_path / "feed.xml", '<?xml version="1.0"?>\n<feed xmlns="http://www.w3.org/2005/Atom"></feed>\n')
    assert "feed.xml:2: the root element is <{http://www.w3.org/2005/Atom}feed>, not <rss>" in error_of(atom)
    assert "XML catalogs are Merchant Center feeds" in error_of(
        write(tmp_path / "f.xml", FEED_XML), options=FeedOptions(format="plain")
    )


def with_doctype(doctype: str, old: str, new: str) -> str:
    """FEED_XML with a DOCTYPE after its declaration (one line more) and one element changed."""
    declaration = '<?xml version="1.0" encoding="UTF-8"?>\n'
    return FEED_XML.replace(declaration, f"{declaration}{doctype}\n").replace(old, new)


def test_xxe_is_refused_and_reads_nothing(tmp_path):
    secret = write(tmp_path / "secret.txt", "TOP-SECRET")
    doctype = f'<!DOCTYPE rss [<!ENTITY xxe SYSTEM "file://{secret}">]>'
    text = with_doctype(doctype, "<g:id>mug-1</g:id>", "<g:id>&xxe;</g:id>")
    msg = error_of(write(tmp_path / "feed.xml", text))
    assert "declares XML entities ('xxe')" in msg and "TOP-SECRET" not in msg


def test_external_dtd_entities_are_refused(tmp_path):
    dtd = write(tmp_path / "evil.dtd", '<!ENTITY e "EVIL">\n')
    text = with_doctype(
        f'<!DOCTYPE rss SYSTEM "file://{dtd}">', "<g:color>caf&#233;</g:color>", "<g:color>&e;</g:color>"
    )
    msg = error_of(write(tmp_path / "feed.xml", text))
    assert msg == "feed.xml:16: entity reference &e; is refused: feeds may use only XML's built-in entities"


def test_entity_expansion_is_refused_quickly(tmp_path):
    levels = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    text = f'<?xml version="1.0"?>\n<!DOCTYPE rss [<!ENTITY l0 "lol">{levels}]>\n<rss {G}><channel><item>'
    text += "<g:id>a</g:id><title>&l9;</title><g:image_link>a.jpg</g:image_link></item></channel></rss>\n"
    path = write(tmp_path / "feed.xml", text)
    started = time.perf_counter()
    msg = error_of(path)
    assert time.perf_counter() - started < 5
    assert msg.startswith("feed.xml:") and "entit" in msg.lower()
