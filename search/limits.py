"""Per-client rate limits (searches, VLM calls, generation) and daily budgets on paid model APIs.

Rate limits are moving windows from the ``limits`` package, kept in memory (one server process; the
embedded store allows no more), keyed by client (bearer token, else IP). Budgets count the tokens paid
APIs report in their responses per UTC day, in a small JSON file in the data dir, so a restart does not
hand out a second day's worth. A budget is checked before a call and charged after it, so calls in
flight when it runs out may pass it by their own size.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from indexer.files import atomic_write_text

log = logging.getLogger(__name__)

KINDS = ("search", "vlm", "generate")


class LimitExceeded(RuntimeError):
    """A rate limit or budget that is used up; ``retry_after`` seconds until it allows another call."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


class RateLimits:
    """Limits per kind of call, as ``limits`` strings ("60/minute", "1000/day"); empty means unlimited."""

    def __init__(self, rules: dict[str, str | None]) -> None:
        unknown = sorted(set(rules) - set(KINDS))
        if unknown:
            raise ValueError(f"no rate limit kind {unknown}; kinds are {list(KINDS)}")
        self._rules = {}
        for kind, text in rules.items():
            if text and text.strip():
                try:
                    self._rules[kind] = parse(text)
                except ValueError as exc:
                    raise ValueError(f"rate limit for {kind}: {exc}; write it like '60/minute'") from None
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, kind: str, client: str) -> None:
        """Count one ``kind`` call by ``client``, or raise LimitExceeded when it is over its limit."""
        rule = self._rules.get(kind)
        if rule is None or self._limiter.hit(rule, kind, client):
            return
        reset = self._limiter.get_window_stats(rule, kind, client).reset_time
        raise LimitExceeded(
            f"too many {kind} requests: the limit is {rule}; try again in {math.ceil(reset - time.time())} s",
            reset - time.time(),
        )


class DailyBudget:
    """Tokens a paid API may spend per UTC day (``limit``; None: no budget), persisted in ``path``."""

    def __init__(self, path: Path, limit: int | None, what: str) -> None:
        self.path, self.limit, self.what = Path(path), limit, what
        self._lock = threading.Lock()

    def check(self) -> None:
        """Raise LimitExceeded when today's budget is spent."""
        if self.limit is None:
            return
        with self._lock:
            spent = self._load()
        if spent >= self.limit:
            raise LimitExceeded(
                f"the daily budget of {self.limit:,} tokens for {self.what} is spent ({spent:,} today); "
                "it renews at 00:00 UTC",
                _seconds_to_midnight(),
            )

    def spend(self, tokens: int) -> None:
        if self.limit is None or tokens <= 0:
            return
        with self._lock:
            spent = self._load() + int(tokens)
            try:
                atomic_write_text(self.path, json.dumps({"day": _today(), "spent": spent}))
            except OSError as exc:
                log.warning("cannot save the %s budget in %s: %s", self.what, self.path, exc)

    def spent(self) -> int:
        with self._lock:
            return self._load()

    def _load(self) -> int:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.warning("unreadable budget file %s (%s): counting today from 0", self.path, exc)
            return 0
        return int(data.get("spent", 0)) if data.get("day") == _today() else 0


def _today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


def _seconds_to_midnight() -> float:
    now = datetime.now(timezone.utc)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=timezone.utc)
    return (midnight - now).total_seconds()
