"""What an operator watches: Prometheus metrics at ``/metrics``, and a request id on every request.

- per route: requests, status codes and latency (prometheus-fastapi-instrumentator);
- search latency per query kind (``lookalike_search_seconds``);
- index jobs: the running job's progress, jobs by status, items that failed;
- VLM calls, tokens and errors, and VLM reply-cache hits (recorded by the vlm package);
- the process itself (CPU, memory, open files).

Process-wide metrics live in prometheus_client's default registry; each app gets its own registry
that serves those plus its own routes and jobs, so several apps in one process never collide.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_fastapi_instrumentator import Instrumentator

from .jobs import JobRunner

REQUEST_ID_HEADER = "X-Request-ID"

SEARCH_SECONDS = Histogram(
    "lookalike_search_seconds",
    "Search latency in the engine, by query kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
)


class JobsCollector:
    """Index-job figures, read from the job runner at scrape time."""

    def __init__(self, jobs: JobRunner) -> None:
        self.jobs = jobs

    def collect(self) -> Iterator[Metric]:
        running = self.jobs.running()
        progress = GaugeMetricFamily(
            "lookalike_index_job_items", "Items of the running index job (0 when none runs).", labels=["state"]
        )
        progress.add_metric(["done"], running.done if running else 0)
        progress.add_metric(["total"], running.total if running else 0)
        yield progress
        recent = self.jobs.recent(limit=1000)
        by_status = GaugeMetricFamily(
            "lookalike_index_jobs", "Index jobs the server knows, by status.", labels=["status"]
        )
        for status, count in sorted(Counter(j.status for j in recent).items()):
            by_status.add_metric([status], count)
        yield by_status
        yield GaugeMetricFamily(
            "lookalike_index_failed_items",
            "Catalog items the known jobs could not index.",
            sum(j.errors_total for j in recent),
        )


def observe(app: FastAPI, jobs: JobRunner) -> None:
    """Serve ``/metrics`` for ``app`` and give every request an id (``X-Request-ID``, also in each log line)."""
    registry = CollectorRegistry()
    registry.register(REGISTRY)  # the process-wide metrics: search latency, VLM calls, the process
    registry.register(JobsCollector(jobs))
    Instrumentator(registry=registry, excluded_handlers=["/metrics"]).instrument(
        app, metric_namespace="lookalike"
    ).expose(app, include_in_schema=False)
    # A client's own id is kept (so its logs and ours line up) when it looks like one; else a new uuid.
    app.add_middleware(CorrelationIdMiddleware, header_name=REQUEST_ID_HEADER)
