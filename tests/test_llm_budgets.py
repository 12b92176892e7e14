"""Budgets per request and per key and period: chained, persisted in a real SQLite store, reset by period."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from archivist.llm.accounting import Budget, KeyBudget, period_label
from archivist.llm.base import ChatRequest, Message
from archivist.llm.errors import BudgetExceeded
from archivist.llm.gateway import Gateway, Route
from archivist.llm.openai_compat import OpenAICompatible
from archivist.store.sqlite import SQLiteStore
from fake_servers import ChatServer

ASK = ChatRequest((Message("user", "ping"),), max_tokens=20)


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer().running() as s:
        yield s


def gateway(server: ChatServer) -> Gateway:
    return Gateway([Route(OpenAICompatible("p", server.url, "local-model"))], sleep=lambda _: None)


class Clock:
    def __init__(self, when: str) -> None:
        self.now = datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp()

    def __call__(self) -> float:
        return self.now


def test_period_labels_are_utc_calendar_periods() -> None:
    at = Clock("2026-11-30T23:59:59")()
    assert period_label("day", at) == "2026-11-30" and period_label("month", at) == "2026-11"
    assert period_label("month", at + 1) == "2026-12"


def test_a_request_budget_also_charges_its_keys_budget(server: ChatServer) -> None:
    key = Budget(max_tokens=100)
    gw = gateway(server)
    first = Budget(max_tokens=1000, parent=key)
    gw.chat(ASK, budget=first)
    assert first.spent_tokens == key.spent_tokens > 0
    # The key's limit refuses even though the request's own budget has room, and nothing is left held.
    big = ChatRequest(ASK.messages, max_tokens=200)
    second = Budget(max_tokens=1000, parent=key)
    with pytest.raises(BudgetExceeded, match="token budget"):
        gw.chat(big, budget=second)
    assert len(server.requests) == 1
    assert second._held_tokens == 0 and key._held_tokens == 0
    gw.chat(ASK, budget=second)  # a small call still fits the key
    assert key.spent_tokens == first.spent_tokens + second.spent_tokens


def test_key_budgets_persist_across_restarts_and_reset_each_period(server: ChatServer, tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    clock = Clock("2026-11-23T10:00:00")
    store = SQLiteStore(path)
    store.migrate()
    gw = gateway(server)
    gw.chat(ASK, budget=KeyBudget(store, "key-1", period="day", max_tokens=10_000, clock=clock))
    used = store.spend_get("key-1", "2026-11-23")[0]
    assert used > 0
    store.close()

    # A new process opens the same file: the day's spending still counts (each call below reserves ~45 tokens).
    reopened = SQLiteStore(path)
    tight = KeyBudget(reopened, "key-1", period="day", max_tokens=used + 44, clock=clock)
    with pytest.raises(BudgetExceeded, match=f"{used} spent"):
        gw.chat(ChatRequest(ASK.messages, max_tokens=40), budget=tight)
    # Other keys have their own totals.
    gw.chat(ChatRequest(ASK.messages, max_tokens=40), budget=KeyBudget(reopened, "key-2", max_tokens=used + 44))
    # Next day, the same limit has room again.
    clock.now += 86_400
    gw.chat(ChatRequest(ASK.messages, max_tokens=40), budget=tight)
    assert reopened.spend_get("key-1", "2026-11-24")[0] > 0
    assert reopened.spend_get("key-1", "2026-11-23")[0] == used
    reopened.close()
