"""VLM figures for the server's ``/metrics`` (prometheus_client's process-wide registry)."""

from __future__ import annotations

from prometheus_client import Counter

VLM_CALLS = Counter(
    "lookalike_vlm_calls", "VLM requests that reached the model, by spec and outcome.", ["spec", "outcome"]
)
VLM_TOKENS = Counter("lookalike_vlm_tokens", "Tokens the VLM replies reported, by spec and kind.", ["spec", "kind"])
VLM_CACHE_HITS = Counter("lookalike_vlm_cache_hits", "VLM replies served from the reply cache, by spec.", ["spec"])
