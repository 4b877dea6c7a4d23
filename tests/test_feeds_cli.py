"""`lookalike index --format/--map` end to end: a tiny CLIP, the real MiniLM, a real edge store."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from indexer import open_store
from ui.cli import app

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220)}


def photo(path: Path, colour: str, flip: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (40, 40), "white")
    img.paste(COLOURS[colour], (4, 4, 24, 36) if not flip else (16, 4, 36, 36))
    img.save(path)


def index(args: list[str], tiny_clip_spec: str, text_spec: str):
    result = CliRunner().invoke(
        app, ["index", *args, "--model", tiny_clip_spec, "--text-model", text_spec, "--quiet", "--json"]
    )
    return result


def stored(data: Path) -> dict[str, dict]:
    store = open_store(f"edge:{data / 'store'}")
    try:
        return {r.id: r.payload for r in store.scroll()}
    finally:
        store.close()


def test_index_a_shopify_export(tmp_path, tiny_clip_spec, text_spec):
    shop = tmp_path / "shop"
    header = (
        "Handle,Title,Body (HTML),Vendor,Option1 Name,Option1 Value,Variant SKU,Variant Price,Image Src,Image Position"
    )
    lines = [header]
    for colour in COLOURS:
        photo(shop / f"{colour}.jpg", colour)
        photo(shop / f"{colour}-back.jpg", colour, flip=True)
        lines += [
            f"{colour}-tee,{colour.title()} tee,<p>A {colour} tee &amp; more</p>,Acme,Size,S,{colour}-S,19.00,"
            f"{colour}-back.jpg,2",
            f'{colour}-tee,,,,,M,{colour}-M,"1,019.00",{colour}.jpg,1',
        ]
    (shop / "products_export.csv").write_text("\n".join(lines) + "\n")
    data = tmp_path / "data"
    result = index(
        [str(shop / "products_export.csv"), "--data-dir", str(data), "--format", "shopify"], tiny_clip_spec, text_spec
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["new"], report["failed"]) == (3, 0)
    red = stored(data)["red-tee"]
    assert red["images"] == [str(shop / "red.jpg"), str(shop / "red-back.jpg")]  # ordered by Image Position
    assert red["image"] == str(shop / "red.jpg") and red["description"] == "A red tee & more"
    assert (red["sku"], red["size"], red["price"], red["price_max"]) == (["red-S", "red-M"], ["S", "M"], 19.0, 1019.0)
    # The same export read by detection is unchanged content: nothing is embedded again.
    again = index([str(shop / "products_export.csv"), "--data-dir", str(data)], tiny_clip_spec, text_spec)
    assert json.loads(again.output)["unchanged"] == 3, again.output


def test_index_with_a_column_mapping(tmp_path, tiny_clip_spec, text_spec):
    shop = tmp_path / "shop"
    for colour in COLOURS:
        photo(shop / "img" / f"{colour}.png", colour)
        photo(shop / "img" / f"{colour}-2.png", colour, flip=True)
    rows = [f"{c.upper()}-1,{c} bag,img/{c}.png,img/{c}-2.png,{10 + i}" for i, c in enumerate(COLOURS)]
    (shop / "export.csv").write_text("Article,Name,Main Image,Gallery,Price\n" + "\n".join(rows) + "\n")
    data = tmp_path / "data"
    maps = ["--map", "id=Article", "--map", "title=Name", "--map", "image=Main Image", "--map", "images=Gallery"]
    result = index([str(shop / "export.csv"), "--data-dir", str(data), *maps], tiny_clip_spec, text_spec)
    assert result.exit_code == 0, result.output
    items = stored(data)
    assert sorted(items) == ["BLUE-1", "GREEN-1", "RED-1"]
    assert items["RED-1"]["title"] == "red bag" and items["RED-1"]["Price"] == 10
    assert items["RED-1"]["images"] == [str(shop / "img/red.png"), str(shop / "img/red-2.png")]

    unknown = index([str(shop / "export.csv"), "--data-dir", str(data), "--map", "id=SKU"], tiny_clip_spec, text_spec)
    assert unknown.exit_code == 2
    assert "mapping id='SKU' names no column; the columns are: 'Article', 'Name', 'Main Image', 'Gallery', 'Price'" in (
        unknown.output
    )
    bad = index([str(shop / "export.csv"), "--data-dir", str(data), "--map", "idArticle"], tiny_clip_spec, text_spec)
    assert bad.exit_code == 2 and "expected FIELD=COLUMN" in bad.output
    wrong = index([str(shop / "export.csv"), "--data-dir", str(data), "--format", "excel"], tiny_clip_spec, text_spec)
    assert wrong.exit_code == 2 and "--format" in wrong.output
