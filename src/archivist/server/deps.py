"""What every `/v1` endpoint depends on: the app's services, the calling key, the address a request comes from."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from archivist.server.auth import Principal
from archivist.server.errors import ApiError
from archivist.server.services import Services

_bearer = HTTPBearer(auto_error=False, description="An Archivist API key: `Authorization: Bearer ak_…`")
_header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="The same key, in X-API-Key")


def services(request: Request) -> Services:
    """Return the app's services (built once by create_app)."""
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(services)]


async def principal(
    request: Request,
    svc: ServicesDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_header_key)],
) -> Principal:
    """Return the calling key (401 without a valid one, 429 past its rate limit or its address's failures)."""
    try:
        who = svc.auth.authenticate(bearer.credentials if bearer else header_key)
    except ApiError as exc:
        # Failures are throttled per client address; a valid key is authenticated first, so it is never slowed by
        # someone else's failures, even behind the same address.
        address = client_address(request)
        wait = svc.auth_failures.acquire(address) if exc.status == 401 else 0.0
        if wait:
            svc.metrics.rate_limited.inc()
            raise ApiError(
                429,
                f"too many failed authentications from {address}: retry in {wait:.1f}s",
                headers={"Retry-After": svc.auth_failures.retry_after(wait), "WWW-Authenticate": "Bearer"},
            ) from exc
        raise
    request.state.key_id = who.id
    wait = svc.limiter.acquire(who.id, who.key.rate_per_minute)
    if wait:
        svc.metrics.rate_limited.inc()
        raise ApiError(
            429,
            f"rate limit of key {who.id} reached: retry in {wait:.1f}s",
            headers={"Retry-After": svc.limiter.retry_after(wait)},
        )
    return who


Caller = Annotated[Principal, Depends(principal)]


def client_address(request: Request) -> str:
    """Return who a request comes from, for throttling: its address, or the /64 network of an IPv6 one (a host
    owns a whole /64, so single addresses would give it unlimited buckets)."""
    host = request.client.host if request.client else "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ip.ipv4_mapped or ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
