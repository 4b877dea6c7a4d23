"""Index jobs for the REST API: ``index_catalog`` in a background thread, with progress and errors.

One job runs at a time per index; a second submit while one runs is refused (``JobConflict``,
HTTP 409) rather than queued, so a client always knows which catalog is being indexed and can
re-submit once it is done (unchanged items are skipped, so re-running is cheap).

The job writes into the search engine's own store with the engine's own models: an embedded store
can be opened by one handle only, and the index must keep the models its queries are encoded with.
Searches keep running while a job writes.

Each job's state is kept in memory and written to ``DATA_DIR/jobs/ID.json`` on every change (progress
at most once a second), so ``GET /jobs/ID`` survives a restart. A job that was queued or running when
the process died is reported as ``interrupted``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from indexer import Catalog, IndexManifest, IndexTarget, Models, Tagger, TagVocab, index_into, read_catalog
from indexer.files import atomic_write_text

from .engine import SearchEngine

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "done", "failed", "interrupted"]
ACTIVE = ("queued", "running")
JOBS_DIR = "jobs"
MAX_ERRORS_SHOWN = 100  # error rows kept on the job; the full list stays in its errors file
MAX_JOBS_KEPT = 200
_SAVE_EVERY_S = 1.0


class ServerPathError(ValueError):
    """A server-side path a client named that does not exist or is outside ``catalog_root``."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def resolve_server_path(value: str, root: Path | None, what: str = "catalog") -> Path:
    """The server file a client (REST ``POST /index``, the UI's server-path box) asked for, fenced to ``root``."""
    try:
        path = Path(value.strip()).expanduser()
        resolved = path.resolve()
        exists = path.exists()
    except (OSError, ValueError, RuntimeError):  # a NUL byte, an over-long name or a link loop is not a file here
        raise ServerPathError(f"{what} {value!r} is not a usable path", f"{what}_not_found") from None
    if root is not None and not resolved.is_relative_to(Path(root).expanduser().resolve()):
        raise ServerPathError(
            f"{what} {value!r} is outside {root}, the folder server-side catalogs must be in", "path_outside_root"
        )
    if not exists:
        raise ServerPathError(f"{what} {value!r} does not exist on the server", f"{what}_not_found")
    return path


class JobConflict(RuntimeError):
    """A job is already running on this index."""

    def __init__(self, running: Job) -> None:
        super().__init__(
            f"index job {running.id} is still {running.status} ({running.done}/{running.total} items); "
            f"wait for it to finish (GET /jobs/{running.id}) and submit again"
        )
        self.running = running


class _Stopped(Exception):
    """Raised inside the indexing loop when the runner is closed."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Job:
    """An index job. ``done``/``total``: catalog items processed; ``images_per_s`` and ``eta_s`` (seconds) are
    measured over the run so far; ``report``: the final IndexReport; ``errors``: the first failed items, of
    ``errors_total``, all of them in ``errors_path``."""

    id: str
    catalog: str
    prune: bool = False
    tags: str | None = None
    status: JobStatus = "queued"
    created: str = field(default_factory=_now)
    started: str | None = None
    finished: str | None = None
    done: int = 0
    total: int = 0
    images_per_s: float = 0.0
    eta_s: float | None = None
    report: dict[str, Any] | None = None
    error: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    errors_total: int = 0
    errors_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Job:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


class JobRunner:
    """Runs index jobs for one search engine, one at a time."""

    def __init__(self, engine: SearchEngine) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.dir = Path(self.settings.data_dir) / JOBS_DIR
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._jobs: dict[str, Job] = self._load()

    # -- public API -----------------------------------------------------------------------------

    def submit(self, catalog: str | Path, prune: bool = False, tags: str | Path | None = None) -> Job:
        """Read the catalog (and tag vocabulary) now, so bad input fails the request, then index it in the
        background. Raises CatalogError, TagVocabError or JobConflict."""
        with self._lock:
            running = self._active()
        if running is not None:
            raise JobConflict(running)
        items = read_catalog(catalog)
        vocab = TagVocab.load(Path(tags)) if tags else None
        with self._lock:
            running = self._active()
            if running is not None:  # another submit won the race while the catalog was read
                raise JobConflict(running)
            job = Job(id=uuid.uuid4().hex[:16], catalog=str(catalog), prune=prune, tags=str(tags) if tags else None)
            job.total = len(items.items)
            # Relative to the data dir: the data dir stays movable, and answers name no server path.
            job.errors_path = f"{JOBS_DIR}/{job.id}.errors.jsonl"
            self._jobs[job.id] = job
            self._save(job)
            self._thread = threading.Thread(
                target=self._run, args=(job, items, vocab), name=f"index-job-{job.id}", daemon=True
            )
            self._thread.start()
        self._forget_old()
        log.info("index job %s started on %s (%d items)", job.id, catalog, job.total)
        return self.get(job.id)  # type: ignore[return-value]

    def get(self, job_id: str) -> Job | None:
        """A snapshot of the job, safe to read while it runs."""
        with self._lock:
            job = self._jobs.get(job_id)
            return Job.from_dict(job.to_dict()) if job else None

    def recent(self, limit: int = 20) -> list[Job]:
        """The most recent jobs, newest first."""
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)[:limit]
            return [Job.from_dict(j.to_dict()) for j in jobs]

    def running(self) -> Job | None:
        with self._lock:
            job = self._active()
            return Job.from_dict(job.to_dict()) if job else None

    def wait(self, job_id: str, timeout: float | None = None) -> Job | None:
        """Block until the job is no longer active (or the timeout passes); return its state."""
        thread = self._thread
        job = self.get(job_id)
        if job is not None and job.status in ACTIVE and thread is not None:
            thread.join(timeout)
        return self.get(job_id)

    def close(self, timeout: float = 30.0) -> None:
        """Stop a running job between items and wait for it; it is reported as interrupted."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the job thread -------------------------------------------------------------------------

    def _run(self, job: Job, catalog: Catalog, vocab: TagVocab | None) -> None:
        engine = self.engine
        data_dir = Path(self.settings.data_dir)
        started = time.perf_counter()
        last_save = 0.0
        with self._lock:
            job.status, job.started = "running", _now()
            self._save(job)

        def progress(done: int, total: int) -> None:
            nonlocal last_save
            if self._stop.is_set():
                raise _Stopped()
            elapsed = time.perf_counter() - started
            with self._lock:
                job.done, job.total = done, total
                job.images_per_s = round(done / elapsed, 2) if elapsed > 0 else 0.0
                job.eta_s = round((total - done) / job.images_per_s, 1) if job.images_per_s > 0 else None
                if elapsed - last_save >= _SAVE_EVERY_S:
                    last_save = elapsed
                    self._save(job)

        try:
            existing = IndexManifest.load(data_dir)
            vocab = vocab or (existing.tag_vocab() if existing else None)
            models = Models(
                clip=engine.models.clip,
                text=engine.models.text,
                tagger=Tagger(vocab, engine.models.clip) if vocab else None,
            )
            store_spec = existing.store if existing else self.settings.store_spec()
            report = index_into(
                IndexTarget(data_dir, engine.store, store_spec, models),
                catalog,
                self.settings,
                self.errors_file(job),
                prune=job.prune,
                progress=progress,
            )
            engine.refresh(vocab)
            with self._lock:
                job.status, job.report = "done", {**report.to_dict(), "errors_path": job.errors_path}
                job.done, job.eta_s = report.total, 0.0
            log.info("index job %s done: %s", job.id, report.summary())
        except _Stopped:
            with self._lock:
                job.status, job.error = "interrupted", "stopped by a server shutdown; submit the catalog again"
        except Exception as exc:  # a failed job must be reported on the job, never lost in a thread
            log.exception("index job %s failed", job.id)
            with self._lock:
                job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            rows, count = _read_errors(self.errors_file(job))
            with self._lock:
                job.errors, job.errors_total, job.finished = rows, count, _now()
                self._save(job)

    # -- persistence ----------------------------------------------------------------------------

    def errors_file(self, job: Job) -> Path:
        """The job's full errors list on this server. Jobs saved by older versions recorded an absolute path,
        which this join keeps as it is."""
        return Path(self.settings.data_dir) / (job.errors_path or f"{JOBS_DIR}/{job.id}.errors.jsonl")

    def _active(self) -> Job | None:
        return next((j for j in self._jobs.values() if j.status in ACTIVE), None)

    def _save(self, job: Job) -> None:
        try:
            atomic_write_text(self.dir / f"{job.id}.json", json.dumps(job.to_dict(), indent=2, default=str))
        except OSError as exc:
            # The job itself is fine; only its restart-proof copy is missing.
            log.warning("cannot save job %s in %s: %s", job.id, self.dir, exc)

    def _load(self) -> dict[str, Job]:
        jobs: dict[str, Job] = {}
        if not self.dir.is_dir():
            return jobs
        for path in self.dir.glob("*.json"):
            try:
                job = Job.from_dict(json.loads(path.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("ignoring unreadable job file %s: %s", path, exc)
                continue
            if job.status in ACTIVE:
                job.status = "interrupted"
                job.error = "the server stopped while this job ran; submit the catalog again to finish it"
                job.errors, job.errors_total = _read_errors(self.errors_file(job))
                self._save(job)
            jobs[job.id] = job
        return jobs

    def _forget_old(self) -> None:
        with self._lock:
            done = sorted((j for j in self._jobs.values() if j.status not in ACTIVE), key=lambda j: j.created)
            old = done[: max(0, len(self._jobs) - MAX_JOBS_KEPT)]
            for job in old:
                del self._jobs[job.id]
        for job in old:
            (self.dir / f"{job.id}.json").unlink(missing_ok=True)
            self.errors_file(job).unlink(missing_ok=True)


def _read_errors(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The first MAX_ERRORS_SHOWN rows of an errors.jsonl file, and how many rows it has."""
    if not path.exists():
        return [], 0
    rows: list[dict[str, Any]] = []
    count = 0
    try:
        with open(path) as fh:
            for line in fh:
                if not line.strip():
                    continue
                count += 1
                if len(rows) < MAX_ERRORS_SHOWN:
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        rows.append({"error": line.strip()})
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
    return rows, count
