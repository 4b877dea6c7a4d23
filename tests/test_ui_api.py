"""The UI's own API (the Gradio endpoints behind the Shop, Catalog and Ask tabs) through ``gradio_client``,
against the UI mounted into the REST app and served by uvicorn on 127.0.0.1 over a real tiny index."""

from __future__ import annotations

import json
import re
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from support.random_diffusers import write_random_sd15
from support.vlm_doubles import Scripted, ScriptedChatServer, request_texts

from indexer import ImagePolicy, IndexOptions, index_catalog, open_store, read_catalog
from search import SearchEngine
from search.api import create_app
from search.jobs import JobRunner
from ui.app import UISettings, UploadError, mount_ui
from ui.app_catalog import compute_facets, stage_catalog, unpack_zip
from vlm import VLMSettings, vlm_reranker


@dataclass
class Served:
    base: str  # the REST API
    ui: str  # the Gradio app
    catalog: Path
    engine: SearchEngine


@contextmanager
def served_ui(
    root: Path, models, monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None = None
) -> Iterator[Served]:
    """The REST API with the UI mounted, over a 30-item index, on a free 127.0.0.1 port."""
    from conftest import make_catalog
    from test_api import running_server

    for key in ("LOOKALIKE_VLM", "LOOKALIKE_GENERATOR"):
        monkeypatch.delenv(key, raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    catalog = make_catalog(root / "catalog", n=30)
    data = root / "data"
    store = open_store(f"edge:{data / 'store'}")
    policy = ImagePolicy(max_bytes=10**7, max_pixels=10**7)
    index_catalog(read_catalog(catalog), store, models, IndexOptions(batch_size=16), policy, data / "errors.jsonl")
    # semantic_share=1: with the weight slider at "text", a text query is ranked by MiniLM alone, which knows words
    # (the tiny CLIP's weights are random).
    settings = UISettings(data_dir=data, device="cpu", semantic_share=1.0, workers=2, batch_size=16)
    # As create_ui_app does: the VLM re-ranker is registered, and refuses with the setting's name until one is set.
    vlm = vlm_reranker(VLMSettings(data_dir=data), lookup=lambda i: engine.get(i))
    engine = SearchEngine(settings, store=store, models=models, rerankers={"vlm": vlm})
    jobs = JobRunner(engine)
    app = mount_ui(create_app(engine, jobs), settings)
    try:
        with running_server(app) as base:
            yield Served(base, f"{base}/ui/", catalog, engine)
    finally:
        jobs.close()
        engine.close()


def catalog_zip(path: Path, n: int = 40, broken: int = 2) -> Path:
    """A zip of ``catalog.jsonl`` plus images: ``n`` purple hats with new ids, the last ``broken`` images corrupt."""
    rows = []
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(n):
            name = f"images/h{i:03d}.png"
            if i >= n - broken:
                zf.writestr(name, b"\x89PNG\r\n\x1a\nthis is not an image")
            else:
                img = Image.new("RGB", (48, 48), "white")
                ImageDraw.Draw(img).polygon([(8, 40), (24, 8), (40, 40)], fill=(120, 20, 170))
                png = path.with_suffix(".tmp.png")
                img.save(png)
                zf.write(png, name)
                png.unlink()
            rows.append(
                {
                    "id": f"h{i:03d}",
                    "title": "purple hat",
                    "description": "A purple party hat.",
                    "image": name,
                    "category": "hat",
                    "colour": "purple",
                    "price": 50 + i,
                }
            )
        zf.writestr("catalog.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return path


class ScriptedVLM:
    """Replies like a VLM would: re-rank scores (``best`` gets 10), or answers citing the first product shown."""

    def __init__(self) -> None:
        self.best: str | None = None

    def __call__(self, request: dict) -> Scripted:
        text = request_texts(request)
        candidates = re.findall(r"Candidate \[([^\]]+)\]", text)
        if candidates:
            scores = [{"id": i, "score": 10 if i == self.best else 1, "reason": "scripted"} for i in candidates]
            return Scripted(json.dumps({"scores": scores}))
        products = re.findall(r"^\[([^\]]+)\] ", text, re.MULTILINE)
        if products and not products[0].isdigit():
            return Scripted(f"The first one fits [{products[0]}]. So does [zzz999].")
        return Scripted("The first image shows a blue rectangle [1].")


@pytest.fixture(scope="module")
def vlm_script():
    return ScriptedVLM()


@pytest.fixture(scope="module")
def served(tmp_path_factory, models, vlm_script):
    sd = write_random_sd15(tmp_path_factory.mktemp("tiny-sd"))
    root = tmp_path_factory.mktemp("ui-api")
    with ScriptedChatServer(responder=vlm_script) as chat, pytest.MonkeyPatch.context() as mp:
        env = {f"LOOKALIKE_{k.upper()}": v for k, v in sd.settings().items()}
        env |= {"LOOKALIKE_GEN_RESOLUTION": "64", "LOOKALIKE_VLM": f"openai:scripted@{chat.url}"}
        env |= {"LOOKALIKE_VLM_API_KEY": "sk-test", "LOOKALIKE_VLM_CACHE": "false"}
        with served_ui(root, models, mp, env) as s:
            yield s


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served.ui, verbose=False, download_files=False)


def search(client, text="", image=None, negative="", image_weight=0.0, filters=None, price_min=10, price_max=39, k=24):
    gallery, status, hits = client.predict(
        text, image, negative, image_weight, filters or [], price_min, price_max, "none", k, api_name="/search"
    )
    return gallery, status, hits


def wait_for_job(client, job_id: str, timeout: float = 60) -> tuple:
    deadline = time.monotonic() + timeout
    while True:
        out = client.predict(job_id, api_name="/job_status")
        status = re.search(r'data-status="(\w+)"', out[0] or "")
        if status and status.group(1) not in ("queued", "running"):
            return out
        assert time.monotonic() < deadline, f"job {job_id} did not finish: {out[0]}"
        time.sleep(0.3)


# -- search ---------------------------------------------------------------------------------------


def test_text_search_returns_the_gallery_and_hits(client):
    gallery, status, hits = search(client, "yellow bag")
    assert hits and hits[0]["payload"]["title"] == "yellow bag"
    assert len(gallery) == len(hits) and gallery[0]["caption"].startswith("yellow bag · ")
    # Read as facets, shown above the results (the two yellow bags are one photo: one result).
    assert "result" in status and "yellow bag" in status
    assert status.startswith("Understood: **colour = yellow; category = bag**.")
    assert all(0 <= h["score"] <= 1 for h in hits)
    assert hits[0]["explanation"]["channels"]["semantic"]["weight"] == 1.0


def test_image_search_and_filters(client, served):
    from gradio_client import handle_file

    photo = served.catalog.parent / "images" / "p007.jpg"  # a blue rectangle: the blue shirts and dresses look alike
    _, status, hits = search(client, image=handle_file(str(photo)), image_weight=0.6)
    assert hits[0]["payload"]["title"] in ("blue shirt", "blue dress") and "your photo" in status
    _, _, red = search(client, "bag", filters=["colour=red"])
    assert red and {h["payload"]["colour"] for h in red} == {"red"}
    _, _, cheap = search(client, "bag", price_max=15)
    assert cheap and all(h["payload"]["price"] <= 15 for h in cheap)


def test_more_like_this_and_like_this_but(client):
    _, _, hits = search(client, "green shirt")
    first = hits[0]["id"]
    _, status, similar = client.predict(first, "", [], 10, 39, "none", 10, 1, api_name="/more_like_this")
    assert similar and first not in [h["id"] for h in similar] and "items like" in status
    _, status, composed = client.predict(first, "in red", "", [], 10, 39, "none", 10, 1, api_name="/like_this_but")
    assert composed and first not in [h["id"] for h in composed] and "in red" in status
    assert composed[0]["explanation"]["query"] == "composed"


def test_the_words_as_typed_skip_what_was_understood(client):
    _, status, understood = search(client, "yellow bag")
    assert "Understood:" in status and all(h["payload"]["colour"] == "yellow" for h in understood)
    _, typed_status, typed = client.predict(
        "yellow bag", None, "", 0.0, [], 10, 39, "none", 24, api_name="/search_as_typed"
    )
    assert "as typed" in typed_status and "Understood:" not in typed_status
    assert len(typed) > len(understood)  # the words alone rank every product


def test_search_errors_are_readable_messages(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="unknown filter 'size=XL'"):
        search(client, "bag", filters=["size=XL"])
    with pytest.raises(AppError, match="Pick a result first"):
        client.predict("", "", [], 10, 39, "none", 10, 1, api_name="/more_like_this")
    _, status, hits = search(client, "")
    assert hits == [] and "Type what you are looking for" in status


# -- VLM and generation ---------------------------------------------------------------------------


def test_vlm_rerank_puts_the_judged_best_first(client, vlm_script):
    _, _, plain = search(client, "bag", k=5)
    vlm_script.best = plain[-1]["id"]
    _, _, reranked = client.predict("bag", None, "", 0.0, [], 10, 39, "vlm", 5, api_name="/search")
    assert reranked[0]["id"] == plain[-1]["id"] and reranked[0]["explanation"]["rerank"]["vlm_score"] == 10


def test_ask_the_catalog_shows_checked_citations(client):
    answer, cited = client.predict("catalog", [], [], "which bag is red?", 4, api_name="/ask")
    assert "The first one fits" in answer and "Answered by `scripted`" in answer
    assert "were removed: zzz999" in answer  # a product the model was not shown
    assert len(cited) == 1 and re.match(r"\[p\d{3}\] ", cited[0]["caption"])


def test_ask_about_uploaded_images(client, served):
    from gradio_client import handle_file

    photo = handle_file(str(served.catalog.parent / "images" / "p007.jpg"))
    answer, cited = client.predict("upload", [], [photo], "what is this?", 4, api_name="/ask")
    assert "blue rectangle" in answer and "[1] p007.jpg" in answer
    assert [c["caption"] for c in cited] == ["[1] p007.jpg"]


def test_create_variants_with_their_scores_and_nearest_products(client):
    from gradio_client.exceptions import AppError

    note, image, scores, nearest, *rest = client.predict("p001", None, "in navy blue", 1, 3, api_name="/create")
    assert note.startswith("1 variant(s) of “in navy blue”")
    assert image and "CLIP match to the change" in scores and "seed 3" in scores
    assert nearest and all(not n["caption"].startswith("green shirt · 11.00") for n in nearest)  # p001 excluded
    assert rest[0] is None  # the second slot stays empty
    with pytest.raises(AppError, match="No product with id “nope”"):
        client.predict("nope", None, "in blue", 1, 0, api_name="/create")
    with pytest.raises(AppError, match="give the change to make as text"):
        client.predict("p001", None, "  ", 1, 0, api_name="/create")
    with pytest.raises(AppError, match="Value 9 is greater than maximum value 4"):
        client.predict("p001", None, "in blue", 9, 0, api_name="/create")


# -- index ----------------------------------------------------------------------------------------


def test_upload_a_zip_index_it_and_find_the_new_items(client, tmp_path):
    from gradio_client import handle_file

    job_id, progress, *_ = client.predict(
        handle_file(str(catalog_zip(tmp_path / "hats.zip"))), "", False, api_name="/start_index"
    )
    assert job_id and "/ 40 items" in progress
    progress, summary, errors, download, stats, _, header, filters, _, price_max = wait_for_job(client, job_id)
    assert 'data-status="done"' in progress and "Done: 40 / 40 items" in progress
    assert "38 new" in summary and "2 failed" in summary and "2 item(s) could not be indexed" in summary
    # Component updates come back as {"__type__": "update", "value": ..., ...}.
    table = errors["value"]
    assert table["headers"] == ["id", "source", "reason", "error"] and errors["visible"]
    assert [(row[0], row[1], row[2]) for row in table["data"]] == [
        ("h038", "catalog.jsonl:39", "not_an_image"),
        ("h039", "catalog.jsonl:40", "not_an_image"),
    ]
    assert download["visible"] and download["value"]["orig_name"].endswith(".errors.jsonl")
    assert "**Products:** 68" in stats and "68 products indexed" in header
    assert ["colour: purple", "colour=purple"] in filters["choices"] and price_max[
        "maximum"
    ] == 87  # h038 and h039 failed
    _, _, hits = search(client, "purple hat", price_max=87)
    assert hits[0]["payload"]["title"] == "purple hat" and hits[0]["id"].startswith("h")


def test_bad_uploads_are_refused_with_readable_messages(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    corrupt = tmp_path / "broken.zip"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(AppError, match="broken.zip is not a readable zip file"):
        client.predict(handle_file(str(corrupt)), "", False, api_name="/start_index")
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("id,title\n1,no image column\n")
    with pytest.raises(AppError, match="image"):
        client.predict(handle_file(str(bad_csv)), "", False, api_name="/start_index")
    with pytest.raises(AppError, match="does not exist on the server"):
        client.predict(None, "/no/such/catalog.csv", False, api_name="/start_index")
    with pytest.raises(AppError, match="Upload a catalog file"):
        client.predict(None, "", False, api_name="/start_index")


# -- zip safety (pure) ----------------------------------------------------------------------------


def write_zip(path: Path, entries: dict[str, bytes], link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize(
    ("entries", "link", "message"),
    [
        ({"../evil.csv": b"id,image\n"}, None, "points outside the zip"),
        ({"/abs/evil.csv": b"id,image\n"}, None, "points outside the zip"),
        ({"a/../../evil.csv": b"id,image\n"}, None, "points outside the zip"),
        ({"catalog.csv": b"id,image\n"}, "images/link.jpg", "refusing the link"),
        ({"a.csv": b"x", "b.jsonl": b"x"}, None, "several catalogs"),
        ({"readme.txt": b"hello"}, None, "no catalog file"),
    ],
)
def test_unsafe_or_unusable_zips_are_refused(tmp_path, entries, link, message):
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(UploadError, match=message):
        unpack_zip(write_zip(tmp_path / "x.zip", entries, link), target, max_entries=100, max_bytes=10**6)
    assert not (tmp_path / "evil.csv").exists()


def test_zip_caps_and_layout(tmp_path):
    many = write_zip(tmp_path / "many.zip", {f"i{n}.png": b"x" for n in range(5)})
    with pytest.raises(UploadError, match="holds 5 files; at most 4"):
        unpack_zip(many, tmp_path / "a", max_entries=4, max_bytes=10**6)
    big = write_zip(tmp_path / "big.zip", {"catalog.csv": b"0" * 5000})
    with pytest.raises(UploadError, match="unpacks to 5,000 bytes; at most 1,000"):
        unpack_zip(big, tmp_path / "b", max_entries=10, max_bytes=1000)
    nested = write_zip(
        tmp_path / "nested.zip",
        {
            "shop/catalog.csv": b"id,image\n",
            "shop/extra/old.csv": b"",
            "__MACOSX/shop/._catalog.csv": b"",
            "shop/i.jpg": b"",
        },
    )
    (tmp_path / "c").mkdir()
    assert unpack_zip(nested, tmp_path / "c", 10, 10**6) == (tmp_path / "c").resolve() / "shop" / "catalog.csv"
    assert not (tmp_path / "c" / "__MACOSX").exists()
    images_only = write_zip(tmp_path / "images.zip", {"pics/a.jpg": b"", "pics/b.png": b""})
    (tmp_path / "d").mkdir()
    assert unpack_zip(images_only, tmp_path / "d", 10, 10**6) == tmp_path / "d"


def test_facets_offer_few_valued_fields_and_the_price_range(served):
    engine = served.engine
    facets = compute_facets(engine.store, dict(engine.fields), max_values=40)
    values = [v for _, v in facets.choices]
    assert {"category=bag", "colour=red"} <= set(values)
    assert facets.price is not None and facets.price[0] == "price" and facets.price[1] >= 10
    narrow = compute_facets(engine.store, dict(engine.fields), max_values=4)
    assert not any(v.startswith("colour=") for _, v in narrow.choices)  # 5+ colours: too many to pick from
    flt = facets.filter(["colour=red", "colour=blue", "category=bag"], None, 20)
    assert {c.key: c.op for c in flt.must} == {"colour": "in", "category": "eq", "price": "range"}


def test_uploads_may_not_name_other_server_files_and_server_paths_can_be_fenced(tmp_path):
    uploads = tmp_path / "uploads"
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (8, 8)).save(secret)
    sneaky = tmp_path / "sneaky.csv"
    sneaky.write_text(f"id,image\n1,{secret}\n2,../../secret.jpg\n3,https://cdn.example.com/3.jpg\n")
    settings = UISettings(data_dir=tmp_path / "data")
    with pytest.raises(UploadError, match=r"sneaky.csv:2: image .* is not in the upload[\s\S]*sneaky.csv:3"):
        stage_catalog(str(sneaky), None, uploads, settings)
    assert list(uploads.iterdir()) == []  # the refused upload is not kept
    gallery = tmp_path / "gallery.csv"
    gallery.write_text(f"id,image,images\n1,https://cdn.example.com/1.jpg,{secret}\n")  # every photo is checked
    with pytest.raises(UploadError, match=r"gallery.csv:2: image .*secret.jpg' is not in the upload"):
        stage_catalog(str(gallery), None, uploads, settings)
    fenced = UISettings(data_dir=tmp_path / "data", catalog_root=tmp_path / "catalogs")
    with pytest.raises(UploadError, match="outside .*catalogs"):
        stage_catalog(None, str(sneaky), uploads, fenced)
    (tmp_path / "catalogs").mkdir()
    inside = tmp_path / "catalogs" / "c.csv"
    inside.write_text("id,image\n1,a.jpg\n")
    assert stage_catalog(None, str(inside), uploads, fenced) == inside
