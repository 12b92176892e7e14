"""The extractive answerer: the retrieved sentences that best answer the question, cited, never rewritten."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from archivist.answer.context import BLOCK_GAP, Passage, Segment
from archivist.answer.sentences import Sentence, split_sentences
from archivist.embed.base import Embedder, Vectors
from archivist.embed.lru import VectorLRU
from archivist.text.analyzer import ANSWER_TERMS, analyzer, overlap
from archivist.text.sentences import leading_block, quote_end

#: weights of the sentence relevance score: embedding cosine, query-term overlap, the passage's rank
DENSE_WEIGHT = 0.6
LEXICAL_WEIGHT = 0.4
RANK_PRIOR = 0.05
#: MMR trade-off between relevance and novelty (1.0 = relevance only). 0.7 → 0.85 on COVID-QA dev questions (none
#: of the reported 400; z-score fusion, which never trained on them), with sentence hits: gold span in the quotes
#: 0.51 → 0.56 on 300 of them and 0.541 → 0.565 on the other 680, gold paper cited 0.843 → 0.857 and 0.838 → 0.835.
MMR_LAMBDA = 0.85
#: a further sentence is kept only when it scores at least this share of the best one
KEEP_RATIO = 0.7
#: at most this many sentences without a stored vector are embedded per question (the lexical prefilter picks
#: them): embedding them is most of such an answer's time. Sentences whose vectors were pooled at ingest are all
#: scored, at no model cost. On 200 COVID-QA dev questions (none of the reported 400), 32 → 8 kept gold-paper
#: citations (0.815 → 0.81) and gold spans (0.49 → 0.49) and cut p50 from 286 to 120 ms with a cold cache.
MAX_CANDIDATES = 8
#: sentences are embedded two at a time, shortest first: a batch is padded to its longest sentence, which wastes
#: more than a model call costs (same 200 dev questions, 8 candidates: p50 123 ms in batches of 8, 102 in pairs)
SENTENCE_BATCH = 2


class VectorCache:
    """A bounded LRU of sentence vectors by text: a serving process re-reads the same chunks, so it embeds once."""

    def __init__(self, embedder: Embedder, max_items: int = 20_000) -> None:
        self.embedder = embedder
        self._items = VectorLRU(max_items)
        self.hits = 0
        self.misses = 0

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return one unit vector per text, embedding only the texts not cached."""
        found = {t: v for t in dict.fromkeys(texts) if (v := self._items.get(t)) is not None}
        missing = sorted(dict.fromkeys(t for t in texts if t not in found), key=len)
        for i in range(0, len(missing), SENTENCE_BATCH):
            part = missing[i : i + SENTENCE_BATCH]
            for t, v in zip(part, self.embedder.embed(part), strict=True):
                found[t] = v
                self._items.put(t, v)
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        if not texts:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        return np.stack([found[t] for t in texts]).astype(np.float32, copy=False)


@dataclass(slots=True)
class ScoredSentence:
    """A candidate sentence with its relevance parts and the final score."""

    sentence: Sentence
    dense: float
    lexical: float
    score: float


@dataclass(slots=True)
class Extraction:
    """The sentences chosen for an answer (best first) and every candidate's scores."""

    chosen: list[ScoredSentence]
    candidates: list[ScoredSentence]
    vectors: Vectors

    @property
    def evidence(self) -> float:
        """Return the best candidate's relevance score (0 when there are no candidates): refusal reads it."""
        return max((c.score for c in self.candidates), default=0.0)


#: (document id, start offset) → (end offset, unit vector): sentence vectors stored at ingest
KnownVectors = Mapping[tuple[str, int], tuple[int, Vectors]]


def _stored(sentence: Sentence, known: KnownVectors) -> Vectors | None:
    """Return the stored vector of a sentence: one that starts where it starts and covers most of it."""
    found = known.get((sentence.document_id, sentence.start))
    if found is None:
        return None
    end, vector = found
    # A chunk that ended mid-sentence stored the part it held; cut-sentence completion then made it longer.
    return vector if 2 * (min(end, sentence.end) - sentence.start) >= sentence.end - sentence.start else None


def score_sentences(
    question: str,
    passages: Sequence[Passage],
    embedder: Embedder,
    query_vector: Vectors | None = None,
    cache: VectorCache | None = None,
    known: KnownVectors | None = None,
) -> tuple[list[ScoredSentence], Vectors]:
    """Return the passages' sentences scored against the question, and their vectors.

    Sentences with a vector stored at ingest (`known`) are all scored; of the others, only the `MAX_CANDIDATES`
    best by query-term overlap are embedded and scored.
    """
    sentences = [s for p in passages for s in split_sentences(p)]
    if not sentences:
        return [], np.zeros((0, embedder.dim), dtype=np.float32)
    terms = analyzer(ANSWER_TERMS).terms
    q_terms = terms(question)
    lexical = [overlap(q_terms, terms(s.text)) for s in sentences]
    rank = {p.n: i for i, p in enumerate(passages)}
    stored = [_stored(s, known) if known else None for s in sentences]
    unknown = [i for i, v in enumerate(stored) if v is None]
    if len(unknown) > MAX_CANDIDATES:
        # Lexical prefilter: keep the best-overlapping sentences, ties broken by passage rank and position.
        unknown.sort(key=lambda i: (-lexical[i], rank[sentences[i].passage], i))
        unknown = unknown[:MAX_CANDIDATES]
    keep = sorted({i for i, v in enumerate(stored) if v is not None} | set(unknown))
    texts = [sentences[i].text for i in unknown]
    found: dict[int, Vectors] = {i: v for i, v in enumerate(stored) if v is not None}
    found.update(zip(unknown, cache.embed(texts) if cache is not None else embedder.embed(texts), strict=True))
    vectors = np.stack([found[i] for i in keep]).astype(np.float32, copy=False)
    qv = query_vector if query_vector is not None else embedder.embed_query(question)
    dense = vectors @ qv
    scored = []
    for i, d in zip(keep, dense.tolist(), strict=True):
        s, lex = sentences[i], lexical[i]
        prior = RANK_PRIOR / (1 + rank[s.passage])
        scored.append(ScoredSentence(s, float(d), lex, DENSE_WEIGHT * float(d) + LEXICAL_WEIGHT * lex + prior))
    return scored, vectors


def select(scored: Sequence[ScoredSentence], vectors: Vectors, *, max_sentences: int = 3) -> list[ScoredSentence]:
    """Return up to `max_sentences` sentences by maximal marginal relevance, best first."""
    if not scored:
        return []
    remaining = list(range(len(scored)))
    chosen: list[int] = []
    best = max(s.score for s in scored)
    while remaining and len(chosen) < max_sentences:

        def mmr(i: int) -> float:
            redundancy = max((float(vectors[i] @ vectors[j]) for j in chosen), default=0.0)
            return MMR_LAMBDA * scored[i].score - (1 - MMR_LAMBDA) * redundancy

        pick = max(remaining, key=mmr)
        remaining.remove(pick)
        if chosen and scored[pick].score < KEEP_RATIO * best:
            break
        # A sentence that repeats one already chosen adds nothing for the reader.
        if chosen and max(float(vectors[pick] @ vectors[j]) for j in chosen) > 0.9:
            continue
        chosen.append(pick)
    return [scored[i] for i in chosen]


def extract(
    question: str,
    passages: Sequence[Passage],
    embedder: Embedder,
    *,
    max_sentences: int = 3,
    query_vector: Vectors | None = None,
    cache: VectorCache | None = None,
    known: KnownVectors | None = None,
) -> Extraction:
    """Return the extraction for a question: chosen sentences and all scored candidates."""
    scored, vectors = score_sentences(question, passages, embedder, query_vector, cache, known)
    return Extraction(select(scored, vectors, max_sentences=max_sentences), scored, vectors)


def quotes(chosen: Sequence[ScoredSentence], passages: Sequence[Passage]) -> list[Sentence]:
    """Return the chosen sentences as quotes, best first; chosen sentences that follow each other in a passage
    become one quote, in document order, so the answer never reads them backwards or cites one text twice. A quote
    that ends in a colon, or whose paragraph does, takes in the list, table or code block introduced (`quote_end`).
    """
    by_n = {p.n: p for p in passages}
    ordered = {n: split_sentences(by_n[n]) for n in dict.fromkeys(c.sentence.passage for c in chosen)}
    position = {(n, s.start): i for n, sents in ordered.items() for i, s in enumerate(sents)}

    def follows(n: int, i: int) -> bool:
        """Whether sentence i + 1 of passage n directly follows sentence i (same segment, only space between)."""
        sents = ordered[n]
        if i < 0 or i + 1 >= len(sents):
            return False
        a, b = sents[i], sents[i + 1]
        for seg in by_n[n].segments:
            if seg.start <= a.start and b.end <= seg.end:
                return not seg.text[a.end - seg.start : b.start - seg.start].strip()
        return False

    def joined(x: tuple[int, int, int], y: tuple[int, int, int]) -> bool:
        """Whether two ranges of sentence positions overlap or one directly follows the other."""
        (n, lo, hi), (m, lo2, hi2) = x, y
        if n != m:
            return False
        return (lo <= hi2 and lo2 <= hi) or (hi + 1 == lo2 and follows(n, hi)) or (hi2 + 1 == lo and follows(n, hi2))

    groups: list[tuple[int, int, int]] = []  # (passage, first, last sentence position), best first
    for c in chosen:
        n = c.sentence.passage
        i = position[(n, c.sentence.start)]  # chosen sentences were split from these passages the same way
        touching = [g for g in groups if joined(g, (n, i, i))]
        if not touching:
            groups.append((n, i, i))
            continue
        # Groups never touch each other, so whatever touches the merged range touched the new one: one pass.
        merged = (n, min(i, *(g[1] for g in touching)), max(i, *(g[2] for g in touching)))
        groups = [merged if g == touching[0] else g for g in groups if g not in touching[1:]]
    out: list[Sentence] = []
    for n, lo, hi in groups:
        first, last = ordered[n][lo], ordered[n][hi]
        seg = next(s for s in by_n[n].segments if s.start <= first.start and last.end <= s.end)
        start, end = first.start, seg.start + quote_end(seg.text, last.end - seg.start)
        # A block taken in may hold a chosen sentence quoted already (a list item, a table row): quote it once, at
        # the better-ranked place.
        touched = [i for i, q in enumerate(out) if q.passage == n and q.start < end and start < q.end]
        if touched:
            start, end = min(start, *(out[i].start for i in touched)), max(end, *(out[i].end for i in touched))
        quote = replace(first, start=start, end=end, text=seg.text[start - seg.start : end - seg.start])
        at = touched[0] if touched else len(out)
        out = [q for i, q in enumerate(out) if i not in touched]
        out.insert(at, quote)
        block = _block_after(quote, seg, by_n[n])
        if block is not None and not any(q.passage == n and q.start < block.end and block.start < q.end for q in out):
            out.insert(at + 1, block)
    return out


def _block_after(quote: Sentence, seg: Segment, passage: Passage) -> Sentence | None:
    """Return the block a quote introduces when it ends its segment in a colon and the block is the passage's next
    segment (the chunker cut at the blank line between them), else None."""
    if quote.end != seg.end or not seg.text.rstrip().endswith(":"):
        return None
    nxt = next((s for s in passage.segments if seg.end < s.start <= seg.end + BLOCK_GAP), None)
    n = leading_block(nxt.text) if nxt is not None else 0
    if nxt is None or not n:
        return None
    return Sentence(passage.n, passage.document_id, nxt.start, nxt.start + n, nxt.text[:n])
