"""The exact-match response cache: a completion keyed by everything that determines it, kept with a TTL."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable

from archivist.llm.base import ChatRequest, Completion, ToolCall, Usage
from archivist.llm.persistence import CacheBackend


def cache_key(provider: str, model: str, request: ChatRequest) -> str:
    """Return the key of a request to one provider and model: messages, tools, params, prompt version."""
    body = json.dumps(
        {"provider": provider, "model": model, "request": dataclasses.asdict(request)}, sort_keys=True, default=str
    )
    return hashlib.sha256(body.encode()).hexdigest()


class ResponseCache:
    """Completions kept in a cache backend (the store's `llm_cache` table)."""

    def __init__(self, store: CacheBackend, ttl_s: float = 86_400.0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._clock = clock

    def get(self, key: str) -> Completion | None:
        """Return the cached completion marked `cached` and free, or None."""
        raw = self.store.cache_get(key, self._clock())
        if raw is None:
            return None
        data = json.loads(raw)
        data["usage"] = Usage(**data["usage"])
        data["tool_calls"] = [ToolCall(**c) for c in data["tool_calls"]]
        completion = Completion(**data)
        completion.cached = True
        completion.cost_usd = 0.0
        completion.latency_s = 0.0
        return completion

    def put(self, key: str, completion: Completion) -> None:
        """Store a completion under a key for the cache's TTL."""
        self.store.cache_put(key, json.dumps(dataclasses.asdict(completion)), self._clock(), self.ttl_s)
