"""Catalog readers: every format's happy path, type inference, and each bad-row report."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from indexer.catalog import MAX_REPORTED, CatalogError, read_catalog


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list[dict | str]) -> Path:
    return write(path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def error_of(path: Path, **kwargs) -> str:
    with pytest.raises(CatalogError) as info:
        read_catalog(path, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- CSV


def test_csv_columns_payload_and_type_inference(tmp_path):
    path = write(
        tmp_path / "shop" / "products.csv",
        "id,title,description,image,price,stock,on_sale,brand,sku,size\n"
        "p1,Red dress,A red dress,img/p1.jpg,19.99,3,true,Acme,00123,M\n"
        "p2,Blue shirt,,/abs/p2.png,25,0,FALSE,Acme,00456,42\n"
        "p3,Green bag,Leather bag,https://cdn.example.com/p3.jpg,,12,true,,00789,L\n",
    )
    cat = read_catalog(path)
    assert [i.id for i in cat.items] == ["p1", "p2", "p3"]
    assert cat.fields == {
        "price": "float",
        "stock": "integer",
        "on_sale": "bool",
        "brand": "keyword",
        "sku": "keyword",  # leading zeros: a code, not a number
        "size": "keyword",  # mostly text
    }
    p1, p2, p3 = cat.items
    assert p1.title == "Red dress" and p1.description == "A red dress"
    assert p1.payload == {
        "price": 19.99,
        "stock": 3,
        "on_sale": True,
        "brand": "Acme",
        "sku": "00123",
        "size": "M",
    }
    assert p2.payload["price"] == 25.0 and isinstance(p2.payload["price"], float)
    assert p2.payload["on_sale"] is False and p2.description == ""
    assert "price" not in p3.payload and "brand" not in p3.payload  # empty cells: no value
    assert p1.image == os.path.join(str(tmp_path / "shop"), "img", "p1.jpg")
    assert p2.image == os.path.abspath("/abs/p2.png")
    assert p3.image == "https://cdn.example.com/p3.jpg"
    assert [i.source for i in cat.items] == ["products.csv:2", "products.csv:3", "products.csv:4"]


def test_csv_line_numbers_follow_the_file(tmp_path):
    path = write(
        tmp_path / "c.csv",
        'id,image,description\r\na,a.jpg,"two\r\nlines"\r\n\r\nb,b.jpg,x\r\nc,,y\r\n',
    )
    # a spans lines 2-3, line 4 is blank, b is line 5, c (no image) is line 6.
    assert "c.csv:6: column 'image': missing image" in error_of(path)
    write(path, 'id,image,description\na,a.jpg,"two\nlines"\n\nb,b.jpg,x\n')
    assert [i.source for i in read_catalog(path).items] == ["c.csv:2", "c.csv:5"]


def test_csv_header_names_bom_and_tsv(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffID, Image ,Title,Colour\nx1,x.jpg,Thing,red\n".encode())
    item = read_catalog(path).items[0]
    assert (item.id, item.title, item.payload) == ("x1", "Thing", {"Colour": "red"})
    tsv = write(tmp_path / "c.tsv", "id\timage\tprice\nt1\tt.jpg\t5\n")
    assert read_catalog(tsv).items[0].payload == {"price": 5}


def test_csv_integer_ids_and_trailing_delimiters(tmp_path):
    path = write(tmp_path / "c.csv", "id,image,\n1,a.jpg,\n2,b.jpg,\n")
    cat = read_catalog(path)
    assert [i.id for i in cat.items] == ["1", "2"] and cat.fields == {}


def test_field_kinds_override_inference(tmp_path):
    path = write(tmp_path / "c.csv", "id,image,size\na,a.jpg,38\nb,b.jpg,40\nc,c.jpg,XL\n")
    assert "c.csv:4: column 'size': cannot parse 'XL' as a number" in error_of(path)
    cat = read_catalog(path, field_kinds={"size": "keyword"})
    assert [i.payload["size"] for i in cat.items] == ["38", "40", "XL"]


# --------------------------------------------------------------------------- CSV errors


def test_unparseable_number_names_file_line_and_column(tmp_path):
    rows = "".join(f"p{i},p{i}.jpg,{i}.5\n" for i in range(12))
    path = write(tmp_path / "products.csv", "id,image,price\n" + rows + "bad,bad.jpg,abc\n")
    assert error_of(path) == "products.csv:14: column 'price': cannot parse 'abc' as a number"


def test_missing_id_and_missing_image(tmp_path):
    path = write(tmp_path / "c.csv", "id,image\na,a.jpg\n,b.jpg\n")
    assert error_of(path) == "c.csv:3: column 'id': missing id"
    write(path, "id,image\na,a.jpg\nb,  \n")
    assert error_of(path) == "c.csv:3: column 'image': missing image"


def test_duplicate_id_names_both_lines(tmp_path):
    path = write(tmp_path / "c.csv", "id,image\na,a.jpg\nb,b.jpg\na,c.jpg\n")
    assert error_of(path) == "c.csv:4: column 'id': duplicate id 'a' (first on line 2)"


def test_missing_required_columns_lists_the_columns_found(tmp_path):
    path = write(tmp_path / "c.csv", "sku,title,picture\na,A,a.jpg\n")
    msg = error_of(path)
    assert msg.startswith("c.csv:1: missing required column(s) 'id', 'image'")
    assert "found columns: 'sku', 'title', 'picture'" in msg


def test_reserved_and_duplicate_columns(tmp_path):
    path = write(tmp_path / "c.csv", "id,image,_hash,colour,colour\na,a.jpg,x,red,red\n")
    msg = error_of(path)
    assert "c.csv:1: column '_hash': column names starting with '_' are reserved" in msg
    assert "c.csv:1: column 'colour': column appears 2 times" in msg


def test_every_bad_row_is_reported_at_once(tmp_path):
    lines = ["id,image,price"] + [f"p{i},p{i}.jpg,{i}" for i in range(60)]
    lines += ["dup,a.jpg,1", "dup,b.jpg,2", ",c.jpg,3", "x,,4", "y,y.jpg,abc"]
    path = write(tmp_path / "c.csv", "\n".join(lines) + "\n")
    msg = error_of(path)
    assert msg.startswith("c.csv: 4 problems:")
    for expected in [
        "c.csv:63: column 'id': duplicate id 'dup' (first on line 62)",
        "c.csv:64: column 'id': missing id",
        "c.csv:65: column 'image': missing image",
        "c.csv:66: column 'price': cannot parse 'abc' as a number",
    ]:
        assert expected in msg


def test_problem_list_is_capped(tmp_path):
    lines = ["id,image"] + [f"p{i}," for i in range(50)]
    path = write(tmp_path / "c.csv", "\n".join(lines) + "\n")
    with pytest.raises(CatalogError) as info:
        read_catalog(path)
    err = info.value
    assert err.total == 50 and len(err.problems) == MAX_REPORTED
    assert f"... and {50 - MAX_REPORTED} more" in str(err)


def test_row_with_too_many_values_and_unnamed_column(tmp_path):
    path = write(tmp_path / "c.csv", "id,image\na,a.jpg\nb,b.jpg,extra\n")
    assert error_of(path) == "c.csv:3: row has 3 values but the header has 2 columns"
    write(path, "id,image,\na,a.jpg,oops\n")
    assert error_of(path) == "c.csv:1: column 3 has values but no name in the header"


def test_image_url_with_unsupported_scheme(tmp_path):
    path = write(tmp_path / "c.csv", "id,image\na,ftp://host/a.jpg\n")
    assert "c.csv:2: column 'image': unsupported URL scheme 'ftp'" in error_of(path)


def test_empty_and_header_only_files(tmp_path):
    assert "the file is empty" in error_of(write(tmp_path / "e.csv", ""))
    assert error_of(write(tmp_path / "h.csv", "id,image\n")) == "h.csv: the catalog has no products"


def test_unsupported_file_type_and_missing_path(tmp_path):
    msg = error_of(write(tmp_path / "catalog.xlsx", "x"))
    assert "catalog.xlsx: unsupported catalog type '.xlsx'" in msg and ".csv" in msg and "folder" in msg
    assert "no such catalog file or folder" in error_of(tmp_path / "nope.csv")


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(b"id,image\na,a.jpg\nb,\xff.jpg\n")
    assert error_of(path).startswith("c.csv:3: not valid UTF-8")


# --------------------------------------------------------------------------- JSONL


def test_jsonl_keeps_native_types(tmp_path):
    rows = [
        {
            "id": "a",
            "title": "A",
            "image": "a.jpg",
            "price": 10,
            "rating": 4.5,
            "new": True,
            "tags": ["x", "y"],
        },
        {"id": 7, "title": "B", "image": "b.jpg", "price": 12.5, "rating": 3, "new": False, "tags": []},
        {"id": "c", "image": "c.jpg", "price": None, "brand": "Acme", "description": "C thing"},
    ]
    path = jsonl(tmp_path / "cat.jsonl", rows)
    cat = read_catalog(path)
    assert cat.fields == {
        "price": "float",
        "rating": "float",
        "new": "bool",
        "tags": "keyword",
        "brand": "keyword",
    }
    a, b, c = cat.items
    assert a.payload == {"price": 10.0, "rating": 4.5, "new": True, "tags": ["x", "y"]}
    assert b.id == "7" and b.payload == {"price": 12.5, "rating": 3.0, "new": False}
    assert c.payload == {"brand": "Acme"} and c.title == "" and c.description == "C thing"
    assert c.image == str(tmp_path / "c.jpg")


def test_jsonl_integer_field_and_line_numbers_with_blank_lines(tmp_path):
    path = jsonl(
        tmp_path / "cat.ndjson",
        [{"id": "a", "image": "a.jpg", "stock": 1}, "", {"id": "b", "image": "b.jpg", "stock": 2}],
    )
    cat = read_catalog(path)
    assert cat.fields == {"stock": "integer"}
    assert [i.source for i in cat.items] == ["cat.ndjson:1", "cat.ndjson:3"]


def test_jsonl_errors(tmp_path):
    rows = [
        {"id": "a", "image": "a.jpg", "price": 1},
        {"id": "b", "image": "b.jpg", "price": 2},
        "{not json",
        "[1, 2]",
        {"id": "a", "image": "c.jpg", "price": 3},
        {"id": "d", "image": "d.jpg", "price": "abc"},
        {"id": "e", "image": "e.jpg", "price": 4, "dims": {"w": 1}},
        {"id": "f", "image": "f.jpg", "price": True},
        {"image": "g.jpg"},
        {"id": "h", "image": 5},
        {"id": "i", "image": "i.jpg", "_hash": "x"},
    ]
    msg = error_of(jsonl(tmp_path / "cat.jsonl", rows))
    for expected in [
        "cat.jsonl:3: invalid JSON",
        "cat.jsonl:4: expected a JSON object, got list",
        "cat.jsonl:5: column 'id': duplicate id 'a' (first on line 1)",
        "cat.jsonl:6: column 'price': cannot parse 'abc' as a number",
        "cat.jsonl:7: column 'dims': nested objects and lists are not supported",
        "cat.jsonl:8: column 'price': expected a number, got true",
        "cat.jsonl:9: column 'id': missing id",
        "cat.jsonl:10: column 'image': expected a file path or http(s) URL, got 5",
        "cat.jsonl:11: column '_hash': field names starting with '_' are reserved",
    ]:
        assert expected in msg


def test_jsonl_without_image_field_lists_fields_found(tmp_path):
    path = jsonl(tmp_path / "cat.jsonl", [{"id": "a", "photo": "a.jpg"}])
    assert error_of(path) == "cat.jsonl: missing required column(s) 'image'; found columns: 'id', 'photo'"


def test_jsonl_mostly_text_field_stays_keyword(tmp_path):
    rows = [{"id": str(i), "image": "x.jpg", "size": s} for i, s in enumerate(["S", "M", "L", 42])]
    cat = read_catalog(jsonl(tmp_path / "cat.jsonl", rows))
    assert cat.fields == {"size": "keyword"} and cat.items[3].payload == {"size": "42"}


# --------------------------------------------------------------------------- Parquet


def test_parquet_native_types_and_row_numbers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "title": ["A", "B", None],
            "image": ["a.jpg", "/abs/b.jpg", "http://cdn.example.com/c.jpg"],
            "price": pa.array([1.5, None, 3.0], pa.float32()),
            "stock": pa.array([1, 2, None], pa.int32()),
            "sale": [True, False, None],
            "colour": pa.array(["red", "blue", "red"]).dictionary_encode(),
            "tags": [["a"], [], None],
            "added": pa.array([dt.datetime(2024, 1, 2), None, None], pa.timestamp("s")),
        }
    )
    path = tmp_path / "cat.parquet"
    pq.write_table(table, path, row_group_size=2)
    cat = read_catalog(path)
    assert cat.fields == {
        "price": "float",
        "stock": "integer",
        "sale": "bool",
        "colour": "keyword",
        "tags": "keyword",
        "added": "keyword",
    }
    a, b, c = cat.items
    assert (a.id, a.title, a.image) == ("1", "A", str(tmp_path / "a.jpg"))
    assert a.payload == {
        "price": 1.5,
        "stock": 1,
        "sale": True,
        "colour": "red",
        "tags": ["a"],
        "added": "2024-01-02T00:00:00",
    }
    assert b.payload == {"stock": 2, "sale": False, "colour": "blue"}
    assert c.title == "" and c.image == "http://cdn.example.com/c.jpg"
    assert [i.source for i in cat.items] == ["cat.parquet:1", "cat.parquet:2", "cat.parquet:3"]


def test_parquet_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "cat.parquet"
    pq.write_table(pa.table({"id": ["a", None, "a"], "image": ["a.jpg", "b.jpg", None]}), path)
    msg = error_of(path)
    assert "cat.parquet:2: column 'id': missing id" in msg
    assert "cat.parquet:3: column 'id': duplicate id 'a' (first on line 1)" in msg
    assert "cat.parquet:3: column 'image': missing image" in msg
    pq.write_table(pa.table({"id": ["a"], "image": ["a.jpg"], "blob": [b"\x00"]}), path)
    assert error_of(path) == "cat.parquet: column 'blob': unsupported Parquet type binary"
    path.write_bytes(b"not parquet at all")
    assert error_of(path).startswith("cat.parquet: cannot read as Parquet")


# --------------------------------------------------------------------------- folders


def test_folder_of_images(tmp_path):
    root = tmp_path / "photos"
    for rel in ["red_summer-dress.jpg", "bags/Leather_Tote.PNG", "bags/evening/clutch.webp"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(root / rel, "PNG")
    write(root / "README.txt", "not an image")
    write(root / ".thumbs" / "x.jpg", "hidden")
    write(root / ".hidden.jpg", "hidden")
    cat = read_catalog(root)
    by_id = {i.id: i for i in cat.items}
    assert sorted(by_id) == ["bags/Leather_Tote.PNG", "bags/evening/clutch.webp", "red_summer-dress.jpg"]
    assert by_id["red_summer-dress.jpg"].title == "red summer dress"
    assert by_id["red_summer-dress.jpg"].payload == {}
    assert by_id["bags/Leather_Tote.PNG"].title == "Leather Tote"
    assert by_id["bags/evening/clutch.webp"].payload == {"folder": "bags/evening"}
    assert by_id["bags/evening/clutch.webp"].image == str(root / "bags" / "evening" / "clutch.webp")
    assert all(i.description == "" for i in cat.items)
    assert cat.fields == {"folder": "keyword"}


def test_folder_without_images(tmp_path):
    write(tmp_path / "empty" / "notes.txt", "x")
    assert "no images" in error_of(tmp_path / "empty")
