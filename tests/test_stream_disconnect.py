"""A client that hangs up mid-answer: the model call stops, what it generated is charged, the log says so.

Real parts throughout: uvicorn on 127.0.0.1 over a SQLite store and the bundled model, and loopback fake model
servers that generate slowly and record when their client closed the connection.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.llm.accounting import Budget, estimate_prompt_tokens, period_label
from archivist.llm.anthropic import AnthropicMessages
from archivist.llm.base import LLM, Cancellation, ChatRequest, Deadline, Message, StreamEvent, TokenEvent
from archivist.llm.errors import Cancelled
from archivist.llm.gateway import CircuitBreaker, Gateway, Route
from archivist.llm.openai_compat import OpenAICompatible
from archivist.llm.tokens import counter_for
from archivist.server.app import create_app
from archivist.server.auth import mint_api_key
from archivist.server.services import Services
from archivist.store import open_store
from archivist.store.records import RequestLogRow
from fake_anthropic import AnthropicServer
from fake_servers import ChatServer, Fault, StreamLog
from live_server import serving

MODEL = "m"
QUESTION = "How long do cats sleep?"
CATS = "# Cats\n\n## Sleep\n\nCats sleep about sixteen hours a day, mostly in short naps.\n"
#: 64 pieces: at 0.1 s a piece, the whole reply takes over 6 s to generate
REPLY = " ".join(["Cats sleep about sixteen hours a day [1]."] * 8)
PIECE_S = 0.1
#: how long after the client hung up the fake model may still be generating: generous (the fix takes well
#: under a second), and still far below the 6.4 s the whole reply takes
CLOSE_BOUND_S = 3.0


@dataclass
class Served:
    """A running server with a model configured, and the parts a test inspects."""

    base: str
    app: Archivist
    services: Services
    llm: ChatServer


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, embedder: MiniLMEmbedder) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("disconnect")
    (root / "docs").mkdir()
    (root / "docs" / "cats.md").write_text(CATS)
    # Prices make the cost side of the accounting visible too.
    (root / "archivist.toml").write_text(f'[llm.prices]\n"{MODEL}" = [1000.0, 2000.0]\n')
    with pytest.MonkeyPatch.context() as env, ChatServer(reply=REPLY).running() as llm:
        env.setenv("ARCHIVIST_CONFIG", str(root / "archivist.toml"))
        settings = load_settings(
            store=f"sqlite:///{root / 'store.db'}",
            llm_url=llm.url,
            llm_model=MODEL,
            llm_max_retries=2,  # a dropped stream must not be retried
            llm_cache=False,
        )
        with Archivist(settings, open_store(settings.store), embedder) as app:
            app.ingest([root / "docs"])
            api: FastAPI = create_app(app, run_jobs=False)
            with serving(api) as base:
                yield Served(base, app, api.state.services, llm)


@pytest.fixture
def llm(served: Served) -> Iterator[ChatServer]:
    served.llm.piece_interval_s = 0.0
    served.llm.faults.clear()
    yield served.llm
    served.llm.piece_interval_s = 0.0
    served.llm.faults.clear()


def _key(served: Served, name: str) -> tuple[str, str]:
    """Return a new read key with a (large) monthly token budget, and the store key its spending is kept under."""
    plaintext, record = mint_api_key(served.app.store, name, ["read"], budget_tokens=10_000_000)
    return plaintext, f"key:{record.id}"


def _spent(served: Served, budget_key: str) -> tuple[int, float]:
    return served.app.store.spend_get(budget_key, period_label("month", time.time()))


def _metrics(base: str) -> tuple[float, float]:
    """Return archivist_llm_tokens_total and archivist_llm_cost_usd_total."""
    text = httpx.get(f"{base}/metrics").text
    tokens = re.search(r"^archivist_llm_tokens_total (\S+)$", text, re.M)
    cost = re.search(r"^archivist_llm_cost_usd_total (\S+)$", text, re.M)
    assert tokens and cost
    return float(tokens.group(1)), float(cost.group(1))


def _answer_rows(served: Served, key: str, count: int, timeout_s: float = 15.0) -> list[RequestLogRow]:
    """Return the key's /v1/answer request log rows once `count` are written (the server writes them when the
    request is over, which for a dropped client is after it noticed)."""
    key_id = key.split("_")[1]
    deadline = time.monotonic() + timeout_s
    while True:
        served.services.request_log.flush()
        rows = [r for r in served.app.store.request_log(since="2000", key_id=key_id) if r.route == "/v1/answer"]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def _ended(logs: list[StreamLog], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(log.ended is None for log in logs) and time.monotonic() < deadline:
        time.sleep(0.05)


def _prompt_tokens(payload: dict[str, Any]) -> int:
    """Return what the gateway estimates for a request's prompt, from what the model server received."""
    request = ChatRequest(tuple(Message(m["role"], m["content"]) for m in payload["messages"]))
    return estimate_prompt_tokens(request, counter_for(MODEL))


def _client(base: str, key: str, timeout_s: float = 30.0) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=timeout_s)


def _streamed(c: httpx.Client) -> AbstractContextManager[httpx.Response]:
    return c.stream("POST", "/v1/answer", json={"question": QUESTION}, headers={"accept": "text/event-stream"})


def _hang_up_after(base: str, key: str, event: str, until: Callable[[], bool] = lambda: True) -> float:
    """Stream an answer, read up to the first `event` event, wait `until` holds, hang up; return when it hung up."""
    with _client(base, key) as c, _streamed(c) as r:
        assert r.status_code == 200
        # Held in a name: a generator dropped at `break` would be finalized at once, and that closes the connection.
        lines = r.iter_lines()
        for line in lines:
            if line == f"event: {event}":
                break
        else:
            raise AssertionError(f"the stream ended without a {event!r} event")
        give_up = time.monotonic() + 10
        while not until():
            if time.monotonic() > give_up:
                raise AssertionError(f"gave up waiting; the rest of the stream: {list(lines)}")
            time.sleep(0.02)
    # Leaving the block closed the response before its end, which closes the connection.
    return time.monotonic()


def _streams_since(llm: ChatServer, before: int) -> list[StreamLog]:
    return llm.streams[before:]


# -- through the HTTP server -------------------------------------------------------------------------


def test_dropped_streams_stop_the_model_and_are_charged(served: Served, llm: ChatServer) -> None:
    key, budget_key = _key(served, "dropper")
    tokens_before, cost_before = _metrics(served.base)
    streams_before, requests_before = len(llm.streams), len(llm.requests)
    llm.piece_interval_s = PIECE_S
    with ThreadPoolExecutor(3) as pool:
        hung_up = list(pool.map(lambda _: _hang_up_after(served.base, key, "token"), range(3)))
    streams = _streams_since(llm, streams_before)
    _ended(streams)
    # One model call per answer (nothing retried, no judge call for an answer nobody reads), each stopped soon
    # after its client hung up: the upstream connection was closed, long before the reply's end.
    assert len(streams) == 3 and len(llm.requests) - requests_before == 3
    for log in streams:
        assert log.outcome == "client_closed", log
        assert log.ended is not None and log.ended - max(hung_up) < CLOSE_BOUND_S
        assert 1 <= log.sent < log.pieces // 2
    rows = _answer_rows(served, key, 3)
    assert [r.outcome for r in rows] == ["client_disconnected"] * 3
    # The key was charged what was generated before the hang-up: the prompt (estimated: the provider reports
    # usage only at the end of a stream) and the pieces the server read, counted by the model's counter.
    spent_tokens, spent_cost = _spent(served, budget_key)
    prompts = sum(_prompt_tokens(p) for p in llm.requests[requests_before:])
    generated = spent_tokens - prompts
    full_reply = counter_for(MODEL).count(REPLY + " ")
    assert 3 <= generated < 3 * full_reply // 2
    pieces = [w + " " for w in REPLY.split()]
    assert generated <= sum(counter_for(MODEL).count("".join(pieces[: log.sent])) for log in streams)
    assert spent_cost > 0
    # The same tokens and cost are in the metrics and in each request's log row.
    tokens_after, cost_after = _metrics(served.base)
    assert tokens_after - tokens_before == spent_tokens
    assert cost_after - cost_before == pytest.approx(spent_cost)
    assert sum(r.tokens for r in rows) == spent_tokens and all(r.tokens > 0 for r in rows)
    assert sum(r.cost_usd for r in rows) == pytest.approx(spent_cost)
    with _client(served.base, key) as c:
        usage = c.get("/v1/usage").json()["rows"]
    assert usage[0]["client_disconnected"] == 3 and usage[0]["tokens"] == spent_tokens
    assert 'archivist_client_disconnects_total{route="/v1/answer"}' in httpx.get(f"{served.base}/metrics").text


def test_a_stream_read_to_the_end_is_charged_as_before(served: Served, llm: ChatServer) -> None:
    key, budget_key = _key(served, "reader")
    tokens_before, cost_before = _metrics(served.base)
    streams_before, requests_before = len(llm.streams), len(llm.requests)
    with _client(served.base, key) as c, _streamed(c) as r:
        lines = list(r.iter_lines())
    assert "event: done" in lines
    done = [line for line in lines if line.startswith("data: ")][-1]
    usage = httpx.Response(200, content=done[6:]).json()["usage"]
    expected = usage["prompt_tokens"] + usage["completion_tokens"]
    # The provider's reported usage: 7 prompt tokens and one per piece.
    assert usage["model"] == f"default/{MODEL}" and expected >= 7 + 64
    assert [log.outcome for log in _streams_since(llm, streams_before)] == ["completed"]
    # The key is charged each model call's reported usage: the answer's stream, and the claims check's calls
    # (the fake model answers those with the same 64 words, which the check cannot parse, so it falls back to
    # similarity: the answer's usage leaves out its failed calls, the key's budget does not).
    calls = len(llm.requests) - requests_before
    spent_tokens, spent_cost = _spent(served, budget_key)
    assert calls >= 2 and spent_tokens == 71 * calls and spent_cost == pytest.approx(0.135 * calls)
    tokens_after, cost_after = _metrics(served.base)
    assert tokens_after - tokens_before == expected
    assert cost_after - cost_before == pytest.approx(usage["cost_usd"])
    [row] = _answer_rows(served, key, 1)
    assert row.outcome == "completed" and row.tokens == expected and row.status == 200


def test_a_hang_up_while_the_model_stalls_aborts_the_call(served: Served, llm: ChatServer) -> None:
    key, budget_key = _key(served, "staller")
    streams_before, requests_before = len(llm.streams), len(llm.requests)
    # Headers at once, then nothing for 8 s: a model still reading a long prompt.
    llm.faults.append(Fault(stall_s=8.0))

    def stalling() -> bool:  # the model call is in, its stream's headers too: the read now waits on the stall
        return len(llm.streams) > streams_before and time.monotonic() - llm.streams[-1].started > 0.3

    hung_up = _hang_up_after(served.base, key, "retrieval", until=stalling)
    streams = _streams_since(llm, streams_before)
    _ended(streams)
    # The read blocked on the stalled stream was woken: the connection closed at once, and the aborted call was
    # not retried (a retryable error otherwise) though two retries are configured.
    assert len(streams) == 1 and len(llm.requests) - requests_before == 1
    assert streams[0].outcome == "client_closed" and streams[0].sent == 0
    assert streams[0].ended is not None and streams[0].ended - hung_up < CLOSE_BOUND_S
    [row] = _answer_rows(served, key, 1)
    assert row.outcome == "client_disconnected"
    # The provider read the prompt: that is charged, nothing more.
    assert _spent(served, budget_key)[0] == _prompt_tokens(llm.requests[-1]) == row.tokens


def test_a_json_answer_stops_when_its_client_hangs_up(served: Served, llm: ChatServer) -> None:
    key, budget_key = _key(served, "impatient")
    requests_before = len(llm.requests)
    llm.faults.append(Fault(delay_s=2.0))  # the answer's model call takes 2 s; the client waits 0.5 s
    with (
        _client(served.base, key, timeout_s=0.5) as c,
        pytest.raises(httpx.ReadTimeout),
    ):
        c.post("/v1/answer", json={"question": QUESTION})
    [row] = _answer_rows(served, key, 1)
    # The call in flight finished (a plain completion cannot be interrupted) and is charged as the provider
    # reported it; the claims check that would follow for nobody was not made.
    assert row.outcome == "client_disconnected" and row.status == 499
    assert len(llm.requests) - requests_before == 1
    assert row.tokens == _spent(served, budget_key)[0] == 7 + len(REPLY.split())


# -- the gateway, for each HTTP provider -------------------------------------------------------------


def _stalling(kind: str) -> tuple[Any, LLM]:
    if kind == "openai":
        chat = ChatServer()
        return chat, OpenAICompatible("primary", chat.url, MODEL)
    anthropic = AnthropicServer()
    return anthropic, AnthropicMessages("primary", MODEL, base_url=anthropic.url)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_cancel_aborts_a_stalled_stream_without_retry_or_fallback(kind: str) -> None:
    server, primary = _stalling(kind)
    with server.running(), ChatServer(reply="from the backup").running() as backup:
        server.faults.append(Fault(stall_s=8.0))
        route = Route(primary, max_retries=2)
        gateway = Gateway([route, Route(OpenAICompatible("backup", backup.url, MODEL))], sleep=lambda _: None)
        request = ChatRequest((Message("user", "How long do cats sleep?"),), max_tokens=64)
        budget, cancellation = Budget(), Cancellation()
        outcome: list[BaseException | StreamEvent] = []

        def consume() -> None:
            try:
                outcome.extend(gateway.stream(request, Deadline.after(30, cancellation), budget))
            except Cancelled as exc:
                outcome.append(exc)

        worker = threading.Thread(target=consume, daemon=True)
        worker.start()
        give_up = time.monotonic() + 10
        while not server.requests and worker.is_alive() and time.monotonic() < give_up:
            time.sleep(0.02)
        assert server.requests, outcome
        time.sleep(0.2)  # the stream's headers are in: the read now blocks on the stall
        cancelled_at = time.monotonic()
        cancellation.cancel()
        worker.join(CLOSE_BOUND_S)
        returned_in = time.monotonic() - cancelled_at
    assert not worker.is_alive() and returned_in < CLOSE_BOUND_S
    assert len(outcome) == 1 and isinstance(outcome[0], Cancelled)
    assert len(server.requests) == 1 and backup.requests == []
    # The prompt reached the provider and is charged; the cancel says nothing about the provider's health.
    assert budget.spent_tokens == estimate_prompt_tokens(request, counter_for(MODEL))
    assert route.breaker.state == "closed" and route.breaker.allow()


def test_a_closed_stream_frees_the_breakers_probe() -> None:
    with ChatServer(reply="one two three four").running() as chat:
        breaker = CircuitBreaker(threshold=1, cooldown_s=0.0)
        breaker.record(False)  # open, and at once half-open: the next call is the one probe
        gateway = Gateway([Route(OpenAICompatible("p", chat.url, MODEL), breaker=breaker)])
        stream = gateway.stream(ChatRequest((Message("user", "hi"),)), budget=Budget())
        assert isinstance(next(stream), TokenEvent)
        stream.close()  # the caller went away mid-probe: no verdict on the provider
        # Before, the probe stayed "in flight" for good and every later call was refused as CircuitOpen.
        assert breaker.allow()
