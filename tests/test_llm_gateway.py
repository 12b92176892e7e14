"""The LLM gateway against real OpenAI-compatible servers on 127.0.0.1 that inject faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from archivist.llm.accounting import Budget, Price, PriceTable
from archivist.llm.base import LLM, ChatRequest, Deadline, DoneEvent, Message, TokenEvent, ToolSpec
from archivist.llm.cache import ResponseCache
from archivist.llm.errors import (
    AllProvidersFailed,
    BudgetExceeded,
    CircuitOpen,
    RateLimited,
    RequestRejected,
    StreamBroken,
)
from archivist.llm.gateway import CircuitBreaker, Gateway, Route
from archivist.llm.http import parse_retry_after
from archivist.llm.openai_compat import OpenAICompatible
from archivist.store.sqlite import SQLiteStore
from fake_servers import ChatServer, Fault

ASK = ChatRequest((Message("system", "Be brief."), Message("user", "ping")))


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer().running() as s:
        yield s


@pytest.fixture
def backup() -> Iterator[ChatServer]:
    with ChatServer(reply="answer from the backup").running() as s:
        yield s


def provider(s: ChatServer, name: str = "primary", **kw: float) -> OpenAICompatible:
    return OpenAICompatible(name, s.url, "test-model", api_key="sk-test", **kw)


class Sleeps:
    """Records requested sleeps instead of waiting (the deadline logic still sees real time)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def test_provider_contract_chat_usage_and_latency(server: ChatServer) -> None:
    llm = provider(server)
    assert isinstance(llm, LLM)
    done = llm.chat(ASK, Deadline.after(5))
    assert done.text == "pong from the fake model" and done.finish_reason == "stop"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (7, 5)
    assert done.provider == "primary" and done.model == "test-model" and done.latency_s > 0
    sent = server.requests[0]
    assert sent["messages"][1] == {"role": "user", "content": "ping"} and sent["temperature"] == 0.0


def test_tool_calls_are_parsed(server: ChatServer) -> None:
    server.tool_call = {"name": "search_docs", "arguments": {"query": "rotate keys", "k": 3}}
    tool = ToolSpec(
        "search_docs", "Search the documents", {"type": "object", "properties": {"query": {"type": "string"}}}
    )
    done = provider(server).chat(ChatRequest(ASK.messages, tools=(tool,)), Deadline.after(5))
    assert done.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in done.tool_calls] == [("search_docs", {"query": "rotate keys", "k": 3})]
    assert server.requests[0]["tools"][0]["function"]["name"] == "search_docs"


def test_429_is_retried_after_the_retry_after_delay(server: ChatServer) -> None:
    server.faults.extend([Fault(429, b'{"error": "slow down"}', {"Retry-After": "2"}), Fault(500, b"oops")])
    sleeps = Sleeps()
    gw = Gateway([Route(provider(server), max_retries=3)], sleep=sleeps)
    done = gw.chat(ASK, Deadline.after(30))
    assert done.text.startswith("pong") and len(server.requests) == 3
    assert sleeps.calls[0] == 2.0  # Retry-After honoured
    assert 0 <= sleeps.calls[1] <= 0.5  # then full jitter: uniform(0, base * 2**1)
    assert done.attempts == [
        "primary/test-model: RateLimited",
        "primary/test-model: ProviderError",
        "primary/test-model: ok",
    ]


def test_never_sleeps_past_the_deadline_and_falls_back(server: ChatServer, backup: ChatServer) -> None:
    server.faults.append(Fault(429, b"{}", {"Retry-After": "60"}))
    sleeps = Sleeps()
    gw = Gateway([Route(provider(server)), Route(provider(backup, "backup"))], sleep=sleeps)
    done = gw.chat(ASK, Deadline.after(10))
    assert sleeps.calls == [] and done.provider == "backup" and done.text == "answer from the backup"


def test_timeout_then_fallback(server: ChatServer, backup: ChatServer) -> None:
    server.faults.extend([Fault(delay_s=1.0), Fault(delay_s=1.0)])
    gw = Gateway(
        [Route(provider(server, read_timeout_s=0.3), max_retries=1), Route(provider(backup, "backup"))],
        sleep=Sleeps(),
    )
    started = time.monotonic()
    done = gw.chat(ASK, Deadline.after(10))
    assert done.provider == "backup" and time.monotonic() - started < 3
    assert [a.split(": ")[1] for a in done.attempts] == ["ProviderTimeout", "ProviderTimeout", "ok"]


def test_malformed_json_is_retried_and_a_4xx_is_not(server: ChatServer) -> None:
    server.faults.append(Fault(200, b"{not json"))
    gw = Gateway([Route(provider(server))], sleep=Sleeps())
    assert gw.chat(ASK).text.startswith("pong")
    server.faults.append(Fault(400, b'{"error": "bad request"}'))
    with pytest.raises(AllProvidersFailed) as info:
        gw.chat(ASK)
    assert isinstance(info.value.errors[0], RequestRejected) and len(server.requests) == 3


def test_deadline_bounds_the_whole_call(server: ChatServer) -> None:
    server.faults.extend([Fault(delay_s=2.0)] * 3)
    gw = Gateway([Route(provider(server), max_retries=2)], sleep=Sleeps())
    started = time.monotonic()
    with pytest.raises(AllProvidersFailed):
        gw.chat(ASK, Deadline.after(0.5))
    assert time.monotonic() - started < 1.5


def test_circuit_breaker_opens_then_probes(server: ChatServer) -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown_s=30, clock=lambda: now[0])
    gw = Gateway([Route(provider(server), max_retries=0, breaker=breaker)], sleep=Sleeps())
    server.faults.extend([Fault(500, b"x"), Fault(500, b"x")])
    for _ in range(2):
        with pytest.raises(AllProvidersFailed):
            gw.chat(ASK)
    assert breaker.state == "open"
    with pytest.raises(AllProvidersFailed) as info:
        gw.chat(ASK)
    assert isinstance(info.value.errors[0], CircuitOpen) and len(server.requests) == 2  # no call made
    now[0] = 31.0
    assert breaker.state == "half-open"
    assert gw.chat(ASK).text.startswith("pong")  # the probe succeeds
    assert breaker.state == "closed"


def test_stream_yields_tokens_then_done(server: ChatServer) -> None:
    events = list(Gateway([Route(provider(server))]).stream(ASK, Deadline.after(5)))
    tokens = [e.text for e in events if isinstance(e, TokenEvent)]
    done = events[-1]
    assert isinstance(done, DoneEvent) and "".join(tokens) == done.completion.text == "pong from the fake model "
    assert done.completion.ttft_s is not None and done.completion.usage.completion_tokens == 5


def test_a_stream_cut_after_tokens_is_reported_not_retried(server: ChatServer, backup: ChatServer) -> None:
    server.faults.append(Fault(cut_after=2))
    gw = Gateway([Route(provider(server)), Route(provider(backup, "backup"))], sleep=Sleeps())
    received: list[str] = []
    with pytest.raises(StreamBroken) as info:
        for event in gw.stream(ASK, Deadline.after(5)):
            if isinstance(event, TokenEvent):
                received.append(event.text)
    assert "".join(received) == info.value.partial_text == "pong from "
    assert len(server.requests) == 1 and backup.requests == []  # no silent retry, no duplicated text


def test_a_stall_before_the_first_token_falls_back(server: ChatServer, backup: ChatServer) -> None:
    server.faults.append(Fault(stall_s=1.5))
    gw = Gateway([Route(provider(server, ttft_timeout_s=0.3), max_retries=0), Route(provider(backup, "backup"))])
    events = list(gw.stream(ASK, Deadline.after(10)))
    assert isinstance(events[-1], DoneEvent) and events[-1].completion.provider == "backup"


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 20))
    assert 15 < (parse_retry_after(later) or 0) <= 20
    assert RateLimited("x", retry_after=1.0).retryable


def test_llm_ping_cli_reports_each_provider(server: ChatServer, tmp_path: Path) -> None:
    (tmp_path / "archivist.toml").write_text(
        f'[[llm.providers]]\nname = "up"\nkind = "openai"\nbase_url = "{server.url}"\nmodel = "m1"\n\n'
        '[[llm.providers]]\nname = "down"\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m2"\n'
        "max_retries = 0\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")}
    env["ARCHIVIST_STORE"] = f"sqlite:///{tmp_path / 's.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "archivist.cli", "llm", "ping", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [(r["provider"], r["reachable"]) for r in report] == [("up", True), ("down", False)]
    assert report[0]["breaker"] == "closed" and "connection failed" in report[1]["error"]
    empty = tmp_path / "no-config"
    empty.mkdir()
    none = subprocess.run(
        [sys.executable, "-m", "archivist.cli", "llm", "ping"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert none.returncode == 1 and "no LLM provider configured" in none.stderr


def test_usage_is_priced_and_budgets_refuse_before_the_call(server: ChatServer) -> None:
    prices = PriceTable({"test-*": Price(input_per_mtok=1000.0, output_per_mtok=2000.0)})
    gw = Gateway([Route(provider(server))], prices=prices)
    done = gw.chat(ASK)
    assert done.cost_usd == pytest.approx((7 * 1000 + 5 * 2000) / 1e6)

    budget = Budget(max_tokens=10_000)
    gw.chat(ChatRequest(ASK.messages, max_tokens=50), budget=budget)
    assert budget.spent_tokens == 12  # settled at the provider's reported usage, not the estimate
    tight = Budget(max_tokens=100)
    with pytest.raises(BudgetExceeded, match="token budget"):
        gw.chat(ChatRequest(ASK.messages, max_tokens=500), budget=tight)
    assert len(server.requests) == 2 and tight.spent_tokens == 0  # refused before anything was sent

    dollars = Budget(max_cost_usd=0.03)  # each call: ~$0.022 estimated, $0.017 actual
    gw.chat(ChatRequest(ASK.messages, max_tokens=5), budget=dollars)
    with pytest.raises(BudgetExceeded, match="cost budget"):
        gw.chat(ChatRequest(ASK.messages, max_tokens=5), budget=dollars)


def test_retries_and_fallbacks_cannot_bypass_a_budget(server: ChatServer, backup: ChatServer) -> None:
    server.faults.extend([Fault(500, b"x")] * 3)
    gw = Gateway([Route(provider(server), max_retries=2), Route(provider(backup, "backup"))], sleep=Sleeps())
    budget = Budget(max_tokens=200)
    done = gw.chat(ChatRequest(ASK.messages, max_tokens=100), budget=budget)
    assert done.provider == "backup" and budget.spent_tokens == 7 + 4  # failed attempts charged nothing
    events = list(gw.stream(ChatRequest(ASK.messages, max_tokens=100), budget=budget))
    assert isinstance(events[-1], DoneEvent) and budget.spent_tokens == 11 + 12
    with pytest.raises(BudgetExceeded):
        list(gw.stream(ChatRequest(ASK.messages, max_tokens=1000), budget=budget))


def test_response_cache_hits_are_marked_and_free(server: ChatServer, tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "cache.db")
    gw = Gateway([Route(provider(server))], cache=ResponseCache(store), prices=PriceTable({"*": Price(1.0, 1.0)}))
    first = gw.chat(ASK)
    budget = Budget(max_tokens=1)  # a cached answer costs nothing, so even this budget allows it
    again = gw.chat(ASK, budget=budget)
    assert len(server.requests) == 1 and again.cached and not first.cached
    assert again.text == first.text and again.cost_usd == 0.0 and budget.spent_tokens == 0
    gw.chat(ChatRequest(ASK.messages, prompt_version="answer-v2"))  # another prompt version: a miss
    gw.chat(ChatRequest(ASK.messages, temperature=0.7))
    gw.chat(ChatRequest(ASK.messages, temperature=0.7))  # sampled: never cached unless asked for
    assert len(server.requests) == 4
    expired = Gateway([Route(provider(server))], cache=ResponseCache(store, clock=lambda: time.time() + 10**6))
    expired.chat(ASK)
    assert len(server.requests) == 5  # past the TTL
    store.close()


def test_a_configured_chain_mixes_anthropic_and_openai_providers(
    server: ChatServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from archivist.app import Archivist
    from fake_anthropic import AnthropicServer

    with AnthropicServer(reply="claude says hi").running() as claude:
        (tmp_path / "archivist.toml").write_text(
            f'[[llm.providers]]\nname = "claude"\nkind = "anthropic"\nbase_url = "{claude.url}"\nmodel = "c-1"\n'
            'api_key_env = "TEST_ANTHROPIC_KEY"\n\n'
            f'[[llm.providers]]\nname = "local"\nkind = "openai"\nbase_url = "{server.url}"\nmodel = "m"\n\n'
            '[llm.prices]\n"c-*" = [3.0, 15.0]\n'
        )
        monkeypatch.setenv("ARCHIVIST_CONFIG", str(tmp_path / "archivist.toml"))
        monkeypatch.setenv("TEST_ANTHROPIC_KEY", "sk-ant-test")
        gw = Archivist.from_settings(store=f"sqlite:///{tmp_path / 's.db'}").gateway()
        first = gw.chat(ASK)
        assert (first.provider, first.text) == ("claude", "claude says hi") and first.cost_usd > 0
        assert claude.headers[-1]["x-api-key"] == "sk-ant-test"
        claude.faults.extend([Fault(529, b'{"type": "error"}')] * 3)
        assert gw.chat(ChatRequest(ASK.messages, max_tokens=9)).provider == "local"
