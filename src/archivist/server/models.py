"""Request bodies shared by several `/v1` endpoints: the strict base and the collection scope of a query."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Body(BaseModel):
    """A request body that refuses fields it does not declare."""

    model_config = ConfigDict(extra="forbid")


class Scoped(Body):
    """A query body naming the collections and metadata filters it searches within."""

    collection: str | None = Field(default=None, description="one collection (default: every one the key may see)")
    collections: list[str] | None = Field(default=None, max_length=100)
    filters: dict[str, str] = Field(
        default_factory=dict, description="key: value, ANDed across keys; a value with * ? [ is a glob"
    )
