"""SQL pieces the PostgreSQL document store and search share: filter conditions, select lists, row readers."""

from __future__ import annotations

import json
import math
from typing import Any

from archivist.store.filters import Filters
from archivist.store.records import StoredChunk
from archivist.store.rows import json_tuple, reader
from archivist.types import DocumentRecord, UsageError

DOC_COLUMNS = {
    "source": "d.source",
    "title": "d.title",
    "document_id": "d.id",
    "media_type": "d.media_type",
    "collection": "d.collection",
}

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

# A metadata field matches when its value does or, for a list, when any element does; a mapping never matches, nor
# does a list or mapping inside a list (as on SQLite). A missing field is SQL NULL: no element matches.
_METADATA_ELEMENTS = (
    "EXISTS (SELECT 1 FROM jsonb_array_elements(CASE jsonb_typeof(d.fields -> %s) WHEN 'array' THEN d.fields -> %s"
    " WHEN 'object' THEN '[]'::jsonb ELSE jsonb_build_array(d.fields -> %s) END) e(v) WHERE {match})"
)
# An element's text: a string's own, a boolean's JSON spelling (true, false), a number's digits; null has none.
_ELEMENT_TEXT = "CASE jsonb_typeof(e.v) WHEN 'array' THEN NULL WHEN 'object' THEN NULL ELSE e.v #>> '{}' END"
# A filter value written as a number equals a numeric element by value, compared as `numeric` (exact, any size), so
# that `2` finds 2.0 and `1e-05` finds 1e-05 whatever spelling the stored JSON and the database give the number,
# and 19-digit ids never match their neighbours.
_ELEMENT_NUMBER = (
    f"CASE jsonb_typeof(e.v) WHEN 'number' THEN (e.v)::numeric = %s::numeric ELSE {_ELEMENT_TEXT} = %s END"
)


def filter_sql(filters: Filters, *, contained: bool = False) -> tuple[str, list[Any]]:
    """Return a SQL condition over `documents d` for the filters, and its parameters (a list-valued metadata field
    matches a clause when any of its elements does; a glob matches as SQLite's GLOB does: case-sensitive, whole).

    `contained` adds, before each plain string clause, the `fields @> …` containment it implies, which the GIN index
    on `fields` answers: for statements that should find the passing documents through that index. Not for the
    HNSW search: the planner estimates `@>` as very selective whatever it passes, and would give up the index."""
    if not filters:
        return "TRUE", []
    parts: list[str] = []
    params: list[Any] = []
    if filters.scope is not None:
        # The request's collections: a clause of its own, ANDed with the user's clauses (never ORed into them).
        parts.append("d.collection = ANY(%s)" if filters.scope else "FALSE")
        if filters.scope:
            params.append(list(filters.scope))
    for key, clauses in filters.by_key().items():
        ors = []
        for c in clauses:
            op, value = ("~", glob_regex(c.value)) if c.is_glob else ("=", c.value)
            if key in DOC_COLUMNS:
                ors.append(f"{DOC_COLUMNS[key]} {op} %s")
                params.append(value)
                continue
            params.extend([key, key, key])
            number = None if c.is_glob else c.number
            if number is None:
                element = _METADATA_ELEMENTS.format(match=f"{_ELEMENT_TEXT} {op} %s")
                if not contained or c.is_glob or value in ("true", "false"):
                    ors.append(element)
                    params.append(value)
                else:
                    # Only a string element can have this text, so containment of the string (or of a list holding
                    # it) is implied by the match: ANDed before it, it lets the planner read the GIN index on
                    # `fields` instead of every document, and changes nothing that matches.
                    ors.append(f"((d.fields @> %s::jsonb OR d.fields @> %s::jsonb) AND {element})")
                    params[-3:-3] = [json.dumps({key: value}), json.dumps({key: [value]})]
                    params.append(value)
            else:
                ors.append(_METADATA_ELEMENTS.format(match=_ELEMENT_NUMBER))
                params.extend([c.value, value])
        parts.append("(" + " OR ".join(ors) + ")")
    return " AND ".join(parts), params


def glob_regex(pattern: str) -> str:
    """Return a POSIX regular expression matching what SQLite's GLOB `pattern` matches: `*` any run, `?` one
    character, `[...]` a set (`[^...]` its complement, a leading `]` literal), everything else literally."""
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            end = i + 1
            if end < n and pattern[end] == "^":
                end += 1
            if end < n and pattern[end] == "]":
                end += 1
            end = pattern.find("]", end)
            if end < 0:  # no closing bracket: GLOB matches nothing, and neither does an impossible class
                return "[^\\s\\S]"
            body = pattern[i + 1 : end]
            negated = body.startswith("^")
            out.append("[" + ("^" if negated else "") + _class_items(body[1:] if negated else body) + "]")
            i = end
        else:
            out.append("\\" + ch if not ch.isalnum() and ch != "_" and ord(ch) < 128 else ch)
        i += 1
    out.append("$")
    return "".join(out)


def _class_items(body: str) -> str:
    """Return a GLOB set's members as a POSIX bracket expression's body: each character written as its \\u escape
    (so `[:alpha:]`, `[.a.]`, `[=a=]`, `]` and `\\` are only characters), `a-z` as a range, and of a range whose
    end comes before its start only its first character (as GLOB matches it)."""
    out, i = [], 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            low, high = body[i], body[i + 2]
            # As SQLite's GLOB reads it: the first character is a member itself, then the range adds low..high.
            out.append(f"{_escaped(low)}-{_escaped(high)}" if low <= high else _escaped(low))
            i += 3
        else:
            out.append(_escaped(body[i]))
            i += 1
    return "".join(out)


def _escaped(ch: str) -> str:
    """Return one character as a regular expression's character-entry escape."""
    return f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}"


def json_fields(metadata: dict[str, Any]) -> str:
    """Return document metadata as JSON that jsonb accepts: NaN and the infinities (which it has no form for) as
    the strings Python writes for them."""
    return json.dumps(_finite(metadata), ensure_ascii=False, sort_keys=True)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


#: the most dimensions pgvector's HNSW indexes as `vector` (single precision), and as `halfvec` (half precision)
HNSW_VECTOR_DIMS = 2000
HNSW_HALFVEC_DIMS = 4000


def index_kind(dim: int) -> str:
    """Return the type a model's HNSW index casts its vectors to: `vector` up to 2000 dimensions, `halfvec` up to
    4000 (so 3072-d models such as text-embedding-3-large are stored too); raise UsageError beyond."""
    if dim <= HNSW_VECTOR_DIMS:
        return "vector"
    if dim <= HNSW_HALFVEC_DIMS:
        return "halfvec"
    raise UsageError(
        f"vectors of {dim} dimensions cannot be indexed on PostgreSQL: pgvector's HNSW takes at most "
        f"{HNSW_HALFVEC_DIMS} (as halfvec); use a model of fewer dimensions, or the SQLite store"
    )
