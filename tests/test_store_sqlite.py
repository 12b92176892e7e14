"""What only the SQLite store does: its file, its migrations, its URLs; and the contract suites run on it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import pytest

from archivist.store import open_store
from archivist.store.sqlite import SQLiteStore
from archivist.testing.store import StoreFactory, StoreTests
from archivist.text.analyzer import Analyzer
from archivist.types import UsageError


class TestSQLiteStore(StoreTests):
    """The whole store contract on an SQLite file."""

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Iterator[StoreFactory]:
        with ExitStack() as opened:
            yield lambda: opened.enter_context(closing(open_store(f"sqlite:///{tmp_path / 'store.db'}")))


def test_sqlite_store_uses_wal_and_records_migrations(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert versions == list(range(1, 15)) and store.schema_version() == 14 == store.expected_schema_version()
    assert store.migrate() == []  # idempotent
    conn.close()
    store.close()


def test_store_url_errors() -> None:
    with pytest.raises(UsageError, match="unsupported store URL scheme 'mongodb'"):
        open_store("mongodb://x")
    with pytest.raises(UsageError, match="no database path"):
        open_store("sqlite:///")


def test_analyzer_stems_and_drops_stopwords() -> None:
    a = Analyzer()
    assert a.terms("How do I rotate the API keys?") == ["rotat", "api", "key"]
    assert a.terms("Rotating keys") == ["rotat", "key"]
    assert a.terms("?!") == []


def test_migration_to_v5_keeps_documents_chunks_and_search(tmp_path: Path) -> None:
    from archivist.store.sqlite.database import _split_sql
    from archivist.store.sqlite.migrations import MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT)")
    for version, name, sql in MIGRATIONS[:4]:
        for statement in _split_sql(sql):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 'then')", (version, name))
    conn.close()
    # Write with the v4 layout's SQL as an older Archivist did: no collection column yet.
    old = sqlite3.connect(path, isolation_level=None)
    old.execute(
        "INSERT INTO documents (id, source, title, media_type, content_hash, chunker, metadata, chunk_count,"
        " char_count, created_at, updated_at) VALUES ('d1', 'a.md', 'A', 'text/plain', 'h', 'c', '{}', 1, 5, 't', 't')"
    )
    old.execute(
        'INSERT INTO chunks (document_id, ordinal, text, start, "end", token_count, embed_hash, terms)'
        " VALUES ('d1', 0, 'hello', 0, 5, 1, 'e', x'')"
    )
    old.close()
    store = SQLiteStore(path)
    assert store.schema_version() == store.expected_schema_version()
    doc = store.get_document("d1")
    assert doc is not None and doc.collection == "default" and doc.chunk_count == 1
    assert [c.text for c in store.document_chunks("d1")] == ["hello"]
    assert store.list_collections()[0].documents == 1
    store.close()
