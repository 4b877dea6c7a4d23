"""Which engine indexes a catalog, and how: ``local`` (this process, :mod:`indexer.pipeline`) or ``ray``
(Ray Data over a cluster, :mod:`indexer.engine_ray`). Both run the same stages under the same incremental
rule; only where they run differs. Ray is imported only when the ray engine runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .settings import Settings
    from .specs import EncoderOptions
    from .store import ServerAccess
    from .tags import TagVocab


class EngineError(RuntimeError):
    """An engine cannot reach its cluster, or the cluster failed the run."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the ray engine runs.

    ``address``: ``None`` starts a local Ray (or reuses the one this process already started); ``auto``
    or ``HOST:6379`` joins a cluster this machine is a node of (Ray Data's executor cannot run through
    Ray Client, so ``ray://`` is refused). ``workers``: encoder actors (default: one per GPU in the cluster, else 1).
    ``gpus_per_worker``: GPUs each encoder actor holds (default: 1 where the cluster has GPUs, else 0;
    fractions pack several actors on one GPU). ``writers``: writer actors for a ``qdrant:`` store (an
    ``edge:`` store has one writer: the process that holds it)."""

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    writers: int = 4
    connect_timeout_s: float = 5.0
    # On a small machine the actors must leave CPUs to the decode tasks, or those starve and the run hangs.
    encoder_cpus: float = 0.5
    writer_cpus: float = 0.25


@dataclass(frozen=True)
class EngineConfig:
    kind: Literal["local", "ray"] = "local"
    ray: RayOptions = field(default_factory=RayOptions)

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineConfig:
        return cls(
            kind=settings.engine,
            ray=RayOptions(
                address=settings.ray_address,
                workers=settings.ray_workers,
                gpus_per_worker=settings.ray_gpus_per_worker,
            ),
        )


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process rebuilds the run's models and store from: specs and names, never objects.

    The device is resolved on each worker (``auto`` finds that machine's GPU), not on the driver."""

    clip_model: str
    text_model: str
    device: str = "auto"
    dtype: str = "auto"
    tags: TagVocab | None = None
    encoder_options: EncoderOptions | None = None
    store: str = ""
    access: ServerAccess | None = None
