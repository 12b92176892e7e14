"""SQL pieces shared by the SQLite store's modules: filter conditions and row readers."""

from __future__ import annotations

import json
from typing import Any

from archivist.store.filters import Filters
from archivist.store.records import (
    StoredChunk,
)
from archivist.store.rows import json_tuple, reader
from archivist.types import DocumentRecord

DOC_COLUMNS = {
    "source": "d.source",
    "title": "d.title",
    "document_id": "d.id",
    "media_type": "d.media_type",
    "collection": "d.collection",
}


def filter_sql(filters: Filters) -> tuple[str, list[Any]]:
    """Return a SQL condition over `documents d` for the filters, and its parameters (a list-valued metadata field
    matches a clause when any of its elements does)."""
    if not filters:
        return "1", []
    parts: list[str] = []
    params: list[Any] = []
    if filters.scope is not None:
        # The request's collections: a clause of its own, ANDed with the user's clauses (never ORed into them).
        parts.append(f"d.collection IN ({','.join('?' * len(filters.scope))})" if filters.scope else "0")
        params.extend(filters.scope)
    for key, clauses in filters.by_key().items():
        ors = []
        for c in clauses:
            op = "GLOB" if c.is_glob else "="
            if key in DOC_COLUMNS:
                ors.append(f"{DOC_COLUMNS[key]} {op} ?")
                params.append(c.value)
                continue
            params.append('$."' + key.replace('"', "") + '"')
            number = None if c.is_glob else c.number
            if number is None:
                ors.append(_METADATA_ELEMENTS.format(match=f"{_ELEMENT_TEXT} {op} ?"))
                params.append(c.value)
            else:
                ors.append(_METADATA_ELEMENTS.format(match=_ELEMENT_NUMBER))
                params.extend([number, c.value])
        parts.append("(" + " OR ".join(ors) + ")")
    return " AND ".join(parts), params


# A metadata field matches when its value does or, for a list, when any element does. json_each yields one row
# with a NULL key for a scalar and integer keys for a list's elements; a mapping's members (text keys) never match.
_METADATA_ELEMENTS = "EXISTS (SELECT 1 FROM json_each(d.metadata, ?) e WHERE typeof(e.key) <> 'text' AND {match})"
# An element's text as PostgreSQL's store gives it: a boolean's JSON spelling (json_each's value is 1 or 0), no text
# for null or for a list or mapping inside a list.
_ELEMENT_TEXT = (
    "CASE e.type WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' WHEN 'null' THEN NULL WHEN 'array' THEN NULL"
    " WHEN 'object' THEN NULL ELSE CAST(e.value AS TEXT) END"
)
# A filter value written as a number equals a numeric element by value: SQLite's text of a real (1.0e+20) is not
# the stored JSON's (1e+20), nor PostgreSQL's.
_ELEMENT_NUMBER = f"CASE WHEN e.type IN ('integer', 'real') THEN e.value = ? ELSE {_ELEMENT_TEXT} = ? END"


DOC_SELECT = (
    "d.id, d.source, d.title, d.media_type, d.content_hash, d.metadata, d.chunk_count, d.char_count,"
    " d.created_at, d.updated_at, d.version, d.collection"
)


CHUNK_SELECT = (
    'c.id, c.document_id, c.ordinal, c.text, c.heading_path, c.start, c."end", c.page, c.page_end,'
    " c.token_count, d.source, d.title, d.metadata, d.collection, c.guard_score, c.guard_flagged,"
    " c.guard_cleared_by, c.guard_cleared_at"
)


doc_record = reader(DocumentRecord, DOC_SELECT, metadata=json.loads)
stored_chunk = reader(StoredChunk, CHUNK_SELECT, heading_path=json_tuple, metadata=json.loads, guard_flagged=bool)
