"""VLM re-rank overhead for N = 10/20/50 candidates: wall time against the sum of the VLM call times.

Two backends, both offline:
- ``openai:`` against a local chat-completions server whose every reply takes ``--latency`` seconds
  (as a hosted model would); requests run concurrently, so the wall time should stay near one call.
- ``hf:`` against a tiny random LLaVA on this machine; chunks are batched into one ``generate``.

Run: ``python benchmarks/vlm_rerank.py [--latency 0.2] [--sizes 10 20 50]``. Figures only; no assertions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

# The offline stand-ins (tiny random models, a scripted chat server) live with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from PIL import Image  # noqa: E402
from support.vlm_doubles import Scripted, ScriptedChatServer, build_tiny_llava, request_texts  # noqa: E402

from indexer import resolve_device  # noqa: E402
from search import Hit, Query  # noqa: E402
from vlm import VLMReranker, VLMSettings, make_vlm  # noqa: E402


def candidates(root: Path, n: int) -> list[Hit]:
    root.mkdir(parents=True, exist_ok=True)
    hits = []
    for i in range(n):
        path = root / f"c{i:03d}.jpg"
        if not path.exists():
            Image.new("RGB", (256, 256), ((37 * i) % 256, (91 * i) % 256, 120)).save(path, quality=90)
        hits.append(Hit(f"c{i:03d}", 0.9 - i / 1000, {"title": f"product {i}", "image": str(path)}, {}))
    return hits


def timed_calls(vlm) -> list[float]:
    """Seconds spent in each backend call (one HTTP request, or one batched generate)."""
    durations: list[float] = []
    original = vlm._call

    def call(conversations, max_tokens):
        started = time.perf_counter()
        try:
            return original(conversations, max_tokens)
        finally:
            durations.append(time.perf_counter() - started)

    vlm._call = call
    return durations


def run(reranker: VLMReranker, hits: list[Hit], durations: list[float]) -> dict:
    durations.clear()
    started = time.perf_counter()
    out = reranker.rerank(Query(text="a red summer dress"), hits)
    wall = time.perf_counter() - started
    scored = sum("vlm_score" in h.explanation["rerank"] for h in out)
    return {"wall": wall, "calls": len(durations), "sum": sum(durations), "scored": scored}


def judge(latency: float):
    def respond(body):
        ids = re.findall(r"Candidate \[([^\]]+)\]", request_texts(body))
        scores = [{"id": i, "score": (hash(i) % 11), "reason": "looks close"} for i in ids]
        return Scripted(json.dumps({"scores": scores}), delay_s=latency)

    return respond


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2, help="Scripted seconds per HTTP reply.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--hf-max-tokens", type=int, default=64, help="Tokens generated per tiny-LLaVA reply.")
    args = parser.parse_args()
    logging.getLogger("vlm").setLevel(logging.ERROR)  # the tiny model's unreadable replies are expected here

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pools = {n: candidates(root / "images", n) for n in args.sizes}
        print(
            f"{'backend':<34} {'N':>3} {'calls':>5} {'scored':>6} {'wall s':>7} {'sum of calls s':>14} {'sum/wall':>8}"
        )

        def report(label: str, n: int, r: dict) -> None:
            ratio = r["sum"] / r["wall"] if r["wall"] else float("nan")
            print(
                f"{label:<34} {n:>3} {r['calls']:>5} {r['scored']:>6} {r['wall']:>7.3f} {r['sum']:>14.3f} {ratio:>8.2f}"
            )

        with ScriptedChatServer(responder=judge(args.latency)) as server:
            for chunk, label in ((8, "openai, 8 per request"), (1, "openai, 1 per request")):
                settings = VLMSettings(
                    data_dir=root / "data", vlm_cache=False, vlm_rerank_chunk=chunk, vlm_rerank_budget_s=60
                )
                vlm = make_vlm(f"openai:judge@{server.url}", settings)
                durations = timed_calls(vlm)
                reranker = VLMReranker(vlm, settings)
                run(reranker, pools[args.sizes[0]][:2], durations)  # warm the connection pool
                for n in args.sizes:
                    report(f"{label} (conc {settings.vlm_concurrency})", n, run(reranker, pools[n], durations))
                vlm.close()

        model = build_tiny_llava(root / "tiny-llava")
        device = resolve_device("cpu")
        for batch, label in ((8, "hf tiny LLaVA, batch 8"), (1, "hf tiny LLaVA, batch 1")):
            settings = VLMSettings(
                data_dir=root / "data",
                vlm_cache=False,
                vlm_batch_size=batch,
                vlm_rerank_budget_s=600,
                vlm_rerank_max_tokens=args.hf_max_tokens,
            )
            vlm = make_vlm(f"hf:{model}", settings, device)
            durations = timed_calls(vlm)
            reranker = VLMReranker(vlm, settings)
            run(reranker, pools[args.sizes[0]][:2], durations)  # load the weights outside the timing
            for n in args.sizes:
                report(label, n, run(reranker, pools[n], durations))
            vlm.close()
    print(
        f"\nopenai rows: each reply takes {args.latency:.2f}s; wall near one call means the requests overlapped."
        "\nhf rows: 'scored' is 0 because random weights write no JSON (the fallback path); the time is real."
    )


if __name__ == "__main__":
    main()
