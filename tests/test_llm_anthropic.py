"""The Anthropic Messages provider against a real Anthropic-style server on 127.0.0.1 that injects faults."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from archivist.llm.anthropic import AnthropicMessages, finish_reason, messages_json
from archivist.llm.base import (
    LLM,
    ChatRequest,
    Deadline,
    DoneEvent,
    Message,
    StreamEvent,
    TokenEvent,
    ToolCall,
    ToolSpec,
)
from archivist.llm.errors import (
    AllProvidersFailed,
    BadResponse,
    DeadlineExceeded,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    RequestRejected,
    StreamBroken,
)
from archivist.llm.gateway import Gateway, Route
from archivist.llm.openai_compat import OpenAICompatible
from fake_anthropic import INPUT_TOKENS, AnthropicServer
from fake_servers import ChatServer, Fault

ASK = ChatRequest((Message("system", "Be brief."), Message("user", "ping")))
SEARCH = ToolSpec(
    "search_docs", "Search the documents", {"type": "object", "properties": {"query": {"type": "string"}}}
)


@pytest.fixture
def server() -> Iterator[AnthropicServer]:
    with AnthropicServer().running() as s:
        yield s


@pytest.fixture
def backup() -> Iterator[AnthropicServer]:
    with AnthropicServer(reply="answer from the backup").running() as s:
        yield s


def provider(
    s: AnthropicServer, name: str = "claude", *, read_timeout_s: float = 60.0, ttft_timeout_s: float = 20.0
) -> AnthropicMessages:
    return AnthropicMessages(
        name,
        "claude-test",
        base_url=s.url,
        api_key="sk-ant-test",
        read_timeout_s=read_timeout_s,
        ttft_timeout_s=ttft_timeout_s,
    )


class Sleeps:
    """Records requested sleeps instead of waiting (the deadline logic still sees real time)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def collect(events: Iterator[StreamEvent], into: list[str]) -> None:
    for event in events:
        if isinstance(event, TokenEvent):
            into.append(event.text)


def test_provider_contract_chat_usage_and_latency(server: AnthropicServer) -> None:
    llm = provider(server)
    assert isinstance(llm, LLM)
    done = llm.chat(ASK, Deadline.after(5))
    assert done.text == "pong from the fake claude" and done.finish_reason == "stop" and done.tool_calls == []
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (INPUT_TOKENS, 5)
    assert done.provider == "claude" and done.model == "claude-test" and done.latency_s > 0


def test_request_mapping_system_max_tokens_and_headers(server: AnthropicServer) -> None:
    request = ChatRequest(
        (Message("system", "Be brief."), Message("user", "ping"), Message("system", "Cite sources.")),
        temperature=0.3,
    )
    provider(server).chat(request, Deadline.after(5))
    provider(server).chat(ChatRequest(ASK.messages, max_tokens=50), Deadline.after(5))
    sent, explicit = server.requests
    assert sent["system"] == "Be brief.\n\nCite sources."  # hoisted and joined: no system role in messages
    assert sent["messages"] == [{"role": "user", "content": "ping"}]
    assert sent["model"] == "claude-test" and sent["temperature"] == 0.3 and sent["stream"] is False
    assert sent["max_tokens"] == 1024 and explicit["max_tokens"] == 50  # required by Anthropic: defaulted
    headers = server.headers[0]
    assert headers["x-api-key"] == "sk-ant-test" and headers["anthropic-version"] == "2023-06-01"
    assert headers["content-type"] == "application/json" and "authorization" not in headers


def test_tools_are_sent_as_input_schema_and_tool_use_is_parsed(server: AnthropicServer) -> None:
    server.tool_use = {"name": "search_docs", "input": {"query": "rotate keys", "k": 3}}
    done = provider(server).chat(ChatRequest(ASK.messages, tools=(SEARCH,)), Deadline.after(5))
    assert done.finish_reason == "tool_calls" and done.text == "pong from the fake claude"
    assert done.tool_calls == [ToolCall("toolu_1", "search_docs", {"query": "rotate keys", "k": 3})]
    assert server.requests[0]["tools"] == [
        {"name": "search_docs", "description": "Search the documents", "input_schema": SEARCH.parameters}
    ]


def test_tool_results_round_trip(server: AnthropicServer) -> None:
    server.tool_use = {"name": "search_docs", "input": {"query": "rotate keys"}}
    llm = provider(server)
    first = llm.chat(ChatRequest(ASK.messages, tools=(SEARCH,)), Deadline.after(5))
    second_call = ToolCall("toolu_2", "search_docs", {"query": "expiry"})
    history = (
        *ASK.messages,
        Message("assistant", "", tool_calls=(*first.tool_calls, second_call)),
        Message("tool", "keys rotate monthly", tool_call_id="toolu_1"),
        Message("tool", "keys expire yearly", tool_call_id="toolu_2"),
    )
    done = llm.chat(ChatRequest(history, tools=(SEARCH,)), Deadline.after(5))
    assert done.finish_reason == "tool_calls"  # the fake validated the history: tool_result ids match tool_use ids
    assert server.requests[1]["messages"][1:] == [
        {
            "role": "assistant",
            "content": [  # no empty text block: Anthropic rejects those
                {"type": "tool_use", "id": "toolu_1", "name": "search_docs", "input": {"query": "rotate keys"}},
                {"type": "tool_use", "id": "toolu_2", "name": "search_docs", "input": {"query": "expiry"}},
            ],
        },
        {
            "role": "user",  # parallel results share one user turn
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "keys rotate monthly"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "keys expire yearly"},
            ],
        },
    ]


def test_message_mapping_keeps_text_beside_tool_use() -> None:
    system, messages = messages_json(
        [Message("assistant", "Let me look.", tool_calls=(ToolCall("t1", "f", {}),)), Message("user", "thanks")]
    )
    assert system == ""
    assert messages == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
            ],
        },
        {"role": "user", "content": "thanks"},
    ]


def test_stop_reasons_map_to_finish_reasons(server: AnthropicServer) -> None:
    assert [finish_reason(r) for r in ("end_turn", "tool_use", "max_tokens", "stop_sequence", None)] == [
        "stop",
        "tool_calls",
        "length",
        "stop_sequence",
        "stop",
    ]
    server.stop_reason = "max_tokens"
    assert provider(server).chat(ASK, Deadline.after(5)).finish_reason == "length"


def test_429_is_retried_after_the_retry_after_delay(server: AnthropicServer) -> None:
    server.faults.extend([Fault(429, None, {"Retry-After": "2"}), Fault(500, b"oops")])
    sleeps = Sleeps()
    gw = Gateway([Route(provider(server), max_retries=3)], sleep=sleeps)
    done = gw.chat(ASK, Deadline.after(30))
    assert done.text.startswith("pong") and len(server.requests) == 3
    assert sleeps.calls[0] == 2.0  # Retry-After honoured
    assert 0 <= sleeps.calls[1] <= 0.5  # then full jitter
    assert done.attempts == [
        "claude/claude-test: RateLimited",
        "claude/claude-test: ProviderError",
        "claude/claude-test: ok",
    ]


def test_529_overloaded_is_a_retryable_rate_limit(server: AnthropicServer) -> None:
    server.faults.append(Fault(529))
    with pytest.raises(RateLimited) as info:
        provider(server).chat(ASK, Deadline.after(5))
    assert info.value.retryable and "overloaded_error" in str(info.value)
    server.faults.extend([Fault(529), Fault(503, b"{}", {"Retry-After": "1"})])
    sleeps = Sleeps()
    done = Gateway([Route(provider(server), max_retries=2)], sleep=sleeps).chat(ASK, Deadline.after(30))
    assert done.attempts == ["claude/claude-test: RateLimited"] * 2 + ["claude/claude-test: ok"]
    assert sleeps.calls[1] == 1.0 and len(server.requests) == 4


def test_400_is_rejected_without_retry(server: AnthropicServer) -> None:
    server.faults.append(Fault(400))
    gw = Gateway([Route(provider(server), max_retries=3)], sleep=Sleeps())
    with pytest.raises(AllProvidersFailed) as info:
        gw.chat(ASK)
    assert isinstance(info.value.errors[0], RequestRejected) and len(server.requests) == 1
    assert "invalid_request_error" in str(info.value)


def test_malformed_json_is_a_retryable_bad_response(server: AnthropicServer) -> None:
    server.faults.append(Fault(200, b"{not json"))
    with pytest.raises(BadResponse):
        provider(server).chat(ASK, Deadline.after(5))
    server.faults.append(Fault(200, b'{"content": "not blocks"}'))
    with pytest.raises(BadResponse):
        provider(server).chat(ASK, Deadline.after(5))
    server.faults.append(Fault(200, b"[]"))
    done = Gateway([Route(provider(server))], sleep=Sleeps()).chat(ASK)
    assert done.text.startswith("pong") and done.attempts[0] == "claude/claude-test: BadResponse"


def test_timeout_is_reported_quickly(server: AnthropicServer) -> None:
    server.faults.append(Fault(delay_s=1.0))
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        provider(server, read_timeout_s=0.3).chat(ASK, Deadline.after(10))
    assert time.monotonic() - started < 0.9


def test_connection_refused_and_a_passed_deadline() -> None:
    down = AnthropicMessages("down", "claude-test", base_url="http://127.0.0.1:9")
    with pytest.raises(ProviderError, match="connection failed"):
        down.chat(ASK, Deadline.after(5))
    with pytest.raises(DeadlineExceeded):
        down.chat(ASK, Deadline.after(-1))


def test_base_url_defaults_to_anthropic_and_tolerates_v1(server: AnthropicServer) -> None:
    assert AnthropicMessages("a", "m")._url == "https://api.anthropic.com/v1/messages"
    with_v1 = AnthropicMessages("a", "claude-test", base_url=server.url + "/v1/")
    assert with_v1.chat(ASK, Deadline.after(5)).text.startswith("pong")


def test_stream_yields_tokens_then_done_with_usage(server: AnthropicServer) -> None:
    events = list(Gateway([Route(provider(server))]).stream(ASK, Deadline.after(5)))
    tokens = [e.text for e in events if isinstance(e, TokenEvent)]
    done = events[-1]
    assert isinstance(done, DoneEvent) and "".join(tokens) == done.completion.text == "pong from the fake claude "
    assert (done.completion.usage.prompt_tokens, done.completion.usage.completion_tokens) == (INPUT_TOKENS, 5)
    assert done.completion.ttft_s is not None and done.completion.finish_reason == "stop"
    assert server.requests[0]["stream"] is True


def test_stream_assembles_tool_use(server: AnthropicServer) -> None:
    server.tool_use = {"name": "search_docs", "input": {"query": "rotate keys", "k": 3}}
    events = list(provider(server).stream(ChatRequest(ASK.messages, tools=(SEARCH,)), Deadline.after(5)))
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.completion.finish_reason == "tool_calls"
    assert done.completion.tool_calls == [ToolCall("toolu_1", "search_docs", {"query": "rotate keys", "k": 3})]


def test_a_stream_cut_after_tokens_is_reported_not_retried(server: AnthropicServer, backup: AnthropicServer) -> None:
    server.faults.append(Fault(cut_after=2))
    gw = Gateway([Route(provider(server)), Route(provider(backup, "backup"))], sleep=Sleeps())
    received: list[str] = []
    with pytest.raises(StreamBroken) as info:
        collect(gw.stream(ASK, Deadline.after(5)), received)
    assert "".join(received) == info.value.partial_text == "pong from "
    assert "message_stop" in str(info.value)
    assert len(server.requests) == 1 and backup.requests == []  # no silent retry, no duplicated text


def test_an_error_event_maps_like_an_http_error(server: AnthropicServer) -> None:
    server.error_event = "overloaded_error"
    server.faults.append(Fault(cut_after=0))
    with pytest.raises(RateLimited):  # before any token: the ordinary retryable error
        list(provider(server).stream(ASK, Deadline.after(5)))
    server.faults.append(Fault(cut_after=1))
    received: list[str] = []
    with pytest.raises(StreamBroken) as info:  # after a token: never retried into duplicate text
        collect(provider(server).stream(ASK, Deadline.after(5)), received)
    assert info.value.partial_text == "".join(received) == "pong " and "overloaded_error" in str(info.value)
    server.error_event = "invalid_request_error"
    server.faults.append(Fault(cut_after=0))
    with pytest.raises(RequestRejected):
        list(provider(server).stream(ASK, Deadline.after(5)))


def test_a_stream_ending_early_before_tokens_is_retried(server: AnthropicServer) -> None:
    server.faults.append(Fault(cut_after=0))
    with pytest.raises(ProviderError, match="message_stop"):
        list(provider(server).stream(ASK, Deadline.after(5)))
    server.faults.extend([Fault(cut_after=0), Fault(429, None, {"Retry-After": "0"})])
    events = list(Gateway([Route(provider(server))], sleep=Sleeps()).stream(ASK, Deadline.after(5)))
    assert isinstance(events[-1], DoneEvent) and len(server.requests) == 4


def test_a_stall_before_the_first_token_falls_back(server: AnthropicServer, backup: AnthropicServer) -> None:
    server.faults.append(Fault(stall_s=1.5))
    gw = Gateway([Route(provider(server, ttft_timeout_s=0.3), max_retries=0), Route(provider(backup, "backup"))])
    started = time.monotonic()
    events = list(gw.stream(ASK, Deadline.after(10)))
    assert isinstance(events[-1], DoneEvent) and events[-1].completion.provider == "backup"
    assert events[-1].completion.text == "answer from the backup " and time.monotonic() - started < 1.2


def test_mixed_fallback_chain_anthropic_then_openai_compatible(server: AnthropicServer) -> None:
    server.faults.extend([Fault(529), Fault(529)] * 2)
    with ChatServer(reply="answer from the openai backup").running() as openai:
        backup = OpenAICompatible("local", openai.url, "qwen", api_key="sk-test")
        gw = Gateway([Route(provider(server), max_retries=1), Route(backup)], sleep=Sleeps())
        done = gw.chat(ASK, Deadline.after(10))
        assert done.provider == "local" and done.text == "answer from the openai backup"
        assert done.attempts == ["claude/claude-test: RateLimited"] * 2 + ["local/qwen: ok"]
        assert openai.requests[0]["messages"][0] == {"role": "system", "content": "Be brief."}
        events = list(gw.stream(ASK, Deadline.after(10)))
        assert isinstance(events[-1], DoneEvent) and events[-1].completion.provider == "local"
        assert len(server.requests) == 4 and len(openai.requests) == 2
