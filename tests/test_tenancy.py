"""What another tenant's key can reach, probed as an attacker would: filter keys, path names, ids, patterns."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.server.app import create_app, proxy_options
from archivist.server.auth import mint_api_key
from archivist.store import open_store
from live_server import serving, wait_for_job
from test_server import assert_error, client, sse_events

ALPHA = (
    "---\ntags: [pets, sleep]\n---\n# Cats\n\n## Sleep\n\nCats sleep about sixteen hours a day, mostly in short naps.\n"
)
BETA = (
    "---\nproject_codename: zephyr\ncost_center: CC-7731\ntags: [secret, launch]\n---\n# Launch\n\n## Password\n\n"
    "The launch password for project Zephyr is kept in the vault beneath Oslo.\n"
)
SECRET = "launch password"
#: words only collection beta's document holds: no response to an alpha key may contain them
BETA_WORDS = ("Oslo", "Zephyr", "zephyr", "CC-7731", "project_codename", "cost_center")


@dataclass
class Tenants:
    base: str
    admin: str
    alpha: str
    alpha_writer: str
    beta: str
    root: Path


def _app(root: Path, embedder: MiniLMEmbedder, **overrides: Any) -> Archivist:
    settings = load_settings(store=f"sqlite:///{root / 'store.db'}", **overrides)
    return Archivist(settings, open_store(settings.store), embedder)


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory, embedder: MiniLMEmbedder) -> Iterator[Tenants]:
    root = tmp_path_factory.mktemp("tenancy")
    for name, text in (("alpha", ALPHA), ("beta", BETA)):
        (root / name).mkdir()
        (root / name / f"{name}.md").write_text(text)
    with _app(root, embedder) as app:
        for name in ("alpha", "beta"):
            app.ingest([root / name], collection=name)
        store = app.store
        admin = mint_api_key(store, "admin", ["admin"])[0]
        alpha = mint_api_key(store, "alpha-r", ["read"], ["alpha"])[0]
        alpha_writer = mint_api_key(store, "alpha-w", ["read", "write"], ["alpha"])[0]
        beta = mint_api_key(store, "beta-r", ["read"], ["beta"])[0]
        with serving(create_app(app)) as base:
            yield Tenants(base, admin, alpha, alpha_writer, beta, root)


def _no_beta(response: httpx.Response) -> None:
    for word in BETA_WORDS:
        assert word not in response.text, f"{word!r} leaked: {response.text[:500]}"


def _search(c: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return c.post("/v1/search", json={"query": SECRET, **body})


def _answer(c: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return c.post("/v1/answer", json={"question": f"What is the {SECRET}?", **body})


def _answer_sse(c: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    r = c.post(
        "/v1/answer", json={"question": f"What is the {SECRET}?", **body}, headers={"accept": "text/event-stream"}
    )
    r.read()
    return r


ROUTES = {"search": _search, "answer": _answer, "answer-sse": _answer_sse}

SMUGGLED = [
    {"collection": "beta"},
    {" collection": "b*"},
    {"collection ": "*"},
    {"collection=*[": "-z]"},
    {"Collection": "beta"},
    {"COLLECTION": "*"},
    {"\tcollection": "beta"},
    {"collection\n": "beta"},
    {"collections": "beta"},
    {" Collections = ": "*"},
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("filters", SMUGGLED, ids=repr)
def test_a_filter_key_that_reads_as_collection_is_refused(
    tenants: Tenants, route: str, filters: dict[str, str]
) -> None:
    with client(tenants.base, tenants.alpha) as c:
        response = ROUTES[route](c, {"filters": filters})
        assert_error(response, 400, "bad_request")
        _no_beta(response)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"source": "*"},
        {"title": "*"},
        {"document_id": "*"},
        {"media_type": "*"},
        {"source": "*beta*"},
        # list-valued metadata (matched element by element, in SQL): any element of any document, beta's included
        {"tags": "*"},
        {"tags": "secret"},
        {"tags": "sec*"},
        {"tags": " secret"},
    ],
    ids=repr,
)
def test_filters_narrow_a_keys_collections_and_never_widen_them(
    tenants: Tenants, route: str, filters: dict[str, str]
) -> None:
    with client(tenants.base, tenants.alpha) as c:
        response = ROUTES[route](c, {"filters": filters})
        assert response.status_code == 200, response.text
        _no_beta(response)
        if route == "search":
            assert {h["collection"] for h in response.json()["hits"]} <= {"alpha"}
        if route == "answer-sse":
            names = [name for name, _ in sse_events(response)]
            assert names and names[-1] in ("done", "error")
    with client(tenants.base, tenants.beta) as c:  # the same filters do find beta's secret for beta's key
        if filters.get("source") != "*beta*":
            found = _search(c, {"filters": filters}).json()["hits"]
            assert found and "Oslo" in found[0]["text"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "scope",
    [
        {"collection": "beta"},
        {"collections": ["alpha", "beta"]},
        {"collection": "Beta"},
        {"collection": "beta "},
        {"collection": "*"},
        {"collections": ["b*"]},
    ],
    ids=repr,
)
def test_another_collection_by_name_is_refused(tenants: Tenants, route: str, scope: dict[str, Any]) -> None:
    with client(tenants.base, tenants.alpha) as c:
        response = ROUTES[route](c, scope)
        assert response.status_code in (400, 403), response.text
        _no_beta(response)


def test_an_unknown_filter_key_lists_only_the_keys_a_key_may_see(tenants: Tenants) -> None:
    with client(tenants.base, tenants.alpha) as c:
        for route in ROUTES.values():
            unknown = route(c, {"filters": {"colour": "red"}})
            assert "unknown filter key 'colour'" in assert_error(unknown, 400, "bad_request")["message"]
            _no_beta(unknown)
            # A key of another collection's metadata reads exactly as an absent one: no existence oracle.
            probe = route(c, {"filters": {"project_codename": "zephyr"}})
            assert "unknown filter key 'project_codename'" in assert_error(probe, 400, "bad_request")["message"]
            assert "cost_center" not in probe.text
    with client(tenants.base, tenants.admin) as c:
        listed = assert_error(_search(c, {"filters": {"colour": "red"}}), 400, "bad_request")["message"]
        assert "project_codename" in listed and "cost_center" in listed
        hits = _search(c, {"filters": {"project_codename": "zephyr"}}).json()["hits"]
        assert hits and {h["collection"] for h in hits} == {"beta"}


@pytest.mark.parametrize(
    "path",
    [
        "/v1/collections/beta/documents",
        "/v1/collections/Beta/documents",
        "/v1/collections/beta%20/documents",
        "/v1/collections/%62eta/documents",
        "/v1/collections/beta%2F..%2Falpha/documents",
        "/v1/collections/*/documents",
        "/v1/jobs?collection=beta",
        "/v1/jobs?collection=b%25",
    ],
)
def test_paths_naming_another_collection_reach_nothing(tenants: Tenants, path: str) -> None:
    with client(tenants.base, tenants.alpha_writer) as c:
        got = c.get(path)
        assert got.status_code in (400, 403, 404), got.text
        _no_beta(got)
        if path.endswith("/documents"):
            posted = c.post(path, json={"title": "planted", "text": "planted text"})
            assert posted.status_code in (400, 403, 404), posted.text


def test_another_tenants_documents_and_jobs_are_not_found_by_id(tenants: Tenants) -> None:
    with client(tenants.base, tenants.admin) as c:
        own = c.post("/v1/collections/alpha/documents", json={"title": "Naps", "text": "Cats nap."}).json()["job_id"]
        assert wait_for_job(c, own)["status"] == "succeeded"
        job_id = c.post("/v1/collections/beta/documents", json={"title": "Memo", "text": "Zephyr memo."}).json()[
            "job_id"
        ]
        assert wait_for_job(c, job_id)["status"] == "succeeded"
        beta_doc = c.get("/v1/collections/beta/documents").json()["documents"][0]["id"]
    with client(tenants.base, tenants.alpha_writer) as c:
        assert_error(c.get(f"/v1/jobs/{job_id}"), 404, "not_found")
        assert job_id not in c.get("/v1/jobs").text
        # Scoped before the limit: the newest job being beta's does not hide alpha's own.
        assert [j["id"] for j in c.get("/v1/jobs", params={"limit": 1}).json()["jobs"]] == [own]
        for path in (f"/v1/collections/beta/documents/{beta_doc}", f"/v1/collections/alpha/documents/{beta_doc}"):
            assert c.get(path).status_code in (403, 404)
            assert c.delete(path).status_code in (403, 404)
    with client(tenants.base, tenants.admin) as c:  # the delete attempts changed nothing
        assert c.get(f"/v1/collections/beta/documents/{beta_doc}").status_code == 200


def test_eval_run_ids_are_matched_as_text_never_as_patterns(tenants: Tenants, embedder: MiniLMEmbedder) -> None:
    record = {
        "id": "run9x8y7z6w5",
        "kind": "retrieval",
        "dataset": "tiny",
        "dataset_path": "/srv/private/datasets/tiny",
        "split": "test",
        "tag": None,
        "created_at": "2026-12-01T00:00:00+00:00",
        "fingerprint_hash": "f" * 12,
        "config": {"unanswerable": "/srv/private/datasets/other"},
        "corpus": {"store": "sqlite:////srv/private/evals/tiny-minilm.db", "added": 3},
        "metrics": {"ndcg@10": 0.5},
    }
    with _app(tenants.root, embedder) as app:
        app.store.save_eval_run(record)
    with client(tenants.base, tenants.alpha) as c:
        for pattern in ("_", "%25", "%25%25", "r_n", "run_", "run%25", "____________", "*", "[r]*"):
            assert_error(c.get(f"/v1/evals/runs/{pattern}"), 404, "not_found")
        read = c.get("/v1/evals/runs/run9x8").json()  # a unique prefix still finds it
        assert read["id"] == "run9x8y7z6w5"
        # The server's paths are for admin eyes only.
        assert "/srv/private" not in c.get("/v1/evals/runs/run9x8y7z6w5").text
        assert "dataset_path" not in read and read["config"]["unanswerable"] == "other"
        assert read["corpus"] == {"store": "tiny-minilm.db", "added": 3}
        assert "/srv/private" not in c.get("/v1/evals/runs").text
    with client(tenants.base, tenants.admin) as c:
        assert c.get("/v1/evals/runs/run9x8y7z6w5").json()["dataset_path"] == "/srv/private/datasets/tiny"


def test_failed_authentication_is_throttled_per_address_and_never_slows_a_valid_key(
    tmp_path: Path, embedder: MiniLMEmbedder
) -> None:
    with (
        _app(tmp_path, embedder, auth_failures_per_minute=5, forwarded_allow_ips="127.0.0.1") as app,
        serving(create_app(app, run_jobs=False), **proxy_options(app.settings)) as base,
    ):
        valid = mint_api_key(app.store, "me", ["read"])[0]
        # The client address is X-Forwarded-For's, sent by a trusted proxy (loopback, as configured here).
        attacker = {"X-Forwarded-For": "203.0.113.7"}
        statuses = []
        for i in range(12):
            bad = httpx.get(f"{base}/v1/me", headers={**attacker, "Authorization": f"Bearer ak_{i:012x}_{'x' * 32}"})
            statuses.append(bad.status_code)
        assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
        throttled = httpx.get(f"{base}/v1/me", headers={**attacker, "Authorization": "Bearer nope"})
        assert_error(throttled, 429, "rate_limited")
        assert int(throttled.headers["retry-after"]) >= 1
        assert httpx.get(f"{base}/v1/me", headers=attacker).status_code == 429  # no key at all is a failure too
        # Another address is not throttled by the attacker's failures ...
        other = {"X-Forwarded-For": "198.51.100.9"}
        assert httpx.get(f"{base}/v1/me", headers={**other, "Authorization": "Bearer nope"}).status_code == 401
        # ... and a valid key is served, even from the attacker's own address.
        for headers in (attacker, other, {}):
            me = httpx.get(f"{base}/v1/me", headers={**headers, "Authorization": f"Bearer {valid}"})
            assert me.status_code == 200 and me.json()["name"] == "me"
