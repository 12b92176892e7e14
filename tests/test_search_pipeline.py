"""Search with reranking and query expansion configured, end to end: real store, real model, loopback LLM."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.store import open_store
from conftest import ingest_corpus
from fake_servers import ChatServer, Fault

PASSAGE = re.compile(r'<passage id="(\d+)">\n(.*?)\n</passage>', re.DOTALL)
DOCS = {
    "tea.md": "# Tea\n\nGreen tea is brewed at 80 degrees for two minutes.",
    "coffee.md": "# Coffee\n\nEspresso is brewed by forcing hot water through ground coffee beans.",
    "cocoa.md": "# Cocoa\n\nHot chocolate is made from cocoa powder, milk and sugar.",
    "kettle.md": "# Kettles\n\nA kettle boils water; descale it monthly where the water is hard.",
}


def user_text(payload: dict[str, Any]) -> str:
    return str(next(m["content"] for m in payload["messages"] if m["role"] == "user"))


def respond(payload: dict[str, Any]) -> str:
    """Grade passages (cocoa 3, everything else 0) or, for an expansion request, rewrite the query."""
    text = user_text(payload)
    passages = PASSAGE.findall(text)
    if passages:
        return json.dumps({"scores": [{"id": int(i), "score": 3 if "cocoa" in body else 0} for i, body in passages]})
    return json.dumps({"queries": ["descaling a kettle in hard water areas"]})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, embedder: MiniLMEmbedder) -> Path:
    return ingest_corpus(tmp_path_factory.mktemp("pipeline"), DOCS, embedder)


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer().running() as s:
        s.responder = respond
        yield s


def app_for(root: Path, embedder: MiniLMEmbedder, server: ChatServer, **overrides: Any) -> Archivist:
    settings = load_settings(
        store=f"sqlite:///{root / 'store.db'}",
        llm_url=server.url,
        llm_model="grader",
        llm_max_retries=0,
        llm_cache=False,
        **overrides,
    )
    return Archivist(settings, open_store(settings.store), embedder)


def sources(hits: list[Any]) -> list[str]:
    return [Path(h.source).name for h in hits]


def test_llm_reranker_reorders_the_hybrid_results(corpus: Path, embedder: MiniLMEmbedder, server: ChatServer) -> None:
    query = "how is a hot drink brewed?"
    with app_for(corpus, embedder, server) as plain:
        baseline = plain.searcher().search(query, k=4)
    with app_for(corpus, embedder, server, reranker="llm", rerank_depth=4) as app:
        outcome = app.searcher().search(query, k=4)
        fingerprint = app.searcher().fingerprint()
    assert sources(baseline.hits)[0] != "cocoa.md"  # so the reranker has something to do
    assert sources(outcome.hits)[0] == "cocoa.md"
    assert sorted(sources(outcome.hits)) == sorted(sources(baseline.hits))
    assert outcome.reranker == "llm" and outcome.warnings == []
    assert fingerprint["reranker"]["name"] == "llm" and fingerprint["reranker"]["depth"] == 4
    # The passages went to the model fenced, once each.
    graded = [pid for r in server.requests for pid, _ in PASSAGE.findall(user_text(r))]
    assert len(graded) == 4


def test_a_failing_model_keeps_the_retrieval_order_and_says_why(
    corpus: Path, embedder: MiniLMEmbedder, server: ChatServer
) -> None:
    query = "how is a hot drink brewed?"
    with app_for(corpus, embedder, server) as plain:
        baseline = sources(plain.search(query, k=3))
    server.faults.extend(Fault(status=500) for _ in range(5))
    with app_for(corpus, embedder, server, reranker="llm") as app:
        outcome = app.searcher().search(query, k=3)
    assert sources(outcome.hits) == baseline
    assert len(outcome.warnings) == 1 and "AllProvidersFailed" in outcome.warnings[0]


def test_multi_query_expansion_finds_what_the_rewrite_matches(
    corpus: Path, embedder: MiniLMEmbedder, server: ChatServer
) -> None:
    with app_for(corpus, embedder, server, query_expansion="multi-query", expansion_queries=1) as app:
        outcome = app.searcher().search("limescale", k=2)
    assert outcome.queries == ["limescale", "descaling a kettle in hard water areas"]
    assert "kettle.md" in sources(outcome.hits)


def test_cli_search_with_llm_reranking_needs_a_provider(corpus: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")}
    env["ARCHIVIST_STORE"] = f"sqlite:///{corpus / 'store.db'}"
    proc, bad = (
        subprocess.run(
            [sys.executable, "-m", "archivist.cli", "search", "tea", "--rerank", reranker],
            cwd=corpus,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        for reranker in ("llm", "magic")
    )
    assert proc.returncode == 2
    assert "needs an LLM provider" in proc.stderr and "ARCHIVIST_LLM_URL" in proc.stderr
    assert bad.returncode == 2 and "reranker" in bad.stderr


def test_cli_search_json_with_reranking(corpus: Path, server: ChatServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")}
    env |= {
        "ARCHIVIST_STORE": f"sqlite:///{corpus / 'store.db'}",
        "ARCHIVIST_LLM_URL": server.url,
        "ARCHIVIST_LLM_MODEL": "grader",
        "ARCHIVIST_LLM_CACHE": "false",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "archivist.cli", "search", "how is a hot drink brewed?", "--rerank", "llm", "--json"],
        cwd=corpus,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)
    assert Path(hits[0]["source"]).name == "cocoa.md"
