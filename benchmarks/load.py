"""Load test: 20 concurrent shoppers against `lookalike serve`, first alone, then while an index job adds items.

Loopback only, bounded in time and count. The server runs on a copy of the index (its data dir and the
model folder beside it), so the original is never changed. Each shopper runs mixed searches (text, more
like this, composed, filtered, photo uploads) one after another, as fast as answers come (or pausing
``--think-s`` on average between them, as people do), and sends its own bearer id so per-client rate
limits apply to each shopper as they would to real ones.

Reports, per phase and query kind: requests, requests/s, p50/p95/p99 latency and errors; then whether the
index job's counts were exact and every added item can be found.

Run after `make demo`: ``python benchmarks/load.py [--data-dir demo-data/index] [--shoppers 20] [--seconds 60]
[--add 2000] [--think-s 0]``. Figures only; no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

KINDS = ("text", "more like this", "composed", "filtered", "upload")
WORDS = ("dress", "sneaker", "bag", "coat", "shirt", "trouser", "sandal", "pullover", "ankle boot", "t-shirt")
COLOURS = ("red", "blue", "green", "black", "white", "yellow", "pink", "grey", "navy", "orange")


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def row(self, kind: str, seconds: float) -> str:
        ms = np.array(self.latencies[kind]) * 1000
        if not len(ms):
            return f"| {kind} | 0 | 0 | - | - | - | {len(self.errors[kind])} |"
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        errors = len(self.errors[kind])
        return f"| {kind} | {len(ms)} | {len(ms) / seconds:.1f} | {p50:.0f} | {p95:.0f} | {p99:.0f} | {errors} |"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def copy_index(data_dir: Path, into: Path) -> Path:
    """The data dir and its parent's other folders (the model it names as ../models/...), minus catalogs."""
    for sibling in data_dir.parent.iterdir():
        if sibling == data_dir or (sibling.is_dir() and sibling.name == "models"):
            shutil.copytree(sibling, into / sibling.name, ignore=shutil.ignore_patterns("ui-thumbs", "vlm-cache"))
    return into / data_dir.name


@dataclass(frozen=True)
class Plan:
    """Who shops: how many, for how long, pausing ``think_s`` on average between a search and the next
    (0: the next search as soon as an answer comes), starting from these catalog ids and photos."""

    shoppers: int
    seconds: float
    think_s: float
    ids: list[str]
    photos: list[bytes]


async def shopper(client: httpx.AsyncClient, n: int, plan: Plan, until: float, tally: Tally):
    rng = random.Random(n)
    headers = {"Authorization": f"Bearer shopper-{n}"}
    ids, photos = plan.ids, plan.photos
    while time.monotonic() < until:
        if plan.think_s > 0:
            await asyncio.sleep(rng.expovariate(1 / plan.think_s))
        kind = rng.choice(KINDS)
        word, colour = rng.choice(WORDS), rng.choice(COLOURS)
        if kind == "text":
            request = client.post("/search", json={"text": f"{colour} {word}"}, headers=headers)
        elif kind == "more like this":
            request = client.get(f"/items/{rng.choice(ids)}/similar", headers=headers)
        elif kind == "composed":
            request = client.post("/search", json={"like": rng.choice(ids), "text": f"in {colour}"}, headers=headers)
        elif kind == "filtered":
            body = {"text": word, "filters": [f"colour={colour}", "price<80"]}
            request = client.post("/search", json=body, headers=headers)
        else:
            files = {"image": ("q.png", rng.choice(photos), "image/png")}
            request = client.post("/search", files=files, headers=headers)
        started = time.monotonic()
        try:
            r = await request
            if r.status_code != 200:
                tally.errors[kind].append(f"{r.status_code}: {r.text[:120]}")
                continue
        except httpx.HTTPError as exc:
            tally.errors[kind].append(f"{type(exc).__name__}: {exc!r} after {time.monotonic() - started:.1f} s")
            continue
        tally.latencies[kind].append(time.monotonic() - started)


async def phase(url: str, plan: Plan, seconds: float) -> Tally:
    tally = Tally()
    limits = httpx.Limits(max_connections=plan.shoppers, max_keepalive_connections=plan.shoppers)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        until = time.monotonic() + seconds
        await asyncio.gather(*(shopper(client, n, plan, until, tally) for n in range(plan.shoppers)))
    return tally


def table(title: str, tally: Tally, seconds: float) -> str:
    total = sum(len(v) for v in tally.latencies.values())
    errors = sum(len(v) for v in tally.errors.values())
    lines = [
        f"\n{title}: {total} requests in {seconds:.0f} s ({total / seconds:.1f}/s), {errors} errors",
        "| kind | requests | req/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [tally.row(kind, seconds) for kind in KINDS]
    for kind, messages in tally.errors.items():
        lines += [f"  {kind}: {m}" for m in sorted(set(messages))[:3]]
    return "\n".join(lines)


def sample(url: str, n: int) -> tuple[list[str], list[bytes]]:
    """Catalog ids to start from, and product photos to upload (fetched through the API, as a client would)."""
    ids: list[str] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for word in WORDS:
            hits = client.post("/search", json={"text": word, "k": n // len(WORDS) + 1}).json()["hits"]
            ids += [h["id"] for h in hits]
        photos = [client.get(f"/items/{i}/image").content for i in ids[:20]]
    return ids, photos


def run_job(url: str, catalog: Path, plan: Plan) -> tuple[Tally, float, dict]:
    """Start the index job, keep the shoppers going until it ends (at least ``seconds``), return both."""
    with httpx.Client(base_url=url, timeout=60) as client:
        job_id = client.post("/index", json={"catalog": str(catalog)}).raise_for_status().json()["job_id"]
    started = time.monotonic()
    tally = Tally()

    async def shop_while_indexing() -> dict:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            job: dict = {}
            while True:
                chunk = await phase(url, plan, 10.0)
                for kind in KINDS:
                    tally.latencies[kind] += chunk.latencies[kind]
                    tally.errors[kind] += chunk.errors[kind]
                job = (await client.get(f"/jobs/{job_id}")).json()
                print(f"  job {job['status']}: {job['done']}/{job['total']}", file=sys.stderr)
                if job["status"] not in ("queued", "running") and time.monotonic() - started >= plan.seconds:
                    return job
                if time.monotonic() - started > 3600:
                    return job  # bounded: never more than an hour

    job = asyncio.run(shop_while_indexing())
    return tally, time.monotonic() - started, job


def check_added(url: str, catalog: Path) -> str:
    added = [json.loads(line)["id"] for line in catalog.read_text().splitlines() if line.strip()]
    with httpx.Client(base_url=url, timeout=30) as client:
        missing = [i for i in added if client.get(f"/items/{i}").status_code != 200]
        found = sum(bool(client.get(f"/items/{i}/similar", params={"k": 3}).json()["hits"]) for i in added[:50])
    return f"{len(added) - len(missing)}/{len(added)} added items retrievable; 'more like this' answers for {found}/50"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("demo-data/index"))
    parser.add_argument("--shoppers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--add", type=int, default=2000, help="Items the index job adds (new ids).")
    parser.add_argument(
        "--think-s", type=float, default=0.0, help="Mean pause between a shopper's searches (0: none, a stress test)."
    )
    args = parser.parse_args()
    if not (args.data_dir / "index.json").exists():
        sys.exit(f"no index in {args.data_dir}: run `make demo` first, or pass --data-dir")
    cli = [sys.executable, "-m", "ui.cli"]
    with tempfile.TemporaryDirectory(prefix="lookalike-load-") as tmp:
        root = Path(tmp)
        data = copy_index(args.data_dir.resolve(), root)
        catalog_dir = root / "added"
        subprocess.run([*cli, "demo-catalog", str(catalog_dir), "--items", str(args.add), "--split", "train",
                        "--seed", "7", "-q"], check=True)  # fmt: skip
        port = free_port()
        env = {**os.environ, "LOOKALIKE_LOG_LEVEL": os.environ.get("LOOKALIKE_LOG_LEVEL", "warning")}
        server = subprocess.Popen([*cli, "serve", "--no-ui", "--data-dir", str(data), "--port", str(port)], env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("the server did not start")
                time.sleep(0.2)
            ids, photos = sample(url, 200)
            plan = Plan(args.shoppers, args.seconds, args.think_s, ids, photos)
            asyncio.run(phase(url, Plan(2, 5.0, 0.0, ids, photos), 5.0))  # warm-up: calibration, first encodes
            alone = asyncio.run(phase(url, plan, plan.seconds))
            who = f"{plan.shoppers} shoppers (think {plan.think_s:g} s)"
            print(table(f"{who} alone", alone, plan.seconds))
            during, seconds, job = run_job(url, catalog_dir / "catalog.jsonl", plan)
            print(table(f"{who} while indexing {args.add} items", during, seconds))
            report = job.get("report") or {}
            print(f"\nindex job: {job['status']}; {json.dumps({k: report.get(k) for k in ('new', 'failed', 'total')})}")
            print(check_added(url, catalog_dir / "catalog.jsonl"))
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
