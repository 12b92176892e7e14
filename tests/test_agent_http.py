"""The agent over HTTP: the real app served on 127.0.0.1, a scripted OpenAI-compatible model server planning the
tool calls, the real loop and journal over a real SQLite store, read with httpx and httpx-sse (and a client generated
from the server's own OpenAPI document)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from httpx_sse import connect_sse

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.llm.accounting import period_label
from archivist.server.app import create_app
from archivist.server.auth import mint_api_key
from archivist.store import open_store
from fake_servers import ChatServer, Fault
from live_server import serving
from test_agent import call, final, turn
from test_openapi import GeneratedClient, generate_models, strict
from test_server import assert_error, client, sse_events

TOOLS = f"{Path(__file__).parent / 'agent_tools.py'}:TOOLS"
ALPHA = "# Retries\n\nFailed calls are retried with exponential backoff and jitter, up to three attempts.\n"
BETA = "# Launch\n\nThe launch password for project Zephyr is kept in the vault beneath Oslo.\n"
ENDED = ("succeeded", "failed", "paused")


@dataclass
class Live:
    base: str
    app: Archivist
    model: ChatServer
    notes: Path
    admin: str
    alpha: str
    #: another tenant of the same collection: it may read alpha, never alpha's runs
    neighbour: str
    beta: str
    both: str
    #: a key of every collection that may change things: the one that gets the side-effecting tools
    writer: str
    #: a key of every collection that only reads: it gets the read-only tools only
    reader: str
    budgeted: str
    budgeted_id: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, embedder: MiniLMEmbedder) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("agent_http")
    for name, text in (("alpha", ALPHA), ("beta", BETA)):
        (root / name).mkdir()
        (root / name / f"{name}.md").write_text(text)
    notes = root / "notes.txt"
    with ChatServer().running() as model, pytest.MonkeyPatch.context() as env:
        env.setenv("AGENT_TEST_FILE", str(notes))
        settings = load_settings(
            store=f"sqlite:///{root / 'store.db'}",
            llm_url=model.url,
            llm_model="m",
            llm_max_retries=0,
            llm_cache=False,
            agent_tools=TOOLS,
            agent_concurrency=2,
        )
        with Archivist(settings, open_store(settings.store), embedder) as app:
            for name in ("alpha", "beta"):
                app.ingest([root / name], collection=name)
            store = app.store
            keys = {
                "admin": mint_api_key(store, "admin", ["admin"]),
                "alpha": mint_api_key(store, "alpha", ["read"], ["alpha"]),
                "neighbour": mint_api_key(store, "neighbour", ["read"], ["alpha"]),
                "beta": mint_api_key(store, "beta", ["read"], ["beta"]),
                "both": mint_api_key(store, "both", ["read"], ["alpha", "beta"]),
                "budgeted": mint_api_key(store, "budgeted", ["read"], ["alpha"], budget_tokens=5000),
                "writer": mint_api_key(store, "writer", ["read", "write"]),
                "reader": mint_api_key(store, "reader", ["read"]),
            }
            with serving(create_app(app, run_jobs=False)) as base:
                yield Live(
                    base,
                    app,
                    model,
                    notes,
                    *(keys[k][0] for k in ("admin", "alpha", "neighbour", "beta", "both")),
                    keys["writer"][0],
                    keys["reader"][0],
                    keys["budgeted"][0],
                    budgeted_id=keys["budgeted"][1].id,
                )


@pytest.fixture(autouse=True)
def quiet_model(live: Live) -> Iterator[None]:
    yield
    # Every test leaves the model as it found it: nothing scripted left over for the next one.
    live.model.scripted_messages.clear()
    live.model.faults.clear()


def doc_id(live: Live, collection: str) -> str:
    return next(d.id for d in live.app.store.list_documents() if d.collection == collection)


def ended(c: httpx.Client, run_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """Poll a run until it succeeded, failed or paused; return it with its journal."""
    deadline = time.monotonic() + timeout_s
    while True:
        run: dict[str, Any] = c.get(f"/v1/agent/runs/{run_id}").json()
        if run.get("status") in ENDED or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def start(c: httpx.Client, task: str, **body: Any) -> dict[str, Any]:
    response = c.post("/v1/agent/runs", json={"task": task, **body})
    assert response.status_code == 202, response.text
    run: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/v1/agent/runs/{run['id']}"
    return run


# -- runs ------------------------------------------------------------------------------------------------------


def test_a_run_streams_each_step_as_it_is_journaled_then_its_checked_answer(live: Live) -> None:
    live.model.scripted_messages.extend(
        [
            turn(call("search_documents", {"query": "how are failed calls retried", "k": 1})),
            final("Failed calls are retried with exponential backoff and jitter [1]."),
        ]
    )
    with (
        client(live.base, live.alpha) as c,
        connect_sse(c, "POST", "/v1/agent/runs", json={"task": "How are failed calls retried?"}) as source,
    ):
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        events = [(e.event, json.loads(e.data)) for e in source.iter_sse()]
    names = [name for name, _ in events]
    assert names == ["run", "step", "step", "step", "done"], names
    run = events[0][1]
    assert run["status"] == "running" and run["collection"] == "alpha"  # the key's one collection
    steps = [data for name, data in events if name == "step"]
    assert [(s["seq"], s["kind"]) for s in steps] == [(1, "model"), (2, "tool"), (3, "model")]
    assert steps[1]["name"] == "search_documents" and steps[1]["call_id"] == "c1"
    assert steps[0]["kind"] == "model" and steps[0]["data"]["tool_calls"][0]["name"] == "search_documents"
    assert steps[1]["data"]["status"] == "ok" and steps[1]["data"]["result"][0]["document_id"] == doc_id(live, "alpha")
    done = events[-1][1]
    assert done["id"] == run["id"] and done["status"] == "succeeded" and done["owner"] == run["owner"]
    assert done["result"]["answer"].startswith("Failed calls are retried")
    [citation] = done["result"]["citations"]
    assert citation["n"] == 1 and citation["document_id"] == doc_id(live, "alpha") and not done["result"]["unsupported"]
    # What the stream said is what the journal holds.
    with client(live.base, live.alpha) as c:
        stored = c.get(f"/v1/agent/runs/{run['id']}").json()
    assert [s["seq"] for s in stored["steps"]] == [1, 2, 3] and stored["result"] == done["result"]


def test_a_run_accepted_in_the_background_is_polled_to_its_end(live: Live) -> None:
    live.model.scripted_messages.extend(
        [turn(call("list_collections", {})), final("Failed calls are retried with exponential backoff [1].")]
    )
    with client(live.base, live.admin) as c:
        run = start(c, "How are failed calls retried?", collection="alpha", limits={"max_steps": 5, "max_wall_s": 60})
        assert run["status"] == "running" and run["limits"]["max_steps"] == 5 and run["limits"]["max_wall_s"] == 60
        done = ended(c, run["id"])
        assert done["status"] == "succeeded", done["reason"]
        assert [s["kind"] for s in done["steps"]] == ["model", "tool", "model"]
        assert done["totals"]["steps"] == 3 and done["totals"]["tokens"] == 24
        # The final answer's [1] names no passage the agent read: flagged, not passed.
        assert done["result"]["unsupported"] and not done["result"]["citations"]
        assert run["id"] in [r["id"] for r in c.get("/v1/agent/runs").json()["runs"]]
        assert_error(c.post(f"/v1/agent/runs/{run['id']}/resume"), 409, "conflict")  # it has ended


def test_an_approval_pause_is_decided_over_http_and_the_effect_happens_once(live: Live) -> None:
    live.notes.unlink(missing_ok=True)
    live.model.scripted_messages.extend(
        [turn(call("append_approved", {"text": "approved line"})), final("Written after approval.")]
    )
    with client(live.base, live.writer) as c:
        run = start(c, "Write the line, with a person's approval")
        paused = ended(c, run["id"])
        assert paused["status"] == "paused" and "step 2: append_approved needs approval" in paused["reason"]
        assert [(a["step"], a["tool"], a["status"]) for a in paused["approvals"]] == [(2, "append_approved", "pending")]
        assert not live.notes.exists()
        missing = assert_error(
            c.post(f"/v1/agent/runs/{run['id']}/approve", json={"step": 3, "approved": True}), 404, "not_found"
        )
        assert "no call waiting for a decision at step 3" in missing["message"]
        # Approved with the progress streamed: the call runs, then the model answers.
        response = c.post(
            f"/v1/agent/runs/{run['id']}/approve",
            json={"step": 2, "approved": True},
            headers={"accept": "text/event-stream"},
        )
        events = sse_events(response)
        assert [n for n, _ in events] == ["run", "step", "step", "done"], events
        assert events[1][1]["name"] == "append_approved" and events[1][1]["data"]["status"] == "ok"
        assert events[-1][1]["status"] == "succeeded" and events[-1][1]["result"]["answer"] == "Written after approval."
        assert live.notes.read_text().splitlines() == ["approved\tapproved line"]
        shown = c.get(f"/v1/agent/runs/{run['id']}").json()
        assert [(a["step"], a["status"]) for a in shown["approvals"]] == [(2, "approved")]
        # Deciding again changes nothing and runs nothing.
        assert_error(c.post(f"/v1/agent/runs/{run['id']}/approve", json={"step": 2, "approved": True}), 409, "conflict")
        assert live.notes.read_text().splitlines() == ["approved\tapproved line"]


@pytest.mark.parametrize(("who", "offered"), [("writer", True), ("reader", False), ("alpha", False)])
def test_a_run_gets_only_the_users_tools_its_key_may_call(live: Live, who: str, offered: bool) -> None:
    live.notes.unlink(missing_ok=True)
    live.model.scripted_messages.extend(
        [turn(call("append_line", {"text": f"{who} wrote"})), final("Tried to write the line.")]
    )
    with client(live.base, getattr(live, who)) as c:
        run = start(c, "Write a line", **({"collection": "alpha"} if who == "alpha" else {}))
        done = ended(c, run["id"])
    names = {t["function"]["name"] for t in live.model.requests[-2]["tools"]}
    # The read-only user tool is offered to every key without collection limits; the side-effecting ones only to a
    # key with the write scope; a key limited to collections gets none of the user's code.
    assert ("slow_lookup" in names) == (who != "alpha")
    assert ("append_line" in names) == offered and ("append_approved" in names) == offered
    step = done["steps"][1]
    assert step["data"]["status"] == ("ok" if offered else "error"), step
    assert live.notes.exists() == offered
    if not offered:
        assert "unknown tool 'append_line'" in step["data"]["result"]["error"]


def test_a_rejected_call_is_never_run_and_the_model_is_told(live: Live) -> None:
    live.notes.unlink(missing_ok=True)
    live.model.scripted_messages.extend(
        [turn(call("append_approved", {"text": "never"})), final("Nothing was written: the person said no.")]
    )
    with client(live.base, live.writer) as c:
        run = start(c, "Write a line if a person allows it")
        assert ended(c, run["id"])["status"] == "paused"
        decided = c.post(f"/v1/agent/runs/{run['id']}/approve", json={"step": 2, "approved": False})
        assert decided.status_code == 202, decided.text
        done = ended(c, run["id"])
    assert done["status"] == "succeeded" and not live.notes.exists()
    assert done["steps"][1]["data"]["status"] == "rejected"
    assert "rejected" in json.dumps(live.model.requests[-1]["messages"][-1])


def test_a_client_that_hangs_up_mid_stream_leaves_the_run_going(live: Live) -> None:
    live.model.scripted_messages.extend(
        [turn(call("search_documents", {"query": "retries", "k": 1})), final("Calls are retried with backoff [1].")]
    )
    live.model.faults.extend([Fault(), Fault(delay_s=1.5)])  # the second model call is slow
    with (
        client(live.base, live.alpha) as c,
        connect_sse(c, "POST", "/v1/agent/runs", json={"task": "How are calls retried?"}) as source,
    ):
        seen = []
        for sse in source.iter_sse():
            seen.append((sse.event, json.loads(sse.data)))
            if sse.event == "step" and seen[-1][1]["kind"] == "tool":
                break  # hang up while the model thinks
    run_id = seen[0][1]["id"]
    with client(live.base, live.alpha) as c:
        running = c.get(f"/v1/agent/runs/{run_id}").json()
        assert running["status"] == "running"
        # The run is driven by this server now: a second driver is refused, not started beside it.
        assert (
            "being driven by this server"
            in assert_error(c.post(f"/v1/agent/runs/{run_id}/resume"), 409, "conflict")["message"]
        )
        done = ended(c, run_id)
    assert done["status"] == "succeeded" and done["result"]["citations"][0]["n"] == 1
    assert [s["kind"] for s in done["steps"]] == ["model", "tool", "model"]


def test_a_run_another_process_drives_is_a_409_and_resumes_once_it_lets_go(live: Live) -> None:
    live.model.scripted_messages.extend([turn(call("append_approved", {"text": "held"})), final("Done.")])
    store = live.app.store
    with client(live.base, live.writer) as c:
        run = start(c, "Write a line once approved")
        assert ended(c, run["id"])["status"] == "paused"
        # Another host's process holds the run's lease (as `archivist agent resume` elsewhere would).
        now = datetime.now(UTC)
        until = (now + timedelta(seconds=60)).isoformat(timespec="seconds")
        holder = "elsewhere:1:cafe0001"
        # The server's driver lets go of the lease just after it records the pause: wait for that, then take it.
        deadline = time.monotonic() + 10
        while store.lease_agent_run(run["id"], holder, until=until, now=now.isoformat(timespec="seconds")) != holder:
            assert time.monotonic() < deadline, "the server kept the lease of a paused run"
            time.sleep(0.05)
        refused = assert_error(c.post(f"/v1/agent/runs/{run['id']}/resume"), 409, "conflict")
        assert "being driven by another process (elsewhere:1:cafe0001)" in refused["message"]
        # An approval refused with 409 records nothing: the decision is still the person's to make.
        approve = c.post(f"/v1/agent/runs/{run['id']}/approve", json={"step": 2, "approved": True})
        assert_error(approve, 409, "conflict")
        assert [a.status for a in store.agent_approvals(run["id"])] == ["pending"]
        store.release_agent_run(run["id"], holder)
        resumed = c.post(f"/v1/agent/runs/{run['id']}/resume")
        assert resumed.status_code == 202 and resumed.json()["status"] == "paused"  # still waits for its person
        c.post(f"/v1/agent/runs/{run['id']}/approve", json={"step": 2, "approved": False})
        assert ended(c, run["id"])["status"] == "succeeded"


def test_a_full_pool_of_drivers_refuses_a_run_with_429_before_journaling_it(live: Live) -> None:
    live.model.faults.extend([Fault(delay_s=1.5), Fault(delay_s=1.5)])
    live.model.scripted_messages.extend([final("One."), final("Two.")])
    with client(live.base, live.admin) as c:
        before = len(live.app.store.list_agent_runs(limit=500))
        slow = [start(c, f"Slow task {i}", collection="alpha") for i in range(2)]  # both drivers busy
        busy = c.post("/v1/agent/runs", json={"task": "One too many", "collection": "alpha"})
        assert_error(busy, 429, "rate_limited")
        assert busy.headers["retry-after"] == "5"
        assert len(live.app.store.list_agent_runs(limit=500)) == before + 2  # the refused one was never journaled
        assert all(ended(c, r["id"])["status"] == "succeeded" for r in slow)


def test_a_runs_model_calls_are_charged_to_the_keys_budget_and_a_spent_key_is_refused(live: Live) -> None:
    live.model.scripted_messages.append(
        {**final("Retried with backoff."), "usage": {"prompt_tokens": 3000, "completion_tokens": 2500}}
    )
    with client(live.base, live.budgeted) as c:
        run = start(c, "How are failed calls retried?")
        assert run["limits"]["max_tokens"] == 5000  # capped at what the key had left
        assert ended(c, run["id"])["status"] == "succeeded"
        spent = live.app.store.spend_get(f"key:{live.budgeted_id}", period_label("month", time.time()))
        assert spent[0] == 5500
        refused = assert_error(c.post("/v1/agent/runs", json={"task": "Another one"}), 402, "budget_exceeded")
        assert "budget for this month is spent" in refused["message"]
        assert len(live.model.scripted_messages) == 0


# -- tenancy ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def writers_run(live: Live) -> dict[str, Any]:
    """A paused run of the writer key (it waits for an approval: every probe could try to drive it)."""
    live.model.scripted_messages.extend([turn(call("append_approved", {"text": "the writer's line"}))])
    with client(live.base, live.writer) as c:
        run = start(c, "Write the writer's line, once approved")
        paused = ended(c, run["id"])
    assert paused["status"] == "paused"
    return paused


def probes(run_id: str) -> list[str]:
    """Return ids built to slip past an exact match: case, whitespace, prefixes, separators, patterns."""
    return [
        run_id.upper(),
        f" {run_id}",
        f"{run_id} ",
        f"{run_id}\t",
        run_id[:8],
        run_id[:-1],
        f"{run_id[:-1]}%",
        f"{run_id[:-1]}_",
        f"{run_id[:8]}*",
        "%",
        "_" * len(run_id),
        "*",
        f"{run_id}/",
        f"{run_id};",
        f"..%2F{run_id}",
    ]


@pytest.mark.parametrize("who", ["alpha", "neighbour", "beta", "both", "reader"])
def test_another_keys_run_reads_as_one_that_does_not_exist(live: Live, writers_run: dict[str, Any], who: str) -> None:
    run_id = writers_run["id"]
    with client(live.base, getattr(live, who)) as c:
        for probe in [run_id, *probes(run_id)]:
            path = f"/v1/agent/runs/{quote(probe, safe='')}"
            # Followed: a trailing slash is redirected to the path without it, which must reach nothing either.
            for response in (
                c.get(path, follow_redirects=True),
                c.post(f"{path}/resume", follow_redirects=True),
                c.post(f"{path}/approve", json={"step": 2, "approved": True}, follow_redirects=True),
            ):
                assert response.status_code == 404, (probe, response.text)
                assert response.json()["error"]["code"] == "not_found"
                assert "the writer's line" not in response.text
        assert run_id not in c.get("/v1/agent/runs", params={"limit": 500}).text
    # Nothing the probes sent decided or drove the run.
    assert live.app.store.get_agent_run(run_id).status == "paused"  # type: ignore[union-attr]
    assert [a.status for a in live.app.store.agent_approvals(run_id)] == ["pending"]


def test_an_admin_key_limited_to_collections_reaches_only_runs_over_them(
    live: Live, writers_run: dict[str, Any]
) -> None:
    live.model.scripted_messages.extend(
        [turn(call("search_documents", {"query": "launch password"})), final("The password is kept in Oslo [1].")]
    )
    live.model.scripted_messages.append(final("Nothing to say."))
    with client(live.base, live.beta) as c:
        betas = ended(c, start(c, "Where is the launch password kept?")["id"])
    with client(live.base, live.alpha) as c:
        alphas = ended(c, start(c, "Anything about alpha?")["id"])
    assert betas["collection"] == "beta" and betas["status"] == "succeeded" and alphas["collection"] == "alpha"
    limited, _ = mint_api_key(live.app.store, "alpha-admin", ["admin"], ["alpha"])
    with client(live.base, limited) as c:
        # Another tenant's run over beta, and a run over every collection: neither exists for this key.
        for run_id in (betas["id"], writers_run["id"]):
            for response in (
                c.get(f"/v1/agent/runs/{run_id}"),
                c.post(f"/v1/agent/runs/{run_id}/resume"),
                c.post(f"/v1/agent/runs/{run_id}/approve", json={"step": 2, "approved": True}),
            ):
                assert_error(response, 404, "not_found")
                assert "Oslo" not in response.text
        listed = c.get("/v1/agent/runs", params={"limit": 500}).json()["runs"]
    assert alphas["id"] in [r["id"] for r in listed] and all(r["collection"] == "alpha" for r in listed)
    assert [a.status for a in live.app.store.agent_approvals(writers_run["id"])] == ["pending"]


def test_only_the_exact_id_reaches_even_ones_own_run(live: Live, writers_run: dict[str, Any]) -> None:
    run_id = writers_run["id"]
    with client(live.base, live.writer) as c:
        assert c.get(f"/v1/agent/runs/{run_id}").json()["owner"] == writers_run["owner"]
        for probe in probes(run_id):
            if probe == f"{run_id}/":
                continue  # redirected to the run itself: the owner's to read
            got = c.get(f"/v1/agent/runs/{quote(probe, safe='')}", follow_redirects=True)
            assert got.status_code == 404, probe
        assert run_id in [r["id"] for r in c.get("/v1/agent/runs").json()["runs"]]
    with client(live.base, live.admin) as c:  # an admin key reaches every run
        assert c.get(f"/v1/agent/runs/{run_id}").json()["task"] == "Write the writer's line, once approved"
        assert run_id in [r["id"] for r in c.get("/v1/agent/runs", params={"limit": 500}).json()["runs"]]


@pytest.mark.parametrize(
    ("key", "collection", "status"),
    [
        ("alpha", "beta", 403),
        ("alpha", "Beta", 400),
        ("alpha", "beta ", 400),
        ("alpha", "*", 400),
        ("alpha", "b%", 400),
        ("alpha", "nope", 403),
        ("beta", "alpha", 403),
        ("both", None, 400),  # a key of several collections names the run's one
        ("admin", "nope", 404),
    ],
)
def test_a_run_over_a_collection_the_key_may_not_read_is_refused(
    live: Live, key: str, collection: str | None, status: int
) -> None:
    before = len(live.app.store.list_agent_runs(limit=500))
    body = {"task": "What is the launch password?"} | ({"collection": collection} if collection is not None else {})
    with client(live.base, getattr(live, key)) as c:
        response = c.post("/v1/agent/runs", json=body)
    assert response.status_code == status, response.text
    assert "Oslo" not in response.text and "Zephyr" not in response.text
    assert len(live.app.store.list_agent_runs(limit=500)) == before


def test_a_key_of_several_collections_runs_over_the_one_it_names(live: Live) -> None:
    live.model.scripted_messages.extend(
        [turn(call("search_documents", {"query": "launch password"})), final("Unknown.")]
    )
    with client(live.base, live.both) as c:
        run = start(c, "What is the launch password?", collection="beta")
        done = ended(c, run["id"])
    assert done["collection"] == "beta" and done["status"] == "succeeded"
    hits = done["steps"][1]["data"]["result"]
    assert hits and {h["document_id"] for h in hits} == {doc_id(live, "beta")}


# -- validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "where"),
    [
        ({"task": ""}, 422, "task"),
        ({"task": "   "}, 400, None),
        ({"task": "x" * 8001}, 422, "task"),
        ({}, 422, "task"),
        ({"task": "t", "limits": {"max_steps": 0}}, 422, "limits.max_steps"),
        ({"task": "t", "limits": {"max_steps": 10_000}}, 422, "limits.max_steps"),
        ({"task": "t", "limits": {"max_tokens": -1}}, 422, "limits.max_tokens"),
        ({"task": "t", "limits": {"max_cost_usd": 0}}, 422, "limits.max_cost_usd"),
        ({"task": "t", "limits": {"max_wall_s": "soon"}}, 422, "limits.max_wall_s"),
        ({"task": "t", "limits": {"allow_untrusted_side_effects": True}}, 422, "limits.allow_untrusted_side_effects"),
        ({"task": "t", "owner": "someone-else"}, 422, "owner"),
    ],
)
def test_a_bad_request_is_refused_in_the_one_error_shape(
    live: Live, body: dict[str, Any], status: int, where: str | None
) -> None:
    with client(live.base, live.admin) as c:
        response = c.post("/v1/agent/runs", json=body)
        error = assert_error(response, status, "validation_error" if status == 422 else "bad_request")
    if where is not None:
        assert error["message"].startswith(f"{where}:"), error


def test_unknown_runs_and_bad_decisions_are_refused(live: Live, writers_run: dict[str, Any]) -> None:
    with client(live.base, live.alpha) as c:
        assert_error(c.get("/v1/agent/runs/0123456789abcdef0123456789abcdef"), 404, "not_found")
        assert_error(c.post("/v1/agent/runs/nope/resume"), 404, "not_found")
        path = f"/v1/agent/runs/{writers_run['id']}/approve"
        assert_error(c.post(path, json={"step": 0, "approved": True}), 422, "validation_error")
        assert_error(c.post(path, json={"step": 2}), 422, "validation_error")
        assert_error(c.post(path, json={"step": 2, "approved": "maybe"}), 422, "validation_error")
        assert_error(c.get("/v1/agent/runs", params={"limit": 0}), 422, "validation_error")
    with client(live.base, None) as c:
        assert_error(c.get(f"/v1/agent/runs/{writers_run['id']}"), 401, "unauthorized")


# -- the contract ----------------------------------------------------------------------------------------------


def test_a_client_generated_from_the_openapi_document_reads_every_agent_operation(live: Live, tmp_path: Path) -> None:
    spec = httpx.get(f"{live.base}/openapi.json").json()
    models = generate_models(strict(spec), tmp_path)
    live.model.scripted_messages.extend([turn(call("append_approved", {"text": "contract"})), final("Written.")])
    live.notes.unlink(missing_ok=True)
    with client(live.base, live.writer) as http:
        api = GeneratedClient(spec, models, http)
        status, run = api("create_agent_run", json={"task": "Write the contract line"})
        assert status == 202 and run.status.value == "running"
        ended(http, run.id)
        status, paused = api("get_agent_run", path={"run_id": run.id})
        assert status == 200 and paused.status.value == "paused" and paused.approvals[0].kind.value == "call"
        status, listed = api("list_agent_runs")
        assert run.id in [r.id for r in listed.runs]
        status, approved = api("approve_agent_run", path={"run_id": run.id}, json={"step": 2, "approved": True})
        assert status == 202 and approved.id == run.id
        done = ended(http, run.id)
        status, read = api("get_agent_run", path={"run_id": run.id})
        assert read.status.value == "succeeded" and read.result.answer == "Written." and done["effects"]
        assert read.effects[0].status.value == "succeeded" and read.effects[0].tool == "append_approved"
        status, refused = api("resume_agent_run", path={"run_id": run.id})
        assert status == 409 and refused.error.code == "conflict"
        status, missing = api("get_agent_run", path={"run_id": "nope"})
        assert status == 404 and missing.error.code == "not_found"
    # The stream parses event by event as the document describes it.
    live.model.scripted_messages.extend([final("Streamed.")])
    with (
        client(live.base, live.alpha) as http,
        connect_sse(http, "POST", "/v1/agent/runs", json={"task": "Say something"}) as source,
    ):
        events = [
            models.AgentEvent.model_validate({"event": e.event, "data": json.loads(e.data)}).root
            for e in source.iter_sse()
        ]
    assert [e.event for e in events] == ["run", "step", "done"] and events[-1].data.status.value == "succeeded"
    assert {"create_agent_run", "get_agent_run", "list_agent_runs", "approve_agent_run", "resume_agent_run"} <= {
        op["operationId"] for methods in spec["paths"].values() for op in methods.values()
    }


# -- the Python client -----------------------------------------------------------------------------------------


def test_the_python_client_streams_approves_and_waits_for_a_run(live: Live) -> None:
    from archivist.client import AgentDoneEvent, AgentRunEvent, AgentStepEvent, Client, NotFoundError

    live.notes.unlink(missing_ok=True)
    live.model.scripted_messages.extend([turn(call("append_approved", {"text": "from the client"})), final("Done.")])
    with Client(live.base, live.writer) as archivist:
        events = list(archivist.stream_agent_run("Write a line from the client", limits={"max_steps": 6}))
        assert [type(e) for e in events] == [AgentRunEvent, AgentStepEvent, AgentDoneEvent]
        assert isinstance(events[-1], AgentDoneEvent) and events[-1].run.status == "paused"
        run_id = events[-1].run.id
        assert archivist.get_agent_run(run_id).approvals[0]["status"] == "pending"
        archivist.approve_agent_run(run_id, 2)
        done = archivist.wait_for_agent_run(run_id, timeout=30)
        assert done.status == "succeeded" and done.result is not None and done.result["answer"] == "Done."
        assert [s.kind for s in done.steps] == ["model", "tool", "model"] and done.limits["max_steps"] == 6
        assert run_id in [r.id for r in archivist.list_agent_runs()]
        with pytest.raises(NotFoundError):
            archivist.get_agent_run(run_id[:8])  # the whole id, or nothing
    assert live.notes.read_text().splitlines() == ["approved\tfrom the client"]
    with Client(live.base, live.neighbour) as neighbour, pytest.raises(NotFoundError):
        neighbour.get_agent_run(run_id)


def test_the_async_client_starts_and_waits_for_a_run(live: Live) -> None:
    import anyio

    from archivist.client import AsyncClient, ConflictError

    live.model.scripted_messages.extend([final("Async answer.")])

    async def main() -> None:
        async with AsyncClient(live.base, live.alpha) as archivist:
            run = await archivist.start_agent_run("Answer asynchronously", collection="alpha")
            assert run.status == "running" and run.collection == "alpha"
            done = await archivist.wait_for_agent_run(run.id, timeout=30)
            assert done.status == "succeeded" and done.result is not None and done.result["answer"] == "Async answer."
            with pytest.raises(ConflictError):
                await archivist.resume_agent_run(run.id)

    anyio.run(main)
