"""Versioned schema migrations of the PostgreSQL store, applied in order, each in its own transaction.

Times are ISO text, as in the SQLite store, with the "C" collation where they (or ids) are compared or ordered: a
database created with a language collation (en_US.UTF-8) would otherwise order them by other rules than bytes. JSON
values are stored as the text the SQLite store writes, so what one backend reads back the other does too.
"""

from __future__ import annotations

#: (version, name, SQL): a script of several statements, run as one transaction
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "pgvector extension",
        # The document store keeps its vectors in pgvector columns; a server without the extension is refused here,
        # before any table exists, rather than half-way through a later migration.
        "CREATE EXTENSION IF NOT EXISTS vector;",
    ),
    (
        2,
        "collections, API keys, request log",
        """
        CREATE TABLE collections (
            name        text COLLATE "C" PRIMARY KEY,
            description text NOT NULL DEFAULT '',
            created_at  text COLLATE "C" NOT NULL
        );
        INSERT INTO collections (name, description, created_at)
            VALUES ('default', 'Documents ingested without a collection',
                    to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"+00:00"'));
        CREATE TABLE api_keys (
            id              text COLLATE "C" PRIMARY KEY,
            name            text NOT NULL,
            secret_hash     text NOT NULL,  -- sha256 of the whole key: keys are random, so no slow hash is needed
            scopes          text NOT NULL,  -- JSON list
            collections     text,           -- JSON list, NULL = every collection
            budget_tokens   bigint,
            budget_usd      double precision,
            budget_period   text NOT NULL DEFAULT 'month',
            rate_per_minute integer,
            created_at      text COLLATE "C" NOT NULL,
            revoked_at      text,
            last_used_at    text
        );
        CREATE TABLE request_log (
            id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            request_id text NOT NULL,
            at         text COLLATE "C" NOT NULL,  -- UTC ISO time
            key_id     text COLLATE "C",
            method     text NOT NULL,
            route      text NOT NULL,
            status     integer NOT NULL,
            latency_ms double precision NOT NULL,
            tokens     bigint NOT NULL DEFAULT 0,
            cost_usd   double precision NOT NULL DEFAULT 0,
            outcome    text NOT NULL DEFAULT 'completed'
        );
        CREATE INDEX request_log_at ON request_log (at);
        """,
    ),
    (
        3,
        "eval runs",
        """
        CREATE TABLE eval_runs (
            seq              bigint GENERATED ALWAYS AS IDENTITY,  -- insertion order: ties of created_at
            id               text COLLATE "C" PRIMARY KEY,
            kind             text NOT NULL,
            dataset          text NOT NULL,
            split            text NOT NULL,
            tag              text,
            created_at       text COLLATE "C" NOT NULL,
            fingerprint_hash text NOT NULL,
            record           text NOT NULL  -- the whole run as JSON: config, metrics, per-query, timings
        );
        CREATE INDEX eval_runs_dataset ON eval_runs (dataset, created_at);
        """,
    ),
    (
        4,
        "LLM response cache and spend ledger",
        """
        CREATE TABLE llm_cache (
            key        text PRIMARY KEY,
            value      text NOT NULL,
            created_at double precision NOT NULL,
            expires_at double precision NOT NULL
        );
        CREATE INDEX llm_cache_expires ON llm_cache (expires_at);
        CREATE TABLE llm_spend (
            key      text NOT NULL,  -- e.g. an API key's id
            period   text NOT NULL,  -- "2026-11-23" (daily) or "2026-11" (monthly), UTC
            tokens   bigint NOT NULL DEFAULT 0,
            cost_usd double precision NOT NULL DEFAULT 0,
            PRIMARY KEY (key, period)
        );
        """,
    ),
    # A side-effecting call's intent row is committed before the call and its outcome after it, keyed by (run,
    # step, call id, arguments hash): a resumed run finds a completed call's result here and never calls again.
    # Deleting a run deletes its journal (retention pruning). The lease lets one process at a time drive a run.
    (
        5,
        "agent runs and effect journal",
        """
        CREATE TABLE agent_runs (
            seq          bigint GENERATED ALWAYS AS IDENTITY,  -- insertion order: ties of updated_at
            id           text COLLATE "C" PRIMARY KEY,
            task         text NOT NULL,
            status       text NOT NULL,
            reason       text,
            collection   text COLLATE "C",
            limits       text NOT NULL,
            totals       text NOT NULL,
            result       text,
            tools        text NOT NULL,
            owner        text COLLATE "C",
            lease_holder text,
            lease_until  text COLLATE "C",
            created_at   text COLLATE "C" NOT NULL,
            updated_at   text COLLATE "C" NOT NULL
        );
        CREATE INDEX agent_runs_updated ON agent_runs (updated_at);
        CREATE INDEX agent_runs_owner ON agent_runs (owner, updated_at);
        CREATE TABLE agent_steps (
            run_id     text COLLATE "C" NOT NULL REFERENCES agent_runs (id) ON DELETE CASCADE,
            seq        integer NOT NULL,
            kind       text NOT NULL,
            name       text NOT NULL,
            call_id    text,
            arguments  text,
            data       text NOT NULL,
            tokens     bigint NOT NULL DEFAULT 0,
            cost_usd   double precision NOT NULL DEFAULT 0,
            latency_ms double precision NOT NULL DEFAULT 0,
            created_at text NOT NULL,
            PRIMARY KEY (run_id, seq)
        );
        CREATE TABLE agent_effects (
            run_id          text COLLATE "C" NOT NULL REFERENCES agent_runs (id) ON DELETE CASCADE,
            step            integer NOT NULL,
            call_id         text COLLATE "C" NOT NULL,
            arguments_hash  text NOT NULL,
            tool            text NOT NULL,
            idempotency_key text NOT NULL UNIQUE,
            arguments       text NOT NULL,
            status          text NOT NULL,
            result          text,
            created_at      text NOT NULL,
            completed_at    text,
            PRIMARY KEY (run_id, step, call_id, arguments_hash)
        );
        CREATE TABLE agent_approvals (
            run_id     text COLLATE "C" NOT NULL REFERENCES agent_runs (id) ON DELETE CASCADE,
            step       integer NOT NULL,
            call_id    text NOT NULL,
            tool       text NOT NULL,
            arguments  text NOT NULL,
            kind       text NOT NULL,
            status     text NOT NULL,
            created_at text COLLATE "C" NOT NULL,
            decided_at text,
            PRIMARY KEY (run_id, step, kind)
        );
        """,
    ),
]
