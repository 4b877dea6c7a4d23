"""The web UI in a real browser: Debian's Chromium driven by Playwright, against the app served on 127.0.0.1
over a real tiny index. Each flow asserts on what the page shows and leaves a screenshot (in the test's tmp dir
and in /tmp/ui-shots/)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SHOTS_COPY = Path("/tmp/ui-shots")
TIMEOUT_MS = 20_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt install chromium)")


@pytest.fixture(scope="module")
def served(tmp_path_factory, models):
    from test_ui_api import served_ui

    with pytest.MonkeyPatch.context() as mp, served_ui(tmp_path_factory.mktemp("ui-browser"), models, mp) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # Never a downloaded browser: the system's Chromium only.
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ui-shots")
    SHOTS_COPY.mkdir(parents=True, exist_ok=True)

    def shot(page, name: str, full_page: bool = True) -> Path:
        path = folder / f"{name}.png"
        if not full_page:
            # An error toast is pinned to the viewport's top and slides in: capture the viewport, once it is in.
            page.wait_for_timeout(600)
        page.screenshot(path=str(path), full_page=full_page, animations="disabled")
        shutil.copyfile(path, SHOTS_COPY / path.name)
        return path

    return shot


@pytest.fixture
def page(browser, served):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(served.ui)
    expect(page.locator("#lk-header")).to_contain_text("products indexed")  # the load event ran
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def captions(page) -> list[str]:
    """The result captions, once every thumbnail has loaded (the gallery reuses its <img> elements)."""
    page.wait_for_function(
        "[...document.querySelectorAll('#shop-results img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    return page.locator("#shop-results .caption-label").all_inner_texts()


def search(page, text: str, expect_status: str) -> list[str]:
    from playwright.sync_api import expect

    page.locator("#shop-query textarea").fill(text)
    page.locator("#shop-search").click()
    # Understood facets can narrow a search to one product: "1 result for" counts as "results for".
    expect(page.locator("#shop-status")).to_contain_text(
        re.compile(re.escape(expect_status).replace("results", "results?"))
    )
    return captions(page)


def text_only(page) -> None:
    """Weight slider to "text": the tiny CLIP is random, MiniLM knows the words."""
    from playwright.sync_api import expect

    page.get_by_text("More options").click()
    number = page.locator("#shop-weight input[type=number]")
    slider = page.locator("#shop-weight input[type=range]")
    # Right after a tab switch the panel may still be mounting and drop the first edit; edit until it sticks.
    for _ in range(5):
        number.fill("0")
        number.press("Tab")
        try:
            expect(slider).to_have_value("0", timeout=2_000)
            break
        except AssertionError:
            continue
    expect(slider).to_have_value("0")
    page.get_by_text("More options").click()


def test_text_search_shows_a_gallery_of_the_expected_items(page, shots):
    text_only(page)
    found = search(page, "yellow bag", "results for “yellow bag”")
    shots(page, "1-text-search")
    assert found and found[0].startswith("yellow bag · ")
    # title, price, and the score the results are ordered by (calibrated relevance by default)
    assert all(re.search(r" · \d+\.\d\d · score \d\.\d\d$", c) for c in found), found
    images = page.locator("#shop-results img")
    assert images.count() == len(found)
    assert "/gradio_api/file=" in images.first.get_attribute("src")
    assert page.locator("#shop-results img").first.evaluate("img => img.complete && img.naturalWidth > 0")


def test_image_upload_search(page, served, shots):
    from playwright.sync_api import expect

    photo = served.catalog.parent / "images" / "p007.jpg"  # a blue rectangle, like the blue shirts and dresses
    page.locator("#shop-image input[type=file]").set_input_files(str(photo))
    expect(page.locator("#shop-status")).to_contain_text("results for your photo")
    shots(page, "2-image-search")
    assert captions(page)[0].split(" · ")[0] in ("blue shirt", "blue dress")


def test_a_filter_narrows_the_results(page, shots):
    from playwright.sync_api import expect

    before = search(page, "bag", "results for “bag”")
    assert any(not c.startswith("red ") for c in before)
    page.locator("#shop-filters input").click()
    page.locator("[role=option]", has_text="colour: red").click()
    page.keyboard.press("Escape")
    # Picking a filter re-runs the search.
    expect(page.locator("#shop-status")).to_contain_text("filtered by colour: red")
    after = captions(page)
    shots(page, "3-filter")
    assert after and all(c.startswith("red ") for c in after)
    assert set(after) < set(before) or len(after) < len(before) or not set(after) & set(before)


def test_more_like_this_and_explain_on_a_result(page, shots):
    from playwright.sync_api import expect

    text_only(page)
    first = search(page, "green shirt", "results for “green shirt”")[0]
    page.locator("#shop-results .thumbnail-item").first.click()
    details = page.locator("#shop-details")
    expect(details).to_be_visible()
    title = first.split(" · ")[0]
    expect(page.locator("#shop-detail")).to_contain_text(title)
    page.locator("#shop-explain").click()
    expect(page.locator("#shop-explanation")).to_contain_text("Why it matched")
    expect(page.locator("#shop-explanation")).to_contain_text("meaning of the text (MiniLM)")
    shots(page, "4a-details-explain")
    page.locator("#shop-more").click()
    expect(page.locator("#shop-status")).to_contain_text(f"items like {title}")
    similar = captions(page)
    shots(page, "4b-more-like-this")
    clicked = " · ".join(first.split(" · ")[:2])  # title and price name the item
    assert similar and not any(c.startswith(clicked + " ·") for c in similar)


def test_catalog_upload_shows_progress_then_the_new_items_are_searchable(page, shots, tmp_path):
    from playwright.sync_api import expect
    from test_ui_api import catalog_zip

    page.get_by_role("tab", name="Catalog").click()
    page.locator("#catalog-upload input[type=file]").set_input_files(str(catalog_zip(tmp_path / "hats.zip")))
    expect(page.locator("#catalog-upload")).to_contain_text(re.compile(r"hats\s?\.zip"))
    page.locator("#catalog-start").click()
    progress = page.locator("#job-progress")
    expect(progress).to_contain_text(re.compile(r"\d+ / 40 items"))
    shots(page, "5a-catalog-progress")
    expect(page.locator('#job-progress[data-status="done"]')).to_be_visible(timeout=60_000)
    expect(progress).to_contain_text("Done: 40 / 40 items")
    expect(page.locator("#catalog-summary")).to_contain_text("38 new")
    expect(page.locator("#catalog-summary")).to_contain_text("2 item(s) could not be indexed")
    expect(page.locator("#catalog-errors")).to_contain_text("h038")
    expect(page.locator("#catalog-errors")).to_contain_text("not_an_image")
    expect(page.locator("#catalog-errors-download")).to_be_visible()
    expect(page.locator("#catalog-stats")).to_contain_text("Products: 68")
    expect(page.locator("#lk-header")).to_contain_text("68 products indexed")
    shots(page, "5b-catalog-done")
    page.get_by_role("tab", name="Shop").click()
    text_only(page)
    found = search(page, "purple hat", "results for “purple hat”")
    shots(page, "5c-new-items-found")
    assert found[0].startswith("purple hat · ")
    page.locator("#shop-filters input").click()
    expect(page.locator("[role=option]", has_text="colour: purple")).to_be_visible()


def test_a_corrupt_upload_shows_a_readable_error(page, shots, tmp_path):
    from playwright.sync_api import expect

    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 this is not a zip at all")
    page.get_by_role("tab", name="Catalog").click()
    page.locator("#catalog-upload input[type=file]").set_input_files(str(broken))
    # The file name is shown as stem and extension, which some layouts render apart.
    expect(page.locator("#catalog-upload")).to_contain_text(re.compile(r"broken\s?\.zip"))
    page.locator("#catalog-start").click()
    expect(page.get_by_text("broken.zip is not a readable zip file")).to_be_visible()
    shots(page, "6-bad-upload", full_page=False)
    assert "Traceback" not in page.content()


def test_phone_width(page, shots):
    page.set_viewport_size({"width": 390, "height": 844})
    found = search(page, "bag", "results for “bag”")
    shots(page, "7-phone-390px")
    assert found
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone: {width}px wide"
    box = page.locator("#shop-results img").first.bounding_box()
    assert box and 100 <= box["width"] <= 195  # two results per row


def test_ask_and_vlm_rerank_name_the_setting_they_need(page, shots):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Ask").click()
    expect(page.locator("#ask-backend")).to_contain_text("needs a vision-language model: set LOOKALIKE_VLM")
    page.locator("#ask-question textarea").fill("Which bag is the brightest?")
    page.locator("#ask-go").click()
    expect(page.get_by_text("Asking questions needs a vision-language model")).to_be_visible()
    shots(page, "8-ask-without-vlm", full_page=False)


ADMIN_TOKEN = "open-sesame-42"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, models):
    """The same app with LOOKALIKE_ADMIN_TOKEN set: the Catalog tab asks for it."""
    from test_ui_api import served_ui

    root = tmp_path_factory.mktemp("ui-guarded")
    with (
        pytest.MonkeyPatch.context() as mp,
        served_ui(root, models, mp, env={"LOOKALIKE_ADMIN_TOKEN": ADMIN_TOKEN}) as s,
    ):
        yield s


def test_the_catalog_tab_asks_for_the_admin_token_before_its_controls_show(browser, guarded, shots, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    from playwright.sync_api import expect
    from test_ui_api import catalog_zip

    hats = catalog_zip(tmp_path / "hats.zip", n=6, broken=0)
    # The endpoint itself refuses a session that never gave the token, whatever the page shows.
    with pytest.raises(AppError, match="writes need the admin token"):
        Client(guarded.ui, verbose=False).predict(handle_file(str(hats)), "", False, api_name="/start_index")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    try:
        page.goto(guarded.ui)
        expect(page.locator("#lk-header")).to_contain_text("products indexed")
        page.get_by_role("tab", name="Catalog").click()
        expect(page.locator("#catalog-lock-note")).to_contain_text("needs the admin token")
        expect(page.locator("#catalog-start")).to_be_hidden()
        page.locator("#catalog-token input").fill("guess")
        page.locator("#catalog-unlock").click()
        expect(page.get_by_text("wrong admin token")).to_be_visible()
        expect(page.locator("#catalog-start")).to_be_hidden()
        shots(page, "8a-catalog-locked", full_page=False)
        page.locator("#catalog-token input").fill(ADMIN_TOKEN)
        page.locator("#catalog-unlock").click()
        expect(page.locator("#catalog-start")).to_be_visible()
        page.locator("#catalog-upload input[type=file]").set_input_files(str(hats))
        expect(page.locator("#catalog-upload")).to_contain_text(re.compile(r"hats\s?\.zip"))
        page.locator("#catalog-start").click()
        expect(page.locator('#job-progress[data-status="done"]')).to_be_visible(timeout=60_000)
        expect(page.locator("#catalog-summary")).to_contain_text("6 new")
        shots(page, "8b-catalog-unlocked")
    finally:
        context.close()
