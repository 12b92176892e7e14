"""PostgreSQL search beyond the contract suite (a real server, tests/pg_server.py): a dense search that pgvector's
iterative scan cut short says so in the response's warnings (pipeline, HTTP, CLI, answers), and never when nothing
was missed; the one-statement hybrid candidates equal the two queries'."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
#: (and every filtered search walks the index: by default one that few chunks pass is an exact scan)
TRUNCATING = "exact_dense_below=0&options=-c%20hnsw.max_scan_tuples%3D50"


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
        _write(
            store,
            model,
            dim,
            rng,
            [(source, source, paragraphs, {"team": team}) for source, paragraphs in docs.items()],
        )


def _write(
    store: Store,
    model: str,
    dim: int,
    rng: np.random.Generator,
    docs: list[tuple[str, str, list[str], dict[str, Any]]],
) -> list[DocumentWrite]:
    """Write documents (source, title, paragraphs, metadata) in one batch, a chunk per paragraph, each chunk with its
    own random unit vector; return the writes."""
    writes, vectors = [], {}
    for source, title, paragraphs, metadata in docs:
        text = "\n\n".join(paragraphs)
        doc = Document(source, title, text, "text/markdown", [], metadata)
        chunks, pos = [], 0
        for i, para in enumerate(paragraphs):
            chunks.append(Chunk(doc.id, i, para, pos, pos + len(para), (), len(para.split())))
            pos += len(para) + 2
        hashes = [sha256_hex(c.embedding_text(doc.title)) for c in chunks]
        for h in hashes:
            v = rng.normal(size=dim)
            vectors[h] = (v / np.linalg.norm(v)).astype(np.float32)
        writes.append(DocumentWrite(doc, chunks, hashes, "c1"))
    store.write_documents(model, writes, vectors)
    return writes


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


def test_a_filter_that_few_chunks_pass_is_searched_exactly_whatever_the_index_scan_would_find(
    filled: str, embedder: MiniLMEmbedder
) -> None:
    """At most `exact_dense_below` (10,000) chunks pass team=rare (60 of 3,061), so its dense search compares the
    query with each of them: the exact ranking, all 60, even where pgvector's scan is cut short after 50 tuples."""
    rare = Filters.parse(["team=rare"])
    vector = embedder.embed_query(QUERY)
    cut_short = "options=-c%20hnsw.max_scan_tuples%3D50"
    with closing(open_store(f"{filled}&{cut_short}")) as store:
        import psycopg

        with psycopg.connect(filled) as conn:
            wanted = [
                (int(i), float(s))
                for i, s in conn.execute(
                    "SELECT c.id, -(e.vector <#> %s::vector) AS s FROM chunks c"
                    " JOIN documents d ON d.id = c.document_id"
                    " JOIN embeddings e ON e.text_hash = c.embed_hash WHERE d.fields ->> 'team' = 'rare'"
                    " ORDER BY s DESC, c.id",
                    (str(list(map(float, vector))),),
                )
            ]
        assert len(wanted) == 60
        got = store.dense_search(embedder.model_id, vector, 100, rare)
        assert [i for i, _ in got] == [i for i, _ in wanted]
        assert [s for _, s in got] == pytest.approx([s for _, s in wanted], abs=1e-6)
        assert store.dense_search(embedder.model_id, vector, 10, rare) == got[:10]


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
            one_dense, one_bm25 = store.hybrid_candidates(embedder.model_id, vector, query, 100, filters)  # type: ignore[attr-defined]
            assert one_dense == dense
            _same_ranking(one_bm25, bm25)
        # A model with no vectors: no dense candidates, BM25's still.
        no_dense, its_bm25 = store.hybrid_candidates("other-model", vector, QUERY, 10, filters)  # type: ignore[attr-defined]
        assert no_dense == []
        _same_ranking(its_bm25, store.bm25_search(QUERY, 10, filters))


def _same_ranking(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    """Assert the same ids in the same order with the same scores, up to the last bits of the IDF's arithmetic (in
    SQL for the one statement, in Python for `bm25_search`)."""
    assert [i for i, _ in got] == [i for i, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-12)


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


def _zipf_corpus(store: Store, model: str, dim: int) -> None:
    """Write 40 documents of 30 chunks, 12 words each drawn from a Zipf law over 300 words (so a few words are in
    most chunks and many are in a handful), metadata `tenant` one of 8; the same corpus every time (seeded)."""
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(300)]
    p = 1.0 / (np.arange(300) + 2.0)
    p /= p.sum()
    docs: list[tuple[str, str, list[str], dict[str, Any]]] = []
    for d in range(40):
        paragraphs = [" ".join(rng.choice(words, size=12, p=p)) for _ in range(30)]
        docs.append((f"zipf{d}.md", f"zipf {d}", paragraphs, {"tenant": f"t{d % 8}"}))
    _write(store, model, dim, rng, docs)


def test_bm25_top_k_read_from_the_rarest_terms_first_is_the_exact_top_k(
    postgres_url: str, embedder: MiniLMEmbedder, tmp_path: Path
) -> None:
    """`bm25_search` reads the common terms' postings only for the chunks holding a rarer term (MaxScore); its top k
    must still be exactly the top k of every chunk: the same ranking as the full scan of every posting (the
    one-statement form), and the same scores as SQLite's in-memory BM25, with and without a filter, for queries of
    common words only, rare words only, and mixes, at k from 1 to 200."""
    lite = open_store(f"sqlite:///{tmp_path / 'zipf.db'}")
    # By default a filter that few chunks pass scores each of them; exact_dense_below=0 takes MaxScore's way.
    sep = "&" if "?" in postgres_url else "?"
    walking = open_store(f"{postgres_url}{sep}exact_dense_below=0")
    with closing(open_store(postgres_url)) as pg, closing(lite), closing(walking):
        for store in (pg, lite):
            _zipf_corpus(store, embedder.model_id, embedder.dim)
        rng = np.random.default_rng(5)
        queries = ["w0 w1", "w0 w1 w2 w3", "w250 w280", "w0 w299", "w1 w40 w170", "w2 w2 w9"]
        queries += [" ".join(f"w{int(i)}" for i in rng.integers(0, 300, 3)) for _ in range(14)]
        vector = embedder.embed_query("anything")
        for filters, store in [
            (Filters(), pg),
            (Filters.parse(["tenant=t3"]), pg),
            (Filters.parse(["tenant=t3"]), walking),
        ]:
            for query in queries:
                for k in (1, 7, 50, 200):
                    got = store.bm25_search(query, k, filters)
                    _same_ranking(got, pg.hybrid_candidates(embedder.model_id, vector, query, k, filters)[1])  # type: ignore[attr-defined]
                    want = lite.bm25_search(query, k, filters)
                    assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-6), (
                        query,
                        k,
                    )  # SQLite: float32


def test_bm25_corpus_moments_of_a_large_index_are_estimated_close_to_the_exact_ones(
    postgres_url: str, embedder: MiniLMEmbedder
) -> None:
    """Past `bm25_sample_from` rows, a query's BM25 mean and spread (what learned fusion normalises by) are no longer
    summed over every posting: the terms in at most `bm25_exact_df` rows are counted exactly and the commoner ones
    from a fixed 1-in-16 sample. With only rare terms the estimate is the exact figure; with common ones it stays
    near it; the candidates' own scores never change."""
    with closing(open_store(postgres_url)) as store:
        _zipf_corpus(store, embedder.model_id, embedder.dim)
        vector = embedder.embed_query("anything")
        hits = store.bm25_search("w0 w1 w7 w150", 30, Filters())
        ids = [i for i, _ in hits]

        def scores(query: str, sample_from: int, exact_df: int) -> Any:
            store.bm25_sample_from, store.bm25_exact_df = sample_from, exact_df  # type: ignore[attr-defined]
            return store.candidate_scores(embedder.model_id, vector, query, ids)

        for query in ("w0 w1", "w0 w1 w7 w150", "w150 w220", "w3"):
            exact = scores(query, 10**9, 0)
            rare_only = scores(query, 0, 10**9)  # every term counted exactly: the rows holding any of them
            assert (rare_only.bm25_mean, rare_only.bm25_std) == pytest.approx((exact.bm25_mean, exact.bm25_std), 1e-9)
            assert rare_only.bm25 == exact.bm25 and rare_only.doc_bm25 == exact.doc_bm25
            # Every term sampled (only for common terms: a 1-in-16 sample of a rare term's few rows may hold none,
            # which is why rare terms are counted exactly); and the commonest sampled, the rest exact.
            for exact_df in (0, 100) if query in ("w0 w1", "w3") else (100,):
                estimate = scores(query, 0, exact_df)
                assert estimate.bm25 == exact.bm25
                assert estimate.bm25_mean == pytest.approx(exact.bm25_mean, rel=0.35), (query, exact_df)
                assert estimate.bm25_std == pytest.approx(exact.bm25_std, rel=0.35), (query, exact_df)
                assert estimate.doc_bm25_std > 0


def test_connections_the_server_dropped_are_replaced_before_a_statement_fails(postgres_url: str) -> None:
    """A server restart or failover ends every pooled connection; the next calls must still succeed (each one taken
    from the pool is checked first), not fail once per pooled connection."""
    import psycopg

    with closing(open_store(postgres_url)) as store:
        store.stats()
        with ThreadPoolExecutor(4) as pool:  # several pooled connections, all in use once
            list(pool.map(lambda _: store.stats(), range(8)))
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            ended = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert ended is not None and ended[0] >= 1
        for _ in range(8):
            assert store.stats()["documents"] == 0


def test_the_cosine_spread_of_a_large_index_is_estimated_from_a_sample_close_to_the_exact_one(
    postgres_url: str, embedder: MiniLMEmbedder
) -> None:
    """Writes keep only the sum of each model's vectors (no n × n matrix rewritten under the write lock); a query's
    cosine spread is summed over every vector in SQL, and past `dense_exact_values` numbers it comes from a seeded
    sample of that size: close to the exact figure, and the mean stays exact."""
    with closing(open_store(postgres_url)) as store:
        _zipf_corpus(store, embedder.model_id, embedder.dim)  # 1,200 chunks
        hits = store.bm25_search("w0 w1", 20, Filters())
        ids = [i for i, _ in hits]
        for query in ("w0 w1", "rotate the signing keys", "anything at all"):
            vector = embedder.embed_query(query)
            store.dense_exact_values = 10**9  # type: ignore[attr-defined]
            exact = store.candidate_scores(embedder.model_id, vector, query, ids)
            store.dense_exact_values = 600 * embedder.dim  # type: ignore[attr-defined]
            sampled = store.candidate_scores(embedder.model_id, vector, query, ids)
            assert sampled.dense_mean == pytest.approx(exact.dense_mean, abs=1e-9)
            assert sampled.dense_std == pytest.approx(exact.dense_std, rel=0.15)
            assert sampled.dense == exact.dense


def test_chunks_that_tie_to_nine_decimals_rank_by_id_whatever_order_their_terms_were_added_in(
    postgres_url: str, embedder: MiniLMEmbedder
) -> None:
    """Pairs of chunks holding the same terms in another order score the same up to the last bits (the database adds
    them in whatever order its plan reads them); MaxScore's pruning must not drop the lower id of a tie, so its
    top k equals the full scan's, here with plans (hash joins, bitmap scans) that add terms in stored order."""
    rng = np.random.default_rng(11)
    words = [f"t{i}" for i in range(40)]
    docs: list[tuple[str, str, list[str], dict[str, Any]]] = []
    for d in range(30):
        terms = list(rng.choice(words, size=6, replace=False))
        paragraphs = [" ".join(terms), " ".join(reversed(terms)), " ".join(rng.choice(words, size=6))]
        docs.append((f"tie{d}.md", f"tie {d}", paragraphs, {}))
    sep = "&" if "?" in postgres_url else "?"
    hashing = (
        "options=-c%20enable_nestloop%3Doff%20-c%20enable_mergejoin%3Doff%20-c%20enable_indexscan%3Doff"
        "%20-c%20enable_indexonlyscan%3Doff"
    )
    with closing(open_store(postgres_url)) as store:
        writes = _write(store, embedder.model_id, embedder.dim, rng, docs)
    vector = embedder.embed_query("anything")
    with closing(open_store(f"{postgres_url}{sep}{hashing}")) as store:
        for d in range(30):
            query = " ".join(writes[d].chunks[0].text.split())  # every term of the pair
            for k in (1, 2, 5):
                full = store.hybrid_candidates(embedder.model_id, vector, query, k, Filters())[1]  # type: ignore[attr-defined]
                _same_ranking(store.bm25_search(query, k, Filters()), full)


@pytest.mark.parametrize(
    ("given", "k", "walked"),
    [
        (None, 10, 400),  # every search walks at least 400 candidates (pgvector's own default is 40)
        (None, 150, 600),  # a search for more rows walks 4 × k
        (None, 300, 1000),  # at most pgvector's ceiling
        (100, 10, 400),  # a smaller value set for the connection does not lower the floor
        (800, 10, 800),  # a larger one wins
        (1000, 300, 1000),  # up to the ceiling (pgvector itself refuses a larger setting)
    ],
)
def test_the_hnsw_candidate_list_a_search_walks(postgres_url: str, given: int | None, k: int, walked: int) -> None:
    from archivist.store.postgres.search import _scan_settings

    url = postgres_url + (f"&options=-c%20hnsw.ef_search%3D{given}" if given is not None else "")
    with closing(open_store(url)) as store, store._transaction() as conn:  # type: ignore[attr-defined]
        conn.execute("LOAD 'vector'")  # pgvector's settings exist in this session, as after any vector query
        _scan_settings(conn, k)
        assert int(conn.execute("SHOW hnsw.ef_search").fetchone()[0]) == walked
        assert conn.execute("SHOW hnsw.iterative_scan").fetchone()[0] == "relaxed_order"
