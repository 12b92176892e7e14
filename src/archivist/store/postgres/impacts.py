"""The BM25 impact index: each term's chunk postings ordered by how much they can add to a score, so a search reads
the best postings of a common term first and stops early (search.py's impact search) instead of reading them all.

A posting's BM25 contribution is idf · (k1 + 1) · g, with g = tf / (tf + k1 (1 - b) + k1 b · length / avgdl). An
index cannot follow avgdl as every write moves it, so it orders postings by h, the same g at a fixed reference
length (`meta.bm25_impact_length`: the mean chunk length when it was built, in thousandths of a term). That order is
close to g's, and a bound on g follows from h exactly: g ≤ h · max(1, avgdl / reference) (`bound_factor`), so a
search stays exact whatever the drift; drift only makes it read more. The index is built when the store first
reaches the store URL's `bm25_impact_from` chunks (10,000 by default), and built again once the mean length has moved
by more than `REBUILD_DRIFT`: by a write while the store is small, by `archivist migrate` at any size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg import sql

from archivist.store.memindex import BM25_B, BM25_K1

if TYPE_CHECKING:  # database.py imports this module to maintain the index when it migrates
    from archivist.store.postgres.database import Connection

#: a write rebuilds a drifted index itself while the store holds at most this many chunks (a few seconds' work);
#: above, `archivist migrate` does
INLINE_REBUILD_UNTIL = 100_000
#: the relative change of the mean chunk length past which the index is built again
REBUILD_DRIFT = 0.25
#: the meta key holding the reference length the index was built with, in thousandths of a term (0: no index)
REFERENCE_KEY = "bm25_impact_length"
#: the reference length's unit: a thousandth of a term, so the order is that of the mean length then, not near it
PER_TERM = 1000
INDEX_PREFIX = "chunk_terms_impact_"


def impact(reference: int, table: str | None = None) -> sql.Composed:
    """Return h, the posting's BM25 term factor at the reference length, as the index and the search spell it."""

    def col(name: str) -> sql.Composable:
        return sql.Identifier(table, name) if table else sql.Identifier(name)

    c0 = BM25_K1 * BM25_B * PER_TERM / max(reference, 1)
    return sql.SQL("({tf}::float8 / ({tf}::float8 + {a}::float8 + {c}::float8 * {length}::float8))").format(
        tf=col("tf"), length=col("term_length"), a=sql.Literal(BM25_K1 * (1 - BM25_B)), c=sql.Literal(c0)
    )


def bound_factor(reference: int, mean_length: float) -> float:
    """Return the factor by which a posting's g can exceed its h: max(1, avgdl / reference)."""
    return max(1.0, mean_length * PER_TERM / max(reference, 1))


def reference_length(conn: Connection) -> int:
    """Return the reference length of the impact index, in thousandths of a term (0 when the store has none)."""
    row = conn.execute("SELECT value FROM meta WHERE key = %s", (REFERENCE_KEY,)).fetchone()
    return int(row[0]) if row is not None else 0


def maintain(conn: Connection, impact_from: int, *, inline: bool) -> int | None:
    """Build the impact index when the store has reached `impact_from` chunks and has none, or when its mean
    length has drifted past REBUILD_DRIFT (a write, `inline`, does so only up to INLINE_REBUILD_UNTIL chunks);
    return the new reference length, or None when nothing was built. Runs inside the caller's transaction."""
    totals: dict[str, int] = dict(
        conn.execute(
            "SELECT key, value FROM meta WHERE key IN ('bm25_chunks', 'bm25_chunk_length', %s)", (REFERENCE_KEY,)
        ).fetchall()
    )
    if REFERENCE_KEY not in totals:  # a store whose schema predates the index: migrate adds it
        return None
    chunks, reference = int(totals.get("bm25_chunks", 0)), int(totals[REFERENCE_KEY])
    if chunks <= 0 or chunks < impact_from:
        return None
    mean = int(totals.get("bm25_chunk_length", 0)) / chunks
    wanted = max(round(mean * PER_TERM), 1)
    if inline and chunks > INLINE_REBUILD_UNTIL:  # minutes of work at millions of chunks: `archivist migrate`'s
        return None
    if wanted == reference or (reference > 0 and abs(wanted - reference) <= REBUILD_DRIFT * reference):
        return None
    # A new index beside the old: building takes a SHARE lock (searches go on; writers wait, as they do for any
    # write). Dropping the old one takes its lock only until this transaction commits.
    conn.execute(
        sql.SQL("CREATE INDEX {name} ON chunk_terms (term_id, {h} DESC, chunk_id) INCLUDE (tf, term_length)").format(
            name=sql.Identifier(f"{INDEX_PREFIX}{wanted}"), h=impact(wanted)
        )
    )
    if reference > 0:
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(f"{INDEX_PREFIX}{reference}")))
    conn.execute("UPDATE meta SET value = %s WHERE key = %s", (wanted, REFERENCE_KEY))
    return wanted
