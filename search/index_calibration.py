"""Per-channel calibration of one index: fitted on a sample of its items, cached next to it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from indexer import StoreError, VectorStore
from indexer.files import atomic_write_text

from .calibration import Calibration, background_scores, fit_background
from .photos import PHOTOS, max_sim_background

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
DENSE = ["image", "text", "semantic"]


def load_or_fit_calibration(store: VectorStore, data_dir: Path, sample: int) -> dict[str, Calibration]:
    """The calibration cached in ``data_dir`` for this store's item count and models, else a new fit."""
    count = store.count()
    schema = store.schema()
    if count < 20 or schema is None:
        return {}
    path = data_dir / CALIBRATION_FILE
    key = {"count": count, "models": schema.models, "multi": schema.multi}
    if path.exists():
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                return {k: Calibration.from_dict(v) for k, v in cached["channels"].items()}
        except (ValueError, KeyError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
    cal = fit_calibration(store, sample)
    try:
        atomic_write_text(path, json.dumps({"key": key, "channels": {k: c.to_dict() for k, c in cal.items()}}))
    except OSError as exc:
        log.warning("cannot cache calibration in %s: %s", path, exc)
    return cal


def sample_records(store: VectorStore, sample: int) -> list:
    """Up to ``sample`` stored records with their vectors and payload."""
    ids = []
    for record in store.scroll(keys=[]):
        ids.append(record.id)
        if len(ids) >= sample:
            break  # point ids are UUIDv5 hashes, so scroll order is already a random sample
    schema = store.schema()
    photos = [PHOTOS] if schema is not None and schema.filled(PHOTOS) else []
    return store.retrieve(ids, with_vectors=[*DENSE, *photos])


def fit_calibration(store: VectorStore, sample: int) -> dict[str, Calibration]:
    """Fit each channel's calibration on random pairs of stored items (see calibration.py)."""
    records = sample_records(store, sample)
    if len(records) < 20:
        raise StoreError("too few items to calibrate scores")
    vec = {name: np.stack([r.vectors[name] for r in records]) for name in ("image", "text", "semantic")}
    pairs = {
        "text>image": ("text", "image"),
        "text>text": ("text", "text"),
        "semantic>semantic": ("semantic", "semantic"),
        "image>image": ("image", "image"),
        "image>text": ("image", "text"),
    }
    out = {}
    for channel, (q, v) in pairs.items():
        scores = background_scores(vec[q], vec[v], n_pairs=20 * len(records), seed=0)
        out[channel] = fit_background(scores, channel=channel)
    if all(PHOTOS in r.vectors for r in records):
        # The image channel of an index that keeps every photo scores an item by its best photo.
        photo_sets = [r.vectors[PHOTOS] for r in records]
        for channel, q in {"text>photos": "text", "image>photos": "image"}.items():
            scores = max_sim_background(vec[q], photo_sets, n_pairs=20 * len(records), seed=0)
            out[channel] = fit_background(scores, channel=channel)
    return out
