"""The composition root: `Archivist.from_settings()` wires every component; CLI, server and tests use it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Any

from threadpoolctl import threadpool_limits

from archivist.config import Settings, load_settings
from archivist.embed.base import Embedder
from archivist.embed.query_cache import QueryCachingEmbedder
from archivist.ingest.chunker import Chunker, ChunkerSettings
from archivist.ingest.pipeline import IngestPipeline, ProgressHook
from archivist.llm.gateway import Gateway
from archivist.retrieve.expansion import Expander
from archivist.retrieve.hybrid import HybridRetriever, Mode, RetrievalSettings
from archivist.retrieve.rerank import Reranker
from archivist.retrieve.search import SearchPipeline
from archivist.store import open_store
from archivist.store.base import Filters, Store
from archivist.types import DEFAULT_COLLECTION, ConflictError, Hit, IngestReport, UsageError, check_collection_name


def build_embedder(settings: Settings) -> Embedder:
    """Return the embedder the settings name."""
    if settings.embedder == "openai":
        from archivist.embed.openai_http import OpenAIEmbedder, bundled_tokenizer

        assert settings.embed_url and settings.embed_model  # checked by Settings
        return OpenAIEmbedder(
            settings.embed_url,
            settings.embed_model,
            tokenizer=bundled_tokenizer(settings.chunk_max_tokens),
            api_key=settings.embed_api_key,
            dim=settings.embed_dim,
            timeout_s=settings.embed_timeout_s,
        )
    from archivist.embed.minilm_onnx import MiniLMEmbedder

    return MiniLMEmbedder(batch_size=settings.embed_batch_size, threads=settings.embed_threads)


def embedder_name(settings: Settings) -> str:
    """Return the model id the settings' embedder stores vectors under, without loading it."""
    if settings.embedder == "openai":
        return f"openai:{settings.embed_model}"
    from archivist.embed.minilm_onnx import MODEL_ID

    return MODEL_ID


class Archivist:
    """The application: a store plus the components that ingest into it and search it."""

    def __init__(self, settings: Settings, store: Store, embedder: Embedder | None = None) -> None:
        self.settings = settings
        self.store = store
        self._embedder = embedder
        self._gateway: Gateway | None = None
        self._reranker: Reranker | None = None
        self._expander: Expander | None = None
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="archivist")
        # OpenBLAS worker threads keep spinning after a matrix product and starve onnxruntime's
        # threads: measured, hybrid search p50 went from 16 ms to 9 ms with BLAS on one thread.
        # Our BLAS calls are matrix-vector products that gain nothing from threads.
        threadpool_limits(1, user_api="blas")

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides: Any) -> Archivist:
        """Return an app wired from settings (environment and archivist.toml when none are given)."""
        settings = settings or load_settings(**overrides)
        return cls(settings, open_store(settings.store))

    @property
    def embedder(self) -> Embedder:
        """Return the embedder, loading the model on first use (commands that only read skip the cost)."""
        if self._embedder is None:
            embedder = build_embedder(self.settings)
            size = self.settings.query_cache_size
            self._embedder = QueryCachingEmbedder(embedder, size) if size else embedder
        return self._embedder

    @property
    def embedding_model(self) -> str:
        """Return the id of the embedding model in use."""
        return self._embedder.model_id if self._embedder is not None else embedder_name(self.settings)

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
        if self._gateway is None:
            from archivist.llm.config import build_gateway

            self._gateway = build_gateway(self.settings, self.store)
        return self._gateway

    def pipeline(self) -> IngestPipeline:
        """Return the ingestion pipeline, or raise UsageError if chunks could not fit the model."""
        if self.settings.chunk_max_tokens > self.embedder.max_tokens:
            raise UsageError(
                f"chunk_max_tokens={self.settings.chunk_max_tokens} exceeds what {self.embedder.model_id} reads "
                f"({self.embedder.max_tokens} tokens): lower ARCHIVIST_CHUNK_MAX_TOKENS"
            )
        return IngestPipeline(
            self.store, self.embedder, self.chunker(), max_file_bytes=int(self.settings.max_file_mb * 1024 * 1024)
        )

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
        """Return the search pipeline: expansion and reranking as configured, around the hybrid retriever."""
        return SearchPipeline(self.retriever(), expander=self.expander(), reranker=self.reranker())

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
