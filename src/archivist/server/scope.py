"""The collections a request may reach: checked collection names and query filters scoped to them."""

from __future__ import annotations

from archivist.agent.tools import Tool
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


def user_tool_refusal(who: Principal, tool: Tool) -> str | None:
    """Return why a key may not call one of the user's own tools (HTTP agent runs, MCP), or None when it may."""
    # Archivist cannot see what the user's code reaches: a key limited to collections calls none of it, and only a
    # key that may change things (the write scope; admin holds every scope) calls one that changes anything.
    if who.key.collections is not None:
        return (
            f"this key is limited to collections ({', '.join(who.key.collections)}); your own tools such as "
            f"{tool.name} may reach anything, so only a key without collection limits may call them"
        )
    if tool.effect != "read_only" and not who.has("write"):
        return f"{tool.name} is {tool.effect.replace('_', '-')}: only a key with the write scope may call it"
    return None


def user_tools_for(svc: Services, who: Principal) -> list[Tool]:
    """Return the user's own tools this key may call (what an agent run it starts or drives is given)."""
    return [t for t in svc.archivist.user_tools() if user_tool_refusal(who, t) is None]
