"""Generated variants on disk, keyed by everything that shapes their pixels.

``DATA_DIR/variants/KEY[:2]/KEY/`` holds ``variant-NN.png`` and ``meta.json``; ``meta.json`` is written last, so
an entry without it (a crash mid-write) is a miss and is rewritten. A hit touches ``meta.json``, and a write
evicts the least recently used entries once the cache is over its size limit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from .generator import Generated

if TYPE_CHECKING:
    from .settings import GeneratorSettings

log = logging.getLogger(__name__)

META = "meta.json"


def cache_key(image_digest: str, description: dict[str, Any]) -> str:
    """Hash of the source pixels plus the generator's description (text, settings, seeds and model ids)."""
    blob = json.dumps({"image": image_digest, **description}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class VariantCache:
    def __init__(self, root: Path, max_bytes: int | None = None):
        self.root = Path(root)
        self.max_bytes = max_bytes

    @classmethod
    def from_settings(cls, settings: GeneratorSettings) -> VariantCache:
        return cls(Path(settings.data_dir) / "variants", settings.gen_cache_max_bytes)

    def folder(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str) -> list[tuple[Generated, Path]] | None:
        folder = self.folder(key)
        meta_path = folder / META
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            out = []
            for entry in meta["variants"]:
                path = folder / entry["file"]
                with Image.open(path) as im:
                    image = im.convert("RGB")
                out.append((Generated(image, entry["seed"], entry["flagged"]), path))
            os.utime(meta_path)  # recently used: evicted last
            return out
        except (OSError, ValueError, KeyError) as exc:
            log.warning("variant cache entry %s is unreadable (%s); generating again", folder, exc)
            return None

    def put(self, key: str, generated: list[Generated], description: dict[str, Any]) -> list[Path]:
        folder = self.folder(key)
        folder.parent.mkdir(parents=True, exist_ok=True)
        # Written in a sibling temp folder and renamed, so readers never see half an entry.
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:8]}-", dir=folder.parent))
        entries = []
        for i, g in enumerate(generated):
            name = f"variant-{i:02d}.png"
            g.image.save(tmp / name)
            entries.append({"file": name, "seed": g.seed, "flagged": g.flagged})
        (tmp / META).write_text(json.dumps({"variants": entries, "settings": description}, indent=2, default=str))
        if folder.exists():
            shutil.rmtree(folder)
        try:
            os.replace(tmp, folder)
        except OSError:
            # Another writer got there first with the same key, hence the same pixels.
            shutil.rmtree(tmp, ignore_errors=True)
        self._evict(keep=folder)
        return [folder / e["file"] for e in entries]

    def _evict(self, keep: Path) -> None:
        if self.max_bytes is None:
            return
        entries = []
        for meta in self.root.glob(f"*/*/{META}"):
            try:
                size = sum(f.stat().st_size for f in meta.parent.iterdir())
                entries.append((meta.stat().st_mtime, size, meta.parent))
            except OSError:  # evicted by another process meanwhile
                continue
        total = sum(size for _, size, _ in entries)
        for _, size, folder in sorted(entries):
            if total <= self.max_bytes:
                break
            if folder != keep:
                shutil.rmtree(folder, ignore_errors=True)
                total -= size
                log.info("variant cache over %d bytes: evicted %s", self.max_bytes, folder.name[:12])
