"""Bulk loads: when a load is big enough to defer the vector index, what it needs in RAM, and what to
say when memory runs out.

A load of at least ``optimize_threshold`` new items (``LOOKALIKE_OPTIMIZE_THRESHOLD``) is a bulk load.
Its payload indexes are created first, the store builds no HNSW graph while points arrive (searches
stay exact meanwhile, by brute force), and the graph is built once at the end. Building it as points
arrive would rebuild it again and again as segments grow and merge.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .store import ProgressFn, StoreError, StoreSchema

log = logging.getLogger(__name__)

ON_DISK_HINT = (
    "set LOOKALIKE_VECTORS_ON_DISK=true to keep the float32 vectors on disk (memory-mapped) and only their "
    "int8 copies in RAM; it applies to stores created with it, so index into a new --data-dir (or collection)"
)
# Per vector, besides the vector itself: its int8 copy is one byte a dimension, and the graph keeps
# 2 x m = 32 links of 4 bytes on its base layer (plus upper layers and bookkeeping).
_GRAPH_BYTES = 160
# Per point: the embedded store's id map, payload offsets and id tracker.
_POINT_BYTES = 300
_OOM_WORDS = ("out of memory", "cannot allocate memory", "os error 12", "memory allocation", "low on memory")


def is_bulk(pending: int, threshold: int) -> bool:
    """Whether a load of ``pending`` new items should defer the vector index (see the module doc)."""
    return threshold > 0 and pending >= threshold


def ram_needed(points: int, schema: StoreSchema, vectors_on_disk: bool) -> int:
    """Bytes of RAM a store of ``points`` points keeps resident once its graph is built, about."""
    dims = sum(schema.vectors.values())
    per_point = dims * (1 if vectors_on_disk else 5) + len(schema.vectors) * _GRAPH_BYTES + _POINT_BYTES
    return points * per_point


def warn_if_tight(points: int, schema: StoreSchema, vectors_on_disk: bool) -> None:
    """Log a warning, naming the on-disk option, when the store will not fit in the RAM free now."""
    try:
        import psutil
    except ImportError:  # psutil is not a dependency: without it there is no warning, nothing else
        return
    need, free = ram_needed(points, schema, vectors_on_disk), psutil.virtual_memory().available
    if need > 0.8 * free:
        log.warning(
            "a store of %d items needs about %.1f GB of RAM, and %.1f GB is free%s",
            points,
            need / 1e9,
            free / 1e9,
            "" if vectors_on_disk else f": {ON_DISK_HINT}",
        )


def looks_like_oom(exc: BaseException) -> bool:
    """MemoryError, or a store's or Ray's report of memory running out (Ray's memory monitor kills tasks)."""
    if isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__:
        return True
    return any(word in str(exc).lower() for word in _OOM_WORDS)


@contextmanager
def naming_the_on_disk_option(what: str) -> Iterator[None]:
    """Turn running out of memory during ``what`` into a StoreError that says what to change."""
    try:
        yield
    except Exception as exc:  # only memory running out is turned into another error; the rest pass as they are
        if not looks_like_oom(exc) or ON_DISK_HINT in str(exc):
            raise
        raise StoreError(
            f"out of memory during {what} ({type(exc).__name__}: {str(exc)[:200]}). To use less RAM, "
            f"{ON_DISK_HINT}. Items committed so far are kept; the re-run embeds only the rest."
        ) from exc


_BUILD_SCRIPT = """
import sys
import qdrant_edge as qe
shard = qe.EdgeShard.load(sys.argv[1])
shard.optimize()
shard.flush()
shard.close()
"""


def optimize_shard_in_child(path: Path, vectors: int, progress: ProgressFn, poll_s: float = 0.5) -> None:
    """Build a closed embedded shard's vector index in a child process, ticking ``progress`` meanwhile.

    qdrant-edge holds the GIL for the whole build (minutes at a million items), so no thread of this
    process could even redraw a progress bar; in a child, this process stays free to. The engine reports
    nothing while it builds, so ``progress`` hears (0, vectors) until the build is done, then
    (vectors, vectors)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-c", _BUILD_SCRIPT, str(path)], stderr=err)
        while True:
            progress(0, vectors)
            try:
                proc.wait(timeout=poll_s)
                break
            except subprocess.TimeoutExpired:
                continue
            except BaseException:
                proc.kill()  # interrupted: the shard must not be built behind the caller's back
                proc.wait()
                raise
        err.seek(0)
        detail = err.read().decode(errors="replace").strip().splitlines()[-1:] or [""]
    if proc.returncode == -signal.SIGKILL:
        raise StoreError(
            f"building the vector index of {path} was killed (most likely by the kernel, out of memory). "
            f"To use less RAM, {ON_DISK_HINT}. Every item is stored; the next `lookalike index` builds the index."
        )
    if proc.returncode != 0:
        raise StoreError(f"building the vector index of {path} failed: {detail[0]}")
    progress(vectors, vectors)
