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
    # Documents, chunks and what searches them. Vectors are keyed by (model, embedded text's hash) as on SQLite, in
    # a `vector` column without a fixed size: each model gets its own partial HNSW index over `vector::vector(n)`
    # when its first vectors are written (`vector_models` names it). BM25 runs in SQL over term statistics kept
    # here: each chunk's and document's term counts, each term's document frequency (chunk and document level) and
    # the corpus totals in `meta`, all written in the same transaction as the chunks. `dense_moments` keeps, per
    # model, the sum of the chunks' vectors and of their outer products (float64): the corpus mean and spread of
    # a query's cosine that z-score and learned fusion read. `meta`'s generation row is locked first by every
    # write, so writers take turns (as on SQLite) and the change feed's logs follow commit order.
    (
        6,
        "documents, chunks, vectors, BM25 statistics, change feed",
        """
        CREATE TABLE meta (
            key   text COLLATE "C" PRIMARY KEY,
            value bigint NOT NULL
        );
        INSERT INTO meta (key, value) VALUES ('generation', 0), ('deletions_since', 0), ('bm25_chunks', 0),
            ('bm25_chunk_length', 0), ('bm25_documents', 0), ('bm25_document_length', 0);
        CREATE TABLE documents (
            seq          bigint GENERATED ALWAYS AS IDENTITY UNIQUE,  -- write order: ties of updated_at
            id           text COLLATE "C" PRIMARY KEY,
            collection   text COLLATE "C" NOT NULL DEFAULT 'default' REFERENCES collections (name),
            source       text COLLATE "C" NOT NULL,
            title        text NOT NULL,
            media_type   text NOT NULL,
            content_hash text NOT NULL,
            chunker      text NOT NULL,
            metadata     text NOT NULL DEFAULT '{}',  -- the JSON text SQLite stores
            fields       jsonb NOT NULL DEFAULT '{}',  -- the same, for filters (NaN and infinities as strings)
            chunk_count  integer NOT NULL,
            char_count   integer NOT NULL,
            version      integer NOT NULL DEFAULT 1,
            term_length  bigint NOT NULL DEFAULT 0,  -- document BM25 length: its chunks' term counts summed
            created_at   text COLLATE "C" NOT NULL,
            updated_at   text COLLATE "C" NOT NULL,
            UNIQUE (collection, source)
        );
        CREATE INDEX documents_updated ON documents (updated_at, seq);
        CREATE INDEX documents_fields ON documents USING gin (fields);
        CREATE TABLE chunks (
            id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            document_id  text COLLATE "C" NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
            ordinal      integer NOT NULL,
            text         text NOT NULL,
            heading_path text NOT NULL DEFAULT '[]',
            start        integer NOT NULL,
            "end"        integer NOT NULL,
            page         integer,
            page_end     integer,
            token_count  integer NOT NULL,
            embed_hash   text COLLATE "C" NOT NULL,
            term_length  integer NOT NULL,  -- BM25 length: the sum of its term counts
            UNIQUE (document_id, ordinal)
        );
        CREATE INDEX chunks_embed_hash ON chunks (embed_hash);
        CREATE TABLE terms (
            id       integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            term     text COLLATE "C" NOT NULL UNIQUE,
            chunk_df integer NOT NULL DEFAULT 0,  -- chunks holding the term
            doc_df   integer NOT NULL DEFAULT 0   -- documents holding it
        );
        CREATE TABLE chunk_terms (
            term_id  integer NOT NULL,
            chunk_id bigint NOT NULL REFERENCES chunks (id) ON DELETE CASCADE,
            tf       integer NOT NULL,
            PRIMARY KEY (term_id, chunk_id)
        );
        CREATE INDEX chunk_terms_chunk ON chunk_terms (chunk_id);
        CREATE TABLE document_terms (
            term_id     integer NOT NULL,
            document_id text COLLATE "C" NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
            tf          integer NOT NULL,
            PRIMARY KEY (term_id, document_id)
        );
        CREATE INDEX document_terms_document ON document_terms (document_id);
        -- Kept when their documents go: a cache of what was embedded (as on SQLite).
        CREATE TABLE embeddings (
            model     text COLLATE "C" NOT NULL,
            text_hash text COLLATE "C" NOT NULL,
            vector    vector NOT NULL,
            PRIMARY KEY (model, text_hash)
        );
        CREATE TABLE vector_models (
            model      text COLLATE "C" PRIMARY KEY,
            dimensions integer NOT NULL,
            index_name text NOT NULL
        );
        CREATE TABLE dense_moments (
            model  text COLLATE "C" PRIMARY KEY,
            rows   bigint NOT NULL,
            sum    bytea NOT NULL,  -- float64[n]
            second bytea NOT NULL   -- float64[n, n]: the sum of x xᵀ
        );
        CREATE TABLE sentence_sets (
            model     text COLLATE "C" NOT NULL,  -- the sentence model key (model|sentences-<splitter version>)
            text_hash text COLLATE "C" NOT NULL,
            sentences integer NOT NULL,  -- 0: the chunk has no usable sentence (and is not embedded again)
            PRIMARY KEY (model, text_hash)
        );
        CREATE TABLE sentences (
            model     text COLLATE "C" NOT NULL,
            text_hash text COLLATE "C" NOT NULL,
            ordinal   integer NOT NULL,
            start     integer NOT NULL,  -- offsets in the chunk's text
            "end"     integer NOT NULL,
            vector    halfvec NOT NULL,
            PRIMARY KEY (model, text_hash, ordinal)
        );
        CREATE TABLE chunk_deletions (chunk_id bigint NOT NULL, generation bigint NOT NULL);
        CREATE INDEX chunk_deletions_generation ON chunk_deletions (generation);
        CREATE TABLE chunk_inserts (chunk_id bigint NOT NULL, generation bigint NOT NULL);
        CREATE INDEX chunk_inserts_generation ON chunk_inserts (generation);
        CREATE TABLE vector_inserts (text_hash text COLLATE "C" NOT NULL, generation bigint NOT NULL);
        CREATE INDEX vector_inserts_generation ON vector_inserts (generation);
        """,
    ),
    # The job queue: a job is leased to one worker (`locked_by` until `locked_until`, epoch seconds on the server's
    # clock) and claimed with FOR UPDATE SKIP LOCKED, so workers never wait on each other's rows. `upload_key`
    # names an upload's content (unique among jobs not ended), so the same upload queued twice is one job. A job's
    # input goes when the job ends (the trigger), and ended jobs are deleted after the store's retention.
    (
        7,
        "job queue",
        """
        CREATE TABLE jobs (
            seq          bigint GENERATED ALWAYS AS IDENTITY,  -- insertion order: ties of created_at
            id           text COLLATE "C" PRIMARY KEY,
            kind         text NOT NULL,
            collection   text COLLATE "C" NOT NULL,
            source       text COLLATE "C",  -- the payload's source, for the upload key's order
            status       text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
            payload      text NOT NULL,
            done         integer NOT NULL DEFAULT 0,
            total        integer NOT NULL DEFAULT 0,
            result       text,
            error        text,
            key_id       text COLLATE "C",
            attempts     integer NOT NULL DEFAULT 0,
            locked_until double precision,
            locked_by    text COLLATE "C",
            upload_key   text COLLATE "C",
            created_at   text COLLATE "C" NOT NULL,
            updated_at   text COLLATE "C" NOT NULL
        );
        CREATE INDEX jobs_open ON jobs (created_at, seq) WHERE status IN ('queued', 'running');
        CREATE INDEX jobs_open_source ON jobs (collection, source, seq) WHERE status IN ('queued', 'running');
        CREATE UNIQUE INDEX jobs_upload_key ON jobs (upload_key) WHERE status IN ('queued', 'running');
        CREATE INDEX jobs_ended ON jobs (updated_at) WHERE status IN ('succeeded', 'failed');
        CREATE INDEX jobs_listed ON jobs (collection, created_at, seq);
        CREATE TABLE job_inputs (
            job_id text COLLATE "C" PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
            data   bytea NOT NULL
        );
        CREATE FUNCTION job_inputs_dropped() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM job_inputs WHERE job_id = NEW.id;
            RETURN NULL;
        END $$;
        CREATE TRIGGER job_inputs_dropped AFTER UPDATE OF status ON jobs
            FOR EACH ROW WHEN (NEW.status IN ('succeeded', 'failed')) EXECUTE FUNCTION job_inputs_dropped();
        """,
    ),
    (
        8,
        "embeddings by text hash",
        # A document's write reads the vectors its chunks join, of every model, by text hash: without this index
        # that read scanned every stored vector, so each write grew slower with the store.
        "CREATE INDEX embeddings_text_hash ON embeddings (text_hash);",
    ),
    (
        9,
        "BM25 postings carry their row's length, read from their index alone",
        # A posting (term, row, tf) now holds its row's BM25 length too, and the primary key includes both, so BM25
        # reads a term's postings from the index alone, in key order, instead of one heap page and one chunk row
        # per posting. The tables are rebuilt (not updated in place, which would leave every old row dead). A
        # partial index holds a fixed one-in-16 sample of each index's rows (search.py's SAMPLE_STRIDE and
        # _Level.sample), so the corpus moments of a large index read a sixteenth of a common term's postings.
        """
        LOCK TABLE meta, chunk_terms, document_terms IN EXCLUSIVE MODE;  -- writers wait: none is lost in the copy
        CREATE TABLE chunk_terms_v9 AS
            SELECT p.term_id, p.chunk_id, p.tf, x.term_length FROM chunk_terms p JOIN chunks x ON x.id = p.chunk_id;
        DROP TABLE chunk_terms;
        ALTER TABLE chunk_terms_v9 RENAME TO chunk_terms;
        ALTER TABLE chunk_terms
            ALTER COLUMN term_id SET NOT NULL, ALTER COLUMN chunk_id SET NOT NULL, ALTER COLUMN tf SET NOT NULL,
            ALTER COLUMN term_length SET NOT NULL,
            ADD PRIMARY KEY (term_id, chunk_id) INCLUDE (tf, term_length),
            ADD FOREIGN KEY (chunk_id) REFERENCES chunks (id) ON DELETE CASCADE;
        CREATE INDEX chunk_terms_chunk ON chunk_terms (chunk_id);
        CREATE INDEX chunk_terms_sample ON chunk_terms (term_id, chunk_id) INCLUDE (tf, term_length)
            WHERE chunk_id & 15 = 0;
        CREATE TABLE document_terms_v9 AS
            SELECT p.term_id, p.document_id, p.tf, x.term_length
            FROM document_terms p JOIN documents x ON x.id = p.document_id;
        DROP TABLE document_terms;
        ALTER TABLE document_terms_v9 RENAME TO document_terms;
        ALTER TABLE document_terms
            ALTER COLUMN term_id SET NOT NULL, ALTER COLUMN document_id SET NOT NULL, ALTER COLUMN tf SET NOT NULL,
            ALTER COLUMN term_length SET NOT NULL,
            ADD PRIMARY KEY (term_id, document_id) INCLUDE (tf, term_length),
            ADD FOREIGN KEY (document_id) REFERENCES documents (id) ON DELETE CASCADE;
        CREATE INDEX document_terms_document ON document_terms (document_id);
        CREATE INDEX document_terms_sample ON document_terms (term_id, document_id) INCLUDE (tf, term_length)
            WHERE hashtext(document_id) & 15 = 0;
        """,
    ),
    (
        10,
        "guard scores of chunks, guard policies",
        # Each chunk's injection score from the detector at ingest and whether it reached the threshold (NULL
        # score: written before scanning, or with scanning off), who cleared a flag and when, and each collection's
        # and key's guard policy as JSON text (as SQLite stores it). The partial index keeps the review list
        # (flagged chunks only) from reading every chunk.
        """
        ALTER TABLE chunks ADD COLUMN guard_score double precision;
        ALTER TABLE chunks ADD COLUMN guard_flagged boolean NOT NULL DEFAULT false;
        ALTER TABLE chunks ADD COLUMN guard_cleared_by text;
        ALTER TABLE chunks ADD COLUMN guard_cleared_at text COLLATE "C";
        CREATE INDEX chunks_guard_flagged ON chunks (id) WHERE guard_flagged;
        ALTER TABLE collections ADD COLUMN policy text NOT NULL DEFAULT '{}';
        ALTER TABLE api_keys ADD COLUMN policy text NOT NULL DEFAULT '{}';
        """,
    ),
    (
        11,
        "dense moments without the second moment",
        # Writes kept Σxxᵀ (n × n float64: 1.2 MB at 384 dimensions, 19 MB at 1,536) and rewrote it under the write
        # lock on every write; searches now estimate E[xxᵀ] from the vectors themselves (search.py).
        "ALTER TABLE dense_moments DROP COLUMN second;",
    ),
    (
        12,
        "an unperiodic BM25 moment sample",
        # `chunk_id & 15` took the same chunk position of every document whose chunk count divides 16 (ids are
        # consecutive within a document): a hash of the id samples positions evenly.
        """
        DROP INDEX chunk_terms_sample;
        CREATE INDEX chunk_terms_sample ON chunk_terms (term_id, chunk_id) INCLUDE (tf, term_length)
            WHERE hashint8(chunk_id) & 15 = 0;
        """,
    ),
]
