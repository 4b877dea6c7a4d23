"""The Ask tab (questions to a VLM about products or images) and the Create tab ("like this but different")."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from indexer import Filter, ImagePolicy
from indexer.images import decode_upload, load_image

from .app import friendly, product_gallery
from .app_shop import caption

if TYPE_CHECKING:
    from vlm import Answer

    from .app import Services
    from .app_shop import ShopView

MAX_VARIANTS_SHOWN = 4


@dataclass
class StudioView:
    status_box: Any
    status: Callable[[], str]


# -- Ask ----------------------------------------------------------------------------------------


def answer_markdown(answer: Answer, legend: dict[str, str]) -> str:
    """The answer, then what a reader should know about it: removed citations, "cannot tell", uncited claims."""
    lines = [html.escape(answer.answer)]
    if legend:
        lines += ["", " · ".join(f"[{k}] {html.escape(v)}" for k, v in legend.items())]
    notes = []
    if answer.invented_ids:
        notes.append("citations of products the model was not shown were removed: " + ", ".join(answer.invented_ids))
    if answer.cannot_tell:
        notes.append("the model says it cannot tell from what it was shown")
    if answer.uncited:
        notes.append(f"{len(answer.uncited)} statement(s) cite no image: treat them with care")
    if answer.images_missing:
        notes.append("no image could be shown for: " + ", ".join(answer.images_missing))
    lines += ["", *[f"- *{html.escape(n)}*" for n in notes]]
    lines += ["", f"<small>Answered by `{html.escape(answer.model)}` in {answer.latency_s:.1f} s</small>"]
    return "\n".join(lines)


def build_ask_tab(services: Services, shop: ShopView) -> StudioView:
    engine = services.engine
    backend = gr.Markdown(services.vlm_status(), elem_id="ask-backend")
    source = gr.Radio(
        [
            ("The whole catalog", "catalog"),
            ("Products I pick from the results", "results"),
            ("Images I upload", "upload"),
        ],
        value="catalog",
        label="Ask about",
        elem_id="ask-source",
    )
    picks = gr.CheckboxGroup(
        label="Results to ask about (search in the Shop tab first)", choices=[], visible=False, elem_id="ask-picks"
    )
    uploads = gr.File(label="Images", file_count="multiple", file_types=["image"], type="filepath", visible=False)
    k = gr.Slider(
        1,
        services.vlm_settings.vlm_max_images,
        value=min(6, services.vlm_settings.vlm_max_images),
        step=1,
        label="Products shown to the model",
    )
    question = gr.Textbox(
        label="Question", placeholder="Which of these would suit a rainy day, and why?", elem_id="ask-question"
    )
    go = gr.Button("Ask", variant="primary", elem_id="ask-go")
    answer_box = gr.Markdown(elem_id="ask-answer")
    cited = product_gallery("Cited", elem_id="ask-cited")

    def choose(kind: str) -> tuple[Any, Any, Any]:
        return (
            gr.update(visible=kind == "results"),
            gr.update(visible=kind == "upload"),
            gr.update(visible=kind == "catalog"),
        )

    def offer(rows: list[dict[str, Any]] | None) -> Any:
        choices = [(f"{r['payload'].get('title') or r['id']} ({r['id']})", r["id"]) for r in rows or []]
        return gr.CheckboxGroup(choices=choices, value=[])

    def ask(
        about: str, products: list[str], images: list[str] | None, question: str, k: float, request: gr.Request
    ) -> tuple[str, list]:
        from vlm import ask_catalog, ask_images

        if not (question or "").strip():
            raise gr.Error("Type a question first.", print_exception=False)
        services.count("vlm", request)
        vlm = services.vlm("Asking questions")
        if about == "catalog":
            answer = ask_catalog(vlm, engine, question, Filter(), k=int(k))
            shown = [(services.thumbs.get(s.thumbnail, 256), f"[{s.id}] {s.title}") for s in answer.citations]
            return answer_markdown(answer, {}), shown
        policy = ImagePolicy.from_settings(services.settings)
        if about == "results":
            hits = [h for h in (engine.get(i) for i in products or []) if h is not None]
            if not hits:
                raise gr.Error(
                    "Tick one or more results to ask about (search in the Shop tab first).", print_exception=False
                )
            sources = [str(h.payload.get("image") or "") for h in hits]
            labels = [f"{h.payload.get('title') or h.id} ({h.id})" for h in hits]
        else:
            if not images:
                raise gr.Error("Upload one or more images to ask about.", print_exception=False)
            sources, labels = list(images), [Path(f).name for f in images]
        pictures = [load_image(src, policy)[0] for src in sources]
        answer = ask_images(vlm, question, pictures, names=sources)
        legend = {str(i): label for i, label in enumerate(labels, start=1)}
        shown = [(services.thumbs.get(s.thumbnail, 256), f"[{s.id}] {legend.get(s.id, '')}") for s in answer.citations]
        return answer_markdown(answer, legend), shown

    source.change(choose, inputs=[source], outputs=[picks, uploads, k], api_visibility="private", queue=False)
    shop.hits.change(offer, inputs=[shop.hits], outputs=[picks], api_visibility="private", queue=False)
    gr.on(
        [go.click, question.submit],
        friendly(ask),
        inputs=[source, picks, uploads, question, k],
        outputs=[answer_box, cited],
        api_name="ask",
        concurrency_limit=services.settings.ui_heavy_concurrency,
        concurrency_id="vlm",
    )
    return StudioView(backend, services.vlm_status)


# -- Create -------------------------------------------------------------------------------------


def build_create_tab(services: Services, shop: ShopView, tabs: Any) -> StudioView:
    from generation import VariantCache, VaryRequest, vary

    engine = services.engine
    cap = min(MAX_VARIANTS_SHOWN, services.gen_settings.max_variants)
    backend = gr.Markdown(services.generator_status(), elem_id="create-backend")
    with gr.Row(equal_height=False):
        with gr.Column(min_width=260):
            item_id = gr.Textbox(
                label="Product id", placeholder="pick a result in Shop, then Create variants", elem_id="create-item"
            )
            photo = gr.Image(label="…or an image", type="filepath", sources=["upload", "clipboard"], height=170)
        with gr.Column(min_width=260):
            change = gr.Textbox(label="The change", placeholder="in navy blue leather", elem_id="create-change")
            with gr.Row():
                n = gr.Slider(1, cap, value=min(2, cap), step=1, label="Variants", min_width=140)
                seed = gr.Number(0, precision=0, minimum=0, label="Seed", min_width=100)
            go = gr.Button("Create", variant="primary", elem_id="create-go")
    note = gr.Markdown(elem_id="create-note")
    slots = []
    for i in range(cap):
        with gr.Row(visible=False, equal_height=False) as row:
            image = gr.Image(
                label=f"Variant {i + 1}", interactive=False, height=220, min_width=180, buttons=["download"]
            )
            with gr.Column(scale=2, min_width=240):
                scores = gr.Markdown()
                nearest = product_gallery("Nearest real products", columns=3)
        slots.append((row, image, scores, nearest))

    def create(
        product_id: str, image: str | None, change: str, n: float, seed: float | None, http: gr.Request
    ) -> list[Any]:
        services.count("generate", http)
        generator = services.generator()
        product_id = (product_id or "").strip()
        exclude = None
        if image:
            source = decode_upload(Path(image).read_bytes(), services.query_policy())
        elif product_id:
            hit = engine.get(product_id)
            if hit is None:
                raise gr.Error(f"No product with id “{html.escape(product_id)}” in the index.", print_exception=False)
            source, _ = load_image(str(hit.payload.get("image") or ""), ImagePolicy.from_settings(services.settings))
            exclude = product_id
        else:
            raise gr.Error("Give a product id (or pick a result in Shop), or upload an image.", print_exception=False)
        request = VaryRequest(image=source, text=(change or "").strip(), n=int(n), seed=int(seed or 0))
        searchable = engine if engine.store.schema() is not None and engine.store.count() else None
        result = vary(
            generator,
            request,
            engine=searchable,
            cache=VariantCache.from_settings(services.gen_settings),
            k=services.gen_settings.lookalikes,
            exclude_id=exclude,
        )
        cached = " (from the cache)" if result.cached else ""
        out: list[Any] = [
            f"{len(result.variants)} variant(s) of “{html.escape(result.text)}” in {result.seconds:.1f} s{cached}."
        ]
        for i, (_, *_rest) in enumerate(slots):
            if i >= len(result.variants):
                out += [gr.Row(visible=False), None, "", []]
                continue
            v = result.variants[i]
            if v.flagged:
                out += [gr.Row(visible=True), None, "Withheld by the safety checker.", []]
                continue
            if v.clip_text is None:
                text_ = "Not scored: the index is empty, so there is nothing to compare with."
            else:
                text_ = (
                    f"**CLIP match to the change:** {v.clip_text:.3f}  \n"
                    f"**Similarity to the source:** {v.source_similarity:.3f}  \nseed {v.seed}"
                )
            thumbs = services.thumbs.many([h.payload.get("image") for h in v.lookalikes], services.settings.ui_thumb_px)
            out += [
                gr.Row(visible=True),
                v.image,
                text_,
                [(t, caption(h)) for t, h in zip(thumbs, v.lookalikes, strict=True)],
            ]
        return out

    outputs = [note] + [c for slot in slots for c in slot]
    gr.on(
        [go.click, change.submit],
        friendly(create),
        inputs=[item_id, photo, change, n, seed],
        outputs=outputs,
        api_name="create",
        concurrency_limit=services.settings.ui_heavy_concurrency,
        concurrency_id="generate",
    )
    shop.vary.click(
        lambda i: (i, gr.Tabs(selected="create")),
        inputs=[shop.selected],
        outputs=[item_id, tabs],
        api_visibility="private",
        queue=False,
    )
    return StudioView(backend, services.generator_status)
