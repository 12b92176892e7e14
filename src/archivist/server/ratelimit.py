"""Token-bucket rate limits per API key and per client address, in process memory."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    """One token bucket per key: `per_minute` tokens refilled evenly, bursts of up to a minute's worth.

    Buckets live in this process: behind a load balancer with N servers a key gets up to N times its rate.
    """

    def __init__(
        self, per_minute: int, clock: Callable[[], float] = time.monotonic, *, max_keys: int = 100_000
    ) -> None:
        self.per_minute = per_minute
        self.max_keys = max_keys
        self._clock = clock
        # key -> (tokens, last refill time), least recently used first: a flood of new keys (client addresses)
        # evicts the oldest buckets instead of growing without bound.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, key: str, per_minute: int | None = None) -> float:
        """Take one token; return 0.0 on success, else the seconds until one is available."""
        rate = per_minute or self.per_minute
        capacity, refill = float(rate), rate / 60.0
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(key, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * refill)
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / refill

    @staticmethod
    def retry_after(wait_s: float) -> str:
        """Return a Retry-After header value (whole seconds, at least 1)."""
        return str(max(1, math.ceil(wait_s)))
