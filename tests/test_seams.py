"""The seams of the architecture: what a plugin or the next backend plugs into, used end to end."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from archivist import observe
from archivist.app import Archivist
from archivist.config import load_settings
from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.embed.registry import embedder_entry, register_embedder
from archivist.llm.base import LLM
from archivist.llm.providers import register_provider
from archivist.store import open_store, register_store, store_exists
from archivist.store.records import IndexCapabilities
from archivist.store.sqlite import SQLiteStore
from archivist.types import UsageError
from conftest import ingest_corpus, write_files
from fake_servers import ChatServer

DOCS = {
    "retries.md": "# Retries\n\nThe gateway retries a provider that answers 429 or 500, with backoff and jitter.\n",
    "budgets.md": "# Budgets\n\nEach API key has a monthly token budget; a call that would exceed it is refused.\n",
    "cache.md": "# Cache\n\nCompletions are cached by everything that determines them, for a day by default.\n",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, embedder: MiniLMEmbedder) -> Path:
    return ingest_corpus(tmp_path_factory.mktemp("seams"), DOCS, embedder)


class _Recorder:
    """A tracer that keeps every finished span: name, attributes, and the span open around it."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self._open: list[str] = []

    @contextmanager
    def span(self, name: str, attributes: dict[str, Any]) -> Iterator[Any]:
        record = {"name": name, "parent": self._open[-1] if self._open else None, **attributes}
        outer = self

        class _Span:
            def set(self, **more: Any) -> None:
                record.update(more)

        self._open.append(name)
        try:
            yield _Span()
        finally:
            self._open.pop()
            outer.spans.append(record)


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    recorder = _Recorder()
    previous = observe.use_tracer(recorder)
    try:
        yield recorder
    finally:
        observe.use_tracer(previous)


def test_spans_mark_ingest_search_retrieval_answer_and_model_calls(
    tmp_path: Path, embedder: MiniLMEmbedder, recorder: _Recorder
) -> None:
    write_files(tmp_path / "docs", DOCS)
    with ChatServer(reply="The gateway retries with backoff [1].").running() as llm:
        settings = load_settings(store=f"sqlite:///{tmp_path / 'store.db'}", llm_url=llm.url, llm_model="m")
        with Archivist(settings, open_store(settings.store), embedder) as app:
            app.ingest([tmp_path / "docs"])
            answer = app.answerer().answer("How does the gateway handle a 429?")
    assert not answer.refused
    names = [s["name"] for s in recorder.spans]
    ingested = [s for s in recorder.spans if s["name"] == "ingest.document"]
    assert sorted(s["source"] for s in ingested) == sorted(str(tmp_path / "docs" / n) for n in DOCS)
    assert all(s["chunks"] >= 1 and s["outcome"] == "chunked" for s in ingested)
    (write,) = (s for s in recorder.spans if s["name"] == "ingest.write")  # the group's embedding and write
    assert write["documents"] == len(DOCS) and write["chunks_embedded"] == write["chunks"] >= len(DOCS)
    (hybrid,) = (s for s in recorder.spans if s["name"] == "retrieve.hybrid")
    (search,) = (s for s in recorder.spans if s["name"] == "search")
    (done,) = (s for s in recorder.spans if s["name"] == "answer")
    assert hybrid["parent"] == "search" and search["parent"] == "answer" and hybrid["hits"] >= 1
    chats = [s for s in recorder.spans if s["name"] == "llm.chat"]
    assert chats and all(c["parent"] == "answer" and c["provider"] == "default" for c in chats)
    assert done["mode"] == "llm" and done["citations"] >= 1 and names[-1] == "answer"


def test_without_a_tracer_spans_do_nothing() -> None:
    with observe.span("anything", a=1) as current:
        current.set(b=2)  # accepted and dropped


class _RankOnlyStore(SQLiteStore):
    """A backend whose index declares it cannot give exact candidate scores (as an approximate index would)."""

    capabilities = IndexCapabilities(exact_dense=False, exact_bm25=False, candidate_scores=False)

    def candidate_scores(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("asked an index for scores it declared it does not compute")

    def corpus_moments(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("asked an index for moments it declared it does not compute")


def test_fusion_falls_back_to_ranks_on_an_index_without_exact_scores(corpus: Path, embedder: MiniLMEmbedder) -> None:
    settings = load_settings(store=f"sqlite:///{corpus / 'store.db'}")
    with Archivist(settings, _RankOnlyStore(corpus / "store.db"), embedder) as app:
        assert settings.fusion == "learned"
        hits = app.search("what does the gateway do on a 429", k=3)
    assert hits[0].source.endswith("retries.md") and hits[0].dense_rank is not None and hits[0].bm25_rank is not None


def test_a_registered_store_scheme_opens_by_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import archivist.store as stores

    monkeypatch.setattr(stores, "_BACKENDS", dict(stores._BACKENDS))
    opened: list[str] = []

    def open_memo(url: str) -> SQLiteStore:
        opened.append(url)
        return SQLiteStore(tmp_path / (url.split("://", 1)[1] + ".db"), url=url)

    register_store("memo", open_memo, exists=lambda url: False)
    with pytest.raises(ValueError, match="registered already"):
        register_store("memo", open_memo)
    with Archivist.from_settings(store="memo://notes") as app:
        assert app.store.url == "memo://notes" and app.store.stats()["documents"] == 0
    assert opened == ["memo://notes"] and not store_exists("memo://notes")
    with pytest.raises(UsageError, match=r"unsupported store URL scheme 'nope'.*memo:.*sqlite:"):
        open_store("nope://x")


def test_a_registered_embedder_is_chosen_by_name_and_an_unknown_one_is_refused(
    tmp_path: Path, embedder: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import archivist.embed.registry as registry

    monkeypatch.setattr(registry, "_EMBEDDERS", dict(registry._EMBEDDERS))
    register_embedder("shared-minilm", lambda settings: embedder, lambda settings: embedder.model_id)
    with Archivist.from_settings(store=f"sqlite:///{tmp_path / 's.db'}", embedder="shared-minilm") as app:
        assert app.embedding_model == embedder.model_id and app.embedder.dim == embedder.dim
    with pytest.raises(UsageError, match=r"unknown embedder 'nope' \(known: \[.*'minilm'.*'shared-minilm'"):
        embedder_entry("nope")


def test_a_registered_provider_kind_serves_a_configured_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import archivist.llm.providers as providers
    from archivist.llm.openai_compat import OpenAICompatible

    monkeypatch.setattr(providers, "_PROVIDERS", dict(providers._PROVIDERS))
    made: list[str] = []

    def house(config: Any, key: str | None) -> LLM:
        made.append(config.name)
        return OpenAICompatible(config.name, str(config.base_url), config.model, api_key=key)

    register_provider("house", house)
    with ChatServer(reply="hello from the house model").running() as llm:
        config = tmp_path / "archivist.toml"
        config.write_text(
            f'[[llm.providers]]\nname = "in-house"\nkind = "house"\nbase_url = "{llm.url}"\nmodel = "h1"\n\n'
            '[llm.prices]\n"h1" = [1.0, 2.0]\n'
        )
        monkeypatch.setenv("ARCHIVIST_CONFIG", str(config))
        settings = load_settings(store=f"sqlite:///{tmp_path / 's.db'}")
        assert [p.name for p in settings.llm.providers] == ["in-house"] and settings.llm.prices == {"h1": (1.0, 2.0)}
        with Archivist.from_settings(settings) as app:
            from archivist.llm.base import ChatRequest, Message

            done = app.gateway().chat(ChatRequest((Message("user", "hi"),)))
    assert made == ["in-house"] and done.text == "hello from the house model" and done.cost_usd > 0
    config.write_text('[[llm.providers]]\nname = "x"\nkind = "martian"\n')
    with (
        Archivist.from_settings(store=f"sqlite:///{tmp_path / 's.db'}") as app,
        pytest.raises(UsageError, match=r"unknown kind 'martian' \(known: \[.*'house'.*'openai'"),
    ):
        app.gateway()
    config.write_text('[[llm.providers]]\nkind = "openai"\n')
    with pytest.raises(UsageError, match=r"archivist.toml: \[\[llm.providers\]\] 0.name: Field required"):
        load_settings()


def test_a_store_failure_answers_a_plain_500_and_the_database_words_go_to_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import sqlite3

    import httpx

    from archivist.server.app import create_app
    from archivist.server.auth import mint_api_key
    from live_server import serving

    settings = load_settings(store=f"sqlite:///{tmp_path / 'store.db'}")
    with Archivist(settings, open_store(settings.store)) as app, serving(create_app(app, run_jobs=False)) as base:
        admin = mint_api_key(app.store, "admin", ["admin"])[0]
        with sqlite3.connect(tmp_path / "store.db") as conn:
            conn.execute("DROP TABLE job_inputs")
            conn.execute("DROP TABLE jobs")
        reply = httpx.get(f"{base}/v1/jobs", headers={"Authorization": f"Bearer {admin}"}, timeout=30)
    assert reply.status_code == 500
    assert reply.json()["error"]["message"] == "internal error; the server log has the details"
    assert any("no such table: jobs" in r.getMessage() and r.exc_info for r in caplog.records)


class _Reverse:
    """A reranker of a user's own that implements only `rerank` (no report): it reverses the retrieval order."""

    name = "reverse"
    depth = 10

    def rerank(self, query: str, hits: Any, k: int) -> list[Any]:
        from dataclasses import replace

        return [replace(h, score=float(-i)) for i, h in enumerate(reversed(list(hits[: self.depth])))][:k]

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name}


def test_a_reranker_that_only_reranks_plugs_into_the_search_pipeline(corpus: Path, embedder: MiniLMEmbedder) -> None:
    from archivist.retrieve.search import SearchPipeline

    settings = load_settings(store=f"sqlite:///{corpus / 'store.db'}")
    with Archivist(settings, open_store(settings.store), embedder) as app:
        plain = app.retriever().search("how are retries done", k=10)
        outcome = SearchPipeline(app.retriever(), reranker=_Reverse()).search("how are retries done", k=2)
    assert outcome.reranker == "reverse" and not outcome.warnings
    assert [h.chunk_id for h in outcome.hits] == [h.chunk_id for h in reversed(plain)][:2]


def test_an_ingest_stops_at_a_store_failure_instead_of_embedding_everything_for_nothing(
    tmp_path: Path, embedder: MiniLMEmbedder
) -> None:
    import sqlite3

    from archivist.types import StoreError

    docs = write_files(tmp_path / "docs", {f"d{i}.md": f"# Doc {i}\n\nText number {i}.\n" for i in range(3)})
    settings = load_settings(store=f"sqlite:///{tmp_path / 'store.db'}")
    with Archivist(settings, open_store(settings.store), embedder) as app:
        with sqlite3.connect(tmp_path / "store.db") as conn:
            conn.execute("DROP TABLE sentence_vectors")
        with pytest.raises(StoreError, match="no such table: sentence_vectors"):
            app.ingest([docs])
