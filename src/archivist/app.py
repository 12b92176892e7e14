"""The composition root: `Archivist.from_settings()` wires every component; CLI, server, worker and tests use it.

Nothing else builds components from settings: the store (by URL scheme), the embedder (by name), the LLM gateway
(providers by kind), the retriever, the search pipeline, the answerer and the ingestion pipeline all come from here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Any

from threadpoolctl import threadpool_limits

from archivist.agent.loop import Agent
from archivist.agent.tools import Tool
from archivist.agent.workflow import Workflow
from archivist.answer.answerer import Answerer
from archivist.config import Settings, load_settings
from archivist.embed.base import Embedder
from archivist.embed.query_cache import QueryCachingEmbedder
from archivist.embed.registry import embedder_entry
from archivist.guard.injection import InjectionDetector
from archivist.guard.policy import GuardPolicy, QuestionGuard, resolve_policy, settings_policy
from archivist.ingest.chunker import Chunker, ChunkerSettings
from archivist.ingest.document_filter import DocumentFilter
from archivist.ingest.pipeline import IngestPipeline, ProgressHook
from archivist.ingest.worker import JobRunner
from archivist.llm.accounting import Budget, Price, PriceTable
from archivist.llm.cache import ResponseCache
from archivist.llm.gateway import Gateway, Route
from archivist.llm.providers import build_provider
from archivist.retrieve.expansion import Expander
from archivist.retrieve.hybrid import HybridRetriever, Mode, RetrievalSettings
from archivist.retrieve.rerank import Reranker
from archivist.retrieve.search import SearchPipeline
from archivist.store import open_store
from archivist.store.filters import Filters
from archivist.store.protocols import Store
from archivist.store.records import AgentStepRecord, ApiKeyRecord
from archivist.types import (
    DEFAULT_COLLECTION,
    ConflictError,
    Hit,
    IngestReport,
    NotFoundError,
    UsageError,
    check_collection_name,
)


class Archivist:
    """The application: a store plus the components that ingest into it and search it."""

    def __init__(self, settings: Settings, store: Store, embedder: Embedder | None = None) -> None:
        if embedder is None:
            embedder_entry(settings.embedder)  # an unknown name fails now (exit 2), not at a job's first document
        self.settings = settings
        self.store = store
        self._embedder = embedder
        self._gateway: Gateway | None = None
        self._reranker: Reranker | None = None
        self._expander: Expander | None = None
        self._searcher: SearchPipeline | None = None
        self._user_tools: list[Tool] | None = None
        self._injection_detector: InjectionDetector | None = None
        #: run on every loaded document before chunking, in order (PII redaction and injection scanning plug in here)
        self.document_filters: list[DocumentFilter] = []
        self._lock = threading.RLock()
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="archivist")
        # OpenBLAS worker threads keep spinning after a matrix product and starve onnxruntime's
        # threads: measured, hybrid search p50 went from 16 ms to 9 ms with BLAS on one thread.
        # Our BLAS calls are matrix-vector products that gain nothing from threads.
        threadpool_limits(1, user_api="blas")

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides: Any) -> Archivist:
        """Return an app wired from settings (environment and archivist.toml when none are given)."""
        settings = settings or load_settings(**overrides)
        embedder_entry(settings.embedder)  # before the store is opened: a typo must not create one
        return cls(settings, open_store(settings.store))

    @property
    def embedder(self) -> Embedder:
        """Return the embedder, loading the model on first use (commands that only read skip the cost)."""
        if self._embedder is None:
            embedder = embedder_entry(self.settings.embedder).build(self.settings)
            size = self.settings.query_cache_size
            self._embedder = QueryCachingEmbedder(embedder, size) if size else embedder
        return self._embedder

    @property
    def embedding_model(self) -> str:
        """Return the id of the embedding model in use."""
        if self._embedder is not None:
            return self._embedder.model_id
        return embedder_entry(self.settings.embedder).model_id(self.settings)

    def chunker(self) -> Chunker:
        """Return the chunker sized for the embedder's tokenizer."""
        s = self.settings
        return Chunker(
            self.embedder.tokenizer,
            ChunkerSettings(
                max_tokens=s.chunk_max_tokens,
                target_tokens=s.chunk_target_tokens,
                overlap_tokens=s.chunk_overlap_tokens,
            ),
        )

    def gateway(self) -> Gateway:
        """Return the LLM gateway over the configured providers, caching responses in the store."""
        with self._lock:
            if self._gateway is None:
                s = self.settings
                routes = [Route(build_provider(c, s.llm_api_key), c.max_retries) for c in s.provider_configs()]
                prices = PriceTable({pattern: Price(*pair) for pattern, pair in s.llm.prices.items()})
                cache = ResponseCache(self.store, s.llm_cache_ttl_s) if s.llm_cache else None
                self._gateway = Gateway(routes, prices=prices, cache=cache)
            return self._gateway

    def pipeline(self) -> IngestPipeline:
        """Return the ingestion pipeline, or raise UsageError if chunks could not fit the model."""
        if self.settings.chunk_max_tokens > self.embedder.max_tokens:
            raise UsageError(
                f"chunk_max_tokens={self.settings.chunk_max_tokens} exceeds what {self.embedder.model_id} reads "
                f"({self.embedder.max_tokens} tokens): lower ARCHIVIST_CHUNK_MAX_TOKENS"
            )
        return IngestPipeline(
            self.store,
            self.embedder,
            self.chunker(),
            max_file_bytes=int(self.settings.max_file_mb * 1024 * 1024),
            filters=self.document_filters,
            injection=self.injection_detector if self.settings.guard_scan_ingest else None,
        )

    def job_runner(self) -> JobRunner:
        """Return a worker over the store's job queue, ingesting with this app's pipeline (start it to run jobs)."""
        s = self.settings
        return JobRunner(self.store, self.pipeline, lease_s=s.job_lease_s, max_attempts=s.job_max_attempts)

    def retriever(self) -> HybridRetriever:
        """Return the hybrid retriever."""
        s = self.settings
        return HybridRetriever(
            self.store,
            lambda: self.embedder,
            RetrievalSettings(
                candidates=s.candidates,
                fusion=s.fusion,
                rrf_k=s.rrf_k,
                dense_weight=s.dense_weight,
                bm25_weight=s.bm25_weight,
                doc_bm25_weight=s.doc_bm25_weight,
                fusion_model=s.fusion_model,
            ),
            self._executor,
        )

    def _llm_gateway(self, purpose: str) -> Gateway:
        gateway = self.gateway()
        if not gateway.routes:
            raise UsageError(
                f"{purpose} needs an LLM provider: set ARCHIVIST_LLM_URL and ARCHIVIST_LLM_MODEL, "
                "or [[llm.providers]] in archivist.toml"
            )
        return gateway

    def reranker(self) -> Reranker | None:
        """Return the configured reranker (None when reranking is off), built once."""
        s = self.settings
        if s.reranker == "none" or self._reranker is not None:
            return self._reranker
        if s.reranker == "llm":
            from archivist.retrieve.llm_rerank import LLMReranker

            self._reranker = LLMReranker(self._llm_gateway("reranker 'llm'"), depth=s.rerank_depth)
        else:
            from archivist.retrieve.cross_encoder import CrossEncoderReranker

            assert s.cross_encoder_dir is not None  # checked by Settings
            self._reranker = CrossEncoderReranker(s.cross_encoder_dir, depth=s.rerank_depth)
        return self._reranker

    def expander(self) -> Expander | None:
        """Return the configured query expander (None when expansion is off), built once."""
        s = self.settings
        if s.query_expansion == "none" or self._expander is not None:
            return self._expander
        from archivist.retrieve.expansion import HyDEExpander, MultiQueryExpander

        gateway = self._llm_gateway(f"query_expansion {s.query_expansion!r}")
        self._expander = (
            MultiQueryExpander(gateway, n=s.expansion_queries)
            if s.query_expansion == "multi-query"
            else HyDEExpander(gateway)
        )
        return self._expander

    def searcher(self) -> SearchPipeline:
        """Return the search pipeline: expansion and reranking as configured, around the hybrid retriever (built
        once; it is safe to share between threads)."""
        if self._searcher is None:
            searcher = SearchPipeline(self.retriever(), expander=self.expander(), reranker=self.reranker())
            with self._lock:
                self._searcher = self._searcher or searcher
        return self._searcher

    def injection_detector(self) -> InjectionDetector:
        """Return the shipped injection detector, loaded once: it reads the app's embedder's vectors when that is
        the bundled MiniLM (so vectors computed for search are reused), else a MiniLM of its own."""
        from archivist.embed.minilm_onnx import MODEL_ID, MiniLMEmbedder
        from archivist.guard.injection import load_injection_detector

        with self._lock:
            if self._injection_detector is None:
                reads = self.embedder if self.embedding_model == MODEL_ID else MiniLMEmbedder()
                self._injection_detector = load_injection_detector(reads)
            return self._injection_detector

    def question_guard(self) -> QuestionGuard:
        """Return the check of questions and agent tasks against the injection detector, under the settings'
        policy by default (the detector loads on the first check that needs it)."""
        from archivist.embed.minilm_onnx import MODEL_ID

        reuse = self.embedder if self.embedding_model == MODEL_ID else None
        return QuestionGuard(self.injection_detector, settings_policy(self.settings), reuse)

    def guard_policy(self, collections: Sequence[str] | None = None, key: ApiKeyRecord | None = None) -> GuardPolicy:
        """Return the guard policy a request is answered under: the settings', tightened by the stored policy of
        each collection it reaches (None: every collection the key may see) and by the key's; the strictest value
        of each setting wins."""
        reach = set(collections) if collections else None
        stored = [
            (c.name, c.policy)
            for c in self.store.list_collections()
            if (
                c.name in reach
                if reach is not None
                else key is None or key.collections is None or c.name in key.collections
            )
        ]
        return resolve_policy(settings_policy(self.settings), stored, (key.id, key.policy) if key is not None else None)

    def answerer(self, **options: Any) -> Answerer:
        """Return an answerer over the search pipeline, the embedder and (if it has routes) the gateway, with the
        settings' verification and refusal defaults; `options` override them (k, timeout_s, refusal_threshold…)."""
        gateway = self.gateway()
        s = self.settings
        defaults: dict[str, Any] = {
            "verify_with_model": s.verify_with_model,
            "verify_timeout_s": s.verify_timeout_s,
            "guard": self.question_guard(),
        }
        if s.refusal_threshold is not None:
            defaults["refusal_threshold"] = s.refusal_threshold
        if s.llm_refusal_floor is not None:
            defaults["llm_refusal_floor"] = s.llm_refusal_floor
        return Answerer(self.searcher(), self.embedder, gateway if gateway.routes else None, **(defaults | options))

    def user_tools(self) -> list[Tool]:
        """Return the user's own tools named by the `agent_tools` setting (none when unset), loaded once."""
        from archivist.agent.tools import load_tools

        spec = self.settings.agent_tools
        if spec is None:
            return []
        if self._user_tools is None:
            loaded = load_tools(spec)
            with self._lock:
                self._user_tools = self._user_tools or loaded
        return list(self._user_tools)

    def agent(
        self,
        *,
        collection: str | None = None,
        tools: Sequence[Tool] | None = None,
        on_step: Callable[[AgentStepRecord], None] | None = None,
        workflow: Workflow | None = None,
        budget_parent: Budget | None = None,
        policy: GuardPolicy | None = None,
    ) -> Agent:
        """Return an agent over the built-in document tools (limited to `collection`; None: every collection) and
        the user's `tools` (None: those the `agent_tools` setting names), journaling its runs in the store. Its runs
        follow `workflow` when given, and the built-in research workflow when no model is configured; their model
        calls are also charged to `budget_parent` (an API key's budget) when given. New tasks are checked for prompt
        injection under `policy` (default: the settings')."""
        from archivist.agent.builtins import builtin_tools
        from archivist.agent.workflow import RESEARCH

        if tools is None:
            tools = self.user_tools()
        if collection is not None and not self.store.has_collection(check_collection_name(collection)):
            raise NotFoundError(f"no collection {collection!r}")
        gateway = self.gateway()
        protocol = self.settings.agent_tool_protocol
        if protocol == "auto":
            protocol = "native" if gateway.supports_tools() else "text"
        return Agent(
            gateway if gateway.routes else None,
            self.store,
            [
                *builtin_tools(self.store, self.searcher(), self.answerer(), collection=collection, policy=policy),
                *tools,
            ],
            self.embedder,
            collection=collection,
            retention_days=self.settings.agent_run_retention_days,
            on_step=on_step,
            tool_protocol=protocol,
            workflow=workflow if workflow is not None or gateway.routes else RESEARCH,
            budget_parent=budget_parent,
            guard=self.question_guard(),
            policy=policy,
        )

    def ingest(
        self,
        paths: list[Path],
        *,
        sync: bool = False,
        progress: ProgressHook | None = None,
        collection: str = DEFAULT_COLLECTION,
        refresh: bool = False,
        follow_symlinks: bool = False,
    ) -> IngestReport:
        """Ingest files and folders into a collection (created if new); return the per-document outcome.

        `refresh` rewrites unchanged documents too: cached vectors are reused, and what the store lacks (sentence
        vectors, in a store written by an older Archivist) is made. `follow_symlinks` reads symlinks in a folder
        that point outside it (skipped by default)."""
        check_collection_name(collection)
        if not self.store.has_collection(collection):
            # Another ingest into the same new collection may have created it since the check: that is the goal.
            with suppress(ConflictError):
                self.store.create_collection(collection)
        return self.pipeline().run(
            paths,
            sync=sync,
            progress=progress,
            collection=collection,
            refresh=refresh,
            follow_symlinks=follow_symlinks,
        )

    def search(self, query: str, *, k: int = 10, filters: Filters = Filters(), mode: Mode = "hybrid") -> list[Hit]:
        """Return the top-k hits for a query (hybrid retrieval, then expansion and reranking if configured)."""
        return self.searcher().search(query, k=k, filters=filters, mode=mode).hits

    def close(self) -> None:
        """Release the store and worker threads."""
        self._executor.shutdown(wait=False)
        self.store.close()

    def __enter__(self) -> Archivist:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
