"""Files on disk: written whole or not at all, and the room left for them."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves the old file or the new one, never half of one:
    a temp file beside it (its own name, so two writers never share one), synced, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def free_bytes(path: Path) -> int | None:
    """Free bytes on the disk that holds ``path`` (or would: its parent, while it does not exist); None
    where that cannot be told."""
    try:
        return shutil.disk_usage(path if path.exists() else path.parent).free
    except OSError:
        return None
