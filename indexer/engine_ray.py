"""The ray engine: the pipeline's stages on Ray Data, spread over a cluster's CPUs and GPUs.

    driver: catalog rows + stored hashes -> [CPU tasks] read, hash, skip, decode, preprocess
            -> [encoder actors, one per GPU] encode -> [writer actors] upsert (``qdrant:``)
            -> driver: count outcomes, errors file, progress; upsert here (``edge:``)

The stages are the local engine's own (:mod:`indexer.pipeline`), so the incremental rule, the vectors,
the errors file and the report are the same. Each row carries its stored hash from the driver, so a task
skips an unchanged item after hashing it, and only new or changed items reach an encoder. Every written
block is committed before its outcome reaches the driver, so a killed run loses nothing committed.
An ``edge:`` store has one writer, the driver: only one process may open it, and the driver holds it.
Ray retries a dead worker's tasks (actors are restarted); items whose outcome never comes back are
reported in the errors file, never dropped.
"""

from __future__ import annotations

import copy
import logging
import math
import pickle
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
from PIL import Image

from . import bulk
from .catalog import Catalog, CatalogItem
from .encoders import EncoderError, resolve_device
from .engines import EngineError, RayOptions, WorkerSpec
from .images import ImagePolicy
from .pipeline import (
    IndexOptions,
    IndexReport,
    Models,
    RunLog,
    begin_load,
    build_records,
    encode_batch,
    fill_missing_lexical,
    finish_index,
    keeps_photos,
    open_index,
)
from .prepare import Failed, ItemPrep, Ready, Skipped, prepare_item
from .store import ProgressFn, Record, VectorStore, open_store

log = logging.getLogger(__name__)

_READY, _SKIPPED, _FAILED = "ready", "skipped", "failed"
# Model loading bars from every worker would be relayed into the driver's progress bar.
_WORKER_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}
_BLOCKS = 2000  # input blocks for a large catalog: enough to spread, few enough to plan quickly


@dataclass(frozen=True)
class _Plan:
    """How wide this run goes on this cluster."""

    encoders: int
    gpus_per_encoder: float
    encoder_cpus: float
    writers: int  # 0: the driver writes
    writer_cpus: float


def index_catalog_ray(
    catalog: Catalog,
    store: VectorStore,
    models: Models,
    options: IndexOptions,
    policy: ImagePolicy,
    errors_path: Any,
    progress: ProgressFn | None = None,
    *,
    build_progress: ProgressFn | None = None,
    workers: WorkerSpec,
    ray_options: RayOptions,
) -> IndexReport:
    """:func:`indexer.pipeline.index_catalog` on Ray: same arguments, same report; ``workers`` says what
    each worker rebuilds the models (and a ``qdrant:`` store) from."""
    ray = connect(ray_options)
    started = time.perf_counter()
    report = IndexReport(total=len(catalog.items), errors_path=str(errors_path))
    stored, marks = open_index(store, models, catalog, options)
    fill_missing_lexical(store, models, report)
    photos = keeps_photos(store)
    # The encoders hold no store to read kept photo vectors from: a changed product's photos are all embedded.
    prep = ItemPrep(policy, models.key(), models.clip.image_size, image_transform(models.clip), photos, reuse=False)
    plan = _plan(ray, ray_options, workers)
    log.info("ray engine: %s", plan)
    with bulk.naming_the_on_disk_option(f"the load of {catalog.path}"):
        is_bulk = begin_load(store, catalog, stored, store.schema() or models.schema(photos), options)
        with RunLog.open(errors_path, report, stored) as run:
            if catalog.items:
                dataset = _dataset(ray, catalog, (stored, marks), prep, workers, options, plan)
                _drain(dataset, catalog, None if plan.writers else store, run, progress)
        finish_index(store, catalog, stored, options, report, is_bulk, build_progress)
    report.seconds = time.perf_counter() - started
    return report


# -- cluster ------------------------------------------------------------------------------------


def connect(options: RayOptions) -> Any:
    """Ray, initialised: this process's own instance if it has one, else the cluster at
    ``options.address`` (checked to answer within ``connect_timeout_s``), else a new local one."""
    try:
        import ray
    except ImportError as exc:
        raise EngineError("the ray engine needs Ray: pip install 'lookalike[ray]'") from exc
    address = options.address
    check_address(address, options.connect_timeout_s)
    if ray.is_initialized():
        return ray
    try:
        # A new local instance needs no dashboard; an existing cluster refuses the option.
        extra = {} if address else {"include_dashboard": False}
        ray.init(address=address, logging_level=logging.WARNING, runtime_env={"env_vars": _WORKER_ENV}, **extra)
    except Exception as exc:  # ray raises ConnectionError, RuntimeError, ValueError for a bad cluster
        raise EngineError(f"cannot join the Ray cluster at {address or 'a new local instance'}: {exc}") from exc
    return ray


def check_address(address: str | None, timeout_s: float = 5.0) -> None:
    """Raise EngineError, saying what to do, unless something listens at a cluster ``address`` (none and
    ``auto`` need no check). ray.init would wait a long while where nothing does."""
    if not address or address == "auto":
        return
    if address.startswith("ray://"):
        raise EngineError(
            f"--ray-address {address}: Ray Data cannot run through Ray Client (ray://). Run lookalike on a "
            "node of the cluster with --ray-address auto or HOST:6379; `ray start --address=HOST:6379 "
            "--num-cpus=0 --num-gpus=0` makes any machine such a node without giving the cluster its CPUs."
        )
    try:
        url = urlsplit(f"ray-gcs://{address}")
        host, port = url.hostname, url.port or 6379
    except ValueError:
        host = None
    if not host:
        raise EngineError(f"--ray-address {address!r}: expected auto or HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise EngineError(
            f"no Ray cluster answers at {address} ({exc}). Start one (`ray start --head`), check the address "
            "(the head's GCS port, 6379 by default), or leave --ray-address out for a local Ray."
        ) from None


def _plan(ray: Any, options: RayOptions, workers: WorkerSpec) -> _Plan:
    gpus = float(ray.cluster_resources().get("GPU", 0))
    per = options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if gpus >= 1 else 0.0)
    if per > 0 and gpus < per:
        raise EngineError(f"each encoder worker asks for {per} GPU, and the Ray cluster has {gpus:g}")
    encoders = options.workers or (max(1, math.floor(gpus / per)) if per > 0 else 1)
    writers = options.writers if workers.store.startswith("qdrant:") else 0
    # An encoder on a GPU needs a core to feed it; on CPUs it takes a fraction, so decode tasks still run.
    cpus = 1.0 if per > 0 else options.encoder_cpus
    return _Plan(encoders, per, cpus, writers, options.writer_cpus)


# -- the dataset --------------------------------------------------------------------------------


def _dataset(ray, catalog, known, prep, workers, options, plan):
    """Catalog rows -> prepared (CPU tasks) -> encoded (actors) [-> written (actors)]: lazy, streamed."""
    import pyarrow as pa
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # the caller draws the one bar, as with the local engine
    if not log.isEnabledFor(logging.INFO):
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its plan and timing lines would break the bar
    items = catalog.items
    stored, marks = known
    block = max(options.batch_size, math.ceil(len(items) / _BLOCKS))
    tables = [
        pa.table(
            {
                "index": pa.array(range(s, min(s + block, len(items))), pa.int64()),
                "item": pa.array([pickle.dumps(i) for i in items[s : s + block]], pa.binary()),
                "stored": pa.array([stored.get(i.id) or "" for i in items[s : s + block]], pa.string()),
                "photos": pa.array([pickle.dumps(marks.get(i.id)) for i in items[s : s + block]], pa.binary()),
            }
        )
        for s in range(0, len(items), block)
    ]
    dataset = ray.data.from_arrow(tables).map_batches(
        _prepare_batch, batch_size=options.batch_size, batch_format="numpy", fn_kwargs={"prep": prep}
    )
    dataset = dataset.map_batches(
        EncodeStage,
        batch_size=options.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=plan.encoders),
        num_gpus=plan.gpus_per_encoder or None,
        num_cpus=plan.encoder_cpus,
        fn_constructor_kwargs={"spec": workers},
    )
    if plan.writers:
        dataset = dataset.map_batches(
            WriteStage,
            batch_size=options.batch_size * 4,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=plan.writers),
            num_cpus=plan.writer_cpus,
            fn_constructor_kwargs={"spec": workers},
        )
    return dataset


def _prepare_batch(batch: dict[str, np.ndarray], prep: ItemPrep) -> dict[str, np.ndarray]:
    """The read-hash-skip-decode-preprocess stage, as a Ray task over one batch of catalog rows."""
    out: dict[str, Any] = {k: [] for k in ("id", "item", "status", "digest", "prepared", "reason", "error")}
    for blob, stored, marks in zip(batch["item"], batch["stored"], batch["photos"], strict=True):
        item: CatalogItem = pickle.loads(blob)
        result = prepare_item(item, stored or None, prep, pickle.loads(marks))
        ready = isinstance(result, Ready)
        out["id"].append(item.id)
        out["item"].append(blob)
        out["status"].append(_READY if ready else _SKIPPED if isinstance(result, Skipped) else _FAILED)
        out["digest"].append(result.digest if ready else "")
        # Ready: its photos' pixels, for the encoders; Skipped: the photos still bad, for the errors file.
        out["prepared"].append(pickle.dumps(result) if not isinstance(result, Failed) else b"")
        out["reason"].append(result.reason if isinstance(result, Failed) else "")
        out["error"].append(result.error if isinstance(result, Failed) else "")
    return {"index": batch["index"], **{k: np.array(v, dtype=object) for k, v in out.items()}}


class EncodeStage:
    """The encode stage as a Ray actor: the models are loaded once per actor, on its own device."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self._models: Models | None = None

    @property
    def models(self) -> Models:
        # Loaded on the first item to encode: a re-run where nothing changed loads no model.
        if self._models is None:
            from .manifest import build_models

            spec = self.spec
            device = resolve_device(spec.device, spec.dtype)
            self._models = build_models(spec.clip_model, spec.text_model, device, spec.tags, spec.encoder_options)
        return self._models

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [i for i, status in enumerate(batch["status"]) if status == _READY]
        encoded: list[bytes] = [b""] * len(batch["status"])
        # The pixels stay behind; the photos that failed go on, for the errors file.
        after = list(batch["prepared"])
        if rows:
            ready = [pickle.loads(batch["prepared"][i]) for i in rows]
            records = build_records(ready, encode_batch(ready, self.models), self.models.lexical)
            for i, r, record in zip(rows, ready, records, strict=True):
                encoded[i] = pickle.dumps(record)
                after[i] = pickle.dumps(r.photos.failures)
        out = {k: v for k, v in batch.items() if k != "prepared"}
        out["prepared"] = np.array(after, dtype=object)
        out["record"] = np.array(encoded, dtype=object)
        return out


class WriteStage:
    """The write stage as a Ray actor, one of several, each with its own client of a ``qdrant:`` store."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.store = open_store(spec.store, spec.access)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.store.upsert(_records(batch))
        batch = dict(batch)
        batch["record"] = np.array([b""] * len(batch["record"]), dtype=object)
        return batch


def _records(batch: dict[str, np.ndarray]) -> list[Record]:
    return [pickle.loads(blob) for blob in batch["record"] if blob]


# -- the driver ---------------------------------------------------------------------------------


def _drain(dataset, catalog: Catalog, store: VectorStore | None, run: RunLog, progress) -> None:
    """Count every outcome as it arrives (writing it first when the driver is the writer); report the
    items whose outcome never arrived."""
    total = len(catalog.items)
    seen = np.zeros(total, dtype=bool)
    done = 0
    batches = _batches(dataset)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except Exception as exc:  # what the cluster raised: a node lost, a task out of retries, a stage's error
            if bulk.looks_like_oom(exc):
                raise
            lost = _report_lost(catalog, seen, run, f"the Ray run failed: {_first_line(exc)}")
            raise EngineError(
                f"the Ray run failed after {done} of {total} items: {_first_line(exc)}. The {lost} items "
                f"not indexed are listed in {run.report.errors_path}; re-running indexes only them."
            ) from exc
        if store is not None:
            store.upsert(_records(batch))
        for i in range(len(batch["id"])):
            _account(batch, i, run)
        seen[batch["index"]] = True
        done += len(batch["id"])
        if progress:
            progress(done, total)
    _report_lost(catalog, seen, run, "no outcome came back from the Ray workers")


def _batches(dataset) -> Iterator[dict[str, np.ndarray]]:
    yield from dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)


def _account(batch: dict[str, np.ndarray], i: int, run: RunLog) -> None:
    status = batch["status"][i]
    if status == _READY:
        run.written(str(batch["id"][i]), str(batch["digest"][i]))
        run.photo_failed(pickle.loads(batch["item"][i]), pickle.loads(batch["prepared"][i]))
    elif status == _SKIPPED:
        run.record(pickle.loads(batch["prepared"][i]))
    else:
        run.record(Failed(pickle.loads(batch["item"][i]), str(batch["reason"][i]), str(batch["error"][i])))


def _report_lost(catalog: Catalog, seen: np.ndarray, run: RunLog, why: str) -> int:
    lost = [catalog.items[i] for i in np.flatnonzero(~seen)]
    for item in lost:
        run.record(Failed(item, "lost", why))
    return len(lost)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def image_transform(encoder: Any) -> Any:
    """The image encoder's ``preprocess`` without its model, to ship to decode tasks in other processes:
    the encoder's own method on a shallow copy that keeps what pickles and is not a torch module (the
    preprocessing's transforms and sizes; not the weights, nor locks)."""
    shell = copy.copy(encoder)
    for name, value in vars(encoder).items():
        if isinstance(value, torch.nn.Module) or not _pickles(value):
            delattr(shell, name)
    try:
        shell.preprocess(Image.new("RGB", (max(encoder.image_size, 1),) * 2))
    except AttributeError as exc:  # it needs what was left out: the model itself
        raise EncoderError(
            f"{encoder.spec}: its preprocessing needs the model, so the ray engine cannot run it"
        ) from exc
    return shell.preprocess


def _pickles(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except Exception:  # locks, handles, and whatever else will not cross to another process
        return False
    return True
