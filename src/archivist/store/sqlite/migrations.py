"""Versioned schema migrations of the SQLite store, applied in order, each in its own transaction."""

from __future__ import annotations

#: the store's generation, as a trigger logging a change reads it
_GENERATION = "(SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation')"
#: the change feed reaches back to now: what came before was not logged
_FEED_STARTS_NOW = (
    "UPDATE meta SET value = (SELECT value FROM meta WHERE key = 'generation') WHERE key = 'deletions_since';"
)


def _change_log(log: str, column: str, triggers: dict[str, tuple[str, str]]) -> str:
    """Return the SQL of a change log: a table of `column` values with the generation of the write that logged
    them (indexed for pruning), filled by the triggers {name: (event, value)}, e.g. ("AFTER DELETE ON chunks",
    "old.id")."""
    name = column.split()[0]
    sql = f"CREATE TABLE {log} (generation INTEGER NOT NULL, {column} NOT NULL);\n"
    sql += f"CREATE INDEX {log}_generation ON {log}(generation);\n"
    for trigger, (event, value) in triggers.items():
        sql += f"CREATE TRIGGER {trigger} {event} BEGIN INSERT INTO {log} (generation, {name})"
        sql += f" VALUES ({_GENERATION}, {value}); END;\n"
    return sql


MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "documents, chunks, embeddings, BM25 terms",
        """
        CREATE TABLE documents (
            id           TEXT PRIMARY KEY,
            source       TEXT NOT NULL UNIQUE,
            title        TEXT NOT NULL,
            media_type   TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            chunker      TEXT NOT NULL,
            metadata     TEXT NOT NULL DEFAULT '{}',
            chunk_count  INTEGER NOT NULL,
            char_count   INTEGER NOT NULL,
            version      INTEGER NOT NULL DEFAULT 1,
            created_at   TEXT NOT NULL,
            updated_at   TEXT NOT NULL
        );
        CREATE TABLE chunks (
            id           INTEGER PRIMARY KEY,
            document_id  TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
            ordinal      INTEGER NOT NULL,
            text         TEXT NOT NULL,
            heading_path TEXT NOT NULL DEFAULT '[]',
            start        INTEGER NOT NULL,
            "end"        INTEGER NOT NULL,
            page         INTEGER,
            page_end     INTEGER,
            token_count  INTEGER NOT NULL,
            embed_hash   TEXT NOT NULL,
            terms        BLOB NOT NULL,  -- BM25 term counts: int32 (term id, count) pairs
            UNIQUE (document_id, ordinal)
        );
        CREATE INDEX chunks_embed_hash ON chunks(embed_hash);
        -- Vectors are keyed by what was embedded, not by chunk: re-ingesting or re-chunking
        -- identical text reuses them, and they survive a document's deletion as a cache.
        CREATE TABLE embeddings (
            model     TEXT NOT NULL,
            text_hash TEXT NOT NULL,
            vector    BLOB NOT NULL,
            PRIMARY KEY (model, text_hash)
        ) WITHOUT ROWID;
        CREATE TABLE terms (id INTEGER PRIMARY KEY, term TEXT NOT NULL UNIQUE);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta (key, value) VALUES ('generation', '0');
        """,
    ),
    (
        2,
        "eval runs",
        """
        CREATE TABLE eval_runs (
            id               TEXT PRIMARY KEY,
            kind             TEXT NOT NULL,
            dataset          TEXT NOT NULL,
            split            TEXT NOT NULL,
            tag              TEXT,
            created_at       TEXT NOT NULL,
            fingerprint_hash TEXT NOT NULL,
            record           TEXT NOT NULL  -- the whole run as JSON: config, metrics, per-query, timings
        );
        CREATE INDEX eval_runs_dataset ON eval_runs(dataset, created_at);
        """,
    ),
    (
        3,
        "LLM response cache",
        """
        CREATE TABLE llm_cache (
            key        TEXT PRIMARY KEY,
            value      TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL
        );
        CREATE INDEX llm_cache_expires ON llm_cache(expires_at);
        """,
    ),
    (
        4,
        "LLM spend per budget key and period",
        """
        CREATE TABLE llm_spend (
            key      TEXT NOT NULL,  -- e.g. an API key's id
            period   TEXT NOT NULL,  -- "2026-11-23" (daily) or "2026-11" (monthly), UTC
            tokens   INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL NOT NULL DEFAULT 0,
            PRIMARY KEY (key, period)
        );
        """,
    ),
]

# Collections (the tenancy boundary), API keys, ingestion jobs and the request log, for the HTTP service.
# A document's identity becomes (collection, source): the documents table is rebuilt, since SQLite cannot
# change a UNIQUE constraint in place. Rowids are kept, as the in-memory indexes key documents by them.
MIGRATIONS.append(
    (
        5,
        "collections, API keys, jobs, request log",
        """
        CREATE TABLE collections (
            name        TEXT PRIMARY KEY,
            description TEXT NOT NULL DEFAULT '',
            created_at  TEXT NOT NULL
        );
        INSERT INTO collections (name, description, created_at)
            VALUES ('default', 'Documents ingested without a collection', strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now'));
        CREATE TABLE documents_v5 (
            id           TEXT PRIMARY KEY,
            collection   TEXT NOT NULL DEFAULT 'default' REFERENCES collections(name),
            source       TEXT NOT NULL,
            title        TEXT NOT NULL,
            media_type   TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            chunker      TEXT NOT NULL,
            metadata     TEXT NOT NULL DEFAULT '{}',
            chunk_count  INTEGER NOT NULL,
            char_count   INTEGER NOT NULL,
            version      INTEGER NOT NULL DEFAULT 1,
            created_at   TEXT NOT NULL,
            updated_at   TEXT NOT NULL,
            UNIQUE (collection, source)
        );
        INSERT INTO documents_v5 (rowid, id, collection, source, title, media_type, content_hash, chunker, metadata,
                                  chunk_count, char_count, version, created_at, updated_at)
            SELECT rowid, id, 'default', source, title, media_type, content_hash, chunker, metadata,
                   chunk_count, char_count, version, created_at, updated_at FROM documents;
        DROP TABLE documents;
        ALTER TABLE documents_v5 RENAME TO documents;
        CREATE TABLE api_keys (
            id           TEXT PRIMARY KEY,
            name         TEXT NOT NULL,
            secret_hash  TEXT NOT NULL,  -- sha256 of the whole key: keys are random, so no slow hash is needed
            scopes       TEXT NOT NULL,  -- JSON list
            collections  TEXT,           -- JSON list, NULL = every collection
            budget_tokens INTEGER,
            budget_usd   REAL,
            budget_period TEXT NOT NULL DEFAULT 'month',
            rate_per_minute INTEGER,
            created_at   TEXT NOT NULL,
            revoked_at   TEXT,
            last_used_at TEXT
        );
        CREATE TABLE jobs (
            id         TEXT PRIMARY KEY,
            kind       TEXT NOT NULL,
            collection TEXT NOT NULL,
            status     TEXT NOT NULL,  -- queued, running, succeeded, failed
            payload    TEXT NOT NULL,  -- JSON
            done       INTEGER NOT NULL DEFAULT 0,
            total      INTEGER NOT NULL DEFAULT 0,
            result     TEXT,           -- JSON
            error      TEXT,
            key_id     TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX jobs_status ON jobs(status, created_at);
        CREATE TABLE request_log (
            id         INTEGER PRIMARY KEY,
            request_id TEXT NOT NULL,
            at         TEXT NOT NULL,   -- UTC ISO time
            key_id     TEXT,
            method     TEXT NOT NULL,
            route      TEXT NOT NULL,
            status     INTEGER NOT NULL,
            latency_ms REAL NOT NULL,
            tokens     INTEGER NOT NULL DEFAULT 0,
            cost_usd   REAL NOT NULL DEFAULT 0
        );
        CREATE INDEX request_log_at ON request_log(at);
        """,
    )
)

# Sentence vectors pooled from the chunk's own model pass at ingest (extractive answers score every retrieved
# sentence without embedding anything at question time). Keyed like embeddings, by what was embedded; `model` names
# the embedder and the sentence splitter's version, so a changed splitter never reads stale spans.
MIGRATIONS.append(
    (
        6,
        "sentence vectors",
        """
        CREATE TABLE sentence_vectors (
            model     TEXT NOT NULL,
            text_hash TEXT NOT NULL,
            spans     BLOB NOT NULL,  -- int32 (start, end) pairs, offsets into the chunk text
            vectors   BLOB NOT NULL,  -- float16, one row per span
            PRIMARY KEY (model, text_hash)
        ) WITHOUT ROWID;
        """,
    )
)

# Every deleted chunk's id, with the generation its write started from: a process whose in-memory indexes describe
# generation G drops the chunks deleted since G and reads only the chunks added since (ids above every kept one),
# instead of reading the whole file again after each write. Kept for the last `DELETION_LOG_GENERATIONS` writes;
# `deletions_since` says how far back it reaches (an older index is built anew).
MIGRATIONS.append(
    (
        7,
        "chunk deletion log",
        _change_log("chunk_deletions", "chunk_id INTEGER", {"chunks_deleted": ("AFTER DELETE ON chunks", "old.id")})
        + "INSERT INTO meta (key, value) SELECT 'deletions_since', value FROM meta WHERE key = 'generation';",
    )
)

# The hashes that gained a vector or sentence vectors, with the generation of their write: a chunk written before
# joins a dense or sentence index when another document with the same embedded text brings vectors its own write
# did not store (a model switch, a store from before sentence vectors). An index update that finds such an older
# chunk builds the index anew. Pruned with `chunk_deletions`.
MIGRATIONS.append(
    (
        8,
        "vector insert log",
        _change_log(
            "vector_inserts",
            "text_hash TEXT",
            {
                "embeddings_inserted": ("AFTER INSERT ON embeddings", "new.text_hash"),
                "sentence_vectors_inserted": ("AFTER INSERT ON sentence_vectors", "new.text_hash"),
            },
        )
        + _FEED_STARTS_NOW,
    )
)

# Jobs are leased: a worker holds a job until `locked_until` (epoch seconds) and renews it while it works; a job
# whose lease ran out (its worker died) is taken again, up to a number of attempts. A queued job waits until
# `locked_until` too (a retry's backoff). The request log says how each request ended (a client that hung up
# mid-stream is not a normal finish).
MIGRATIONS.append(
    (
        9,
        "job leases and attempts, request outcomes",
        """
        ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE jobs ADD COLUMN locked_until REAL;
        ALTER TABLE jobs ADD COLUMN locked_by TEXT;
        ALTER TABLE request_log ADD COLUMN outcome TEXT NOT NULL DEFAULT 'completed';
        """,
    )
)

# Every inserted chunk's id with the generation its write started from: with the deletion and vector-insert logs,
# the change feed (`changes_since`) names exactly what a write added, instead of "every id above the largest kept
# one", which holds for SQLite's ids but not for a server database's concurrent writers (commit order is not id
# order). The feed reaches back from this migration on.
MIGRATIONS.append(
    (
        10,
        "chunk insert log",
        _change_log("chunk_inserts", "chunk_id INTEGER", {"chunks_inserted": ("AFTER INSERT ON chunks", "new.id")})
        + _FEED_STARTS_NOW,
    )
)

# A job's input (an upload's bytes) kept with the job in the store, so a worker on another host can run it (a
# spool folder on the API server's disk could not be reached from there). Dropped when the job ends.
MIGRATIONS.append(
    (
        11,
        "job inputs",
        """
        CREATE TABLE job_inputs (
            job_id TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
            data   BLOB NOT NULL
        );
        CREATE TRIGGER job_inputs_dropped AFTER UPDATE OF status ON jobs
        WHEN new.status IN ('succeeded', 'failed') BEGIN
            DELETE FROM job_inputs WHERE job_id = new.id;
        END;
        """,
    )
)

# Agent runs and their journal. A side-effecting call's intent row is committed before the call and its outcome
# after it, keyed by (run, step, call id, arguments hash): a resumed run finds a completed call's result here and
# never calls again, and an intent without an outcome tells it that the call may have happened. Deleting a run
# deletes its journal (retention pruning).
MIGRATIONS.append(
    (
        12,
        "agent runs and effect journal",
        """
        CREATE TABLE agent_runs (
            id         TEXT PRIMARY KEY,
            task       TEXT NOT NULL,
            status     TEXT NOT NULL,
            reason     TEXT,
            collection TEXT,
            limits     TEXT NOT NULL,
            totals     TEXT NOT NULL,
            result     TEXT,
            tools      TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX agent_runs_updated ON agent_runs (updated_at);
        CREATE TABLE agent_steps (
            run_id     TEXT NOT NULL REFERENCES agent_runs(id) ON DELETE CASCADE,
            seq        INTEGER NOT NULL,
            kind       TEXT NOT NULL,
            name       TEXT NOT NULL,
            call_id    TEXT,
            arguments  TEXT,
            data       TEXT NOT NULL,
            tokens     INTEGER NOT NULL DEFAULT 0,
            cost_usd   REAL NOT NULL DEFAULT 0,
            latency_ms REAL NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            PRIMARY KEY (run_id, seq)
        );
        CREATE TABLE agent_effects (
            run_id          TEXT NOT NULL REFERENCES agent_runs(id) ON DELETE CASCADE,
            step            INTEGER NOT NULL,
            call_id         TEXT NOT NULL,
            arguments_hash  TEXT NOT NULL,
            tool            TEXT NOT NULL,
            idempotency_key TEXT NOT NULL UNIQUE,
            arguments       TEXT NOT NULL,
            status          TEXT NOT NULL,
            result          TEXT,
            created_at      TEXT NOT NULL,
            completed_at    TEXT,
            PRIMARY KEY (run_id, step, call_id, arguments_hash)
        );
        CREATE TABLE agent_approvals (
            run_id     TEXT NOT NULL REFERENCES agent_runs(id) ON DELETE CASCADE,
            step       INTEGER NOT NULL,
            call_id    TEXT NOT NULL,
            tool       TEXT NOT NULL,
            arguments  TEXT NOT NULL,
            kind       TEXT NOT NULL,
            status     TEXT NOT NULL,
            created_at TEXT NOT NULL,
            decided_at TEXT,
            PRIMARY KEY (run_id, step, kind)
        );
        """,
    )
)

# Who started a run (the API key id; None from the CLI) so that a key sees only its own runs, and the lease that
# lets one process at a time drive a run: a holder renews it while it drives, and a run whose lease has expired (or
# whose holder died on this host) may be taken by another process.
MIGRATIONS.append(
    (
        13,
        "agent run owner and lease",
        """
        ALTER TABLE agent_runs ADD COLUMN owner TEXT;
        ALTER TABLE agent_runs ADD COLUMN lease_holder TEXT;
        ALTER TABLE agent_runs ADD COLUMN lease_until TEXT;
        CREATE INDEX agent_runs_owner ON agent_runs (owner, updated_at);
        """,
    )
)

# Guards (issue 21): each chunk's injection score from the detector at ingest and whether it reached the threshold
# (NULL score: written before scanning, or with scanning off), who cleared a flag and when (a person's review
# outlives the flag), and each collection's and key's guard policy as JSON. The partial index keeps the review
# list (flagged chunks only) from reading every chunk.
MIGRATIONS.append(
    (
        14,
        "guard scores of chunks, guard policies",
        """
        ALTER TABLE chunks ADD COLUMN guard_score REAL;
        ALTER TABLE chunks ADD COLUMN guard_flagged INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE chunks ADD COLUMN guard_cleared_by TEXT;
        ALTER TABLE chunks ADD COLUMN guard_cleared_at TEXT;
        CREATE INDEX chunks_guard_flagged ON chunks (id) WHERE guard_flagged = 1;
        ALTER TABLE collections ADD COLUMN policy TEXT NOT NULL DEFAULT '{}';
        ALTER TABLE api_keys ADD COLUMN policy TEXT NOT NULL DEFAULT '{}';
        """,
    )
)
