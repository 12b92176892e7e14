"""The answerer: retrieve, pack context, generate (LLM via the gateway, or extractive), verify, refuse."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from archivist.answer.context import Passage, complete_cut_sentences, pack_context, render_passages
from archivist.answer.conversation import Turn, check_history, follow_up_extraction, render_history, search_query
from archivist.answer.entailment import apply_entailment, checkable, judge_entailment
from archivist.answer.extractive import MAX_CANDIDATES, Extraction, KnownVectors, VectorCache, extract, quotes
from archivist.answer.guards import (
    drop_reader_aimed,
    flagged_warning,
    output_problem,
    redact_hits,
    redact_segments,
)
from archivist.answer.prompts import EXTRACTIVE_VERSION, Prompt, load_prompt
from archivist.answer.refusal import (
    LLM_REFUSAL_FLOOR,
    REFUSAL_THRESHOLD,
    closest_sources,
    refusal_text,
    should_refuse,
)
from archivist.answer.segments import AnswerSegment, compact, mark, plain, quoted, shown
from archivist.answer.sentence_hits import best_sentence_chunks
from archivist.answer.sentences import Sentence
from archivist.answer.verify import Claim, Verification, split_claims, verify
from archivist.embed.base import Embedder, span_pooling
from archivist.guard.pii import PiiDetector
from archivist.guard.policy import GuardPolicy, InjectionVerdict, QuestionGuard
from archivist.guard.quote import neutralise, quote, undatamark
from archivist.llm.accounting import Budget
from archivist.llm.base import Cancellation, ChatRequest, Completion, Deadline, DoneEvent, Message, TokenEvent
from archivist.llm.errors import Cancelled, LLMError, StreamBroken
from archivist.llm.gateway import Gateway
from archivist.observe import span
from archivist.retrieve.search import SearchPipeline
from archivist.store.filters import Filters
from archivist.text.prose import prose
from archivist.text.sentences import sentence_model_key
from archivist.types import DEFAULT_COLLECTION, Hit, UsageError

log = logging.getLogger(__name__)

#: what the prompt tells the model to reply when the passages do not answer
NOT_IN_DOCUMENTS = "NOT_IN_DOCUMENTS"
UnsupportedPolicy = Literal["drop", "flag"]
_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


@dataclass(slots=True)
class Citation:
    """A numbered source of an answer: the document, where in it, and the exact quoted text."""

    n: int
    document: str
    source: str
    title: str
    heading_path: tuple[str, ...]
    page: int | None
    span: tuple[int, int]
    quote: str
    support: float = 1.0
    collection: str = DEFAULT_COLLECTION

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of the citation."""
        return {
            "n": self.n,
            "document": self.document,
            "source": self.source,
            "title": self.title,
            "heading_path": list(self.heading_path),
            "page": self.page,
            "span": list(self.span),
            "quote": self.quote,
            "support": self.support,
            "collection": self.collection,
        }


@dataclass(slots=True)
class Answer:
    """An answer with [n] markers, its checked citations, overall support, and how it was made."""

    question: str
    answer: str
    citations: list[Citation]
    support: float
    refused: bool
    usage: dict[str, Any]
    prompt_version: str
    trace_id: str
    mode: Literal["extractive", "llm"]
    evidence: float = 0.0
    #: the closest sources (title, source, score) — what a refusal points the user to
    sources: list[dict[str, Any]] = field(default_factory=list)
    #: claims verification did not support: dropped from `answer` (policy "drop") or marked in it ("flag")
    unsupported: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: what checked the claims: "entailment:<provider>/<model>" (the model judged them), "similarity" (lexical +
    #: embedding score), "verbatim" (extractive: quotes by construction) or "none" (refused before generation)
    verification: str = "none"
    #: `answer` as text and citation marks: joined (a citation as "[n]") they are `answer`; links are built from
    #: these, never by finding "[n]" in the text
    segments: list[AnswerSegment] = field(default_factory=list)
    #: the answer relies on text the injection scan flagged (its warnings say which); not in `to_dict`
    flagged: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape of an answer (what `archivist ask --json` prints)."""
        return {
            "question": self.question,
            "answer": self.answer,
            "citations": [c.to_dict() for c in self.citations],
            "support": self.support,
            "refused": self.refused,
            "usage": self.usage,
            "prompt_version": self.prompt_version,
            "trace_id": self.trace_id,
            "mode": self.mode,
            "evidence": self.evidence,
            "sources": self.sources,
            "unsupported": self.unsupported,
            "warnings": self.warnings,
            "timings_ms": self.timings_ms,
            "verification": self.verification,
            "segments": [s.to_dict() for s in self.segments],
        }


@dataclass(frozen=True, slots=True)
class AnswerDone:
    """The last event of a streamed answer: the finished, verified answer."""

    answer: Answer


@dataclass(frozen=True, slots=True)
class RetrievalDone:
    """The first event of a streamed answer: the evidence retrieved, before any text."""

    hits: list[Hit]


AnswerEvent = RetrievalDone | TokenEvent | AnswerDone


@dataclass(slots=True)
class _Prepared:
    """Retrieval, packing and extraction done for one question, before generation."""

    question: str
    hits: list[Hit]
    passages: list[Passage]
    extraction: Extraction
    trace_id: str
    t0: float
    timings: dict[str, float]
    warnings: list[str]
    #: set when the caller stops waiting (its client hung up): the model calls made for the answer stop
    cancellation: Cancellation | None = None
    #: earlier turns of the conversation (oldest first): context for a follow-up question
    history: tuple[Turn, ...] = ()
    #: the guard policy the answer is given under (None: no guard)
    policy: GuardPolicy | None = None
    #: the injection detector's verdict on the question (None: not checked)
    verdict: InjectionVerdict | None = None
    #: its verdict on the highest-scoring earlier user question of the conversation (None: none, or not checked)
    earlier: InjectionVerdict | None = None

    @property
    def guarded(self) -> bool:
        """Return whether the question, an earlier one or the evidence was flagged: a model's answer is then checked
        before any of it is shown (never streamed token by token)."""
        asked = (v for v in (self.verdict, self.earlier) if v is not None)
        return any(v.flagged for v in asked) or any(p.flagged for p in self.passages)


def _citation(n: int, passage: Passage, sentence: Sentence, support: float = 1.0) -> Citation:
    # A passage merges several hits of one document: the sentence's own section, not the best hit's.
    heading_path, page = passage.locate(sentence.start)
    return Citation(
        n=n,
        document=passage.document_id,
        source=passage.source,
        title=passage.title,
        heading_path=heading_path,
        page=page,
        span=(sentence.start, sentence.end),
        quote=sentence.text,
        support=round(support, 4),
        collection=passage.collection,
    )


class Answerer:
    """Answers questions from the store: extractive without a model, through the gateway with one."""

    def __init__(
        self,
        searcher: SearchPipeline,
        embedder: Embedder,
        gateway: Gateway | None = None,
        *,
        k: int = 12,
        budget_tokens: int = 2500,
        max_passages: int = 8,
        max_sentences: int = 3,
        sentence_hits: int = 3,
        refusal_threshold: float = REFUSAL_THRESHOLD,
        llm_refusal_floor: float = LLM_REFUSAL_FLOOR,
        unsupported: UnsupportedPolicy = "drop",
        prompt: Prompt | None = None,
        timeout_s: float | None = None,
        max_tokens: int = 512,
        verify_with_model: bool = True,
        verify_prompt: Prompt | None = None,
        verify_timeout_s: float | None = None,
        conversation_prompt: Prompt | None = None,
        guard: QuestionGuard | None = None,
    ) -> None:
        self.searcher = searcher
        self.embedder = embedder
        # A gateway with no routes cannot generate: treat it as no model at all.
        self.gateway = gateway if gateway is not None and gateway.routes else None
        self.k = k
        self.budget_tokens = budget_tokens
        self.max_passages = max_passages
        self.max_sentences = max_sentences
        #: chunks added to the evidence because they hold the corpus's best-matching stored sentences (found
        #: sentence by sentence, they catch the answer that a chunk's averaged vector and its BM25 score miss).
        #: 0 → 3 on 680 COVID-QA dev questions (see MMR_LAMBDA): the gold span is in the evidence for 0.803 → 0.846
        #: of them, gold paper cited 0.825 → 0.838, gold span in the quotes 0.534 → 0.541 (0.565 with MMR λ 0.85).
        self.sentence_hits = sentence_hits
        self.refusal_threshold = refusal_threshold
        #: with a model: the evidence below which the model is not asked (never above `refusal_threshold`)
        self.llm_refusal_floor = min(llm_refusal_floor, refusal_threshold)
        self.unsupported = unsupported
        self.prompt = prompt or load_prompt()
        #: the prompt of an answer given with earlier turns (the turns quoted as context)
        self.conversation_prompt = conversation_prompt or load_prompt("grounded_conversation")
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        #: with a model: judge each claim's entailment through the gateway (similarity stays the fallback)
        self.verify_with_model = verify_with_model
        self.verify_prompt = verify_prompt or load_prompt("verify_claims")
        #: the judge call's own time limit (default: `timeout_s`, else the gateway's default)
        self.verify_timeout_s = verify_timeout_s
        self.vectors = VectorCache(embedder)
        #: checks questions (direct injection) and sentences of flagged passages; None: no guard at all
        self.guard = guard
        self._pii: PiiDetector | None = None
        #: where this embedder's sentence vectors are stored; None when it cannot pool them (then sentences are
        #: embedded on the spot and sentence hits find nothing)
        self.sentence_key = sentence_model_key(embedder.model_id) if span_pooling(embedder) is not None else None

    @property
    def mode(self) -> Literal["extractive", "llm"]:
        """Return 'llm' when a model is configured, else 'extractive'."""
        return "llm" if self.gateway is not None else "extractive"

    @property
    def prompt_version(self) -> str:
        """Return the prompt identity recorded with every answer of this answerer."""
        return self.prompt.id if self.gateway is not None else EXTRACTIVE_VERSION

    @property
    def entails(self) -> bool:
        """Return whether claims are judged by the model (a model is configured and verify_with_model is on)."""
        return self.gateway is not None and self.verify_with_model

    @property
    def verification(self) -> str:
        """Return the configured verifier: "entailment:<primary provider/model>", "similarity" or "verbatim"."""
        if self.gateway is None:
            return "verbatim"
        if not self.verify_with_model:
            return "similarity"
        primary = self.gateway.routes[0].llm
        return f"entailment:{primary.name}/{primary.model}"

    def fingerprint(self) -> dict[str, Any]:
        """Return every setting that can change an answer, for eval run records."""
        return {
            "mode": self.mode,
            "prompt_version": self.prompt_version,
            "verification": self.verification,
            "verify_prompt_version": self.verify_prompt.id if self.entails else None,
            "k": self.k,
            "budget_tokens": self.budget_tokens,
            "max_passages": self.max_passages,
            "max_sentences": self.max_sentences,
            "sentence_hits": self.sentence_hits,
            "max_candidates": MAX_CANDIDATES,
            # whether sentences are scored by vectors pooled at ingest (all of them) or embedded on the spot
            "sentence_vectors": self.sentence_key,
            "refusal_threshold": self.refusal_threshold,
            **({"llm_refusal_floor": self.llm_refusal_floor} if self.gateway is not None else {}),
            "unsupported": self.unsupported,
            "models": [f"{r.llm.name}/{r.llm.model}" for r in self.gateway.routes] if self.gateway else [],
        }

    # --- the two entry points ---------------------------------------------------------------------------

    def answer(
        self,
        question: str,
        *,
        k: int | None = None,
        filters: Filters = Filters(),
        exclude_documents: frozenset[str] = frozenset(),
        budget: Budget | None = None,
        cancellation: Cancellation | None = None,
        history: Sequence[Turn] = (),
        policy: GuardPolicy | None = None,
    ) -> Answer:
        """Return the grounded answer to a question (or a refusal naming the closest sources).

        `history` holds the conversation's earlier turns, oldest first: a follow-up is retrieved together with the
        earlier question(s) it leans on, and a model reads the turns as context.

        Model calls are charged to `budget` (e.g. a request's, chained to its API key's); one that would not
        fit falls back to the extractive answer with a warning, like any other model failure (a refusal when the
        evidence is under the extractive refusal threshold). Once
        `cancellation` is set, no further model call is made and `Cancelled` is raised instead of an answer.

        `policy` (default: the guard's, from the settings) decides what a question the injection detector flags
        gets: a warning, or InjectionBlocked raised before anything is searched or charged; and whether the answer
        is redacted for personal data.
        """
        with span("answer", configured_mode=self.mode, k=k) as current:
            answer = self._answer(question, k, filters, exclude_documents, budget, cancellation, history, policy)
            current.set(
                mode=answer.mode, refused=answer.refused, citations=len(answer.citations), support=answer.support
            )
            return answer

    def _answer(
        self,
        question: str,
        k: int | None,
        filters: Filters,
        exclude_documents: frozenset[str],
        budget: Budget | None,
        cancellation: Cancellation | None,
        history: Sequence[Turn] = (),
        policy: GuardPolicy | None = None,
    ) -> Answer:
        prep = self._prepare(question, k, filters, exclude_documents, budget, history, policy)
        prep.cancellation = cancellation
        return self._complete(prep, budget, cancellation)

    def _complete(self, prep: _Prepared, budget: Budget | None, cancellation: Cancellation | None) -> Answer:
        """Return the answer of a prepared question: refused, extractive, or generated and checked."""
        refused = self._refusal(prep)
        if refused is not None or self.gateway is None:
            return refused or self._extractive(prep)
        request = self._request(prep)
        try:
            completion = self.gateway.chat(request, self._deadline(cancellation), budget)
        except Cancelled:
            raise  # nobody waits for an answer: an extractive one would be work for nothing
        except LLMError as exc:
            # An answer from the documents beats an error: fall back to extraction and say so.
            return self._fallback(prep, exc)
        return self._generated(prep, completion, budget)

    def stream(
        self,
        question: str,
        *,
        k: int | None = None,
        filters: Filters = Filters(),
        exclude_documents: frozenset[str] = frozenset(),
        budget: Budget | None = None,
        cancellation: Cancellation | None = None,
        history: Sequence[Turn] = (),
        policy: GuardPolicy | None = None,
    ) -> Generator[AnswerEvent, None, None]:
        """Yield the evidence (RetrievalDone), the answer's text as TokenEvents as it is produced, then one
        AnswerDone with the checked answer and its citations.

        A caller that stops early closes the iterator: the model's stream is closed at once and what it generated
        so far is charged to `budget`. Setting `cancellation` from another thread also aborts a model call in
        flight (a stalled one included); the stream then raises `Cancelled`. `history` and `policy` are as for
        `answer`. When the question or the evidence was flagged, or the policy redacts personal data, a model's
        answer is checked (and redacted) before any of it is sent, then sent word by word.
        """
        prep = self._prepare(question, k, filters, exclude_documents, budget, history, policy)
        prep.cancellation = cancellation
        yield RetrievalDone(redact_hits(prep.hits, self.pii) if self._redacts(prep) else prep.hits)
        refused = self._refusal(prep)
        # A model's raw tokens hold whatever it wrote (personal data included): under pii=redact only the redacted,
        # checked answer is sent, as it is when the question or evidence was flagged.
        if refused is not None or self.gateway is None or prep.guarded or self._redacts(prep):
            final = refused or self._complete(prep, budget, cancellation)
            yield from _pieces(final.answer)
            yield AnswerDone(final)
            return
        completion: Completion | None = None
        sent = False
        events = self.gateway.stream(self._request(prep), self._deadline(cancellation), budget)
        try:
            for event in events:
                if isinstance(event, TokenEvent):
                    sent = True
                    yield event
                elif isinstance(event, DoneEvent):
                    completion = event.completion
        except (StreamBroken, Cancelled):
            raise  # text reached the user already, or nobody waits: a switch to another answer would mislead
        except LLMError as exc:
            if sent:
                raise
            final = self._fallback(prep, exc)
            yield from _pieces(final.answer)
            yield AnswerDone(final)
            return
        finally:
            # Closed now, not whenever the collector gets to it: that closes the provider's connection.
            events.close()
        assert completion is not None  # a gateway stream ends with a DoneEvent or raises
        yield AnswerDone(self._generated(prep, completion, budget))

    # --- steps ----------------------------------------------------------------------------------------------

    def _next_chunk(self, document_id: str, chunk_id: int) -> tuple[int, int, str] | None:
        """Return the chunk after `chunk_id` in its document (a document's chunks have consecutive ids)."""
        found = self.searcher.retriever.store.get_chunks([chunk_id + 1]).get(chunk_id + 1)
        if found is None or found.document_id != document_id:
            return None
        return found.start, found.end, found.text

    def _previous_chunk(self, document_id: str, chunk_id: int) -> tuple[int, int, str] | None:
        """Return the chunk before `chunk_id` in its document: the one after `chunk_id - 2` (ids are consecutive)."""
        return self._next_chunk(document_id, chunk_id - 2)

    def _stored_sentences(self, passages: Sequence[Passage]) -> KnownVectors:
        """Return the sentence vectors stored at ingest for the passages' chunks (none from a model that
        cannot pool spans, or for chunks stored before sentence vectors existed)."""
        if self.sentence_key is None:
            return {}
        store = self.searcher.retriever.store
        stored = store.chunk_sentences(self.sentence_key, [c for p in passages for c in p.chunk_ids])
        doc_of = {c: p.document_id for p in passages for c in p.chunk_ids}
        return {
            (doc_of[chunk_id], a): (b, vector)
            for chunk_id, found in stored.items()
            for (a, b), vector in zip(found.spans, found.vectors, strict=True)
        }

    def _deadline(self, cancellation: Cancellation | None = None, timeout_s: float | None = None) -> Deadline | None:
        """Return the deadline of a model call (None: the gateway's default), carrying the cancellation."""
        seconds = timeout_s or self.timeout_s
        if cancellation is not None and not seconds and self.gateway is not None:
            seconds = self.gateway.default_timeout_s
        return Deadline.after(seconds, cancellation) if seconds else None

    def _prepare(
        self,
        question: str,
        k: int | None,
        filters: Filters,
        exclude: frozenset[str],
        budget: Budget | None = None,
        history: Sequence[Turn] = (),
        policy: GuardPolicy | None = None,
    ) -> _Prepared:
        question = question.strip()
        if not question:
            raise UsageError("the question is empty")
        check_history(history)
        t0 = time.perf_counter()
        # First of all: a blocked question is refused before anything is searched, generated or charged.
        verdict, earlier = self.check(question, history, policy)
        t_guard = time.perf_counter()
        k = k or self.k
        # A follow-up ("and how do I rotate them?") is searched, and its sentences scored, together with the
        # earlier question(s) it leans on; without history the query is the question itself.
        query = search_query(question, history)
        # Excluded documents (eval: "gold document removed") are dropped after retrieval, so fetch extra.
        outcome = self.searcher.search(query, k=k + (4 * k if exclude else 0), filters=filters, budget=budget)
        hits: list[Hit] = [h for h in outcome.hits if h.document_id not in exclude and h.source not in exclude][:k]
        if self.sentence_hits and self.sentence_key is not None:
            hits += best_sentence_chunks(
                self.searcher.retriever.store,
                self.sentence_key,
                query,
                self.embedder.embed_query(query),
                self.sentence_hits,
                filters,
                exclude,
                {h.chunk_id for h in hits},
            )
        t1 = time.perf_counter()
        passages = pack_context(
            hits,
            budget_tokens=self.budget_tokens,
            max_passages=self.max_passages,
            count_tokens=lambda text: self.embedder.tokenizer.count([text])[0],
        )
        complete_cut_sentences(passages, self._next_chunk, self._previous_chunk)
        known = self._stored_sentences(passages)
        if query == question:
            extraction = extract(
                question, passages, self.embedder, max_sentences=self.max_sentences, cache=self.vectors, known=known
            )
        else:
            extraction = follow_up_extraction(
                question,
                query,
                history,
                passages,
                self.embedder,
                max_sentences=self.max_sentences,
                cache=self.vectors,
                known=known,
            )
        warnings = list(outcome.warnings)
        warnings += [v.warning() for v in (verdict, earlier) if v is not None and v.flagged]
        if self.guard is not None:
            extraction, dropped = drop_reader_aimed(
                extraction,
                passages,
                self.guard.detector,
                self.guard.query_embedder is not None,
                self.max_sentences,
            )
            warnings += dropped
        t2 = time.perf_counter()
        timings = {
            "guard": round((t_guard - t0) * 1000, 2),
            "retrieve": round((t1 - t_guard) * 1000, 2),
            "extract": round((t2 - t1) * 1000, 2),
        }
        return _Prepared(
            question,
            hits,
            passages,
            extraction,
            uuid.uuid4().hex,
            t0,
            timings,
            warnings,
            history=tuple(history),
            policy=policy or (self.guard.default if self.guard is not None else None),
            verdict=verdict,
            earlier=earlier,
        )

    def check(
        self, question: str, history: Sequence[Turn] = (), policy: GuardPolicy | None = None
    ) -> tuple[InjectionVerdict | None, InjectionVerdict | None]:
        """Return the injection detector's verdicts on the question and on the highest-scoring earlier user question
        (None where unchecked); raise InjectionBlocked when either is flagged and the policy blocks."""
        if self.guard is None:
            return None, None
        verdict = self.guard.check(question.strip(), policy)
        earlier = self.guard.check_earlier([t.content for t in history if t.role == "user"], policy)
        return verdict, earlier

    @property
    def pii(self) -> PiiDetector:
        """Return the PII detector answers are redacted with (built on first use)."""
        if self._pii is None:
            self._pii = PiiDetector()
        return self._pii

    def _redacts(self, prep: _Prepared) -> bool:
        return prep.policy is not None and prep.policy.pii_answers == "redact"

    def _finish(self, prep: _Prepared, answer: Answer) -> Answer:
        answer.timings_ms = {**prep.timings, "total": round((time.perf_counter() - prep.t0) * 1000, 2)}
        answer.warnings = prep.warnings
        answer.evidence = round(prep.extraction.evidence, 4)
        answer.segments = answer.segments or compact([plain(answer.answer)])
        if self.guard is not None and not answer.refused:
            # A model read every passage; an extractive answer relies on the ones it quotes.
            cited = {c.document for c in answer.citations}
            relied = [p for p in prep.passages if answer.mode == "llm" or p.document_id in cited]
            flagged = flagged_warning(relied)
            if flagged is not None:
                prep.warnings.append(flagged)
                answer.flagged = True
        answer.sources = [
            {
                "n": p.n,
                "document": p.document_id,
                "collection": p.collection,
                "title": p.title,
                "source": p.source,
                "score": round(p.score, 4),
            }
            for p in prep.passages[:3]
        ]
        if self._redacts(prep):
            self._redact(prep, answer)
        return answer

    def _redact(self, prep: _Prepared, answer: Answer) -> None:
        """Replace personal data in what the answer shows: its text, quotes, unsupported claims, the titles and
        headings of its citations, the titles of its sources and the passage names its warnings quote (a refusal's
        own words are left alone: the NER model reads "Closest" as a name)."""
        if answer.refused:
            names = self.pii.redact_many(closest_sources(prep.passages))
            answer.answer = refusal_text(prep.passages, names=names)
            answer.segments = compact([plain(answer.answer)])
        else:
            answer.segments = redact_segments(answer.segments, self.pii)
            answer.answer = shown(answer.segments)
        cited, named = answer.citations, [s for s in answer.sources if s["title"]]
        # The names warnings give passages by (title, else source): redacted where a warning quotes them.
        passage_names = list(dict.fromkeys(p.title or p.source for p in prep.passages)) if answer.warnings else []
        # One batch, put back in the order it was taken.
        texts = iter(
            self.pii.redact_many(
                [c.quote for c in cited]
                + [c.title for c in cited]
                + [h for c in cited for h in c.heading_path]
                + [u["text"] for u in answer.unsupported]
                + [s["title"] for s in named]
                + passage_names
            )
        )
        for c in cited:
            c.quote = next(texts)
        for c in cited:
            c.title = next(texts)
        for c in cited:
            c.heading_path = tuple(next(texts) for _ in c.heading_path)
        for u in answer.unsupported:
            u["text"] = next(texts)
        for source in named:
            source["title"] = next(texts)
        swaps = {name: next(texts) for name in passage_names}
        # Longest first, so a name that holds a shorter one is replaced whole.
        for name in sorted((n for n, r in swaps.items() if n != r), key=len, reverse=True):
            answer.warnings = [w.replace(name, swaps[name]) for w in answer.warnings]

    def _refusal(self, prep: _Prepared) -> Answer | None:
        """Return the refusal of a question the evidence cannot answer, else None: without a model, evidence under
        the refusal threshold; with one, only evidence under the lower floor (the model judges the rest)."""
        floor = self.refusal_threshold if self.gateway is None else self.llm_refusal_floor
        # No sentence at all is no evidence, whatever the threshold (0 refuses nothing else).
        if prep.extraction.candidates and not should_refuse(prep.extraction.evidence, floor):
            return None
        return self._refused(prep, usage=_usage(None))

    def _fallback(self, prep: _Prepared, error: LLMError) -> Answer:
        """Return the extractive answer given when the model failed (a refusal when the evidence is under the
        extractive threshold: the model was asked because it could judge what extraction cannot)."""
        if should_refuse(prep.extraction.evidence, self.refusal_threshold):
            prep.warnings.append(
                f"LLM failed, and the evidence is too weak for an extractive answer: {type(error).__name__}: {error}"
            )
            return self._refused(prep, usage=_usage(None))
        prep.warnings.append(f"LLM failed, answered extractively: {type(error).__name__}: {error}")
        return self._extractive(prep)

    def _refused(
        self,
        prep: _Prepared,
        usage: dict[str, Any],
        unsupported: list[dict[str, Any]] | None = None,
        verification: str = "none",
    ) -> Answer:
        answer = Answer(
            question=prep.question,
            answer=refusal_text(prep.passages),
            citations=[],
            support=0.0,
            refused=True,
            usage=usage,
            prompt_version=self._prompt(prep).id if self.gateway is not None else self.prompt_version,
            trace_id=prep.trace_id,
            mode=self.mode,
            unsupported=unsupported or [],
            verification=verification,
        )
        return self._finish(prep, answer)

    def _extractive(self, prep: _Prepared) -> Answer:
        by_n = {p.n: p for p in prep.passages}
        chosen = quotes(prep.extraction.chosen, prep.passages)
        citations = [_citation(i, by_n[q.passage], q) for i, q in enumerate(chosen, start=1)]
        # The quotes keep the document's exact characters; the answer reads as prose, without its line wraps, and
        # without the document's own footnote marks or clickable links.
        segments = quoted([neutralise(prose(q.text)) for q in chosen])
        answer = Answer(
            question=prep.question,
            answer=shown(segments),
            segments=segments,
            citations=citations,
            # Every sentence is a verbatim span of the passage it cites: support is exact by construction.
            support=1.0,
            refused=False,
            usage=_usage(None),
            prompt_version=EXTRACTIVE_VERSION,
            trace_id=prep.trace_id,
            mode="extractive",
            verification="verbatim",
        )
        return self._finish(prep, answer)

    def _prompt(self, prep: _Prepared) -> Prompt:
        """Return the prompt an answer is generated with: the conversation's when it has earlier turns."""
        return self.conversation_prompt if prep.history else self.prompt

    def _request(self, prep: _Prepared) -> ChatRequest:
        prompt = self._prompt(prep)
        if prep.history:
            user = prompt.render(
                history=render_history(prep.history),
                question=quote("question", prep.question),
                passages=render_passages(prep.passages),
            )
        else:
            user = prompt.render_user(prep.question, render_passages(prep.passages))
        return ChatRequest(
            messages=(Message("system", prompt.system), Message("user", user)),
            temperature=0.0,
            max_tokens=self.max_tokens,
            prompt_version=prompt.id,
        )

    def _check(self, prep: _Prepared, verification: Verification, usage: dict[str, Any], budget: Budget | None) -> str:
        """Judge the claims' entailment through the gateway; return the verifier that decided them.

        Similarity (already computed) stays whenever the judge is off, fails, times out or is over budget; a
        failure is said in the answer's warnings. The judge's tokens and cost are added to `usage`.
        """
        if not self.entails:
            return "similarity"
        assert self.gateway is not None
        claims = checkable(verification.claims, prep.passages)
        if not claims:
            return self.verification  # nothing cited to judge: the judge was not needed, not failed
        t0 = time.perf_counter()
        try:
            entailment = judge_entailment(
                self.gateway,
                self.verify_prompt,
                claims,
                prep.passages,
                deadline=self._deadline(prep.cancellation, self.verify_timeout_s),
                budget=budget,
            )
        except Cancelled:
            raise
        except LLMError as exc:
            prep.warnings.append(
                f"entailment check failed, claims were checked by similarity instead: {type(exc).__name__}: {exc}"
            )
            return "similarity"
        finally:
            prep.timings["verify"] = round((time.perf_counter() - t0) * 1000, 2)
        missing = apply_entailment(claims, entailment, prep.passages)
        if missing:
            prep.warnings.append(
                f"the entailment check gave no verdict for claim(s) {missing}: similarity decided those"
            )
        judged = _usage(entailment.completion)
        judged |= {"repairs": entailment.repairs, "prompt_version": self.verify_prompt.id}
        usage["verification"] = judged
        # An answer's usage is every model call made for it: generation plus the check.
        usage["prompt_tokens"] += judged["prompt_tokens"]
        usage["completion_tokens"] += judged["completion_tokens"]
        usage["cost_usd"] += judged["cost_usd"]
        return f"entailment:{entailment.completion.provider}/{entailment.completion.model}"

    def _generated(self, prep: _Prepared, completion: Completion, budget: Budget | None = None) -> Answer:
        usage = _usage(completion)
        text = undatamark(completion.text).strip()
        # First: a reply that leaks the prompt holds its "NOT_IN_DOCUMENTS" too, and must not pass as a refusal.
        problem = output_problem(text, self._prompt(prep).system, prep.passages, prep.question)
        if problem is not None:
            prep.warnings.append(problem)
            return self._refused(prep, usage)
        if not text or NOT_IN_DOCUMENTS in text:
            return self._refused(prep, usage)
        if self.guard is not None:
            detector = self.guard.detector
            score = detector.score([text])[0]
            if score >= detector.threshold:
                prep.warnings.append(
                    f"the model's answer reads as instructions to the reader (injection score {score:.2f}): read it "
                    "as a claim about the documents, and check its citations"
                )
        t0 = time.perf_counter()
        verification = verify(split_claims(text), prep.passages, self.embedder)
        prep.timings["similarity"] = round((time.perf_counter() - t0) * 1000, 2)
        verifier = self._check(prep, verification, usage, budget)
        unsupported = [_unsupported(c) for c in verification.claims if not c.supported]
        kept = [c for c in verification.claims if c.supported or self.unsupported == "flag"]
        if not any(c.supported and c.cited for c in kept):
            return self._refused(prep, usage, unsupported, verifier)
        segments, citations = _renumber(kept, {p.n: p for p in prep.passages})
        # A model may copy a document's footnote marks or links: shown as plain text, never as ours.
        segments = [plain(neutralise(s.text)) if s.type == "text" else s for s in segments]
        answer = Answer(
            question=prep.question,
            answer=shown(segments),
            segments=segments,
            citations=citations,
            support=round(verification.support, 4),
            refused=False,
            usage=usage,
            prompt_version=self._prompt(prep).id,
            trace_id=prep.trace_id,
            mode="llm",
            unsupported=unsupported,
            verification=verifier,
        )
        return self._finish(prep, answer)


def _unsupported(claim: Claim) -> dict[str, Any]:
    entry: dict[str, Any] = {"text": claim.text, "cited": claim.cited, "support": claim.support, "reason": claim.reason}
    if claim.verdict is not None:
        entry |= {"verdict": claim.verdict, "quote": claim.judge_quote}
    return entry


def _renumber(claims: Sequence[Claim], passages: dict[int, Passage]) -> tuple[list[AnswerSegment], list[Citation]]:
    """Return the answer's segments with citations numbered 1, 2, … in order of first use, and those citations."""
    numbers: dict[int, int] = {}
    citations: list[Citation] = []
    parts: list[AnswerSegment] = []
    for claim in claims:
        marks: list[int] = []
        for n in claim.cited:
            sentence = claim.evidence_by_passage.get(n)
            if n not in passages or sentence is None or not claim.supported:
                continue
            if n not in numbers:
                numbers[n] = len(numbers) + 1
                citations.append(_citation(numbers[n], passages[n], sentence, claim.support))
            marks.append(numbers[n])
        parts += [plain(" " if parts else ""), plain(claim.text)]
        parts += [s for m in marks for s in (plain(" "), mark(m))]
        if not claim.supported:
            parts.append(plain(" [unsupported]"))
    return compact(parts), citations


def _usage(completion: Completion | None) -> dict[str, Any]:
    if completion is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "model": "extractive", "cached": False}
    return {
        "prompt_tokens": completion.usage.prompt_tokens,
        "completion_tokens": completion.usage.completion_tokens,
        "cost_usd": completion.cost_usd,
        "model": f"{completion.provider}/{completion.model}",
        "cached": completion.cached,
        "latency_ms": round(completion.latency_s * 1000, 2),
    }


def _pieces(text: str) -> Iterator[TokenEvent]:
    """Yield text word by word (with its trailing space), as a model's stream would."""
    for m in re.finditer(r"\S+\s*", text):
        yield TokenEvent(m.group(0))
