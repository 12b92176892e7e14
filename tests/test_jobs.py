"""Ingestion jobs: upload names kept apart, leases that hand a dead worker's job on and never re-run a live one's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.ingest.uploads import upload_name
from archivist.server.app import create_app
from archivist.server.auth import mint_api_key
from archivist.store import open_store
from archivist.store.sqlite import SQLiteStore
from fake_servers import EmbeddingServer, Fault
from live_server import free_port, serving, wait_for_job

# -- upload names ----------------------------------------------------------------------------------


def test_uploads_keep_their_names_and_different_names_never_collide(tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    settings = load_settings(store=f"sqlite:///{tmp_path / 'store.db'}")
    with Archivist(settings, open_store(settings.store), embedder) as app, serving(create_app(app)) as base:
        admin = mint_api_key(app.store, "admin", ["admin"])[0]
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}, timeout=60) as c:
            c.post("/v1/collections", json={"name": "kb"})
            long_name = "x" * 1000 + ".md"
            names = ["a b.md", "a_b.md", "名前.md", long_name, "../../etc/notes.md", "tab\there.md", "tabhere.md"]
            sources = {}
            for i, name in enumerate(names):
                body = f"# Note {i}\n\nThis is note number {i} about topic {i}.\n".encode()
                job = c.post("/v1/collections/kb/documents", files={"file": (name, body, "text/markdown")}).json()
                done = wait_for_job(c, job["job_id"])
                assert done["status"] == "succeeded", (name, done)
                result: Any = done["result"]
                [doc] = result["documents"]
                sources[name] = doc["source"]
            for title in ("a/b", "a_b"):
                job = c.post("/v1/collections/kb/documents", json={"title": title, "text": f"Titled {title}."}).json()
                assert wait_for_job(c, job["job_id"])["status"] == "succeeded"
            listed = c.get("/v1/collections/kb/documents", params={"limit": 100}).json()["documents"]
    assert sources["a b.md"] == "upload/a b.md" and sources["a_b.md"] == "upload/a_b.md"
    assert sources["名前.md"] == "upload/名前.md"
    assert sources["../../etc/notes.md"] == "upload/notes.md"  # folders are removed
    long_source = sources[long_name]
    assert long_source.startswith("upload/xxx") and long_source.endswith(".md")
    assert len(long_source.encode()) <= len("upload/") + 200
    assert len(set(sources.values())) == len(names)  # a tab dropped is a name changed: it gets its own
    assert len(listed) == len(names) + 2  # nothing replaced anything else


def test_upload_names_are_distinct_bounded_and_keep_their_extension() -> None:
    names = [
        "a b.md", "a_b.md", ".secret.md", "secret~e87d890d.md", "secret.md", "a/", "dir\\", "", ".md", "\u200b.md",
        "bad\udcff.md", "bad.md", "..", "x" * 300 + ".md", "x" * 301 + ".md", "tab\there.md", "tabhere.md", "名前.md",
    ]  # fmt: skip
    made = {name: upload_name(name) for name in names}
    assert len(set(made.values())) == len(names), made  # no two names land on one
    for name, safe in made.items():
        assert safe and "/" not in safe and "\\" not in safe and len(safe.encode()) <= 200
        if safe == name:  # a name kept as it was stays so
            assert upload_name(safe) == safe
        if name.endswith(".md"):
            assert safe.endswith(".md"), (name, safe)
    assert made["secret~e87d890d.md"] != made[".secret.md"] == "secret~e87d890d.md"


def test_a_job_whose_documents_failed_to_embed_is_retried_and_finishes(tmp_path: Path) -> None:
    with EmbeddingServer(dim=16).running() as emb:
        # More failures than the embedder's own retries: the job's first attempt fails its documents.
        emb.faults.extend(Fault(status=503, body=b'{"error": "loading"}') for _ in range(4))
        settings = load_settings(
            store=f"sqlite:///{tmp_path / 'store.db'}",
            embedder="openai",
            embed_url=emb.url,
            embed_model="fake",
        )
        with Archivist(settings, open_store(settings.store)) as app, serving(create_app(app)) as base:
            admin = mint_api_key(app.store, "admin", ["admin"])[0]
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}, timeout=60) as c:
                c.post("/v1/collections", json={"name": "kb"})
                job_id = c.post("/v1/collections/kb/documents", json={"title": "Owls", "text": "Owls hunt."}).json()[
                    "job_id"
                ]
                job: Any = wait_for_job(c, job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    assert job["result"]["added"] == 1 and job["result"]["failed"] == 0


# -- leases across processes -----------------------------------------------------------------------

RECORDS = 200


@contextmanager
def _embedding_server(delay_s: float) -> Iterator[EmbeddingServer]:
    """A loopback embedding server slow enough (`delay_s` per request; the pipeline sends 64 texts at a time)
    that a job takes seconds."""
    with EmbeddingServer(dim=16).running() as server:
        server.faults.extend(Fault(delay_s=delay_s) for _ in range(100_000))
        yield server


def _env(root: Path, embed_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")}
    env.update(
        ARCHIVIST_STORE=f"sqlite:///{root / 'store.db'}",
        ARCHIVIST_EMBEDDER="openai",
        ARCHIVIST_EMBED_URL=embed_url,
        ARCHIVIST_EMBED_MODEL="fake",
        ARCHIVIST_JOB_LEASE_S="2",
    )
    return env


class _Worker:
    """One `archivist serve` process (its log in a file, so a full pipe never blocks it)."""

    def __init__(self, root: Path, env: dict[str, str], name: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log: IO[str] = (root / f"{name}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "archivist.cli", "serve", "--port", str(self.port)],
            cwd=root,
            env=env,
            stdout=self.log,
            stderr=self.log,
            text=True,
        )
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, (root / f"{name}.log").read_text()
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.1)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def jobs_root(tmp_path: Path) -> tuple[Path, str]:
    """Return a folder with a store holding collection "kb", and an admin key."""
    store = SQLiteStore(tmp_path / "store.db")
    try:
        store.create_collection("kb")
        return tmp_path, mint_api_key(store, "admin", ["admin"])[0]
    finally:
        store.close()


def _upload(base: str, key: str, name: str = "records.jsonl") -> str:
    lines = [
        json.dumps({"id": f"r{i}", "title": f"Record {i}", "text": f"Record {i} of {name} is about item {i}."})
        for i in range(RECORDS)
    ]
    r = httpx.post(
        f"{base}/v1/collections/kb/documents",
        files={"file": (name, "\n".join(lines).encode(), "application/x-ndjson")},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def _job(root: Path, job_id: str) -> Any:
    store = SQLiteStore(root / "store.db")
    try:
        return store.get_job(job_id)
    finally:
        store.close()


def _wait(root: Path, job_id: str, until: Any, timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        job = _job(root, job_id)
        if until(job):
            return job
        assert time.monotonic() < deadline, f"job stuck: {job}"
        time.sleep(0.1)


def test_a_killed_workers_job_is_taken_over_after_its_lease_and_reports_the_whole_job(
    jobs_root: tuple[Path, str],
) -> None:
    root, key = jobs_root
    with _embedding_server(1.0) as emb:
        env = _env(root, emb.url)
        first = _Worker(root, env, "first")
        try:
            job_id = _upload(first.base, key)
            # Killed once some documents are written (the job checkpoints each write).
            _wait(root, job_id, lambda j: j.status == "running" and len(j.payload.get("written", {})) >= 64)
            first.stop(signal.SIGKILL)
        finally:
            first.stop(signal.SIGKILL)
        written_before = len(_job(root, job_id).payload["written"])
        assert 0 < written_before < RECORDS
        second = _Worker(root, env, "second")
        try:
            job = _wait(root, job_id, lambda j: j.status not in ("queued", "running"))
        finally:
            second.stop()
    assert job.status == "succeeded" and job.attempts == 2, job.error
    result = job.result
    # Every record, including those the killed worker wrote, is this job's work.
    assert result["added"] == RECORDS and result["unchanged"] == 0 and len(result["documents"]) == RECORDS
    assert {d["outcome"] for d in result["documents"]} == {"added"}


def test_restarting_a_worker_never_reruns_the_job_its_sibling_is_running(jobs_root: tuple[Path, str]) -> None:
    root, key = jobs_root
    # Slow enough (about 16 s) that a process restarts well within the job.
    with _embedding_server(4.0) as emb:
        env = _env(root, emb.url)
        workers = [_Worker(root, env, "a"), _Worker(root, env, "b")]
        try:
            job_id = _upload(workers[0].base, key)
            running = _wait(root, job_id, lambda j: j.status == "running" and j.done > 0)
            holder_pid = int(running.locked_by.split(":")[1])
            idle = next(w for w in workers if w.proc.pid != holder_pid)
            idle.stop()  # a restart of the other process, while the holder works
            workers.append(_Worker(root, env, "c"))
            assert _job(root, job_id).status == "running"  # the restart came while the job ran
            job = _wait(root, job_id, lambda j: j.status not in ("queued", "running"))
        finally:
            for w in workers:
                w.stop()
        embedded = [text for request in emb.requests for text in request["input"]]
    assert job.status == "succeeded" and job.attempts == 1 and job.result["added"] == RECORDS
    assert len(embedded) == len(set(embedded)) == RECORDS  # nothing was embedded twice: nothing re-ran


def test_worker_processes_run_what_serve_queues_and_a_killed_worker_loses_no_job(jobs_root: tuple[Path, str]) -> None:
    root, key = jobs_root
    with _embedding_server(0.5) as emb:
        env = _env(root, emb.url)
        api = _Worker(root, env | {"ARCHIVIST_WORKERS_INLINE": "0"}, "api")  # an API process that only enqueues
        workers: list[subprocess.Popen[str]] = []
        logs = []
        for name in ("w1", "w2"):
            logs.append((root / f"{name}.log").open("w"))
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "archivist.cli", "worker", "--concurrency", "1"],
                    cwd=root,
                    env=env,
                    stdout=logs[-1],
                    stderr=logs[-1],
                    text=True,
                )
            )
        try:
            job_ids = [_upload(api.base, key, f"records-{i}.jsonl") for i in range(3)]
            # Kill the worker holding a job once that job has written some documents.
            deadline = time.monotonic() + 120
            while True:
                held = [
                    j
                    for j in (_job(root, i) for i in job_ids)
                    if j.status == "running" and len(j.payload.get("written", {})) >= 64
                ]
                if held:
                    break
                assert time.monotonic() < deadline, [_job(root, i) for i in job_ids]
                time.sleep(0.05)
            killed_job, holder = held[0], int(held[0].locked_by.split(":")[1])
            victim = next(w for w in workers if w.pid == holder)
            victim.kill()
            victim.wait()
            jobs = [_wait(root, i, lambda j: j.status not in ("queued", "running"), timeout_s=180) for i in job_ids]
            survivor = next(w for w in workers if w is not victim)
            assert survivor.poll() is None  # still serving the queue
            survivor.send_signal(signal.SIGTERM)
            assert survivor.wait(30) == 0  # a clean stop
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
            for log in logs:
                log.close()
            api.stop()
    assert [j.status for j in jobs] == ["succeeded"] * 3, [j.error for j in jobs]
    # Only the worker processes ran jobs, never the API process; the killed worker's job was taken over once.
    finishers = {int(j.result["worker"].split(":")[1]) for j in jobs}
    assert api.proc.pid not in finishers and finishers <= {w.pid for w in workers}
    assert {j.id: j.attempts for j in jobs} == {j.id: 2 if j.id == killed_job.id else 1 for j in jobs}
    # Every record of every job is stored once and reported once.
    assert all(j.result["added"] == RECORDS and len(j.result["documents"]) == RECORDS for j in jobs)
    store = SQLiteStore(root / "store.db")
    try:
        assert store.count_documents() == 3 * RECORDS
        assert {d.version for d in store.list_documents(limit=10_000)} == {1}  # none written twice
    finally:
        store.close()


def test_a_job_without_its_upload_in_the_store_fails_at_once_saying_why(tmp_path: Path) -> None:
    from archivist.store.records import JobRecord

    settings = load_settings(store=f"sqlite:///{tmp_path / 'store.db'}")
    with Archivist(settings, open_store(settings.store)) as app:
        app.store.create_collection("kb")
        # As an Archivist that kept uploads on the server's disk queued it: the store has no bytes for it.
        payload = {"file": "a.md", "source": "upload/a.md", "title": None, "metadata": {}}
        app.store.create_job(JobRecord("old", "ingest", "kb", "queued", payload, "2026-01-01", "2026-01-01", total=1))
        runner = app.job_runner()
        runner.start()
        try:
            deadline = time.monotonic() + 30
            while (job := app.store.get_job("old")) is not None and job.status in ("queued", "running"):
                assert time.monotonic() < deadline, job
                time.sleep(0.05)
        finally:
            runner.stop()
    assert job is not None and job.status == "failed" and job.attempts == 1  # no attempt can bring it back
    assert "upload is not in the store" in (job.error or "") and "upload it again" in (job.error or "")
