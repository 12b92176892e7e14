"""The HTTP service end to end: a real uvicorn server on 127.0.0.1 over a real SQLite store and the bundled model."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from archivist.answer.prompts import load_prompt
from archivist.app import Archivist
from archivist.config import load_settings
from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.server.app import create_app
from archivist.server.auth import mint_api_key
from archivist.store import open_store
from fake_servers import ChatServer
from live_server import serving, wait_for_job

ALPHA = {
    "cats.md": "# Cats\n\n## Sleep\n\nCats sleep about sixteen hours a day, mostly in short naps.\n\n"
    "## Purring\n\nCats purr when they are content, and sometimes when they are hurt.\n",
}
BETA = {
    "project.md": "# Project Zephyr\n\n## Secret\n\nThe Zephyr launch code is kept in the vault beneath Oslo.\n",
}
ZEPHYR = "Where is the Zephyr launch code kept?"


def _app(root: Path, embedder: MiniLMEmbedder, **overrides: Any) -> Archivist:
    settings = load_settings(store=f"sqlite:///{root / 'store.db'}", **overrides)
    return Archivist(settings, open_store(settings.store), embedder)


@dataclass
class Keys:
    admin: str
    alpha_reader: str
    alpha_writer: str
    beta_reader: str


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, embedder: MiniLMEmbedder) -> Path:
    root = tmp_path_factory.mktemp("server")
    for collection, docs in (("alpha", ALPHA), ("beta", BETA)):
        folder = root / collection
        folder.mkdir()
        for name, text in docs.items():
            (folder / name).write_text(text)
        with _app(root, embedder) as app:
            app.ingest([folder], collection=collection)
    return root


@pytest.fixture(scope="module")
def keys(root: Path, embedder: MiniLMEmbedder) -> Keys:
    with _app(root, embedder) as app:
        store = app.store
        return Keys(
            admin=mint_api_key(store, "admin", ["admin"])[0],
            alpha_reader=mint_api_key(store, "alpha-r", ["read"], ["alpha"])[0],
            alpha_writer=mint_api_key(store, "alpha-w", ["read", "write"], ["alpha"])[0],
            beta_reader=mint_api_key(store, "beta-r", ["read"], ["beta"])[0],
        )


@pytest.fixture(scope="module")
def server(root: Path, embedder: MiniLMEmbedder, keys: Keys) -> Iterator[str]:
    with _app(root, embedder) as app, serving(create_app(app)) as base:
        yield base


def client(base: str, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=base, headers=headers, timeout=60)


def sse_events(response: httpx.Response) -> list[tuple[str, Any]]:
    events, name = [], "message"
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code and body["message"] and body["request_id"] == response.headers["x-request-id"]
    return dict(body)


# -- operations ------------------------------------------------------------------------------------


def test_health_readiness_metrics_and_offline_api_docs(server: str) -> None:
    with client(server, None) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        from archivist.store.sqlite.migrations import MIGRATIONS

        assert c.get("/readyz").json() == {"status": "ready", "schema_version": MIGRATIONS[-1][0]}
        c.get("/v1/me")  # a 401, to be counted
        metrics = c.get("/metrics")
        assert metrics.status_code == 200
        assert 'archivist_http_requests_total{method="GET",route="/v1/me",status="401"}' in metrics.text
        assert "archivist_documents 2.0" in metrics.text
        spec = c.get("/openapi.json").json()
        assert {"/v1/search", "/v1/answer", "/v1/collections/{collection}/documents"} <= set(spec["paths"])
        ui = c.get("/")
        assert "script-src 'self'" in ui.headers["content-security-policy"]
        docs = c.get("/docs")
        # Swagger UI comes from the installed package, never from a CDN.
        assert "/docs-assets/swagger-ui-bundle.js" in docs.text and "cdn" not in docs.text
        assert c.get("/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_every_response_carries_a_request_id_and_errors_have_one_shape(server: str, keys: Keys) -> None:
    with client(server, keys.admin) as c:
        echoed = c.get("/v1/me", headers={"X-Request-ID": "my-trace-42"})
        assert echoed.headers["x-request-id"] == "my-trace-42"
        assert_error(c.get("/v1/nope"), 404, "not_found")
        body = assert_error(c.post("/v1/search", json={"query": "cats", "k": 0}), 422, "validation_error")
        assert "k" in body["message"]
        assert_error(c.post("/v1/search", json={"query": "cats", "surprise": 1}), 422, "validation_error")
        assert_error(
            c.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"}),
            422,
            "validation_error",
        )
        assert_error(c.post("/v1/search", json={"query": "cats", "filters": {"nokey": "x"}}), 400, "bad_request")


# -- keys, scopes, collections --------------------------------------------------------------------


def test_requests_without_a_valid_key_get_401(server: str, keys: Keys) -> None:
    with client(server, None) as c:
        assert_error(c.get("/v1/collections"), 401, "unauthorized")
    with client(server, "ak_000000000000_" + "x" * 32) as c:
        assert_error(c.get("/v1/collections"), 401, "unauthorized")
    with httpx.Client(base_url=server, headers={"X-API-Key": keys.alpha_reader}) as c:
        assert c.get("/v1/me").json()["name"] == "alpha-r"


def test_me_says_what_the_server_lets_a_key_do(server: str, keys: Keys) -> None:
    expected = {
        keys.admin: {"read": True, "write": True, "admin": True},  # admin holds every scope
        keys.alpha_writer: {"read": True, "write": True, "admin": False},
        keys.alpha_reader: {"read": True, "write": False, "admin": False},
    }
    for key, can in expected.items():
        with client(server, key) as c:
            assert c.get("/v1/me").json()["can"] == can


def test_documents_are_listed_by_source_or_newest_first(server: str, keys: Keys) -> None:
    with client(server, keys.alpha_reader) as c:
        by_source = c.get("/v1/collections/alpha/documents").json()["documents"]
        newest = c.get("/v1/collections/alpha/documents", params={"sort": "newest"}).json()["documents"]
        assert_error(c.get("/v1/collections/alpha/documents", params={"sort": "random"}), 422, "validation_error")
    assert [d["source"] for d in by_source] == sorted(d["source"] for d in by_source)
    stamps = [(d["updated_at"]) for d in newest]
    assert stamps == sorted(stamps, reverse=True) and {d["id"] for d in newest} == {d["id"] for d in by_source}


def test_scopes_are_enforced(server: str, keys: Keys) -> None:
    with client(server, keys.alpha_reader) as c:
        assert_error(c.post("/v1/collections/alpha/documents", json={"title": "t", "text": "x"}), 403, "forbidden")
        assert_error(c.post("/v1/collections", json={"name": "gamma"}), 403, "forbidden")
    with client(server, keys.admin) as c:
        created = c.post("/v1/collections", json={"name": "gamma", "description": "third"})
        assert created.status_code == 201 and created.json()["documents"] == 0
        assert_error(c.post("/v1/collections", json={"name": "gamma"}), 409, "conflict")
        assert_error(c.post("/v1/collections", json={"name": "Bad Name!"}), 400, "bad_request")


def test_a_key_never_sees_another_collections_documents(server: str, keys: Keys) -> None:
    with client(server, keys.alpha_reader) as c:
        assert [x["name"] for x in c.get("/v1/collections").json()["collections"]] == ["alpha"]
        # Without a collection, search covers only what the key may see: Zephyr's document is not found.
        hits = c.post("/v1/search", json={"query": ZEPHYR, "k": 10}).json()["hits"]
        assert hits and {h["collection"] for h in hits} == {"alpha"}
        assert all("Zephyr" not in h["text"] for h in hits)
        assert_error(c.post("/v1/search", json={"query": ZEPHYR, "collection": "beta"}), 403, "forbidden")
        assert_error(c.post("/v1/search", json={"query": ZEPHYR, "collections": ["alpha", "beta"]}), 403, "forbidden")
        # A filter cannot widen the scope (filters are ORed within a key).
        smuggled = c.post("/v1/search", json={"query": ZEPHYR, "filters": {"collection": "beta"}})
        assert_error(smuggled, 400, "bad_request")
        answer = c.post("/v1/answer", json={"question": ZEPHYR}).json()
        assert all(cit["source"].endswith("cats.md") for cit in answer["citations"])
        assert "Oslo" not in answer["answer"]
        beta_doc = _first_document(server, keys.beta_reader, "beta")
        assert_error(c.get(f"/v1/collections/beta/documents/{beta_doc}"), 403, "forbidden")
        # Asking for beta's document under alpha's name finds nothing: ids are checked against the collection.
        assert_error(c.get(f"/v1/collections/alpha/documents/{beta_doc}"), 404, "not_found")
        assert_error(c.get("/v1/collections/beta/documents"), 403, "forbidden")
    with client(server, keys.beta_reader) as c:
        hits = c.post("/v1/search", json={"query": ZEPHYR, "k": 3}).json()["hits"]
        assert hits[0]["collection"] == "beta" and "Oslo" in hits[0]["text"]


def _first_document(server: str, key: str, collection: str) -> str:
    with client(server, key) as c:
        return str(c.get(f"/v1/collections/{collection}/documents").json()["documents"][0]["id"])


# -- documents and jobs ----------------------------------------------------------------------------


def test_upload_is_ingested_in_the_background_then_readable_searchable_and_deletable(
    server: str, keys: Keys, tmp_path: Path
) -> None:
    note = "# Ferrets\n\n## Diet\n\nFerrets are obligate carnivores and eat small meals often.\n"
    with client(server, keys.alpha_writer) as c:
        accepted = c.post(
            "/v1/collections/alpha/documents",
            files={"file": ("ferrets.md", note.encode(), "text/markdown")},
            data={"metadata": json.dumps({"team": "pets"})},
        )
        assert accepted.status_code == 202, accepted.text
        job = wait_for_job(c, accepted.json()["job_id"])
        assert job["status"] == "succeeded", job
        assert job["progress"] == {"done": 1, "total": 1}
        doc_id = job["result"]["documents"][0]["id"]  # type: ignore[index]
        doc = c.get(f"/v1/collections/alpha/documents/{doc_id}").json()
        assert (
            doc["title"] == "Ferrets" and doc["metadata"] == {"team": "pets"} and doc["source"] == "upload/ferrets.md"
        )
        # Offsets are the original's: only whitespace between chunks may differ (the store keeps chunks, not files).
        assert doc["text"] == note  # gaps between chunks are paragraph breaks
        for chunk in doc["chunks"]:
            assert doc["text"][chunk["start"] : chunk["end"]].strip()
        hits = c.post("/v1/search", json={"query": "what do ferrets eat", "collection": "alpha", "k": 1}).json()
        assert hits["hits"][0]["document_id"] == doc_id
        assert c.delete(f"/v1/collections/alpha/documents/{doc_id}").json() == {"deleted": doc_id}
        assert_error(c.get(f"/v1/collections/alpha/documents/{doc_id}"), 404, "not_found")
        assert_error(c.delete(f"/v1/collections/alpha/documents/{doc_id}"), 404, "not_found")


def test_json_text_documents_are_replaced_by_source(server: str, keys: Keys) -> None:
    with client(server, keys.alpha_writer) as c:
        first = c.post(
            "/v1/collections/alpha/documents",
            json={"title": "House rules", "text": "Quiet after ten.", "source": "rules", "media_type": "text/plain"},
        )
        job = wait_for_job(c, first.json()["job_id"])
        doc_id = job["result"]["documents"][0]["id"]  # type: ignore[index]
        second = c.post(
            "/v1/collections/alpha/documents",
            json={"title": "House rules", "text": "Quiet after nine.", "source": "rules"},
        )
        assert wait_for_job(c, second.json()["job_id"])["status"] == "succeeded"
        doc = c.get(f"/v1/collections/alpha/documents/{doc_id}").json()
        assert doc["version"] == 2 and doc["text"] == "Quiet after nine." and doc["title"] == "House rules"
        c.delete(f"/v1/collections/alpha/documents/{doc_id}")


def test_bad_uploads_get_specific_errors_and_lose_nothing(server: str, keys: Keys) -> None:
    with client(server, keys.alpha_writer) as c:
        before = c.get("/v1/collections/alpha/documents").json()["total"]
        unsupported = c.post("/v1/collections/alpha/documents", files={"file": ("tool.exe", b"MZ\x90\x00", "x/y")})
        job = wait_for_job(c, unsupported.json()["job_id"])
        assert job["status"] == "failed" and ".exe" in str(job["error"])
        assert_error(
            c.post("/v1/collections/alpha/documents", files={"file": ("e.md", b"", "text/markdown")}),
            400,
            "bad_request",
        )
        bad_meta = c.post(
            "/v1/collections/alpha/documents",
            files={"file": ("a.md", b"# A\n\ntext", "text/markdown")},
            data={"metadata": "[1, 2]"},
        )
        assert_error(bad_meta, 400, "bad_request")
        for nan in ('{"score": NaN}', '{"a": {"b": [Infinity]}}'):  # JSON cannot store them: every filter would break
            upload = c.post(
                "/v1/collections/alpha/documents",
                files={"file": ("a.md", b"# A\n\ntext", "text/markdown")},
                data={"metadata": nan},
            )
            assert_error(upload, 400, "bad_request")
        raw = b'{"title": "t", "text": "x", "metadata": {"score": NaN}}'
        posted = c.post("/v1/collections/alpha/documents", content=raw, headers={"content-type": "application/json"})
        assert posted.status_code in (400, 422) and "job_id" not in posted.json()
        assert_error(
            c.post("/v1/collections/alpha/documents", content=b"hi", headers={"content-type": "text/csv"}),
            415,
            "unsupported_media_type",
        )
        assert_error(c.post("/v1/collections/alpha/documents", json={"title": "t"}), 422, "validation_error")
        assert_error(c.post("/v1/collections/nope/documents", json={"title": "t", "text": "x"}), 403, "forbidden")
        assert c.get("/v1/collections/alpha/documents").json()["total"] == before


def test_body_over_the_limit_is_refused_with_413(root: Path, embedder: MiniLMEmbedder, keys: Keys) -> None:
    with (
        _app(root, embedder, max_body_mb=0.01) as app,
        serving(create_app(app, run_jobs=False)) as base,
        client(base, keys.alpha_writer) as c,
    ):
        big = c.post("/v1/collections/alpha/documents", files={"file": ("big.md", b"x" * 20_000, "text/markdown")})
        assert_error(big, 413, "payload_too_large")


def test_queued_jobs_survive_a_restart(tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    # Its own store: the module's server would take the job from a shared queue (as another worker should).
    with _app(tmp_path, embedder) as app, serving(create_app(app, run_jobs=False)) as base:
        admin = mint_api_key(app.store, "admin", ["admin"])[0]
        with client(base, admin) as c:
            assert_error(c.post("/v1/collections/later/documents", json={"title": "t", "text": "x"}), 404, "not_found")
            c.post("/v1/collections", json={"name": "later"})
            owls = {"title": "Owls", "text": "Owls hunt at night."}
            job_id = c.post("/v1/collections/later/documents", json=owls).json()["job_id"]
            time.sleep(0.5)
            assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        # A job a crashed process left "running" is resumed too.
        app.store.update_job(job_id, status="running")
    with _app(tmp_path, embedder) as app, serving(create_app(app)) as base, client(base, admin) as c:
        job = wait_for_job(c, job_id)
        assert job["status"] == "succeeded"
        assert c.get("/v1/collections/later/documents").json()["total"] == 1


# -- search, answers, limits, usage ----------------------------------------------------------------


def test_streamed_answer_sends_retrieval_tokens_citations_done(server: str, keys: Keys) -> None:
    with client(server, keys.alpha_reader) as c:
        plain = c.post("/v1/answer", json={"question": "How long do cats sleep?", "collection": "alpha"}).json()
        assert not plain["refused"] and "sixteen hours" in plain["answer"]
        with c.stream(
            "POST",
            "/v1/answer",
            json={"question": "How long do cats sleep?", "collection": "alpha"},
            headers={"accept": "text/event-stream"},
        ) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            events = sse_events(r)
    names = [name for name, _ in events]
    assert names[0] == "retrieval" and names[-2:] == ["citations", "done"]
    assert set(names[1:-2]) == {"token"} and len(names) > 4
    assert "".join(data["text"] for name, data in events if name == "token").strip() == plain["answer"].strip()
    cited = events[-2][1]
    assert cited["answer"] == plain["answer"] and cited["citations"]
    doc = cited["citations"][0]
    assert doc["collection"] == "alpha" and events[-1][1]["sources"][0]["collection"] == "alpha"
    text = ALPHA["cats.md"]
    assert text[doc["span"][0] : doc["span"][1]] == doc["quote"]


def test_rate_limit_answers_429_with_retry_after(root: Path, embedder: MiniLMEmbedder, server: str) -> None:
    with _app(root, embedder) as app:
        key = mint_api_key(app.store, "slow", ["read"], rate_per_minute=3)[0]
    with client(server, key) as c:
        codes = [c.get("/v1/me").status_code for _ in range(3)]
        limited = c.get("/v1/me")
    assert codes == [200, 200, 200]
    assert_error(limited, 429, "rate_limited")
    # 3 a minute refill one token every 20 s: the wait is that, less what refilled while the 3 requests ran.
    assert 18 <= int(limited.headers["retry-after"]) <= 20


def test_revoked_key_is_refused(root: Path, embedder: MiniLMEmbedder, server: str) -> None:
    with _app(root, embedder) as app:
        key, record = mint_api_key(app.store, "temp", ["read"])
        with client(server, key) as c:
            assert c.get("/v1/me").status_code == 200
            app.store.revoke_api_key(record.id, "2026-01-01T00:00:00+00:00")
            time.sleep(2.1)  # the server trusts a key record for at most 2 s
            assert "revoked" in assert_error(c.get("/v1/me"), 401, "unauthorized")["message"]


def test_usage_reports_requests_per_key_and_day(server: str, keys: Keys) -> None:
    with client(server, keys.beta_reader) as c:
        for _ in range(3):
            c.post("/v1/search", json={"query": "launch code"})
        own = c.get("/v1/usage").json()["rows"]
    assert {r["key_name"] for r in own} == {"beta-r"}
    row = own[0]
    assert row["requests"] >= 3 and row["latency_ms"]["p50"] > 0
    assert row["latency_ms"]["p50"] <= row["latency_ms"]["p95"] <= row["latency_ms"]["p99"]
    with client(server, keys.admin) as c:
        names = {r["key_name"] for r in c.get("/v1/usage", params={"days": 1}).json()["rows"]}
    assert {"beta-r", "alpha-r"} <= names
    with client(server, keys.admin) as c:
        assert_error(c.get("/v1/usage", params={"days": 0}), 422, "validation_error")


def test_key_budget_is_enforced_through_the_gateway(root: Path, embedder: MiniLMEmbedder) -> None:
    with (
        ChatServer(reply="Cats sleep about sixteen hours a day [1].").running() as llm,
        _app(root, embedder, llm_url=llm.url, llm_model="m", llm_max_retries=0, llm_cache=False) as app,
    ):
        rich = mint_api_key(app.store, "rich", ["read"], budget_tokens=100_000)[0]
        poor = mint_api_key(app.store, "poor", ["read"], budget_tokens=5, budget_period="day")[0]
        with serving(create_app(app, run_jobs=False)) as base:
            with client(base, rich) as c:
                ok = c.post("/v1/answer", json={"question": "How long do cats sleep?", "collection": "alpha"})
            with client(base, poor) as c:
                refused = c.post("/v1/answer", json={"question": "How long do cats sleep?", "collection": "alpha"})
                usage = c.get("/v1/usage").json()["rows"]
    assert ok.json()["mode"] == "llm" and ok.json()["usage"]["prompt_tokens"] > 0
    answer = refused.json()
    # Over budget, no model call is made: the answer falls back to extraction and says why.
    assert answer["usage"]["model"] == "extractive"
    assert any("budget" in w for w in answer["warnings"])
    # Only the rich key's question reached the model (its answer, then the entailment check of its claims).
    answer_system = load_prompt().system
    assert sum(r["messages"][0]["content"] == answer_system for r in llm.requests) == 1
    assert usage[0]["tokens"] == 0


def test_searches_that_call_the_model_are_charged_to_the_key(root: Path, embedder: MiniLMEmbedder) -> None:
    from datetime import UTC, datetime

    with (
        ChatServer(reply='{"queries": ["feline sleep hours", "how much do cats nap"]}').running() as llm,
        _app(root, embedder, llm_url=llm.url, llm_model="m", llm_cache=False, query_expansion="multi-query") as app,
    ):
        rich, record = mint_api_key(app.store, "rich-search", ["read"], budget_tokens=100_000)
        poor = mint_api_key(app.store, "poor-search", ["read"], budget_tokens=5, budget_period="day")[0]
        with serving(create_app(app, run_jobs=False)) as base:
            with client(base, rich) as c:
                found = c.post("/v1/search", json={"query": "How long do cats sleep?", "collection": "alpha"})
                rows = c.get("/v1/usage").json()["rows"]
            calls = len(llm.requests)
            with client(base, poor) as c:
                starved = c.post("/v1/search", json={"query": "How long do cats sleep?", "collection": "alpha"})
        spent, _ = app.store.spend_get(f"key:{record.id}", datetime.now(UTC).strftime("%Y-%m"))
    assert found.status_code == 200 and found.json()["hits"] and calls >= 1
    # The expansion's model call is on the key's bill: its budget, and its usage rows.
    assert spent > 0 and sum(r["tokens"] for r in rows) == spent
    # A key whose budget cannot pay for it still searches, without the model, and is told so.
    assert starved.status_code == 200 and starved.json()["hits"] and len(llm.requests) == calls
    assert any("expansion" in w for w in starved.json()["warnings"])


def test_request_timeout_gives_504(root: Path, embedder: MiniLMEmbedder, keys: Keys) -> None:
    with (
        _app(root, embedder, request_timeout_s=0.001) as app,
        serving(create_app(app, run_jobs=False)) as base,
        client(base, keys.admin) as c,
    ):
        assert_error(c.post("/v1/search", json={"query": "how long do cats sleep"}), 504, "timeout")


def test_eval_runs_are_listed_and_read(root: Path, embedder: MiniLMEmbedder, server: str, keys: Keys) -> None:
    record = {
        "id": "run123abc456",
        "kind": "retrieval",
        "dataset": "tiny",
        "split": "test",
        "tag": "t",
        "created_at": "2026-12-01T00:00:00+00:00",
        "fingerprint_hash": "f" * 12,
        "metrics": {"ndcg@10": 0.5},
        "per_query": {"q1": {"ndcg@10": 0.5}},
    }
    with _app(root, embedder) as app:
        app.store.save_eval_run(record)
    with client(server, keys.alpha_reader) as c:
        runs = c.get("/v1/evals/runs").json()["runs"]
        assert runs[0]["id"] == "run123abc456" and runs[0]["metrics"] == {"ndcg@10": 0.5} and "per_query" not in runs[0]
        assert c.get("/v1/evals/runs/run123abc456").json()["per_query"] == record["per_query"]
        assert_error(c.get("/v1/evals/runs/nope"), 404, "not_found")


def test_app_factory_builds_without_serving(root: Path, embedder: MiniLMEmbedder) -> None:
    with _app(root, embedder) as app:
        assert isinstance(create_app(app, run_jobs=False), FastAPI)
