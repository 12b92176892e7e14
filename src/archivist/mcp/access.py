"""Who an MCP request acts as and what it may reach: an API key's collections over HTTP, everything on stdio."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import anyio.to_thread
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from pydantic import ConfigDict
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from archivist.llm.accounting import Budget
from archivist.server.auth import SCOPES, Authenticator, Principal
from archivist.server.deps import client_address
from archivist.server.errors import ApiError, error_body
from archivist.server.ratelimit import RateLimiter
from archivist.store.filters import Filters, check_filter_keys
from archivist.store.protocols import Store
from archivist.types import NotFoundError, check_collection_name


class Refused(Exception):
    """The caller may not do this: a message fit for the caller, and a stable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class KeyToken(AccessToken):
    """A bearer token the store knows: an Archivist API key, with the principal it authenticates as."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    principal: Principal


class KeyVerifier:
    """The MCP SDK's token verifier over Archivist's API keys (hashes in the store, revocation honoured)."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    async def verify_token(self, token: str) -> AccessToken | None:
        """Return the key's access token, or None for an unknown, malformed or revoked key (the SDK answers 401)."""
        try:
            who = await anyio.to_thread.run_sync(self.authenticator.authenticate, token)
        except ApiError:
            return None
        # "admin" holds every scope, as the HTTP API reads it: spelled out so the SDK's scope check agrees.
        scopes = [s for s in SCOPES if who.has(s)]
        return KeyToken(token=token, client_id=who.id, scopes=scopes, principal=who)


@dataclass(frozen=True, slots=True)
class Access:
    """What one request may reach: `principal` None is the local user on stdio, who may read every collection."""

    store: Store
    principal: Principal | None = None

    def may_see(self, collection: str) -> bool:
        """Return whether the caller may read a collection."""
        return self.principal is None or self.principal.may_see(collection)

    def require_collection(self, name: str) -> None:
        """Raise Refused unless the name is valid, the caller may read it, and it exists."""
        check_collection_name(name)
        # Visibility before existence, as the HTTP API checks: a scoped key cannot probe which names exist.
        if not self.may_see(name):
            raise Refused("forbidden", f"this key may not use collection {name!r}")
        if not self.store.has_collection(name):
            raise NotFoundError(f"no collection {name!r} (list_collections names the ones you may read)")

    def filters(self, collection: str | None, filters: dict[str, str] | None) -> Filters:
        """Return the user's filters within the collections this request may search (the scope a clause apart)."""
        if collection is not None:
            self.require_collection(collection)
        parsed = Filters.from_mapping(filters or {}, reserved=("collection", "collections"))
        if collection is not None:
            scoped = parsed.within([collection])
        elif self.principal is not None and self.principal.key.collections is not None:
            scoped = parsed.within(self.principal.key.collections)
        else:
            scoped = parsed
        check_filter_keys(self.store, scoped)
        return scoped

    def budget(self) -> Budget | None:
        """Return the budget a request's model calls are charged to: its own, passing charges on to the key's."""
        if self.principal is None:
            return None
        return Budget(parent=self.principal.budget(self.store))


@dataclass(frozen=True, slots=True)
class Gate:
    """How a server finds the caller of each request: none (stdio) or the API key the HTTP layer verified."""

    store: Store
    #: None on stdio: there is no key, the local user reads everything
    limiter: RateLimiter | None = None

    def access(self) -> Access:
        """Return what the current request may reach, or raise Refused (no key where one is needed, rate limit)."""
        if self.limiter is None:
            return Access(self.store)
        token = get_access_token()
        if not isinstance(token, KeyToken):
            # The SDK's middleware answers 401 before any tool runs; this only guards against a server built wrong.
            raise Refused("unauthorized", "missing API key: send 'Authorization: Bearer <key>'")
        who = token.principal
        wait = self.limiter.acquire(who.id, who.key.rate_per_minute)
        if wait:
            raise Refused("rate_limited", f"rate limit of key {who.id} reached: retry in {wait:.1f}s")
        return Access(self.store, who)


class ThrottleFailedKeys:
    """ASGI middleware: failed authentications (401) are counted per client address, as the HTTP API counts them,
    and past the limit answered 429 with Retry-After. A valid key is never slowed: only 401s count or change."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request, turning a 401 past the address's failure limit into a 429."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        address = client_address(Request(scope))
        replaced = False

        async def guarded(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == 401:
                wait = self.limiter.acquire(address)
                if wait:
                    replaced = True
                    why = f"too many failed authentications from {address}: retry in {wait:.1f}s"
                    body = json.dumps(error_body("rate_limited", why, uuid.uuid4().hex)).encode()
                    headers = [
                        (b"content-type", b"application/json"),
                        (b"retry-after", self.limiter.retry_after(wait).encode()),
                        (b"www-authenticate", b"Bearer"),
                        (b"content-length", str(len(body)).encode()),
                    ]
                    await send({"type": "http.response.start", "status": 429, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return
            if replaced:  # the 401's own body: already answered
                return
            await send(message)

        await self.app(scope, receive, guarded)
