"""Time from query submit to results gallery rendered in a real browser, for the web UI.

Starts `lookalike ui` on 127.0.0.1 in its own process, drives Debian's Chromium with Playwright, and for N
distinct text queries measures, inside the page, from the click on Search until the status line names the query
and every result thumbnail has loaded. Prints p50/p95 next to the same queries through the REST API and the
engine's own time, so the UI's share (queue, thumbnails, transport, rendering) is visible. Timing resolution is a
few milliseconds (the page polls with setTimeout).

    python benchmarks/ui_latency.py [--data-dir DIR] [--queries 40] [--items 1000]

Without --data-dir a demo index is built in a temp dir: --items Fashion-MNIST products (the demo catalog) embedded
with a random-weight lookalike-mini CLIP and MiniLM; speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
WORDS = [
    ("red", "dress"), ("blue", "coat"), ("black", "sneaker"), ("green", "bag"), ("striped", "shirt"),
    ("white", "sandal"), ("grey", "trousers"), ("pink", "pullover"), ("brown", "boot"), ("yellow", "t-shirt"),
]  # fmt: skip

# Runs in the page: click Search, then poll until the gallery of this query is on screen with its images.
MEASURE_JS = """
async (q) => {
  const box = document.querySelector('#shop-query textarea');
  box.value = q;
  box.dispatchEvent(new Event('input', {bubbles: true}));
  await new Promise(r => setTimeout(r, 50));
  const want = `for “${q}”`;
  const t0 = performance.now();
  document.querySelector('#shop-search').click();
  for (;;) {
    const status = document.querySelector('#shop-status')?.innerText || '';
    const imgs = [...document.querySelectorAll('#shop-results img')];
    if (status.includes(want) && imgs.length && imgs.every(i => i.complete && i.naturalWidth > 0)) {
      return [performance.now() - t0, imgs.length];
    }
    if (performance.now() - t0 > 30000) return [-1, imgs.length];
    await new Promise(r => setTimeout(r, 1));
  }
}
"""


def build_demo_index(root: Path, items: int, model: str) -> Path:
    from indexer import (
        ImagePolicy,
        IndexManifest,
        IndexOptions,
        build_models,
        index_catalog,
        open_store,
        read_catalog,
        resolve_device,
    )
    from indexer.demo_catalog import DemoCatalogConfig, build_demo_catalog

    t0 = time.perf_counter()
    catalog = build_demo_catalog(root / "catalog", DemoCatalogConfig(items=items))
    data = root / "data"
    models = build_models(model, "st:all-MiniLM-L6-v2", resolve_device("cpu"))
    store_spec = f"edge:{data / 'store'}"
    store = open_store(store_spec)
    report = index_catalog(
        read_catalog(catalog), store, models, IndexOptions(batch_size=64), ImagePolicy(), data / "errors.jsonl"
    )
    store.close()
    IndexManifest(model, "st:all-MiniLM-L6-v2", store_spec, [], {"catalog": str(catalog)}).save(data)
    print(f"built a {items}-item demo index in {time.perf_counter() - t0:.1f}s ({report.summary()})")
    return data


@contextmanager
def lookalike_ui(data: Path) -> Iterator[str]:
    """``lookalike ui`` in its own process, as users run it (a server thread here would share our GIL)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LOOKALIKE_DEVICE": "cpu", "LOOKALIKE_LOG_LEVEL": "warning"}
    cmd = [sys.executable, "-c", "from ui.cli import main; main()", "ui", "--data-dir", str(data), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, cwd=Path(__file__).resolve().parents[1])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"lookalike ui did not start (exit code {proc.poll()})")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)


def summary(name: str, ms: list[float]) -> str:
    arr = np.array(ms)
    return (
        f"{name:<38} p50 {np.percentile(arr, 50):7.1f} ms   p95 {np.percentile(arr, 95):7.1f} ms   "
        f"mean {statistics.fmean(ms):7.1f} ms   (n={len(ms)})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, help="An existing index (default: build a demo index).")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--items", type=int, default=1000, help="Demo index size when no --data-dir is given.")
    ap.add_argument("--model", default="openclip:lookalike-mini/random", help="CLIP spec of a built demo index.")
    ap.add_argument("--k", type=int, default=24, help="Results per REST query (the UI's default page is 24).")
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    from ui.app import UI_PATH

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data_dir or build_demo_index(Path(tmp), args.items, args.model)
        queries = [f"{c} {k} {i}" for i in range(args.queries + args.warmup) for c, k in [WORDS[i % len(WORDS)]]]
        # Pass 2 asks the same queries with a full stop (same results, a status line the page can tell apart):
        # its thumbnails already exist, so the two passes split thumbnail making from the rest.
        passes = {"cold thumbnails": queries, "warm thumbnails": [f"{q}." for q in queries]}
        browser_ms: dict[str, list[float]] = {name: [] for name in passes}
        shown = []
        with lookalike_ui(data) as base, sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{base}{UI_PATH}/")
            page.wait_for_selector("#shop-query textarea")
            page.wait_for_function("document.querySelector('#lk-header')?.innerText.includes('indexed')")
            for name, texts in passes.items():
                for i, q in enumerate(texts):
                    ms, count = page.evaluate(MEASURE_JS, q)
                    if ms < 0:
                        raise SystemExit(f"query {q!r}: no gallery after 30 s")
                    if i >= args.warmup:
                        browser_ms[name].append(ms)
                        shown.append(count)
            browser.close()
            # The same queries through the REST API: its took_ms is the engine's own time in the server.
            rest_ms, engine_ms = [], []
            with httpx.Client(base_url=base, timeout=30) as client:
                for q in queries[args.warmup :]:
                    t0 = time.perf_counter()
                    reply = client.post("/search", json={"text": q, "k": args.k}).raise_for_status().json()
                    rest_ms.append((time.perf_counter() - t0) * 1000)
                    engine_ms.append(reply["took_ms"])
                count = client.get("/health").json()["items"]
        print(f"index: {count:,} items in {data}; {statistics.fmean(shown):.1f} results shown per query")
        for name, ms in browser_ms.items():
            print(summary(f"browser, {name}: submit -> gallery", ms))
        print(summary("REST POST /search round trip", rest_ms))
        print(summary("engine time inside /search", engine_ms))


if __name__ == "__main__":
    main()
