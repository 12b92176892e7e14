"""The SQLite file: per-thread connections in WAL mode, write transactions, read snapshots and migrations."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from archivist.store.rows import utc_now
from archivist.store.sqlite.migrations import MIGRATIONS
from archivist.text.analyzer import Analyzer
from archivist.types import ArchivistError


class SQLiteDatabase:
    """One SQLite file: its connections, transactions and schema; the base of every concern's store."""

    def __init__(self, path: Path, *, url: str | None = None) -> None:
        self.path = path
        self.url = url or f"sqlite:///{path}"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        # Every open connection and the thread it belongs to (weakly): a thread's connection is closed once the
        # thread is gone, so the count stays bounded by the threads alive, not by every thread ever created.
        self._conns: dict[sqlite3.Connection, weakref.ref[threading.Thread]] = {}
        self._conns_lock = threading.Lock()
        self._write_lock = threading.Lock()
        # The analyzer the chunks' BM25 term counts are written with and queries are read with.
        self._analyzer = Analyzer()
        self.migrate()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with self._conns_lock:
                # Before opening: SQLite reuses the file descriptors of connections closed here.
                self._close_orphans()
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
                _use_wal(conn)
            except sqlite3.DatabaseError as exc:
                raise ArchivistError(f"cannot open store {self.path}: {exc}") from exc
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._conns_lock:
                self._conns[conn] = weakref.ref(threading.current_thread())
        return conn

    def _close_orphans(self) -> None:
        """Close the connections of threads that have ended (call with `_conns_lock` held)."""
        for conn, owner in list(self._conns.items()):
            thread = owner()
            if thread is None or not thread.is_alive():
                del self._conns[conn]
                with suppress(sqlite3.Error):
                    conn.close()

    def open_connections(self) -> int:
        """Return how many connections to the file this store holds open, after closing those of ended threads."""
        with self._conns_lock:
            self._close_orphans()
            return len(self._conns)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """Yield this thread's connection inside one read transaction: every query sees the same state."""
        conn = self._conn()
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def schema_version(self) -> int:
        """Return the highest applied migration version (0 for an empty file)."""
        conn = self._conn()
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
        return int(row[0])

    def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied."""
        applied: list[int] = []
        current = self.schema_version()
        latest = MIGRATIONS[-1][0]
        if current > latest:
            raise ArchivistError(
                f"store {self.path} has schema version {current}, newer than this Archivist ({latest}): upgrade"
            )
        if current == latest:
            return applied
        conn = self._conn()
        # A migration that rebuilds a table must not cascade deletes into its children; the pragma only
        # takes effect outside a transaction, and each migration checks the keys before it commits.
        conn.execute("PRAGMA foreign_keys=OFF")
        try:
            for version, name, sql in MIGRATIONS:
                if version <= current:
                    continue
                with self._transaction() as tx:
                    # Another process may have applied it since the version was read: decide under the write lock.
                    if tx.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)).fetchone():
                        continue
                    for statement in _split_sql(sql):
                        tx.execute(statement)
                    broken = tx.execute("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise ArchivistError(f"migration {version} would break foreign keys: {broken[:3]}")
                    tx.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                        (version, name, utc_now()),
                    )
                applied.append(version)
        finally:
            conn.execute("PRAGMA foreign_keys=ON")
        return applied

    def expected_schema_version(self) -> int:
        """Return the schema version this code writes (the store is current when `schema_version()` equals it)."""
        return MIGRATIONS[-1][0]

    def generation(self) -> int:
        """Return a counter bumped by every write, for caches of derived data."""
        row = self._conn().execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0])

    def close(self) -> None:
        """Release connections and files."""
        with self._conns_lock:
            for conn in self._conns:
                with suppress(sqlite3.Error):
                    conn.close()
            self._conns.clear()
        self._local = threading.local()


def _use_wal(conn: sqlite3.Connection, timeout_s: float = 30.0) -> None:
    """Put the file in WAL mode (once per file: the mode is stored in it).

    Switching needs a moment alone with the file, and SQLite answers "database is locked" at once, without waiting
    out the busy timeout, when processes open a fresh file together: retry until the timeout instead."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _split_sql(script: str) -> list[str]:
    """Return the statements of a migration script (semicolons end statements, except inside a trigger's body)."""
    lines = [ln for ln in script.splitlines() if not ln.strip().startswith("--")]
    out: list[str] = []
    pending = ""
    for part in "\n".join(lines).split(";"):
        pending = f"{pending};{part}" if pending else part
        statement = pending.strip()
        # A trigger's body ends at END (a body that holds CASE … END; would be cut there: none does).
        is_trigger = re.match(r"CREATE\s+(TEMP\s+|TEMPORARY\s+)?TRIGGER\b", statement, re.I)
        if is_trigger and not re.search(r"\bEND$", statement, re.I):
            continue
        if statement:
            out.append(statement)
        pending = ""
    return out
