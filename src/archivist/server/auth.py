"""API keys: minted once and shown once, stored as a hash; the principal a request acts as; scope checks."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from archivist.llm.accounting import KeyBudget, Period
from archivist.server.errors import ApiError
from archivist.store.protocols import Store
from archivist.store.records import ApiKeyRecord
from archivist.types import UsageError, check_collection_name

SCOPES = ("read", "write", "admin")
_KEY_RE = re.compile(r"^ak_([0-9a-f]{12})_[A-Za-z0-9_-]{20,64}$")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def mint_api_key(
    store: Store,
    name: str,
    scopes: Sequence[str],
    collections: Sequence[str] | None = None,
    *,
    budget_tokens: int | None = None,
    budget_usd: float | None = None,
    budget_period: Period = "month",
    rate_per_minute: int | None = None,
    policy: dict[str, str] | None = None,
) -> tuple[str, ApiKeyRecord]:
    """Return a new key (the only time it is ever visible) and its stored record (with its guard policy)."""
    if not name.strip():
        raise UsageError("a key needs a --name")
    bad = sorted(set(scopes) - set(SCOPES))
    if bad or not scopes:
        raise UsageError(f"bad scopes {bad or list(scopes)}: use any of {', '.join(SCOPES)}")
    for c in collections or ():
        check_collection_name(c)
        if not store.has_collection(c):
            raise UsageError(f"no collection {c!r} (create it first: POST /v1/collections or archivist ingest)")
    if (budget_tokens is not None and budget_tokens < 0) or (budget_usd is not None and budget_usd < 0):
        raise UsageError("budgets cannot be negative")
    key_id = secrets.token_hex(6)
    plaintext = f"ak_{key_id}_{secrets.token_urlsafe(24)}"
    record = ApiKeyRecord(
        id=key_id,
        name=name.strip(),
        secret_hash=_hash(plaintext),
        scopes=tuple(s for s in SCOPES if s in scopes),
        collections=tuple(dict.fromkeys(collections)) if collections else None,
        created_at=_now(),
        budget_tokens=budget_tokens,
        budget_usd=budget_usd,
        budget_period=budget_period,
        rate_per_minute=rate_per_minute,
        policy=dict(policy or {}),
    )
    store.save_api_key(record)
    return plaintext, record


@dataclass(frozen=True, slots=True)
class Principal:
    """The API key a request acts as."""

    key: ApiKeyRecord

    @property
    def id(self) -> str:
        """Return the key's id."""
        return self.key.id

    def has(self, scope: str) -> bool:
        """Return whether the key holds a scope (admin holds them all)."""
        return scope in self.key.scopes or "admin" in self.key.scopes

    def require(self, scope: str) -> None:
        """Raise 403 unless the key holds the scope."""
        if not self.has(scope):
            raise ApiError(403, f"this key lacks the {scope!r} scope (it has: {', '.join(self.key.scopes)})")

    def may_see(self, collection: str) -> bool:
        """Return whether the key may read or write a collection."""
        return self.key.collections is None or collection in self.key.collections

    def require_collection(self, collection: str) -> None:
        """Raise 403 unless the key may use the collection."""
        if not self.may_see(collection):
            raise ApiError(403, f"this key may not use collection {collection!r}")

    def budget(self, store: Store) -> KeyBudget | None:
        """Return the key's persisted token/cost budget, or None when it has none."""
        if self.key.budget_tokens is None and self.key.budget_usd is None:
            return None
        period: Period = "day" if self.key.budget_period == "day" else "month"
        return KeyBudget(
            store,
            f"key:{self.key.id}",
            period=period,
            max_tokens=self.key.budget_tokens,
            max_cost_usd=self.key.budget_usd,
        )


class Authenticator:
    """Turns an Authorization header into a Principal, caching key records briefly."""

    #: how long a key record is trusted before re-reading it: bounds how late a revocation takes effect
    cache_s = 2.0
    #: how often a key's last_used_at is written (one write per request would cost throughput)
    touch_every_s = 60.0

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[str, tuple[float, ApiKeyRecord | None]] = {}
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()

    def authenticate(self, presented: str | None) -> Principal:
        """Return the principal of a presented key, or raise 401."""
        if not presented:
            raise ApiError(
                401, "missing API key: send 'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"}
            )
        m = _KEY_RE.match(presented)
        record = self._record(m.group(1)) if m else None
        if record is None or not hmac.compare_digest(record.secret_hash, _hash(presented)):
            raise ApiError(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
        if record.revoked_at is not None:
            raise ApiError(401, f"API key {record.id} was revoked at {record.revoked_at}")
        self._touch(record.id)
        return Principal(record)

    def _record(self, key_id: str) -> ApiKeyRecord | None:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key_id)
            if cached is not None and now - cached[0] < self.cache_s:
                return cached[1]
        record = self.store.get_api_key(key_id)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key_id] = (now, record)
        return record

    def _touch(self, key_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._touched.get(key_id, -1e9) < self.touch_every_s:
                return
            self._touched[key_id] = now
        self.store.touch_api_key(key_id, _now())
