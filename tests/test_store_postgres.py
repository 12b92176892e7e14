"""The PostgreSQL store on a real server (tests/pg_server.py): the contract suites of what is built, its URLs,
migrations, pool and errors, and the CLI over a postgresql:// store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from archivist.store import open_store
from archivist.testing.store import AgentRunStoreTests, EvalRunStoreTests, ServiceRecordsTests, StoreFactory
from archivist.types import ArchivistError, StoreError, UsageError
from pg_server import database_url


class TestPostgresRecordStores(EvalRunStoreTests, ServiceRecordsTests, AgentRunStoreTests):
    """The contract of the record stores, unchanged, on a fresh database per test."""

    @pytest.fixture
    def make_store(self, postgres_url: str) -> Iterator[StoreFactory]:
        with ExitStack() as opened:
            yield lambda: opened.enter_context(closing(open_store(postgres_url)))


ARCHIVIST = str(Path(sys.executable).with_name("archivist"))


def _archivist(*args: str, store: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Hermetic: no ARCHIVIST_* setting of the caller's reaches the command, only the store under test.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")} | {"ARCHIVIST_STORE": store}
    return subprocess.run([ARCHIVIST, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Return the rows of one query, read with a connection of the test's own (not the store's)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


def test_a_bad_url_is_a_usage_error_naming_what_is_wrong() -> None:
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")  # it checks the URL with libpq's rules
    cases = {
        "postgresql://u:secret@host:port/db": "Port could not be cast to integer",
        "postgresql://u:secret@host/db?sslmod=require": 'invalid URI query parameter: "sslmod"',
        "postgresql://u:secret@host/db?pool_size=0": "pool_size must be a whole number ≥ 1, not '0'",
        "postgresql://host/db?statement_timeout_ms=soon&password=secret": "statement_timeout_ms must be a whole number",
        "postgresql://host/db?statement_timeout_ms=99999999999999&password=secret": "between 0 and 2147483647",
        "postgresql://host/db?job_retention_days=0": "job_retention_days must be a whole number between 1 and 36500",
        "postgresql://u:secret@[::1/db": "Invalid IPv6 URL",
    }
    for url, message in cases.items():
        with pytest.raises(UsageError, match=re.escape(message)) as caught:
            open_store(url)
        assert "secret" not in str(caught.value)  # the password is masked


def test_an_unreachable_server_or_a_missing_database_is_a_store_error(postgres_server: str) -> None:
    with pytest.raises(
        StoreError, match=r"cannot connect .* postgresql://ops:\*\*\*@127\.0\.0\.1:1/db: .*refused"
    ) as e:
        open_store("postgresql://ops:hunter2@127.0.0.1:1/db")
    assert "hunter2" not in str(e.value)
    with pytest.raises(StoreError, match='database "no_such_db" does not exist'):
        open_store(database_url(postgres_server, "no_such_db"))


def test_opening_migrates_once_with_pgvector_recent_enough_for_iterative_scans(postgres_url: str) -> None:
    from archivist.store.postgres import PostgresStore
    from archivist.store.postgres.migrations import MIGRATIONS

    # Each version once, in order: a version listed twice or after a later one would be skipped by every database
    # already past it.
    assert [version for version, _, _ in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    with closing(PostgresStore(postgres_url)) as store:
        latest = store.expected_schema_version()
        assert store.schema_version() == latest and store.migrate() == []  # idempotent
    assert _query(postgres_url, "SELECT version FROM schema_migrations ORDER BY version") == [
        (v,) for v in range(1, latest + 1)
    ]
    ((version,),) = _query(postgres_url, "SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    assert tuple(int(p) for p in version.split(".")[:2]) >= (0, 8)  # hnsw.iterative_scan
    with closing(open_store(postgres_url)) as again:  # a current store is opened as it is
        assert again.schema_version() == latest


def test_a_role_that_may_not_create_pgvector_is_told_so_and_migrates_once_it_exists(
    postgres_server: str, postgres_url: str
) -> None:
    # pgvector is not a trusted extension: only a superuser (or the server's operator) creates it.
    _query(
        postgres_server,
        "DO $$ BEGIN CREATE ROLE archivist_app LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    )
    database = urlsplit(postgres_url).path.lstrip("/")
    _query(postgres_server, f"ALTER DATABASE {database} OWNER TO archivist_app")  # it may create its tables
    app_url = urlunsplit(urlsplit(postgres_url)._replace(netloc="archivist_app@"))
    with pytest.raises(StoreError, match=r'permission denied to create extension "vector".*have its owner run CREATE'):
        open_store(app_url)
    _query(postgres_url, "CREATE EXTENSION vector")  # the operator, once
    with closing(open_store(app_url)) as store:
        assert store.schema_version() == store.expected_schema_version()


def test_a_store_with_a_newer_schema_is_refused(postgres_url: str) -> None:
    with closing(open_store(postgres_url)):
        pass
    _query(postgres_url, "INSERT INTO schema_migrations VALUES (99, 'from the future', 'then')")
    with pytest.raises(ArchivistError, match=r"has schema version 99, newer than this Archivist \(\d+\): upgrade"):
        open_store(postgres_url)


def test_processes_opening_a_new_database_at_once_apply_each_migration_once(postgres_url: str) -> None:
    # Each process sleeps until the same instant, then opens the store: their migrations overlap on the server.
    script = (
        "import sys, time\n"
        "from archivist.store.postgres import PostgresStore\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "store = PostgresStore(sys.argv[1])\n"
        "print(store.schema_version())\n"
        "store.close()\n"
    )
    start = str(time.time() + 2)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, postgres_url, start], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4
    counts = _query(postgres_url, "SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version")
    assert len(set(outputs)) == 1 and counts == [(v, 1) for v in range(1, int(outputs[0]) + 1)]


def test_a_statement_stuck_on_a_lock_is_cancelled_by_the_timeout_as_a_store_error(postgres_url: str) -> None:
    import psycopg

    from archivist.store.records import ApiKeyRecord

    with closing(open_store(postgres_url + "&statement_timeout_ms=300")) as store:
        store.save_api_key(ApiKeyRecord("k1", "ci", "h" * 64, ("read",), None, "2026-01-01T00:00:00+00:00"))
        with psycopg.connect(postgres_url) as blocker:  # not autocommit: its row lock holds until rollback
            blocker.execute("SELECT 1 FROM api_keys WHERE id = 'k1' FOR UPDATE")
            started = time.monotonic()
            with pytest.raises(StoreError, match="canceling statement due to statement timeout"):
                store.touch_api_key("k1", "2026-01-02T00:00:00+00:00")
            assert time.monotonic() - started < 5
            blocker.rollback()
        store.touch_api_key("k1", "2026-01-02T00:00:00+00:00")  # the pool's connection is usable again
        assert (store.get_api_key("k1") or pytest.fail("key lost")).last_used_at == "2026-01-02T00:00:00+00:00"


def test_no_statement_is_prepared_on_the_server(postgres_url: str) -> None:
    # PgBouncer in transaction mode may send consecutive statements to different server connections, where a
    # statement prepared on another does not exist: the store never prepares one, however often a query repeats.
    from archivist.store.postgres import PostgresStore

    with closing(PostgresStore(postgres_url + "&pool_size=1")) as store:
        for _ in range(20):
            store.get_api_key("k1")
            store.cache_get("key", 0.0)
        assert store._fetchall("SELECT count(*) FROM pg_prepared_statements") == [(0,)]


def test_spend_added_from_many_threads_through_a_small_pool_adds_up(postgres_url: str) -> None:
    with closing(open_store(postgres_url + "&pool_size=3")) as store:

        def spend() -> None:
            for _ in range(25):
                store.spend_add("key-a", "2026-12", 2, 0.25)

        threads = [threading.Thread(target=spend) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.spend_get("key-a", "2026-12") == (400, 50.0)
        assert store.spend_get("key-b", "2026-12") == (0, 0.0)


def test_the_request_log_is_read_from_a_time_for_one_key_or_all(postgres_url: str) -> None:
    from archivist.store.records import RequestLogRow

    with closing(open_store(postgres_url)) as store:
        store.log_requests([])
        store.log_requests(
            [
                RequestLogRow(f"r{i}", f"2026-01-0{i + 1}T00:00:00+00:00", f"k{i % 2}", "GET", "/v1/me", 200, 1.5)
                for i in range(4)
            ]
        )
        assert [r.request_id for r in store.request_log(since="2026-01-02")] == ["r1", "r2", "r3"]
        assert [r.request_id for r in store.request_log(since="2026-01-01", key_id="k1")] == ["r1", "r3"]
        assert store.request_log(since="2026-01-01")[0] == RequestLogRow(
            "r0", "2026-01-01T00:00:00+00:00", "k0", "GET", "/v1/me", 200, 1.5
        )


def test_the_cli_migrates_and_manages_keys_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    migrated = _archivist("migrate", "--json", store=postgres_url, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    report = json.loads(migrated.stdout)
    assert report["store"] == postgres_url and report["schema_version"] == report["expected_schema_version"] >= 5
    created = _archivist(
        "keys", "create", "--name", "ci", "--scopes", "read,write", "--json", store=postgres_url, cwd=tmp_path
    )
    assert created.returncode == 0, created.stderr
    key_id = json.loads(created.stdout)["id"]
    listed = _archivist("keys", "list", "--json", store=postgres_url, cwd=tmp_path)
    assert [(k["id"], k["name"]) for k in json.loads(listed.stdout)["keys"]] == [(key_id, "ci")]
    stats = _archivist("stats", "--json", store=postgres_url, cwd=tmp_path)
    assert stats.returncode == 0 and json.loads(stats.stdout)["documents"] == 0, stats.stderr
    refused = _archivist("migrate", store="postgresql://ops:hunter2@127.0.0.1:1/db", cwd=tmp_path)
    assert refused.returncode == 1 and "cannot connect" in refused.stderr and "hunter2" not in refused.stderr
