"""The Shop tab: text, photo and "like this but…" search, filters, details, "more like this" and "explain"."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from indexer.images import decode_upload
from search import Hit, Query, SearchInput
from vlm import VLMNotConfigured, not_configured

from .app import friendly, product_gallery

if TYPE_CHECKING:
    from .app import Services
    from .app_catalog import Facets

CHANNEL_NAMES = {
    "image": "picture (CLIP)",
    "text": "title and description (CLIP)",
    "semantic": "meaning of the text (MiniLM)",
    "modifier": "the change asked for (CLIP)",
    "lexical": "the words themselves (BM25)",
}
EMPTY_HINT = (
    "Type what you are looking for, drop a photo, or both: a photo plus *in blue* finds things like the photo, "
    "but blue."
)


def caption(hit: Hit) -> str:
    p = hit.payload
    parts = [str(p.get("title") or hit.id)]
    if isinstance(p.get("price"), int | float) and not isinstance(p.get("price"), bool):
        parts.append(f"{p['price']:.2f}")
    parts.append(f"score {hit.score:.2f}")
    return " · ".join(parts)


def detail_markdown(row: dict[str, Any]) -> str:
    p = row["payload"]
    e = html.escape
    lines = [f"### {e(str(p.get('title') or row['id']))}", f"score **{row['score']:.2f}** · id `{e(row['id'])}`"]
    if p.get("description"):
        lines += ["", e(str(p["description"]))]
    facts = [f"- **{e(k)}:** {e(str(v))}" for k, v in p.items() if k not in ("title", "description", "image", "images")]
    return "\n".join(lines + [""] + facts)


def explain_markdown(expl: dict[str, Any]) -> str:
    """Why an item matched: each channel's raw and calibrated similarity, and what moved it up or down."""
    how = expl.get("fusion") or expl.get("method") or ""
    lines = [f"**Why it matched** ({expl.get('query', '?')} query, {how})", ""]
    lines += ["| signal | similarity | calibrated | weight | rank |", "|---|---|---|---|---|"]
    for name, ch in (expl.get("channels") or {}).items():
        cells = [ch.get("raw", ""), ch.get("calibrated", ""), ch.get("weight", "–"), ch.get("rank") or "–"]
        lines.append(f"| {CHANNEL_NAMES.get(name, name)} | " + " | ".join(str(c) for c in cells) + " |")
    if code := expl.get("code"):
        lines += [
            "",
            f"Put first: its {html.escape(code['field'])} is “{html.escape(str(code['value']))}”, a code in the search",
        ]
    if expl.get("parts"):
        lines += ["", "Composed score parts: " + ", ".join(f"{k} {v}" for k, v in expl["parts"].items())]
    if expl.get("attribute"):
        lines += ["", "Attribute asked for: " + ", ".join(f"{k} = {v}" for k, v in expl["attribute"].items())]
    if neg := expl.get("negative"):
        lines += [
            "",
            f"Pushed down by “{html.escape(neg['text'])}”: similarity {neg['similarity']}, penalty {neg['penalty']}",
        ]
    if rr := expl.get("rerank"):
        lines += ["", "Re-ranked: " + ", ".join(f"{k} {html.escape(str(v))}" for k, v in rr.items())]
    if dupes := expl.get("duplicates"):
        lines += ["", f"Hides {len(dupes)} near-identical item(s): " + ", ".join(html.escape(d) for d in dupes)]
    return "\n".join(lines)


def understood_markdown(described: dict[str, Any] | None) -> str:
    """ "Understood: **price < 50; brand = Kestrel**." plus notes, for the line above the results."""
    if not described:
        return ""
    parts = [f"Understood: **{html.escape(described['summary'])}**." if described["summary"] else ""]
    parts += [html.escape(n[:1].upper() + n[1:]) + "." for n in described["notes"]]
    return " ".join(p for p in parts if p)


def narrowed_by(query: Query) -> str:
    """ ", filtered by colour: red or blue, price 10–20, without “striped”": what narrowed a search, for its status."""
    parts = []
    for c in query.filters.must:
        name = html.escape(c.key.replace("_", " "))
        if c.op == "range":
            lo, hi = c.value.get("gte", c.value.get("gt", "")), c.value.get("lte", c.value.get("lt", ""))
            parts.append(f"{name} {lo:g}–{hi:g}" if lo != "" and hi != "" else name)
        else:
            values = c.value if c.op == "in" else [c.value]
            parts.append(f"{name}: " + " or ".join(html.escape(str(v)) for v in values))
    text = ", filtered by " + ", ".join(parts) if parts else ""
    return text + (f", without “{html.escape(query.negative)}”" if query.negative else "")


@dataclass
class ShopView:
    services: Services
    filters: Any
    price_min: Any
    price_max: Any
    hits: Any
    selected: Any
    vary: Any

    @property
    def filter_outputs(self) -> list[Any]:
        return [self.filters, self.price_min, self.price_max]

    def filter_updates(self) -> tuple[Any, Any, Any]:
        dropdown, low, high = filter_settings(self.services.facets.get())
        return gr.Dropdown(**dropdown), gr.Slider(**low), gr.Slider(**high)


def filter_settings(facets: Facets) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Choices of the filter picker and the range of the price sliders, for building or updating them."""
    dropdown = {"choices": facets.choices, "value": [], "visible": bool(facets.choices)}
    if facets.price is None:
        return dropdown, {"visible": False}, {"visible": False}
    name, lo, hi = facets.price
    step = 1.0 if hi - lo >= 20 else 0.01
    label = name.replace("_", " ")
    common = {"minimum": lo, "maximum": hi, "step": step, "visible": True}
    return (
        dropdown,
        {**common, "value": lo, "label": f"{label} from"},
        {**common, "value": hi, "label": f"{label} up to"},
    )


def build_shop_tab(services: Services) -> ShopView:
    s = services.settings
    engine = services.engine
    default_weight = s.image_weight / (s.image_weight + s.text_weight or 1.0)
    vlm_note = "" if services.vlm_settings.vlm else "vlm needs LOOKALIKE_VLM, which this server does not set"
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=280):
            query = gr.Textbox(label="Search", placeholder="e.g. red summer dress", elem_id="shop-query", max_lines=2)
            image = gr.Image(
                label="…or a photo: upload, paste or webcam",
                type="filepath",
                sources=["upload", "clipboard", "webcam"],
                height=170,
                elem_id="shop-image",
            )
            with gr.Row():
                go = gr.Button("Search", variant="primary", elem_id="shop-search", min_width=100)
                clear = gr.Button("Clear", elem_id="shop-clear", min_width=80)
        with gr.Column(scale=2, min_width=260):
            negative = gr.Textbox(label="Not…", placeholder="e.g. striped", elem_id="shop-negative")
            # Built with the facets known now, so API clients that never load the page get them too.
            pick, low, high = filter_settings(services.facets.get())
            filters = gr.Dropdown(
                label="Filters", multiselect=True, allow_custom_value=True, elem_id="shop-filters", **pick
            )
            with gr.Row():
                price_min = gr.Slider(elem_id="shop-price-min", min_width=120, **{"label": "price from", **low})
                price_max = gr.Slider(elem_id="shop-price-max", min_width=120, **{"label": "price up to", **high})
            with gr.Accordion("More options", open=False):
                weight = gr.Slider(
                    0,
                    1,
                    value=round(default_weight, 2),
                    step=0.05,
                    label="Picture ↔ text weight",
                    info="1: only how items look; 0: only their titles and descriptions",
                    elem_id="shop-weight",
                )
                rerank = gr.Radio(["none", "clip", "vlm"], value="none", label="Re-rank", info=vlm_note or None)
                k = gr.Slider(4, s.max_k, value=min(s.ui_page_size, s.max_k), step=1, label="Results")
    status = gr.Markdown(EMPTY_HINT, elem_id="shop-status", elem_classes="lk-status")
    literal = gr.Button("Search the words as typed instead", visible=False, elem_id="shop-literal", size="sm")
    with gr.Column(visible=False, elem_id="shop-details") as details:
        with gr.Row(equal_height=False):
            detail_image = gr.Image(show_label=False, interactive=False, height=260, min_width=200, buttons=[])
            with gr.Column(min_width=260, scale=2):
                detail = gr.Markdown(elem_id="shop-detail")
                with gr.Row():
                    more = gr.Button("More like this", elem_id="shop-more", min_width=110)
                    explain = gr.Button("Explain", elem_id="shop-explain", min_width=80)
                    vary = gr.Button("Create variants", elem_id="shop-vary", min_width=110)
                # A product with several photos: which one "more like this" and "like this but…" start from.
                photo = gr.Number(
                    1, label="Start from photo", precision=0, minimum=1, visible=False, elem_id="shop-photo"
                )
                change = gr.Textbox(
                    label="Like this but…", placeholder="in blue", elem_id="shop-change", submit_btn="Go"
                )
                explanation = gr.Markdown(visible=False, elem_id="shop-explanation")
    gallery = product_gallery("Results", object_fit="contain", elem_id="shop-results", buttons=[], show_label=False)
    hits = gr.JSON(visible=False)
    selected = gr.Textbox(visible=False, label="Item id")

    def show(found: list[Hit], what: str, described: dict[str, Any] | None = None) -> tuple[Any, ...]:
        # Each product by the photo that matched best.
        thumbs = services.thumbs.many([h.photo_source() for h in found], s.ui_thumb_px)
        rows = [
            {
                "id": h.id,
                "score": round(h.score, 6),
                "photo": h.photo,
                "thumb": t,
                "payload": h.public_payload(),
                "explanation": h.explanation,
            }
            for h, t in zip(found, thumbs, strict=True)
        ]
        if found:
            noun = "result" if len(found) == 1 else "results"
            text = f"**{len(found)} {noun}** for {what}. Tap one for details, *more like this* and *explain*."
        else:
            text = (
                f"No products match {what}. Try removing filters, fewer or other words, clearing the "
                "*Not…* box, or searching with a photo."
            )
        gallery_items = [(t, caption(h)) for t, h in zip(thumbs, found, strict=True)]
        understood = understood_markdown(described)
        text = f"{understood}\n\n{text}" if understood else text
        # The way back to the words as typed, whenever they were read as more than words.
        as_typed = bool(described and (described["summary"] or described.get("fell_back")))
        return gallery_items, text, rows, gr.Column(visible=False), gr.Button(visible=as_typed)

    def run(query_: Query, what: str, request: gr.Request | None) -> tuple[Any, ...]:
        services.count("search", request)
        if query_.rerank == "vlm":
            services.count("vlm", request)
        if engine.store.schema() is None or not engine.store.count():
            empty = "The index is empty: upload a catalog in the **Catalog** tab, then search here."
            return [], empty, [], gr.skip(), gr.Button(visible=False)
        if query_.rerank == "vlm" and not services.vlm_settings.vlm:
            raise VLMNotConfigured(not_configured("Re-ranking with a VLM"))
        result = engine.run(query_)
        return show(result.hits, what + narrowed_by(query_), result.described())

    def search(
        text: str,
        image: str | None,
        negative: str,
        image_weight: float,
        filters: list[str],
        price_min: float | None,
        price_max: float | None,
        rerank: str,
        k: float,
        literal: bool,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        text = (text or "").strip()
        if not text and not image:
            return [], EMPTY_HINT, [], gr.skip(), gr.Button(visible=False)
        img = decode_upload(Path(image).read_bytes(), services.query_policy()) if image else None
        quoted = f"“{html.escape(text)}”"
        what = f"your photo + {quoted}" if img is not None and text else ("your photo" if img is not None else quoted)
        w = float(image_weight if image_weight is not None else default_weight)
        q = SearchInput(
            text=text or None,
            negative=(negative or "").strip() or None,
            weights={"image": w, "text": 1 - w},
            k=int(k),
            rerank=rerank or "none",
            literal=literal,
        ).to_query(engine.fields, img, services.facets.get().filter(filters, price_min, price_max))
        return run(q, what + (" as typed" if literal else ""), request)

    def like(
        item_id: str,
        change: str,
        negative: str,
        filters: list[str],
        price_min: float | None,
        price_max: float | None,
        rerank: str,
        k: float,
        photo: int | None,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        if not item_id:
            raise gr.Error("Pick a result first.", print_exception=False)
        hit = engine.get(item_id)
        if hit is None:
            raise gr.Error("That product is no longer in the index; search again.", print_exception=False)
        title = html.escape(str(hit.payload.get("title") or item_id))
        change = (change or "").strip()
        what = f"*{title}* but “{html.escape(change)}”" if change else f"items like *{title}*"
        q = SearchInput(
            text=change or None,
            like=item_id,
            negative=(negative or "").strip() or None,
            k=int(k),
            rerank=rerank or "none",
            photo=int(photo) - 1 if photo and photo > 1 else None,  # numbered from 1 for shoppers
        ).to_query(engine.fields, also=services.facets.get().filter(filters, price_min, price_max))
        return run(q, what, request)

    def pick(rows: list[dict[str, Any]] | None, evt: gr.SelectData) -> tuple[Any, ...]:
        if not rows or evt.index is None or not 0 <= int(evt.index) < len(rows):
            return (gr.skip(),) * 6
        row = rows[int(evt.index)]
        # The row the browser holds names no server path: the picture is looked up here by id.
        item = engine.get(row["id"])
        shown = row.get("photo") or 0
        images = (item.payload.get("images") or []) if item else []
        pick_photo = gr.Number(value=shown + 1, maximum=max(len(images), 1), visible=len(images) > 1)
        big = view_photo(row["id"], shown + 1)
        return row["id"], gr.Column(visible=True), big, detail_markdown(row), gr.Markdown(visible=False), pick_photo

    def view_photo(item_id: str, number: float | None) -> Any:
        item = engine.get(item_id) if item_id else None
        photo = max(int(number or 1) - 1, 0)
        source = Hit(item_id, 0.0, item.payload, {}, photo=photo).photo_source() if item else None
        return services.thumbs.get(source, 512)

    def why(item_id: str, rows: list[dict[str, Any]] | None) -> Any:
        row = next((r for r in rows or [] if r["id"] == item_id), None)
        if row is None:
            raise gr.Error("Pick a result first.", print_exception=False)
        return gr.Markdown(explain_markdown(row["explanation"]), visible=True)

    filters_in = [filters, price_min, price_max, rerank, k]
    results = [gallery, status, hits, details, literal]
    gr.on(
        # Changing a filter re-runs the search at once, so shoppers see it narrow.
        [go.click, query.submit, image.upload, filters.input, price_min.release, price_max.release],
        friendly(search),
        inputs=[query, image, negative, weight, *filters_in, gr.State(False)],
        outputs=results,
        api_name="search",
        concurrency_id="search",
        scroll_to_output=True,
    )

    literal.click(
        friendly(search),
        inputs=[query, image, negative, weight, *filters_in, gr.State(True)],  # the words as typed
        outputs=results,
        api_name="search_as_typed",
        concurrency_id="search",
        scroll_to_output=True,
    )

    def more_like_this(
        item_id: str,
        negative: str,
        filters: list[str],
        price_min: float | None,
        price_max: float | None,
        rerank: str,
        k: float,
        photo: int | None,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        return like(item_id, "", negative, filters, price_min, price_max, rerank, k, photo, request)

    more.click(
        friendly(more_like_this),
        inputs=[selected, negative, *filters_in, photo],
        outputs=results,
        api_name="more_like_this",
        concurrency_id="search",
        scroll_to_output=True,
    )
    gr.on(
        [change.submit],
        friendly(like),
        inputs=[selected, change, negative, *filters_in, photo],
        outputs=results,
        api_name="like_this_but",
        concurrency_id="search",
        scroll_to_output=True,
    )
    gallery.select(
        friendly(pick),
        inputs=[hits],
        outputs=[selected, details, detail_image, detail, explanation, photo],
        api_visibility="private",
        scroll_to_output=True,
        concurrency_limit=None,
    )
    photo.input(
        friendly(view_photo), inputs=[selected, photo], outputs=[detail_image], api_visibility="private", queue=False
    )
    explain.click(
        friendly(why), inputs=[selected, hits], outputs=[explanation], api_visibility="private", concurrency_limit=None
    )
    clear.click(
        lambda: ("", None, "", [], [], EMPTY_HINT, [], gr.Column(visible=False), gr.Button(visible=False)),
        outputs=[query, image, negative, filters, gallery, status, hits, details, literal],
        api_visibility="private",
        queue=False,
    )
    return ShopView(services, filters, price_min, price_max, hits, selected, vary)
