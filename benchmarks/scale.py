"""The cost of a catalog at scale: load, build, memory, disk and search latency, per size and vector placement.

Synthetic catalogs of the real shapes: 512-d image and text vectors (ViT-B-32) and 384-d semantic vectors
(MiniLM), clustered by category and colour as product embeddings are (``--cluster-weight 0``: uniform
random unit vectors, the worst case for the graph), the BM25 channel's sparse vectors of each item's text
(``--no-lexical`` leaves it out), with payloads like the demo's. Each store is loaded as
``lookalike index`` loads a bulk catalog: payload indexes first, no vector index during the load, one
build at the end. Then it is searched through SearchEngine.search() as in search_latency.py: store side
p50/p95 for text, more-like-this, composed and filtered queries, and text end to end (CLIP ViT-B-32 and
MiniLM text encoders with random weights: real speed, no download).

Every (size, placement) runs in a child process of its own, so peak memory is that configuration's alone:
``in RAM`` keeps the float32 originals in RAM (memory-mapped and pre-loaded), ``on disk`` memory-maps them
and reads them on demand (LOOKALIKE_VECTORS_ON_DISK=true); both keep int8 copies in RAM. The parent samples
the child's resident memory every half second (the embedded engine holds the GIL while it builds, so the
child cannot sample itself): peak RSS, and the part of it that is anonymous memory (the rest is file pages
of the memory-mapped store, which the kernel can drop under pressure), and that peak for each phase:
the load, the graph build, and serving (the query models, the engine and the queries).

    python benchmarks/scale.py [--sizes 10000 100000] [--placements ram disk] [--queries 100] [--dir /big/disk]
    python benchmarks/scale.py --sizes 1000000 2000000     # the case study's sizes
    python benchmarks/scale.py --placements disk --memory-limit-gb 8    # as on a server with 8 GB
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # search_latency, beside this file

from search_latency import TimedStore, measure  # noqa: E402

from indexer import Record, StoreLayout, StoreSchema, build_models, open_store, resolve_device  # noqa: E402
from indexer.demo_catalog import BRANDS, CATEGORIES, COLOURS, PATTERNS  # noqa: E402
from indexer.lexical import LEXICAL, LexicalEncoder  # noqa: E402
from indexer.store import HASH_KEY, ID_KEY  # noqa: E402

DIMS = {"image": 512, "text": 512, "semantic": 384}
CLIP, TEXT = "openclip:ViT-B-32/random", "st:all-MiniLM-L6-v2"
KINDS = ("text", "image", "composed", "filtered")
FIELDS = {"category": "keyword", "colour": "keyword", "pattern": "keyword", "brand": "keyword", "in_stock": "keyword"}
TARGETS = (
    "targets (2M items, 2 cores): load + build <= 45 min, peak RSS <= 8 GB on disk, "
    "store p95 <= 20 ms, text e2e p95 <= 60 ms"
)
BATCH = 2000
# The child writes the part it is in (load, build, serve) here, beside its store.
PHASE_FILE = "phase"
# search_latency's queries filter on category "dress", and name "item-N" ids.
CATEGORY_NAMES = [c.name for c in CATEGORIES]


# -- the synthetic catalog ----------------------------------------------------------------------


def payload(i: int, rng: np.random.Generator) -> dict:
    category, colour = CATEGORY_NAMES[i % len(CATEGORY_NAMES)], COLOURS[i // 10 % len(COLOURS)]
    pattern, brand = PATTERNS[i // 100 % len(PATTERNS)], BRANDS[int(rng.integers(len(BRANDS)))]
    return {
        ID_KEY: f"item-{i}",
        HASH_KEY: f"{i:064x}",
        "title": f"{brand} {colour} {pattern} {category}",
        "description": f"A {colour} {category} with a {pattern} pattern, by {brand}. Made to last, easy to wear.",
        "image": f"images/item-{i}.jpg",
        "category": category,
        "colour": colour,
        "pattern": pattern,
        "brand": brand,
        "price": float(int(rng.integers(10, 200))) + 0.99,
        "in_stock": "true" if rng.random() < 0.85 else "false",
    }


def vectors(start: int, m: int, rng: np.random.Generator, centroids: dict, weight: float) -> dict[str, np.ndarray]:
    """Unit vectors near their item's category and colour centroids (``weight`` of the way), else random."""
    idx = np.arange(start, start + m)
    out = {}
    for name, d in DIMS.items():
        x = rng.standard_normal((m, d)).astype(np.float32) / np.sqrt(d)
        if weight:
            cat, col = centroids[name]
            x = (1 - weight) * x + weight * (cat[idx % len(cat)] + col[idx // 10 % len(col)]) / np.sqrt(2)
        out[name] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # as encoders give them
    return out


def lexical_vectors(items: list[dict], lexical: LexicalEncoder | None) -> dict[str, list]:
    """The BM25 channel's sparse vector of each item, made from its payload as the indexer makes it."""
    return {LEXICAL: [lexical.document(item) for item in items]} if lexical else {}


def fill(
    store, n: int, weight: float, lexical: LexicalEncoder | None, seed: int = 0, phase: Path | None = None
) -> tuple[float, float]:
    """Load ``n`` items as a bulk load does; (load seconds, build seconds). ``phase``: a file that says
    which part is running (load, build), for the parent's memory samples."""
    rng = np.random.default_rng(seed)
    centroids = {
        name: tuple(unit(rng.standard_normal((k, d)).astype(np.float32)) for k in (len(CATEGORY_NAMES), len(COLOURS)))
        for name, d in DIMS.items()
    }
    if phase is not None:
        phase.write_text("load")
    started = time.perf_counter()
    for key, kind in FIELDS.items():
        store.ensure_payload_index(key, kind)
    store.ensure_payload_index("price", "float")
    store.begin_bulk_load()
    for start in range(0, n, BATCH):
        m = min(BATCH, n - start)
        vecs = vectors(start, m, rng, centroids, weight)
        items = [payload(start + i, rng) for i in range(m)]
        sparse = lexical_vectors(items, lexical)
        rows = [{**{k: v[i] for k, v in vecs.items()}, **{k: v[i] for k, v in sparse.items()}} for i in range(m)]
        store.upsert([Record(item[ID_KEY], item, row) for item, row in zip(items, rows, strict=True)])
    loaded = time.perf_counter()
    if phase is not None:
        phase.write_text("build")
    store.optimize()
    return loaded - started, time.perf_counter() - loaded


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def disk_bytes(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (preallocated, sparse files count what they really use)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


# -- one configuration, in a child process ------------------------------------------------------


def run_child(args: argparse.Namespace) -> None:
    from search import SearchEngine, SearchSettings

    root = Path(args.root)
    on_disk = args.placement == "disk"
    spec = f"edge:{root / 'store'}" if args.store == "edge" else args.store
    store = open_store(spec) if spec.startswith("edge:") else qdrant_store(spec, args.size, args.placement)
    lexical = None if args.no_lexical else LexicalEncoder()
    sparse = {LEXICAL: lexical.model_id} if lexical else {}
    schema = StoreSchema(DIMS, {k: "synthetic" for k in DIMS}, sparse=sparse)
    store.ensure_schema(schema, StoreLayout(vectors_on_disk=on_disk))
    load_s, build_s = fill(store, args.size, args.cluster_weight, lexical, phase=root / PHASE_FILE)
    (root / PHASE_FILE).write_text("serve")  # from here: the query models, the engine, the queries
    result = {"load_s": load_s, "build_s": build_s, "disk": disk_bytes(root) if spec.startswith("edge:") else None}
    result["hwm_build"] = vm_status(os.getpid()).get("VmHWM", 0)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    models = build_models(CLIP, TEXT, resolve_device("cpu"))
    timed = TimedStore(store)
    (root / "engine").mkdir(exist_ok=True)
    engine = SearchEngine(SearchSettings(data_dir=root / "engine"), store=timed, models=models)
    gc.collect()
    gc.freeze()  # as `lookalike serve` does once loaded: full collections never walk the models and index
    engine.calibration()  # fitted once per index and cached; not part of a query
    result["latency"] = measure(engine, timed, args.queries)
    Path(args.out).write_text(json.dumps(result))
    store.close()


def qdrant_store(spec: str, size: int, placement: str):
    from indexer.store_qdrant import QdrantOptions, QdrantStore

    url = spec.removeprefix("qdrant:")
    return QdrantStore(url, collection=f"scale-{size}-{placement}", options=QdrantOptions(optimize_wait_s=7200))


def vm_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile and RssShmem of a process, in bytes (Linux)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def run_config(args: argparse.Namespace, size: int, placement: str) -> dict:
    """One (size, placement) in a child; its resident memory sampled from here meanwhile."""
    with tempfile.TemporaryDirectory(dir=args.dir, prefix=f"scale-{size}-{placement}-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--child", "--size", str(size), "--placement", placement, "--root", tmp]
        cmd += ["--out", str(out), "--queries", str(args.queries), "--cluster-weight", str(args.cluster_weight)]
        cmd += ["--store", args.store, "--threads", str(args.threads)] + (["--no-lexical"] if args.no_lexical else [])
        proc = subprocess.Popen(cmd)
        limit = None
        try:
            limit = MemoryLimit(proc.pid, args.memory_limit_gb) if args.memory_limit_gb else None
            peak, by_phase, loads = watch(proc, Path(tmp) / PHASE_FILE)
        finally:
            # Interrupted (Ctrl-C): the child goes too, and with it the cgroup and the temp store.
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            limited = limit.close() if limit else {}
        if proc.returncode != 0:
            return {"error": f"exit {proc.returncode}", "anon_by_phase": by_phase, **limited}
        result = json.loads(out.read_text())
    # The machine's load average while it ran: more than the cores means other work shared them.
    load = float(np.mean(loads)) if loads else 0.0
    figures = {"peak_rss": peak["VmRSS"], "peak_anon": peak["RssAnon"], "anon_by_phase": by_phase, "load": load}
    return {**result, **figures, **limited}


def watch(proc: subprocess.Popen, phase_file: Path) -> tuple[dict[str, int], dict[str, int], list[float]]:
    """Until ``proc`` exits: its peak RSS and anonymous memory, the peak anonymous memory of each
    phase it names in ``phase_file``, and the machine's load average, sampled every half second."""
    peak = {"VmRSS": 0, "RssAnon": 0}
    by_phase: dict[str, int] = {}
    loads = []
    while proc.poll() is None:
        status = vm_status(proc.pid)
        peak = {k: max(v, status.get(k, 0)) for k, v in peak.items()}
        try:
            phase = phase_file.read_text()
        except OSError:
            phase = "start"
        by_phase[phase] = max(by_phase.get(phase, 0), status.get("RssAnon", 0))
        loads.append(os.getloadavg()[0])
        time.sleep(0.5)
    return peak, by_phase, loads


class MemoryLimit:
    """A memory cgroup holding one process, limited to ``gb``: the machine an 8 GB server is, page cache
    included (the kernel reclaims the store's file pages to stay inside it, or kills the process).
    Linux, as root, cgroup v2 or v1."""

    def __init__(self, pid: int, gb: float) -> None:
        v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
        base = Path("/sys/fs/cgroup") if v2 else Path("/sys/fs/cgroup/memory")
        self.path, self.v2 = base / f"lookalike-scale-{pid}", v2
        self.path.mkdir()
        (self.path / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(str(int(gb * 1e9)))
        (self.path / "cgroup.procs").write_text(str(pid))

    def close(self) -> dict:
        """The group's peak memory (resident + page cache) and how often it met the limit; then removed."""
        if self.v2:
            peak = int((self.path / "memory.peak").read_text())
            events = dict(line.split() for line in (self.path / "memory.events").read_text().splitlines())
            hits = int(events.get("max", 0))
        else:
            peak = int((self.path / "memory.max_usage_in_bytes").read_text())
            hits = int((self.path / "memory.failcnt").read_text())
        self.path.rmdir()
        return {"cgroup_peak": peak, "limit_hits": hits}


# -- the report ---------------------------------------------------------------------------------


def report(size: int, placement: str, r: dict) -> list[str]:
    notes = []
    if "cgroup_peak" in r:
        peak, hits = r["cgroup_peak"] / 1e9, r["limit_hits"]
        notes.append(f"{'':>19} memory cgroup: peak {peak:.2f} GB with page cache, limit met {hits}x")
    if r.get("anon_by_phase"):
        phases = ", ".join(f"{k} {v / 1e9:.2f}" for k, v in r["anon_by_phase"].items())
        notes.append(f"{'':>19} peak anonymous memory by phase, GB: {phases}")
    if "error" in r:
        return [f"{size:>10,} {placement:<8} failed ({r['error']})", *notes]
    lat = r["latency"]
    disk = f"{r['disk'] / 1e9:6.2f}" if r["disk"] is not None else "     -"
    head = (
        f"{size:>10,} {placement:<8} {r['load_s']:8.1f} {r['build_s']:8.1f} "
        f"{r['peak_rss'] / 1e9:6.2f} {r['peak_anon'] / 1e9:6.2f} {disk}"
    )
    cells = " ".join(f"{lat[k][0][0]:5.1f}/{lat[k][0][1]:5.1f}" for k in KINDS)
    return [f"{head}  {cells}  {lat['text'][1][0]:5.1f}/{lat['text'][1][1]:5.1f}  {r['load']:4.1f}", *notes]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--placements", nargs="+", choices=["ram", "disk"], default=["ram", "disk"])
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--cluster-weight", type=float, default=0.5, help="0: uniform random vectors.")
    ap.add_argument("--no-lexical", action="store_true", help="Leave the BM25 channel out.")
    ap.add_argument("--store", default="edge", help="edge, or qdrant:http://HOST:6333 for a server or cluster.")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="Torch threads for the query encoders (0: torch's default). On a machine other work shares, "
        "use 1: with 2 threads each parallel region waits for a descheduled thread (10-20x slower).",
    )
    ap.add_argument("--dir", default=None, help="Where the stores are built (9 GB per million items at 100k).")
    ap.add_argument("--json", default=None, help="Also write every figure to this file.")
    ap.add_argument(
        "--memory-limit-gb",
        type=float,
        default=0,
        help="Run each configuration inside a memory cgroup of this size (page cache included; Linux, root).",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--placement", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_child(args)
        return
    print(
        f"vectors {DIMS}, cluster weight {args.cluster_weight}, {args.queries} queries per kind, "
        f"store {args.store}, torch threads {args.threads or 'default'}"
    )
    print(f"BM25 channel: {'left out' if args.no_lexical else 'in the store and in text queries'}")
    print(TARGETS)
    if args.memory_limit_gb:
        print(f"each configuration runs in a {args.memory_limit_gb:g} GB memory cgroup (resident + page cache)")
    print(
        f"{'items':>10} {'vectors':<8} {'load s':>8} {'build s':>8} {'RSS GB':>6} {'anon':>6} {'disk':>6}  "
        + " ".join(f"{k:>11}" for k in ("text", "like", "composed", "filtered"))
        + "  text e2e  load  (store p50/p95 ms; e2e p50/p95 ms; mean load average)"
    )
    figures = []
    for size in args.sizes:
        for placement in args.placements:
            result = run_config(args, size, placement)
            figures.append({"items": size, "placement": placement, **result})
            print("\n".join(report(size, placement, result)), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
