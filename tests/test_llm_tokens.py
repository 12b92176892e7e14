"""Token counting per model family, and budgets that reserve by the model's own count."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from archivist.llm.accounting import Budget, estimate_prompt_tokens
from archivist.llm.base import ChatRequest, Message
from archivist.llm.errors import BudgetExceeded
from archivist.llm.gateway import Gateway, Route
from archivist.llm.openai_compat import OpenAICompatible
from archivist.llm.tokens import CharEstimate, counter_for
from fake_servers import ChatServer


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer().running() as s:
        yield s


def test_openai_models_count_with_cl100k_and_others_estimate() -> None:
    gpt4 = counter_for("gpt-4")
    assert (gpt4.name, gpt4.exact) == ("cl100k_base", True)
    # Reference ids from OpenAI's cl100k_base: "hello world" -> [15339, 1917].
    assert gpt4.count("hello world") == 2
    assert gpt4.count("a " * 200) == 201  # chars/4 would say 100
    assert counter_for("openai/gpt-3.5-turbo").exact is True
    newer = counter_for("gpt-4o-mini")
    assert newer.name == "cl100k_base" and newer.exact is False  # o200k is not shipped: an approximation
    other = counter_for("qwen2.5-7b-instruct")
    assert isinstance(other, CharEstimate) and other.count("abcdefghi") == 3


def test_budget_reserves_by_the_models_tokenizer(server: ChatServer) -> None:
    request = ChatRequest((Message("user", "a " * 400),), max_tokens=10)
    assert estimate_prompt_tokens(request, counter_for("gpt-4")) == 401 + 4
    assert estimate_prompt_tokens(request) == 200 + 4

    def gateway(model: str) -> Gateway:
        return Gateway([Route(OpenAICompatible("p", server.url, model, api_key="sk"))], sleep=lambda _: None)

    # 300 tokens: enough by the chars/4 estimate, not by cl100k's exact count.
    with pytest.raises(BudgetExceeded, match="~415"):
        gateway("gpt-4").chat(request, budget=Budget(max_tokens=300))
    assert server.requests == []  # refused before the call
    gateway("local-model").chat(request, budget=Budget(max_tokens=300))
    assert len(server.requests) == 1
