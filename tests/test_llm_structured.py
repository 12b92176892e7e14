"""Structured output through the gateway, against a real OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from archivist.llm.accounting import Budget
from archivist.llm.base import ChatRequest, Deadline, Message
from archivist.llm.errors import AllProvidersFailed, DeadlineExceeded, ProviderError, RequestRejected
from archivist.llm.gateway import Gateway, Route
from archivist.llm.openai_compat import OpenAICompatible
from archivist.llm.structured import (
    StructuredOutputError,
    describe_errors,
    extract_json_object,
    generate_structured,
    json_schema_for,
)
from fake_servers import ChatServer, Fault

ASK = ChatRequest((Message("system", "You extract facts."), Message("user", "Who wrote the note?")), max_tokens=200)


class Person(BaseModel):
    name: str
    age: int


class Author(BaseModel):
    name: str
    born: int | None = None


class Book(BaseModel):
    title: str = Field(description="the book's title as printed")
    authors: list[Author]
    tags: list[str] = []


class ScriptedChatServer(ChatServer):
    """A ChatServer answering successive calls from a script of replies.

    A Fault in the script is queued for the call after the preceding reply, so a test can fail a repair call.
    """

    def __init__(self, *script: str | Fault) -> None:
        super().__init__()
        self.script: deque[str | Fault] = deque(script)

    def _completion(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self.script:
            head = self.script.popleft()
            assert isinstance(head, str), "a Fault cannot open the script: queue it in .faults"
            self.reply = head
        while self.script and isinstance(self.script[0], Fault):
            fault = self.script.popleft()
            assert isinstance(fault, Fault)
            self.faults.append(fault)
        return super()._completion(payload)


@pytest.fixture
def server() -> Iterator[ScriptedChatServer]:
    s = ScriptedChatServer()
    with s.running():
        yield s


def gateway(s: ChatServer) -> Gateway:
    llm = OpenAICompatible("primary", s.url, "test-model", api_key="sk-test")
    return Gateway([Route(llm)], sleep=lambda _: None)


def messages(s: ChatServer, call: int) -> list[dict[str, Any]]:
    return list(s.requests[call]["messages"])


def test_valid_json_on_the_first_try_despite_fences_and_prose(server: ScriptedChatServer) -> None:
    reply = 'Sure! Here it is:\n```json\n{"name": "Ada Lovelace", "age": 36}\n```\nAnything else?'
    server.script.append(reply)
    out = generate_structured(gateway(server), ASK, Person)
    assert out.value == Person(name="Ada Lovelace", age=36)
    assert out.repairs == 0 and out.completion.text == reply and out.completion.provider == "primary"
    assert len(server.requests) == 1


def test_schema_is_sent_after_the_callers_messages_intact(server: ScriptedChatServer) -> None:
    server.script.append('{"title": "Notes", "authors": [{"name": "Ada"}]}')
    generate_structured(gateway(server), ASK, Book)
    sent = messages(server, 0)
    assert sent[:2] == [
        {"role": "system", "content": "You extract facts."},
        {"role": "user", "content": "Who wrote the note?"},
    ]
    assert len(sent) == 3 and sent[2]["role"] == "system"
    instruction = sent[2]["content"]
    assert "answer with one json object only" in instruction.lower()
    schema = extract_json_object(instruction)
    assert schema is not None and json.loads(schema) == json_schema_for(Book)
    # The request's other settings are the caller's.
    assert server.requests[0]["max_tokens"] == 200 and server.requests[0]["temperature"] == 0.0


def test_native_json_mode_sends_the_schema_only_to_providers_that_enable_it(server: ScriptedChatServer) -> None:
    server.script.extend(['{"name": "Ada", "age": 36}', '{"name": "Ada", "age": 36}'])
    generate_structured(gateway(server), ASK, Person)
    assert "response_format" not in server.requests[0]
    native = OpenAICompatible("native", server.url, "test-model", native_json=True)
    generate_structured(Gateway([Route(native)], sleep=lambda _: None), ASK, Person)
    assert server.requests[1]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": json_schema_for(Person)},
    }
    # The instruction is still there for fallback providers without a JSON mode.
    assert server.requests[1]["messages"][-1]["role"] == "system"


def test_invalid_answer_is_repaired_with_the_error_quoted(server: ScriptedChatServer) -> None:
    bad = 'Here you go: {"name": "Ada", "age": "thirty-six"}'
    server.script.extend([bad, '{"name": "Ada", "age": 36}'])
    out = generate_structured(gateway(server), ASK, Person)
    assert out.value == Person(name="Ada", age=36) and out.repairs == 1
    assert len(server.requests) == 2
    first, repair = messages(server, 0), messages(server, 1)
    assert repair[: len(first)] == first  # the conversation, schema instruction included, is resent as it was
    assert repair[len(first)] == {"role": "assistant", "content": bad}
    fix = repair[len(first) + 1]
    assert fix["role"] == "user" and len(repair) == len(first) + 2
    assert "age: Input should be a valid integer" in fix["content"] and "'thirty-six'" in fix["content"]
    assert "corrected JSON object only" in fix["content"]


def test_still_invalid_after_max_repairs_names_the_failing_field(server: ScriptedChatServer) -> None:
    server.script.extend(['{"name": "Ada"}', '{"name": "Ada"}', '{"name": "Ada", "age": null}'])
    with pytest.raises(StructuredOutputError) as caught:
        generate_structured(gateway(server), ASK, Person, max_repairs=2)
    err = caught.value
    assert len(server.requests) == 3
    assert "Person" in str(err) and "after 2 repairs" in str(err) and "age:" in str(err)
    assert err.last_text == '{"name": "Ada", "age": null}'
    assert isinstance(err.validation_error, ValidationError)
    assert [e["loc"] for e in err.validation_error.errors()] == [("age",)]
    assert not isinstance(err, AllProvidersFailed) and not err.retryable
    # Only the latest bad answer is sent back: each repair call carries the conversation plus one exchange.
    assert len(messages(server, 2)) == len(messages(server, 1)) == len(messages(server, 0)) + 2
    assert messages(server, 2)[-2]["content"] == '{"name": "Ada"}'


def test_max_repairs_zero_makes_one_call(server: ScriptedChatServer) -> None:
    server.script.append("I am not able to answer that.")
    with pytest.raises(StructuredOutputError, match="no JSON object in the answer") as caught:
        generate_structured(gateway(server), ASK, Person, max_repairs=0)
    assert len(server.requests) == 1
    assert caught.value.validation_error.errors()[0]["type"] == "json_invalid"
    with pytest.raises(ValueError):
        generate_structured(gateway(server), ASK, Person, max_repairs=-1)


def test_an_answer_without_json_gets_a_repair_saying_so(server: ScriptedChatServer) -> None:
    server.script.extend(["Ada, aged 36.", '{"name": "Ada", "age": 36}'])
    out = generate_structured(gateway(server), ASK, Person)
    assert out.repairs == 1
    assert "did not contain a JSON object" in messages(server, 1)[-1]["content"]


def test_nested_models_and_lists(server: ScriptedChatServer) -> None:
    bad = {"title": "Notes", "authors": [{"name": "Ada", "born": 1815}, {"born": "later"}], "tags": "math"}
    good = {"title": "Notes", "authors": [{"name": "Ada", "born": 1815}, {"name": "Charles"}], "tags": ["math"]}
    server.script.extend([json.dumps(bad), f"```json\n{json.dumps(good, indent=2)}\n```"])
    out = generate_structured(gateway(server), ASK, Book)
    assert out.value == Book(
        title="Notes", authors=[Author(name="Ada", born=1815), Author(name="Charles")], tags=["math"]
    )
    fix = messages(server, 1)[-1]["content"]
    # Errors inside lists of nested models are reported with their full path.
    assert "authors.1.name: Field required" in fix
    assert "authors.1.born: Input should be a valid integer" in fix
    assert "tags: Input should be a valid array (got 'math')" in fix


def test_braces_inside_strings_do_not_confuse_extraction(server: ScriptedChatServer) -> None:
    title = 'Use "}" and "{" in {templates} \\ carefully}'
    answer = json.dumps({"title": title, "authors": [{"name": "A. {Brace} }{"}]})
    server.script.append(f"Template {{placeholder}} first, then: {answer} -- note the closing }} here")
    out = generate_structured(gateway(server), ASK, Book)
    assert out.value.title == title and out.value.authors[0].name == "A. {Brace} }{"
    assert out.repairs == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', '{"a": 1}'),
        ('```json\n{"a": {"b": [1, {"c": 2}]}}\n```', '{"a": {"b": [1, {"c": 2}]}}'),
        ('prose {not json} then {"a": "x}"} and {"b": 2}', '{"a": "x}"}'),
        ('{"a": "escaped \\" quote } brace"}', '{"a": "escaped \\" quote } brace"}'),
        ('It\'s {"a": 1}', '{"a": 1}'),  # an apostrophe in prose is not a string delimiter
        ('{"a": [1, 2', None),  # truncated
        ("no object here", None),
        ("[1, 2, 3]", None),
    ],
)
def test_extract_json_object(text: str, expected: str | None) -> None:
    assert extract_json_object(text) == expected


def test_json_schema_for_drops_only_redundant_titles() -> None:
    class Entry(BaseModel):
        title: str
        birth_year: int = Field(title="Year of birth", description="four digits")
        author: Author

    schema = json_schema_for(Entry)
    assert schema == Entry.model_json_schema() | {"properties": schema["properties"], "$defs": schema["$defs"]}
    props = schema["properties"]
    assert "title" in props and "title" not in props["title"]  # a field named title survives, its auto title not
    assert props["birth_year"] == {"title": "Year of birth", "description": "four digits", "type": "integer"}
    assert schema["$defs"]["Author"]["title"] == "Author" and "title" not in schema["$defs"]["Author"]["properties"]
    assert schema["required"] == ["title", "birth_year", "author"] and schema["title"] == "Entry"


def test_describe_errors_quotes_the_first_few_and_counts_the_rest() -> None:
    class Many(BaseModel):
        a: int
        b: int
        c: int
        d: int
        e: int
        f: int
        g: int

    with pytest.raises(ValidationError) as caught:
        Many.model_validate_json('{"a": "' + "x" * 200 + '"}')
    lines = describe_errors(caught.value, limit=3)
    assert lines[0].startswith("a: Input should be a valid integer") and lines[0].endswith("...)")
    assert len(lines[0]) < 160 and lines[1:] == ["b: Field required", "c: Field required", "... and 4 more"]


def test_gateway_failures_propagate_as_all_providers_failed(server: ScriptedChatServer) -> None:
    server.faults.append(Fault(400, b'{"error": "bad request"}'))
    with pytest.raises(AllProvidersFailed) as caught:
        generate_structured(gateway(server), ASK, Person)
    assert not isinstance(caught.value, StructuredOutputError)
    assert [type(e) for e in caught.value.errors] == [RequestRejected] and len(server.requests) == 1


def test_a_failing_repair_call_propagates_too(server: ScriptedChatServer) -> None:
    server.script.extend(['{"name": "Ada"}', Fault(500, b"down"), Fault(500, b"down"), Fault(500, b"down")])
    with pytest.raises(AllProvidersFailed) as caught:
        generate_structured(gateway(server), ASK, Person)
    assert [type(e) for e in caught.value.errors] == [ProviderError] and len(server.requests) == 4


def test_the_deadline_covers_the_whole_exchange(server: ScriptedChatServer) -> None:
    with pytest.raises(AllProvidersFailed) as caught:
        generate_structured(gateway(server), ASK, Person, deadline=Deadline.after(-1))
    assert [type(e) for e in caught.value.errors] == [DeadlineExceeded] and server.requests == []


def test_every_call_is_charged_to_the_budget(server: ScriptedChatServer) -> None:
    server.script.extend(['{"name": "Ada"}', '{"name": "Ada", "age": 36}'])
    budget = Budget(max_tokens=100_000)
    generate_structured(gateway(server), ASK, Person, budget=budget)
    # The fake server bills 7 prompt tokens plus one per whitespace-separated word of each reply.
    assert budget.spent_tokens == (7 + 2) + (7 + 4)
