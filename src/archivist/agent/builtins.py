"""The built-in tools over the app's components: search, read a document by character range, list collections and
documents, and a grounded answer with its citations. Every one is read-only and, where a collection is given,
limited to it; the ones that return document text mark their output untrusted, and text the injection scan flagged
as `"guard_flagged": true`, datamarked (`guard.quote`): the loop then refuses every side-effecting tool."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from archivist.agent.tools import RUN_BUDGET, Tool, function_tool
from archivist.answer.answerer import Answerer
from archivist.guard.policy import GuardPolicy
from archivist.guard.quote import datamark
from archivist.retrieve.search import SearchPipeline
from archivist.store.filters import Filters
from archivist.store.protocols import Store
from archivist.types import DocumentRecord, NotFoundError

#: the most characters one read_document call returns (a model asks again for the next range)
MAX_READ_CHARS = 4000
#: how much of each hit's text search_documents shows
HIT_CHARS = 1200


def builtin_tools(
    store: Store,
    searcher: SearchPipeline,
    answerer: Answerer | None = None,
    *,
    collection: str | None = None,
    policy: GuardPolicy | None = None,
) -> list[Tool]:
    """Return the built-in tools over these components, limited to `collection` (None: every collection); the
    `answer` tool answers under the run's guard `policy` (None: the settings')."""
    scope = Filters(scope=(collection,)) if collection is not None else Filters()

    def document(document_id: str) -> DocumentRecord:
        found = store.get_document(document_id)
        if found is None or (collection is not None and found.collection != collection):
            raise NotFoundError(
                f"no document {document_id!r}" + (f" in collection {collection!r}" if collection else "")
            )
        return found

    def search_documents(query: str, k: Annotated[int, Field(ge=1, le=20)] = 5) -> list[dict[str, Any]]:
        """Search the documents (hybrid: keywords and meaning) and return the best passages with their document ids.

        Args:
            query: What to look for, in plain words.
            k: How many passages to return.
        """
        hits = searcher.search(query, k=k, filters=scope).hits
        return [
            {
                "document_id": h.document_id,
                "source": h.source,
                "title": h.title,
                "start": h.start,
                "end": h.start + min(len(h.text), HIT_CHARS),
                "text": datamark(h.text[:HIT_CHARS]) if h.guard_flagged else h.text[:HIT_CHARS],
                "score": round(h.score, 4),
                **({"guard_flagged": True} if h.guard_flagged else {}),
            }
            for h in hits
        ]

    def read_document(
        document_id: str, start: Annotated[int, Field(ge=0)] = 0, end: Annotated[int | None, Field(ge=1)] = None
    ) -> dict[str, Any]:
        """Read a document's text from character `start` to `end` (at most 4000 characters a call).

        Args:
            document_id: The document's id, as search_documents or list_documents give it.
            start: The first character to read.
            end: Where to stop (default: 4000 characters on, or the document's end).
        """
        record = document(document_id)
        stop = min(record.char_count, end if end is not None else start + MAX_READ_CHARS, start + MAX_READ_CHARS)
        if start >= stop:
            raise ValueError(f"start {start} is past the end of the range (the document has {record.char_count} chars)")
        text, flagged = _text_between(store, record.id, start, stop)
        return {
            "document_id": record.id,
            "source": record.source,
            "title": record.title,
            "start": start,
            "end": stop,
            "text": datamark(text) if flagged else text,
            "length": record.char_count,
            **({"guard_flagged": True} if flagged else {}),
        }

    def list_collections() -> list[dict[str, Any]]:
        """List the collections the agent may read, with how many documents each holds."""
        return [
            {"name": c.name, "description": c.description, "documents": c.documents}
            for c in store.list_collections()
            if collection is None or c.name == collection
        ]

    def list_documents(
        limit: Annotated[int, Field(ge=1, le=100)] = 20, offset: Annotated[int, Field(ge=0)] = 0
    ) -> list[dict[str, Any]]:
        """List stored documents by source: id, source, title, collection and length in characters.

        Args:
            limit: How many documents to list.
            offset: How many to skip (for the next page).
        """
        return [
            {
                "document_id": d.id,
                "source": d.source,
                "title": d.title,
                "collection": d.collection,
                "length": d.char_count,
            }
            for d in store.list_documents(limit=limit, offset=offset, filters=scope)
        ]

    tools = [
        function_tool(search_documents, untrusted_output=True),
        function_tool(read_document, untrusted_output=True),
        # Collection descriptions are user-editable text: as untrusted as documents.
        function_tool(list_collections, untrusted_output=True),
        function_tool(list_documents, untrusted_output=True),
    ]
    if answerer is not None:

        def answer(question: str) -> dict[str, Any]:
            """Answer a question from the documents with checked citations (each citation quotes its document).

            Args:
                question: The question, in plain words.
            """
            found = answerer.answer(question, filters=scope, budget=RUN_BUDGET.get(), policy=policy)
            return {
                "answer": found.answer,
                "refused": found.refused,
                "warnings": found.warnings,
                **({"guard_flagged": True} if found.flagged else {}),
                # The answer as text and citation marks ({"type": "citation", "n": …}), so the marks are never
                # looked for in prose.
                "segments": [s.to_dict() for s in found.segments],
                "citations": [
                    {
                        "n": c.n,
                        "document_id": c.document,
                        "source": c.source,
                        "title": c.title,
                        "start": c.span[0],
                        "end": c.span[1],
                        "text": datamark(c.quote) if found.flagged else c.quote,
                    }
                    for c in found.citations
                ],
            }

        tools.append(function_tool(answer, untrusted_output=True, timeout_s=120.0))
    return tools


def _text_between(store: Store, document_id: str, start: int, end: int) -> tuple[str, bool]:
    """Return the document's text in [start, end), put together from its stored chunks (overlaps read once; a gap
    between chunks, whitespace the chunker did not store, as spaces: offsets stay the document's), and whether any
    chunk it reads from stands flagged by the injection scan."""
    pieces: list[str] = []
    at = start
    flagged = False
    for chunk in store.document_chunks(document_id):
        if chunk.end <= start or chunk.start >= end:
            continue
        flagged = flagged or chunk.guard_flagged
        if chunk.end <= at:
            continue
        if chunk.start > at:
            pieces.append(" " * (chunk.start - at))
            at = chunk.start
        pieces.append(chunk.text[at - chunk.start : end - chunk.start])
        at = min(chunk.end, end)
    return "".join(pieces), flagged
