"""The OpenAPI document: FastAPI's, with the schemas only a non-JSON response uses (the events of an SSE stream)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import TypeAdapter

from archivist.server.schemas import AgentEvent, AnswerEvent

REF = "#/components/schemas/{model}"
#: what `text/event-stream` content refers to: one event of a streamed answer
ANSWER_EVENT_REF = {"$ref": REF.format(model="AnswerEvent")}
SSE_WIRE_FORMAT = (
    "Server-Sent Events: each event is an `event: <name>` line and a `data: <JSON>` line, then a blank line. "
    "The schema describes one event as {event, data}: retrieval, then any number of token events, then citations "
    "and done; or an error event, after which the stream stops."
)
#: what an agent run's `text/event-stream` content refers to: one event of the run's progress
AGENT_EVENT_REF = {"$ref": REF.format(model="AgentEvent")}
AGENT_SSE_WIRE_FORMAT = (
    "Server-Sent Events, framed as for answers. The schema describes one event as {event, data}: run (the run as "
    "it starts), then a step event per journaled step as it is committed, then done (the run as it ended: "
    "succeeded, failed or paused); or an error event, after which the stream stops. A client that hangs up does "
    "not stop the run: GET /v1/agent/runs/{run_id} reads it."
)


def operation_id(route: APIRoute) -> str:
    """Return a route's OpenAPI operation id where it sets none: its function's name (stable, unlike FastAPI's
    default, which adds the path and method)."""
    return route.name


def _extra_schemas() -> dict[str, Any]:
    """Return the component schemas of the SSE events, by name."""
    schemas: dict[str, Any] = {}
    adapters: dict[str, TypeAdapter[Any]] = {
        "AnswerEvent": TypeAdapter(AnswerEvent),
        "AgentEvent": TypeAdapter(AgentEvent),
    }
    for name, adapter in adapters.items():
        schema = adapter.json_schema(ref_template=REF, mode="serialization")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    return schemas


class DocumentedAPI(FastAPI):
    """The FastAPI app whose OpenAPI document also holds the schemas of its SSE events, and whose operations
    without an explicit id are named for their functions."""

    def __init__(self, **options: Any) -> None:
        super().__init__(generate_unique_id_function=operation_id, **options)

    def openapi(self) -> dict[str, Any]:
        """Return the OpenAPI document (built once)."""
        if self.openapi_schema is not None:
            return self.openapi_schema
        spec = super().openapi()
        components = spec.setdefault("components", {}).setdefault("schemas", {})
        for name, schema in _extra_schemas().items():
            # A model both sides know (Hit, Answer…) keeps FastAPI's copy: they are the same model.
            components.setdefault(name, schema)
        return spec
