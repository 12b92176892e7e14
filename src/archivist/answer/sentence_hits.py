"""Evidence found sentence by sentence: the chunks holding the corpus's best-matching stored sentences."""

from __future__ import annotations

from collections.abc import Collection

from archivist.answer.extractive import DENSE_WEIGHT, LEXICAL_WEIGHT
from archivist.embed.base import Vectors
from archivist.store.filters import Filters
from archivist.store.protocols import Store
from archivist.store.records import chunk_hit
from archivist.text.analyzer import ANSWER_TERMS, analyzer, overlap
from archivist.types import Hit

#: stored sentences scored per question (by cosine) before query-term overlap reorders them
POOL = 100


def best_sentence_chunks(
    store: Store,
    model_key: str,
    question: str,
    query_vector: Vectors,
    k: int,
    filters: Filters = Filters(),
    exclude: Collection[str] = (),
    have: Collection[int] = (),
) -> list[Hit]:
    """Return up to k hits for the chunks holding the question's best stored sentences, corpus-wide, best first.

    Sentences are scored like the extractive answerer scores them (cosine and query-term overlap); a chunk already
    in `have`, or of a document (id or source) in `exclude`, is skipped. A chunk's score is its best sentence's.
    """
    if k <= 0:
        return []
    found = store.sentence_search(model_key, query_vector, POOL, filters)
    chunks = store.get_chunks(list(dict.fromkeys(s.chunk_id for s in found)))
    terms = analyzer(ANSWER_TERMS).terms
    q_terms = terms(question)
    scored: list[tuple[float, int]] = []
    for s in found:
        c = chunks.get(s.chunk_id)
        if c is None or s.chunk_id in have or c.document_id in exclude or c.source in exclude:
            continue
        text = c.text[s.start - c.start : s.end - c.start]
        scored.append((DENSE_WEIGHT * s.score + LEXICAL_WEIGHT * overlap(q_terms, terms(text)), s.chunk_id))
    best: dict[int, float] = {}
    for score, chunk_id in sorted(scored, reverse=True):
        best.setdefault(chunk_id, score)
        if len(best) == k:
            break
    return [chunk_hit(chunks[cid], score) for cid, score in best.items()]
