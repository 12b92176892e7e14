"""PostgreSQL search beyond the contract suite (a real server, tests/pg_server.py): a dense search that pgvector's
iterative scan cut short says so in the response's warnings (pipeline, HTTP, CLI, answers), and never when nothing
was missed; the one-statement hybrid candidates equal the two queries'."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.server.app import create_app
from archivist.server.auth import mint_api_key
from archivist.store import open_store
from archivist.store.filters import Filters
from archivist.store.protocols import Store
from archivist.store.records import DocumentWrite
from archivist.types import Chunk, Document, sha256_hex
from live_server import serving

QUERY = "rotate the signing keys"
#: pgvector stops an iterative scan after this many index tuples: far fewer than it takes to find 100 rare chunks
TRUNCATING = "options=-c%20hnsw.max_scan_tuples%3D50"


def _corpus(store: Store, model: str, dim: int) -> None:
    """Write 3,000 common chunks and 60 rare ones (metadata team=rare, 30 documents), plus one lone chunk (team=solo),
    every chunk with its own random unit vector, so a filter on team=rare passes 2% of the index's rows."""
    rng = np.random.default_rng(7)
    groups = [
        ({f"common{i}.md": [f"common text {i} {j} keys" for j in range(30)] for i in range(100)}, "common"),
        ({f"rare{i}.md": [f"rotate the signing keys {i} {j}" for j in range(2)] for i in range(30)}, "rare"),
        ({"solo.md": ["rotate the signing keys alone"]}, "solo"),
    ]
    for docs, team in groups:
        writes, vectors = [], {}
        for source, paragraphs in docs.items():
            text = "\n\n".join(paragraphs)
            doc = Document(source, source, text, "text/markdown", [], {"team": team})
            chunks, pos = [], 0
            for i, p in enumerate(paragraphs):
                chunks.append(Chunk(doc.id, i, p, pos, pos + len(p), (), 6))
                pos += len(p) + 2
            hashes = [sha256_hex(c.embedding_text(doc.title)) for c in chunks]
            for h in hashes:
                v = rng.normal(size=dim)
                vectors[h] = (v / np.linalg.norm(v)).astype(np.float32)
            writes.append(DocumentWrite(doc, chunks, hashes, "c1"))
        store.write_documents(model, writes, vectors)


@pytest.fixture(scope="module")
def filled(postgres_server: str, embedder: MiniLMEmbedder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Yield the URL of a PostgreSQL database holding the corpus (an SQLite copy of it lies beside, in `sqlite_url`)."""
    import psycopg

    from pg_server import database_url

    name = "extras_" + os.urandom(6).hex()
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = database_url(postgres_server, name)
    with closing(open_store(url)) as store:
        _corpus(store, embedder.model_id, embedder.dim)
    yield url
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def _app(url: str, embedder: MiniLMEmbedder) -> Archivist:
    settings = load_settings(store=url)
    return Archivist(settings, open_store(settings.store), embedder)


def test_a_dense_search_cut_short_says_so_in_search_and_answer_warnings(filled: str, embedder: MiniLMEmbedder) -> None:
    rare = Filters.parse(["team=rare"])
    with _app(f"{filled}&{TRUNCATING}", embedder) as app:
        outcome = app.searcher().search(QUERY, k=10, filters=rare)
        # The fused hits still come back (BM25 finds the rare chunks), but the dense arm's pool was short.
        assert outcome.hits and {h.source for h in outcome.hits} <= {f"rare{i}.md" for i in range(30)}
        (warning,) = outcome.warnings
        returned = int(warning.split(" returned ")[1].split(" of ")[0])
        assert returned < 60
        assert warning == (
            f"dense search returned {returned} of 100 rows although at least 60 chunks pass the filters: pgvector's"
            " iterative index scan stopped after hnsw.max_scan_tuples (50) index tuples; raise"
            " hnsw.max_scan_tuples (or hnsw.ef_search) for this store, e.g. add"
            " options=-c%20hnsw.max_scan_tuples%3D250 to its URL"
        )
        answer = app.answerer().answer(QUERY, filters=rare)
        assert warning in answer.warnings
        key = mint_api_key(app.store, "reader", ["read"])[0]
        with serving(create_app(app, run_jobs=False)) as base:
            response = httpx.post(
                f"{base}/v1/search",
                json={"query": QUERY, "k": 5, "filters": {"team": "rare"}},
                headers={"Authorization": f"Bearer {key}"},
            )
        assert response.status_code == 200, response.text
        assert response.json()["warnings"] == [warning]
    # The same search with pgvector's default limit finds every rare chunk: no warning.
    with _app(filled, embedder) as app:
        assert app.searcher().search(QUERY, k=10, filters=rare).warnings == []


def test_the_cli_prints_the_warning_of_a_search_cut_short(filled: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")}
    env["ARCHIVIST_STORE"] = f"{filled}&{TRUNCATING}"
    proc = subprocess.run(
        [sys.executable, "-m", "archivist.cli", "search", QUERY, "--filter", "team=rare", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    hits: list[dict[str, Any]] = json.loads(proc.stdout)
    assert hits and all(h["source"].startswith("rare") for h in hits)
    assert "warning: dense search returned" in proc.stderr and "hnsw.max_scan_tuples" in proc.stderr


def test_no_warning_when_the_filters_pass_fewer_chunks_than_asked(
    filled: str, embedder: MiniLMEmbedder, tmp_path: Path
) -> None:
    # One chunk passes team=solo: a dense search for 100 returns it alone, and that is everything there is.
    solo = Filters.parse(["team=solo"])
    with _app(filled, embedder) as app:
        dense = app.store.dense_search(embedder.model_id, embedder.embed_query(QUERY), 100, solo)
        assert [app.store.get_chunks([c])[c].source for c, _ in dense] == ["solo.md"]
        outcome = app.searcher().search(QUERY, k=10, filters=solo)
        assert [h.source for h in outcome.hits] == ["solo.md"] and outcome.warnings == []
    with _app(f"{filled}&{TRUNCATING}", embedder) as app:
        assert app.searcher().search(QUERY, k=10).warnings == []  # unfiltered, the scan yields all 100 at once
    # SQLite scores every vector that passes the filters, so it never warns of a short dense search.
    with _app(f"sqlite:///{tmp_path / 's.db'}", embedder) as app:
        _corpus(app.store, embedder.model_id, embedder.dim)
        for spec in ("team=rare", "team=solo"):
            outcome = app.searcher().search(QUERY, k=10, filters=Filters.parse([spec]))
            assert outcome.hits and outcome.warnings == [], spec


@pytest.mark.parametrize("spec", [None, "team=rare", "team=solo", "team=nobody"])
def test_one_statement_hybrid_candidates_equal_the_two_searches(
    filled: str, embedder: MiniLMEmbedder, spec: str | None
) -> None:
    filters = Filters.parse([spec]) if spec else Filters()
    with closing(open_store(filled)) as store:
        for query in (QUERY, "common text keys", "zzz nothing matches"):
            vector = embedder.embed_query(query)
            dense = store.dense_search(embedder.model_id, vector, 100, filters)
            bm25 = store.bm25_search(query, 100, filters)
            assert store.hybrid_candidates(embedder.model_id, vector, query, 100, filters) == (dense, bm25)  # type: ignore[attr-defined]
        # A model with no vectors: no dense candidates, BM25's still.
        assert store.hybrid_candidates("other-model", vector, QUERY, 10, filters) == (  # type: ignore[attr-defined]
            [],
            store.bm25_search(QUERY, 10, filters),
        )


def test_glob_filters_match_on_postgres_as_sqlite_glob_matches(postgres_url: str) -> None:
    import sqlite3

    import psycopg

    from archivist.store.postgres.docsql import glob_regex

    patterns = [
        "docs/*",
        "a?c",
        "[abc]*",
        "[^abc]*",
        "[]]*",
        "[a-c]x",
        "[z-a]*",
        "[^z-a]*",
        "[a-\\]*",
        "[[:alpha:]]*",
        "[[.a.]]*",
        "[[=a=]]*",
        "[\\]*",
        "*[*",
        "x[",
        "[-a]*",
        "[a-]*",
        "é*",
        "[é-ë]",
        "*.md",
        "(a|b)*",
        "a.b",
    ]
    texts = ["docs/a.md", "abc", "dc", "]x", "bx", "zeta", "a", "[:alpha:]", "\\", "x[", "-", "é", "ê", "(a|b)", "a.b"]
    sqlite = sqlite3.connect(":memory:")
    with psycopg.connect(postgres_url, autocommit=True) as pg:
        for pattern in patterns:
            regex = glob_regex(pattern)
            for text in texts:
                want = bool(sqlite.execute("SELECT ? GLOB ?", (text, pattern)).fetchone()[0])
                got = bool(pg.execute("SELECT %s ~ %s", (text, regex)).fetchone()[0])  # never an error
                assert got == want, (pattern, text, regex)


def test_a_filter_value_with_a_nul_character_is_a_usage_error() -> None:
    from archivist.types import UsageError

    for make in (lambda: Filters.parse(["source=a\x00b"]), lambda: Filters.from_mapping({"source": "a\x00*"})):
        with pytest.raises(UsageError, match="NUL character"):
            make()
