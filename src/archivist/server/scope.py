"""The collections a request may reach: checked collection names and query filters scoped to them."""

from __future__ import annotations

from archivist.server.auth import Principal
from archivist.server.errors import ApiError
from archivist.server.models import Scoped
from archivist.server.services import Services
from archivist.store.filters import Filters, check_filter_keys
from archivist.types import check_collection_name


def require_collection(svc: Services, who: Principal, name: str) -> None:
    """Raise 400/403/404 unless the collection name is valid, visible to the key and exists."""
    check_collection_name(name)  # a UsageError answers 400 like every other
    who.require_collection(name)
    if not svc.archivist.store.has_collection(name):
        raise ApiError(404, f"no collection {name!r}")


def scope_filters(svc: Services, who: Principal, body: Scoped) -> Filters:
    """Return the body's filters within the collections the request may search (a clause of its own)."""
    requested = ([body.collection] if body.collection else []) + list(body.collections or [])
    for name in requested:
        require_collection(svc, who, name)
    parsed = Filters.from_mapping(body.filters, reserved=("collection", "collections"))
    if requested:
        scoped = parsed.within(requested)
    elif who.key.collections is not None:
        scoped = parsed.within(who.key.collections)  # an empty list (no collection left) reads nothing
    else:
        scoped = parsed
    check_filter_keys(svc.archivist.store, scoped)
    return scoped
