"""The job queue on a real PostgreSQL (tests/pg_server.py) with real processes: workers racing for jobs, a worker
killed or stalled mid-job, a job that always fails, workers woken by NOTIFY, uploads queued once, ended jobs
rotated. The workers are small scripts over the store's queue methods (tests/queue_worker.py) or the real
`JobRunner`, ingesting into an SQLite store through a loopback embedding server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.ingest.uploads import enqueue_upload
from archivist.ingest.worker import JobRunner
from archivist.store import open_store
from archivist.store.records import JobRecord
from fake_servers import EmbeddingServer, Fault

WORKER = str(Path(__file__).with_name("queue_worker.py"))


@pytest.fixture
def queue(postgres_url: str) -> Iterator[Any]:
    """Yield a PostgreSQL store (its queue under test), closed afterwards."""
    from archivist.store.postgres import PostgresStore

    with closing(PostgresStore(postgres_url)) as store:
        yield store


def _job(i: int) -> JobRecord:
    return JobRecord(f"job-{i:04d}", "ingest", "default", "queued", {}, f"2026-01-01T00:00:{i % 60:02d}", "x")


def _worker(url: str, name: str, mode: str, arg: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, WORKER, url, name, mode, arg],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def test_two_worker_processes_racing_for_jobs_claim_each_exactly_once(queue: Any, postgres_url: str) -> None:
    jobs = 300
    for i in range(jobs):
        queue.create_job(_job(i))
    start = str(time.time() + 2)  # both start claiming at the same instant
    procs = [_worker(postgres_url, name, "drain", start) for name in ("w1", "w2")]
    outputs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    claimed = outputs[0] + outputs[1]
    assert sorted(claimed) == [f"job-{i:04d}" for i in range(jobs)]  # every job, none twice
    assert all(outputs), "both workers took jobs"
    assert queue.job_counts() == {"succeeded": jobs}
    by = {name: set(out) for name, out in zip(("w1", "w2"), outputs, strict=True)}
    for job in queue.list_jobs(limit=jobs):
        assert job.attempts == 1 and job.id in by[job.result["by"]]


def test_a_worker_killed_mid_job_loses_it_after_its_lease_to_a_worker_that_finishes_it_once(
    queue: Any, postgres_url: str
) -> None:
    queue.create_job(_job(1), b"the upload")
    dead = _worker(postgres_url, "doomed", "hold", "1.5")
    assert dead.stdout is not None and dead.stdout.readline().strip() == "job-0001"
    dead.send_signal(signal.SIGKILL)
    dead.wait(10)
    assert queue.claim_job("live", lease_s=30, max_attempts=3) is None  # its lease still holds
    deadline = time.monotonic() + 10
    while (taken := queue.claim_job("live", lease_s=30, max_attempts=3)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert taken is not None and taken.id == "job-0001" and taken.attempts == 2 and taken.locked_by == "live"
    assert queue.job_input("job-0001") == b"the upload"  # still there for the worker taking over
    assert queue.update_job("job-0001", worker="live", status="succeeded", result={"by": "live"})
    assert queue.claim_job("live", lease_s=30, max_attempts=3) is None  # finished once: nobody takes it again
    done = queue.get_job("job-0001")
    assert done.status == "succeeded" and done.result == {"by": "live"} and done.attempts == 2
    assert queue.job_input("job-0001") is None


def test_a_stalled_worker_cannot_write_its_stale_result_once_its_job_was_taken_over(
    queue: Any, postgres_url: str
) -> None:
    queue.create_job(_job(1))
    stalled = _worker(postgres_url, "stalled", "hold", "0.5")
    assert stalled.stdout is not None and stalled.stdout.readline().strip() == "job-0001"
    time.sleep(0.8)  # the lease runs out while the worker is stuck
    taken = queue.claim_job("live", lease_s=30, max_attempts=3)
    assert taken is not None and taken.attempts == 2
    assert not queue.renew_job("job-0001", "stalled", 30)  # its heartbeat now fails, so a JobRunner would stop
    assert queue.update_job("job-0001", worker="live", status="succeeded", result={"by": "live"})
    out, _ = stalled.communicate("go on\n", timeout=30)  # the stalled worker wakes and writes its result
    assert out.split() == ["wrote", "False"]
    done = queue.get_job("job-0001")
    assert done.status == "succeeded" and done.result == {"by": "live"}


@contextmanager
def _runner(queue: Any, tmp_path: Path, emb: EmbeddingServer, **kwargs: Any) -> Iterator[tuple[JobRunner, Archivist]]:
    """Yield a started JobRunner taking jobs from the PostgreSQL queue and ingesting into an SQLite store."""
    settings = load_settings(
        store=f"sqlite:///{tmp_path / 'docs.db'}", embedder="openai", embed_url=emb.url, embed_model="fake"
    )
    with Archivist(settings, open_store(settings.store)) as app:
        runner = JobRunner(queue, app.pipeline, **kwargs)
        runner.start()
        try:
            yield runner, app
        finally:
            runner.stop()


def _wait_for(queue: Any, job_id: str, statuses: set[str], timeout_s: float) -> JobRecord:
    deadline = time.monotonic() + timeout_s
    while (job := queue.get_job(job_id)).status not in statuses:
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job  # type: ignore[no-any-return]


def test_a_job_that_always_fails_ends_dead_lettered_with_its_error_after_its_attempts(
    queue: Any, tmp_path: Path
) -> None:
    with EmbeddingServer(dim=16).running() as emb:
        emb.faults.extend(Fault(status=503, body=b'{"error": "model not loaded"}') for _ in range(10_000))
        with _runner(queue, tmp_path, emb, lease_s=1.0, max_attempts=3, poll_s=0.1):
            started = time.monotonic()
            job = enqueue_upload(queue, "default", "owls.md", b"# Owls\n\nOwls hunt at night.", source="owls.md")
            failed = _wait_for(queue, job.id, {"failed", "succeeded"}, 120)
            elapsed = time.monotonic() - started
    assert failed.status == "failed" and failed.attempts == 3, failed
    assert "503" in (failed.error or "") or "model not loaded" in (failed.error or ""), failed.error
    assert elapsed >= 2.0  # two retries, each no sooner than its backoff (1 s here: capped at the lease)
    assert queue.job_input(job.id) is None and queue.claim_job("w", lease_s=30, max_attempts=3) is None


def test_notify_wakes_an_idle_worker_long_before_its_next_poll(queue: Any, postgres_url: str, tmp_path: Path) -> None:
    with EmbeddingServer(dim=16).running() as emb, _runner(queue, tmp_path, emb, poll_s=60.0) as (runner, app):
        time.sleep(0.5)  # the runner found the queue empty and waits for its next poll, a minute away
        # Queued by another process, as an API server on another host would.
        script = (
            "import sys, time\n"
            "from archivist.ingest.uploads import enqueue_upload\n"
            "from archivist.store.postgres import PostgresStore\n"
            "store = PostgresStore(sys.argv[1])\n"
            "job = enqueue_upload(store, 'default', 'owls.md', b'# Owls\\n\\nOwls hunt at night.', source='owls.md')\n"
            "print(job.id, time.time(), flush=True)\n"
            "store.close()\n"
        )
        out = subprocess.run([sys.executable, "-c", script, postgres_url], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        job_id, queued_at = out.stdout.split()
        done = _wait_for(queue, job_id, {"succeeded", "failed"}, 20)
        woke_after = time.time() - float(queued_at)
        assert done.status == "succeeded" and done.result is not None and done.result["added"] == 1, done
        assert woke_after < 10, woke_after  # the poll would have come after 60 s
        assert [d.source for d in app.store.list_documents()] == ["owls.md"]
    assert runner.finished == 1


def test_a_listener_hears_a_job_queued_by_another_process_at_once(queue: Any, postgres_url: str) -> None:
    heard = threading.Event()
    stop = queue.on_job_queued(heard.set)
    script = (
        "import sys, time\n"
        "from archivist.store.postgres import PostgresStore\n"
        "from archivist.store.records import JobRecord\n"
        "store = PostgresStore(sys.argv[1])\n"
        "store.create_job(JobRecord('j', 'ingest', 'default', 'queued', {}, 'now', 'now'))\n"
        "print(time.monotonic(), flush=True)\n"
        "time.sleep(0.5)\n"
        "store.close()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, postgres_url], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    queued_at = float(proc.stdout.readline())  # monotonic clocks agree between processes on one host
    assert heard.wait(5)
    assert time.monotonic() - queued_at < 0.5  # well before any poll interval (0.5 s by default)
    proc.wait(30)
    stop()
    heard.clear()
    queue.create_job(_job(2))
    assert not heard.wait(1.0)  # unsubscribed


def test_the_same_upload_queued_twice_is_one_job_and_the_last_upload_of_a_source_wins(queue: Any) -> None:
    first = enqueue_upload(queue, "default", "a.md", b"version 1", source="a.md")
    again = enqueue_upload(queue, "default", "a.md", b"version 1", source="a.md")
    assert again.id == first.id and queue.job_counts() == {"queued": 1}
    other_key = enqueue_upload(queue, "default", "a.md", b"version 1", source="a.md", key_id="k2")
    assert other_key.id != first.id  # another API key's upload is its own job
    changed = enqueue_upload(queue, "default", "a.md", b"version 2", source="a.md")
    assert changed.id not in (first.id, other_key.id)
    # Version 1 again after version 2: a new job, queued after version 2's, so that version 1 is what stays.
    back = enqueue_upload(queue, "default", "a.md", b"version 1", source="a.md")
    assert back.id not in (first.id, changed.id) and queue.job_input(back.id) == b"version 1"
    assert enqueue_upload(queue, "default", "a.md", b"version 1", source="a.md").id == back.id
    elsewhere = enqueue_upload(queue, "other", "a.md", b"version 1", source="a.md")
    assert elsewhere.id != back.id
    assert queue.job_counts() == {"queued": 5}
    # Once a job has ended, the same upload is queued again (the document may have changed since).
    taken = queue.claim_job("w", lease_s=30, max_attempts=3)
    assert taken is not None and taken.id == first.id
    assert queue.update_job(first.id, worker="w", status="succeeded")
    assert enqueue_upload(queue, "default", "a.md", b"version 1", source="a.md").id == back.id  # still open
    queue.update_job(back.id, status="failed", error="gave up")
    assert enqueue_upload(queue, "default", "a.md", b"version 1", source="a.md").id not in (first.id, back.id)


def test_ended_jobs_are_deleted_after_the_retention_and_open_ones_never(queue: Any, postgres_url: str) -> None:
    import psycopg

    for i, status in enumerate(("succeeded", "failed", "queued", "succeeded")):
        queue.create_job(_job(i), b"input")
        queue.update_job(f"job-{i:04d}", status=status)
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # three of them last changed 40 days ago
        conn.execute("UPDATE jobs SET updated_at = '2020-01-01T00:00:00+00:00' WHERE id <> 'job-0003'")
    queue.create_job(_job(9))  # an enqueue rotates
    assert sorted(j.id for j in queue.list_jobs()) == ["job-0002", "job-0003", "job-0009"]
    assert queue.job_input("job-0002") == b"input"
    # A store URL's job_retention_days keeps ended jobs for that long instead: 3 days drops one ended 5 days ago.
    queue.update_job("job-0009", status="succeeded")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        five_days_ago = (datetime.now(UTC) - timedelta(days=5)).isoformat(timespec="seconds")
        conn.execute("UPDATE jobs SET updated_at = %s WHERE id IN ('job-0003', 'job-0009')", (five_days_ago,))
    queue.create_job(_job(10))  # 30 days by default: both stay
    assert sorted(j.id for j in queue.list_jobs()) == ["job-0002", "job-0003", "job-0009", "job-0010"]
    with closing(open_store(postgres_url + "&job_retention_days=3")) as short:
        short.create_job(_job(11))
    assert sorted(j.id for j in queue.list_jobs()) == ["job-0002", "job-0010", "job-0011"]


def test_archivist_workers_ingest_what_an_api_process_queues_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    import httpx

    from archivist.server.auth import mint_api_key
    from live_server import free_port

    with closing(open_store(postgres_url)) as store:
        store.create_collection("kb")
        key = mint_api_key(store, "admin", ["admin"])[0]
    with EmbeddingServer(dim=16).running() as emb:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")} | {
            "ARCHIVIST_STORE": postgres_url,
            **emb.env(),
        }
        port = free_port()
        commands = {
            "api": ["serve", "--port", str(port)],  # only enqueues (ARCHIVIST_WORKERS_INLINE=0)
            "w1": ["worker", "--concurrency", "1"],
            "w2": ["worker", "--concurrency", "1"],
        }
        logs = {name: (tmp_path / f"{name}.log").open("w") for name in commands}
        procs = {
            name: subprocess.Popen(
                [sys.executable, "-m", "archivist.cli", *args],
                cwd=tmp_path,
                env=env | ({"ARCHIVIST_WORKERS_INLINE": "0"} if name == "api" else {}),
                stdout=logs[name],
                stderr=logs[name],
            )
            for name, args in commands.items()
        }
        try:
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=30
            ) as client:
                deadline = time.monotonic() + 60
                while True:
                    assert procs["api"].poll() is None, (tmp_path / "api.log").read_text()
                    try:
                        if client.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, "serve did not come up"
                    time.sleep(0.1)

                def upload(name: str, text: str) -> str:
                    r = client.post("/v1/collections/kb/documents", files={"file": (name, text.encode(), "text/plain")})
                    assert r.status_code == 202, r.text
                    return str(r.json()["job_id"])

                ids = [upload(f"note-{i}.txt", f"Note {i} is about owls and their {i} feathers.") for i in range(4)]
                with closing(open_store(postgres_url)) as store:
                    jobs = [_wait_for(store, job_id, {"succeeded", "failed"}, 120) for job_id in ids]
                    assert [j.status for j in jobs] == ["succeeded"] * 4, [j.error for j in jobs]
                    assert store.count_documents() == 4
                    finishers = {int(j.result["worker"].split(":")[1]) for j in jobs}  # type: ignore[index]
                    assert finishers <= {procs["w1"].pid, procs["w2"].pid}  # never the API process
            for name in ("w1", "w2"):
                procs[name].send_signal(signal.SIGTERM)
                assert procs[name].wait(30) == 0, (tmp_path / f"{name}.log").read_text()
        finally:
            for name, proc in procs.items():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                logs[name].close()
