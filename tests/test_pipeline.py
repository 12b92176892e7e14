"""Ingestion end to end with the real model and a real SQLite file: incremental, sync, failures, crashes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.embed.openai_http import OpenAIEmbedder, bundled_tokenizer
from archivist.store.filters import Filters
from archivist.types import UsageError, document_id_for
from conftest import DATASETS
from fake_servers import EmbeddingServer, Fault

SCIFACT = DATASETS / "scifact" / "corpus.jsonl"

MakeApp = Callable[..., Archivist]


@pytest.fixture
def make_app(tmp_path: Path, embedder: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeApp]:
    """Yield a factory of apps on one store in tmp_path, sharing the loaded model; cwd is tmp_path."""
    monkeypatch.chdir(tmp_path)
    apps: list[Archivist] = []

    def factory(**overrides: object) -> Archivist:
        settings = load_settings(store=f"sqlite:///{tmp_path / 'store.db'}", **overrides)
        app = Archivist(settings, Archivist.from_settings(settings).store, embedder)
        apps.append(app)
        return app

    yield factory
    for a in apps:
        a.close()


def _corpus(root: Path) -> Path:
    docs = root / "docs"
    (docs / "guide").mkdir(parents=True)
    (docs / "guide" / "keys.md").write_text(
        "# API keys\n\nKeys authenticate every request.\n\n## Rotating a key\n\n"
        "Create a new key, deploy it, then revoke the old key. Rotation never interrupts traffic.\n\n"
        "## Revoking\n\nA revoked key stops working within a second.\n"
    )
    (docs / "ops.txt").write_text("Backups\n\nCopy the database with the online backup command every night.\n")
    (docs / "page.html").write_text(
        "<html><head><title>Rate limits</title></head><body><nav>Home | Pricing | Login</nav>"
        "<main><h1>Rate limits</h1><p>Each key may send 100 requests per second before a 429.</p></main>"
        "<footer>Copyright footer text</footer></body></html>"
    )
    (docs / "records.jsonl").write_text(
        json.dumps({"_id": "r1", "title": "Bread", "text": "Sourdough needs a starter and patience.", "lang": "en"})
        + "\n"
        + json.dumps({"_id": "r2", "title": "Pain", "text": "Le levain demande de la patience.", "lang": "fr"})
        + "\n{not json\n"
    )
    (docs / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    (docs / "binary.txt").write_bytes(b"abc\x00\x01\x02" * 50)
    return docs


def test_ingest_a_folder_then_search_it(make_app: MakeApp, tmp_path: Path) -> None:
    docs = _corpus(tmp_path)
    app = make_app()
    report = app.ingest([docs])
    assert sorted(report.added) == [
        "docs/guide/keys.md",
        "docs/ops.txt",
        "docs/page.html",
        "docs/records.jsonl#r1",
        "docs/records.jsonl#r2",
    ]
    reasons = {s.source: s.reason for s in report.skipped}
    assert "unsupported" in reasons["docs/image.png"]
    assert "binary" in reasons["docs/binary.txt"]
    assert any("line 3" in r for r in reasons.values())  # the malformed JSONL line, by number
    assert report.failed == []

    hits = app.search("how do I rotate an API key", k=3)
    assert hits[0].source == "docs/guide/keys.md"
    assert hits[0].heading_path[-1] == "Rotating a key"
    assert "revoke the old key" in hits[0].text
    assert hits[0].dense_rank is not None and hits[0].bm25_rank is not None

    html_hits = app.search("requests per second limit", k=1)
    assert html_hits[0].source == "docs/page.html"
    assert "Pricing" not in html_hits[0].text and "footer" not in html_hits[0].text


def test_filters_apply_to_metadata_and_sources(make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app()
    app.ingest([_corpus(tmp_path)])
    fr = app.search("patience", k=5, filters=Filters.parse(["lang=fr"]))
    assert [h.source for h in fr] == ["docs/records.jsonl#r2"]
    md = app.search("key", k=10, filters=Filters.parse(["source=docs/*.md"]))
    assert md and {h.source for h in md} == {"docs/guide/keys.md"}
    with pytest.raises(UsageError, match="unknown filter key 'colour'"):
        app.search("key", filters=Filters.parse(["colour=red"]))


def test_reingest_is_incremental_and_reuses_vectors(make_app: MakeApp, tmp_path: Path) -> None:
    docs = _corpus(tmp_path)
    app = make_app()
    first = app.ingest([docs])
    again = app.ingest([docs])
    assert again.added == [] and again.updated == [] and again.chunks_embedded == 0
    assert sorted(again.unchanged) == sorted(first.added)

    keys = docs / "guide" / "keys.md"
    keys.write_text(keys.read_text() + "\n## Auditing\n\nEvery key use is logged with its id.\n")
    third = app.ingest([docs])
    assert third.updated == ["docs/guide/keys.md"] and len(third.unchanged) == 4
    doc = app.store.get_document(document_id_for("docs/guide/keys.md"))
    assert doc is not None and doc.version == 2
    # Only the new section's text is new: the others' vectors come from the cache.
    assert 0 < third.chunks_embedded < doc.chunk_count
    assert app.search("is key use logged", k=1)[0].heading_path[-1] == "Auditing"


def test_a_document_stored_without_sentence_vectors_gets_them_when_it_is_next_written(
    make_app: MakeApp, tmp_path: Path
) -> None:
    from archivist.text.sentences import sentence_model_key

    docs = _corpus(tmp_path)
    app = make_app()
    app.ingest([docs])
    key = sentence_model_key(app.embedder.model_id)
    keys_doc = document_id_for("docs/guide/keys.md")
    chunk_ids = [c.id for c in app.store.document_chunks(keys_doc)]
    assert set(app.store.chunk_sentences(key, chunk_ids)) == set(chunk_ids)
    # Sentence vectors lost with nothing else changed: unchanged documents are not rewritten on their own.
    with sqlite3.connect(tmp_path / "store.db") as conn:
        conn.execute("DELETE FROM sentence_vectors")
    assert app.ingest([docs]).chunks_embedded == 0
    keys = docs / "guide" / "keys.md"
    keys.write_text(keys.read_text() + "\n## Auditing\n\nEvery key use is logged with its id.\n")
    report = app.ingest([docs])
    chunk_ids = [c.id for c in app.store.document_chunks(keys_doc)]
    # Every chunk of the rewritten document ran through the model again, cached vector or not.
    assert report.updated == ["docs/guide/keys.md"] and report.chunks_embedded == len(chunk_ids)
    assert set(app.store.chunk_sentences(key, chunk_ids)) == set(chunk_ids)
    # --refresh backfills the rest; a second refresh finds everything in place and embeds nothing.
    refreshed = app.ingest([docs], refresh=True)
    assert refreshed.unchanged == [] and len(refreshed.updated) == 5 and refreshed.chunks_embedded > 0
    all_ids = [c.id for d in app.store.list_documents() for c in app.store.document_chunks(d.id)]
    assert set(app.store.chunk_sentences(key, all_ids)) == set(all_ids)
    assert app.ingest([docs], refresh=True).chunks_embedded == 0


def test_a_store_from_an_older_splitter_gets_current_sentence_vectors_on_the_next_ingest(
    make_app: MakeApp, tmp_path: Path
) -> None:
    from archivist.text.sentences import SPLITTER_VERSION, sentence_model_key

    docs = _corpus(tmp_path)
    app = make_app()
    app.ingest([docs])
    # As written by an older Archivist: its documents' fingerprints name another splitter (or none), and the
    # store holds no sentence vectors under the current key.
    with sqlite3.connect(tmp_path / "store.db") as conn:
        conn.execute(
            "UPDATE documents SET chunker = replace(chunker, ?, '|sentences-s0')", (f"|sentences-{SPLITTER_VERSION}",)
        )
        conn.execute("DELETE FROM sentence_vectors")
    report = app.ingest([docs])
    assert report.unchanged == [] and len(report.updated) == 5 and report.chunks_embedded > 0
    key = sentence_model_key(app.embedder.model_id)
    all_ids = [c.id for d in app.store.list_documents() for c in app.store.document_chunks(d.id)]
    assert set(app.store.chunk_sentences(key, all_ids)) == set(all_ids)
    assert app.ingest([docs]).unchanged and app.ingest([docs]).chunks_embedded == 0


def test_changed_chunk_settings_rechunk_everything(make_app: MakeApp, tmp_path: Path) -> None:
    docs = _corpus(tmp_path)
    make_app().ingest([docs])
    report = make_app(chunk_max_tokens=64, chunk_target_tokens=24, chunk_overlap_tokens=8).ingest([docs])
    assert len(report.updated) == 5 and report.unchanged == []


def test_sync_removes_only_documents_whose_source_is_gone(make_app: MakeApp, tmp_path: Path) -> None:
    docs = _corpus(tmp_path)
    app = make_app()
    app.ingest([docs])
    (docs / "ops.txt").unlink()
    (docs / "page.html").write_bytes(b"\xff\xfe broken now")  # unreadable this run: must be kept
    records = docs / "records.jsonl"
    records.write_text(records.read_text().splitlines()[0] + "\n")  # r2 gone, no malformed line left
    report = app.ingest([docs], sync=True)
    assert sorted(report.removed) == ["docs/ops.txt", "docs/records.jsonl#r2"]
    assert "docs/page.html" in app.store.sources()
    assert app.ingest([docs], sync=False).removed == []


def test_nothing_stored_is_lost_when_embedding_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    docs = _corpus(tmp_path)
    with EmbeddingServer(dim=16).running() as server:
        settings = load_settings(store=f"sqlite:///{tmp_path / 's.db'}")
        embedder = OpenAIEmbedder(server.url, "e", tokenizer=bundled_tokenizer(256), max_retries=0)
        app = Archivist(settings, Archivist.from_settings(settings).store, embedder)
        assert len(app.ingest([docs]).added) == 5
        (docs / "ops.txt").write_text("Backups\n\nNew text that needs embedding.\n")
        server.faults.extend([Fault(500, b"boom")] * 5)
        report = app.ingest([docs])
        assert [f.source for f in report.failed] == ["docs/ops.txt"] and "500" in report.failed[0].reason
        assert app.store.stats()["documents"] == 5
        assert "online backup" in app.store.document_chunks(app.store.list_documents()[1].id)[0].text
        app.close()


def test_chunk_size_beyond_the_model_is_refused(make_app: MakeApp, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="exceeds what all-MiniLM-L6-v2 reads"):
        make_app(chunk_max_tokens=1000, chunk_target_tokens=500).ingest([_corpus(tmp_path)])


def _store_invariants(db: Path) -> tuple[int, int]:
    """Assert every stored document is whole; return (documents, chunks)."""
    conn = sqlite3.connect(db)
    bad = conn.execute(
        "SELECT d.source, d.chunk_count, COUNT(c.id) FROM documents d LEFT JOIN chunks c ON c.document_id = d.id"
        " GROUP BY d.id HAVING d.chunk_count != COUNT(c.id)"
    ).fetchall()
    assert bad == [], f"half-written documents: {bad}"
    orphans = conn.execute(
        "SELECT COUNT(*) FROM chunks c LEFT JOIN documents d ON d.id = c.document_id WHERE d.id IS NULL"
    ).fetchone()[0]
    unembedded = conn.execute(
        "SELECT COUNT(*) FROM chunks c LEFT JOIN embeddings e ON e.text_hash = c.embed_hash WHERE e.vector IS NULL"
    ).fetchone()[0]
    dupes = conn.execute("SELECT COUNT(*) - COUNT(DISTINCT source) FROM documents").fetchone()[0]
    assert (orphans, unembedded, dupes) == (0, 0, 0)
    counts = conn.execute("SELECT (SELECT COUNT(*) FROM documents), (SELECT COUNT(*) FROM chunks)").fetchone()
    conn.close()
    return int(counts[0]), int(counts[1])


@pytest.mark.skipif(not SCIFACT.exists(), reason=f"dataset not found at {SCIFACT}")
def test_sigkill_mid_ingest_leaves_no_half_document_and_resumes(tmp_path: Path) -> None:
    corpus = tmp_path / "slice.jsonl"
    with SCIFACT.open() as f:
        corpus.write_text("".join(line for _, line in zip(range(120), f, strict=False)))
    db = tmp_path / "s.db"
    cmd = [sys.executable, "-m", "archivist.cli", "ingest", str(corpus), "--store", f"sqlite:///{db}", "--json"]
    env = {**os.environ, "ARCHIVIST_EMBED_BATCH_SIZE": "4"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    committed = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if db.exists():
            try:
                conn = sqlite3.connect(db, timeout=1)
                committed = conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
                conn.close()
            except sqlite3.OperationalError:
                continue
            if committed >= 20:
                break
    assert proc.poll() is None, "ingest finished before it could be killed: use a bigger slice"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    docs_after_kill, _ = _store_invariants(db)
    assert 20 <= docs_after_kill < 120

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["unchanged"] == docs_after_kill
    assert summary["added"] + summary["unchanged"] == 120
    assert _store_invariants(db)[0] == 120


def test_fusion_methods_agree_on_an_obvious_answer_and_report_exact_scores(make_app: MakeApp, tmp_path: Path) -> None:
    docs = _corpus(tmp_path)
    make_app().ingest([docs])
    for fusion in ("zscore", "rrf"):
        hits = make_app(fusion=fusion).search("how do I rotate an API key", k=3)
        assert hits[0].heading_path[-1] == "Rotating a key", fusion
        assert all(h.dense_score is not None and h.bm25_score is not None for h in hits[:1])
    z = make_app(fusion="zscore").search("sourdough starter", k=5)
    assert z[0].source == "docs/records.jsonl#r1"
    # z-score fusion scores every candidate on both retrievers, even one BM25 did not return.
    assert all(h.dense_score is not None and h.bm25_score is not None for h in z)
