"""The PostgreSQL database: a pool of connections, transactions, and versioned migrations under an advisory lock.

Connections run in autocommit, so a read is one round trip, and a write is an explicit transaction. None needs a
server-side prepared statement (`prepare_threshold=None`): behind PgBouncer in transaction mode, consecutive
statements may reach different server connections, where a statement prepared on another would not exist.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from archivist.store.postgres.migrations import MIGRATIONS
from archivist.store.postgres.url import parse_postgres_url
from archivist.types import ArchivistError, StoreError

#: seconds to wait for the server when none is given in the URL (connect_timeout=…)
CONNECT_TIMEOUT_S = 10
#: the advisory lock every Archivist process takes to migrate a database: one applies a version, the others wait
#: and then find it applied (a fixed number; advisory locks are scoped to the database)
MIGRATION_LOCK = 0x4172636869766973  # "Archivis"

Connection = psycopg.Connection[tuple[Any, ...]]


class PostgresDatabase:
    """One PostgreSQL database: its connection pool, transactions and schema; the base of every concern's store."""

    def __init__(self, url: str) -> None:
        target = parse_postgres_url(url)
        self._target = target
        #: the store URL with its password masked (it appears in logs)
        self.url = target.shown
        self._statement_timeout_ms = target.statement_timeout_ms
        kwargs: dict[str, Any] = {"autocommit": True, "prepare_threshold": None}
        if "connect_timeout" not in conninfo_to_dict(target.conninfo):
            kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
        # One connection of its own first: an unreachable server, a wrong password or a missing database fails
        # here with libpq's reason, where the pool would only time out. Migrations run on it, without the
        # statement timeout (building an index may take longer than any query should).
        try:
            with psycopg.connect(target.conninfo, **kwargs) as conn:
                self._apply_migrations(conn)
        except psycopg.OperationalError as exc:
            raise StoreError(f"cannot connect to the PostgreSQL store {self.url}: {driver_message(exc)}") from exc
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            target.conninfo,
            kwargs=kwargs,
            min_size=1,
            max_size=target.pool_size,
            configure=self._configure,
            # A pooled connection the server dropped (a restart, a failover, an idle timeout) is found and replaced
            # when it is taken, for one short round trip, instead of failing the statement it was taken for.
            check=ConnectionPool.check_connection,
            open=False,
            name="archivist-store",
        )
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            self._pool.close()
            raise StoreError(f"cannot connect to the PostgreSQL store {self.url}: {driver_message(exc)}") from exc

    def _configure(self, conn: Connection) -> None:
        """Set up a new pooled connection: the statement timeout."""
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{self._statement_timeout_ms}ms",))

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """Yield a pooled connection inside one transaction: committed when the block ends, rolled back on error."""
        with self._pool.connection() as conn, conn.transaction():
            yield conn

    def _fetchall(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Return every row of one query (autocommit: a read is one round trip)."""
        with self._pool.connection() as conn:
            return conn.execute(query, params).fetchall()

    def _fetchone(self, query: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """Return the first row of one query, or None."""
        with self._pool.connection() as conn:
            return conn.execute(query, params).fetchone()

    def schema_version(self) -> int:
        """Return the highest applied migration version (0 for an empty database)."""
        with self._pool.connection() as conn:
            return _schema_version(conn)

    def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied."""
        with self._pool.connection() as conn:
            return self._apply_migrations(conn)

    def expected_schema_version(self) -> int:
        """Return the schema version this code writes (the store is current when `schema_version()` equals it)."""
        return MIGRATIONS[-1][0]

    def _apply_migrations(self, conn: Connection) -> list[int]:
        """Apply the pending migrations on an autocommit connection; return the versions applied."""
        latest = MIGRATIONS[-1][0]
        current = _schema_version(conn)
        if current > latest:
            raise ArchivistError(
                f"store {self.url} has schema version {current}, newer than this Archivist ({latest}): upgrade"
            )
        applied: list[int] = []
        for version, name, script in MIGRATIONS:
            if version <= current:
                continue
            try:
                with conn.transaction():
                    # Held until this transaction ends: a second process migrating at the same time waits here,
                    # then finds the version applied (CREATE EXTENSION and CREATE TABLE are not safe to race).
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                    conn.execute(
                        "CREATE TABLE IF NOT EXISTS schema_migrations"
                        " (version integer PRIMARY KEY, name text NOT NULL, applied_at text NOT NULL)"
                    )
                    if conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (version,)).fetchone():
                        continue
                    conn.execute(script)  # several statements: allowed in one call without parameters
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s,"
                        " to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"'))",
                        (version, name),
                    )
            except psycopg.OperationalError:
                raise  # the connection went away: reported as such by the caller
            except psycopg.Error as exc:
                reason = driver_message(exc)
                # Not available, or not ours to create: the server's operator installs or creates it.
                needs_pgvector = version == 1 and '"vector"' in reason
                hint = " (install pgvector on the server, or have its owner run CREATE EXTENSION vector)"
                hint = hint if needs_pgvector else ""
                raise StoreError(f"migration {version} ({name}) failed on {self.url}: {reason}{hint}") from exc
            applied.append(version)
        return applied

    def close(self) -> None:
        """Release connections."""
        self._pool.close()


def _schema_version(conn: Connection) -> int:
    """Return the highest version in the database's schema_migrations table (0 when there is none)."""
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    found = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
    return int(found[0]) if found else 0


def driver_message(exc: psycopg.Error) -> str:
    """Return the driver's message on one line (libpq adds hints on further lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__
