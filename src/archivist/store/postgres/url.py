"""PostgreSQL store URLs: libpq's own syntax plus the pool size and statement timeout, checked before connecting."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from archivist.types import UsageError

SCHEMES = ("postgresql", "postgres")
#: connections one store object keeps at most (a `serve` process, or a worker with its job threads)
DEFAULT_POOL_SIZE = 10
#: a statement running longer is cancelled by the server (a stuck lock or a runaway query fails, never hangs)
DEFAULT_STATEMENT_TIMEOUT_MS = 30_000
#: a filtered dense search over at most this many passing chunks compares the query with each (exact); above, it
#: walks the HNSW index. An exact scan of 10,000 384-d vectors costs about what a filtered HNSW walk does
#: (benchmarks/postgres_scale.py), and filtered HNSW walks lose recall when few chunks pass
DEFAULT_EXACT_DENSE_BELOW = 10_000
#: days an ended job (succeeded or failed, dead-lettered included) is kept before an enqueue deletes it
DEFAULT_JOB_RETENTION_DAYS = 30
#: URL parameters Archivist reads itself; every other one goes to libpq (sslmode, host=/socket/dir, ...)
OUR_PARAMETERS = ("pool_size", "statement_timeout_ms", "exact_dense_below", "job_retention_days")
EXAMPLE = "postgresql://user:password@host:5432/dbname"


@dataclass(frozen=True, slots=True)
class PostgresURL:
    """A checked store URL: what libpq connects with, how it is shown, and the pool's settings."""

    #: the URL without Archivist's own parameters, as libpq reads it
    conninfo: str
    #: the URL with its password masked, for logs and messages
    shown: str
    pool_size: int
    statement_timeout_ms: int
    #: a filtered dense search over at most this many passing chunks is exact (0: never; see DEFAULT_EXACT_DENSE_BELOW)
    exact_dense_below: int
    #: days an ended job is kept (DEFAULT_JOB_RETENTION_DAYS); its input bytes go when it ends, whatever this is
    job_retention_days: int


def parse_postgres_url(url: str) -> PostgresURL:
    """Return the checked form of a `postgresql://` store URL, or raise UsageError saying what is wrong with it."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed [ of an IPv6 host: the URL cannot be shown masked, so not at all
        raise UsageError(f"bad store URL: {exc}; use {EXAMPLE}") from exc
    if parts.scheme not in SCHEMES:
        raise UsageError(f"bad store URL {_masked(url)!r}: a PostgreSQL store URL starts with postgresql://")
    try:
        if "," not in parts.netloc:  # a multi-host URL (h1:5432,h2:5432) is libpq's to check
            _ = parts.port  # raises for a port that is not a number in range
    except ValueError as exc:
        raise UsageError(f"bad store URL {_masked(url)!r}: {exc}; use {EXAMPLE}") from exc
    ours: dict[str, str] = {}
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in OUR_PARAMETERS:
            ours[name] = value
        else:
            rest.append((name, value))
    # quote, not urlencode's default quote_plus: libpq reads `+` as itself, so `options=-c%20x%3D1` must stay %20.
    query = urlencode(rest, safe="/", quote_via=quote)
    conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
    try:
        conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise UsageError(f"bad store URL {_masked(url)!r}: {str(exc).strip()}; use {EXAMPLE}") from exc
    return PostgresURL(
        conninfo=conninfo,
        shown=_masked(conninfo),
        pool_size=_whole(ours, "pool_size", DEFAULT_POOL_SIZE, minimum=1, url=url),
        statement_timeout_ms=_whole(
            ours, "statement_timeout_ms", DEFAULT_STATEMENT_TIMEOUT_MS, minimum=0, maximum=2**31 - 1, url=url
        ),
        exact_dense_below=_whole(
            ours, "exact_dense_below", DEFAULT_EXACT_DENSE_BELOW, minimum=0, maximum=2**31 - 1, url=url
        ),
        job_retention_days=_whole(
            ours, "job_retention_days", DEFAULT_JOB_RETENTION_DAYS, minimum=1, maximum=36_500, url=url
        ),
    )


def _whole(
    params: dict[str, str], name: str, default: int, *, minimum: int, url: str, maximum: int | None = None
) -> int:
    """Return a whole-number URL parameter (its default when absent), or raise UsageError."""
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"≥ {minimum}"
        raise UsageError(f"bad store URL {_masked(url)!r}: {name} must be a whole number {bounds}, not {raw!r}")
    return value


def _masked(url: str) -> str:
    """Return the URL with any password (in the user part or a `password=` parameter) replaced by ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(name == "password" for name, _ in query):
        parts = parts._replace(query=urlencode([(n, "***" if n == "password" else v) for n, v in query], safe="*/"))
    return urlunsplit(parts._replace(netloc=netloc))
