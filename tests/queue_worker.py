"""A worker process for tests/test_postgres_queue.py: it takes jobs from a PostgreSQL store's queue with the
store's own methods (no ingestion: the queue is what is under test).

    python queue_worker.py URL WORKER drain START_AT   from START_AT (epoch s) on, claim and finish jobs until none
                                                       is left; print each job's id as it is claimed
    python queue_worker.py URL WORKER hold LEASE_S     claim one job, print its id, then wait for a line on stdin,
                                                       write the job's result and print whether the write was kept
"""

from __future__ import annotations

import sys
import time

from archivist.store.postgres import PostgresStore


def main(url: str, worker: str, mode: str, arg: str) -> None:
    store = PostgresStore(url + "&pool_size=2")
    try:
        if mode == "drain":
            time.sleep(max(0.0, float(arg) - time.time()))
            while (job := store.claim_job(worker, lease_s=30, max_attempts=3)) is not None:
                print(job.id, flush=True)
                if not store.update_job(job.id, worker=worker, status="succeeded", result={"by": worker}):
                    raise SystemExit(f"{worker} lost job {job.id} it had just claimed")
        elif mode == "hold":
            job = store.claim_job(worker, lease_s=float(arg), max_attempts=3)
            print(job.id if job else "none", flush=True)
            sys.stdin.readline()  # the test decides when this (stalled) worker goes on
            if job is not None:
                kept = store.update_job(job.id, worker=worker, status="succeeded", result={"by": worker})
                print(f"wrote {kept}", flush=True)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        store.close()


if __name__ == "__main__":
    main(*sys.argv[1:5])
