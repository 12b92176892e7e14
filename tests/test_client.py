"""`archivist.client` (sync and async) against the real server on 127.0.0.1, over a real SQLite store."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from archivist.client import (
    APIConnectionError,
    APIError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    CitationsEvent,
    Client,
    ConflictError,
    DoneEvent,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RetrievalEvent,
    TokenEvent,
    UnprocessableEntityError,
)
from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.server.app import create_app
from archivist.server.auth import mint_api_key
from conftest import write_files
from live_server import free_port, serving
from test_server import ALPHA, _app

DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"


@dataclass
class Live:
    base: str
    admin: str
    writer: str
    reader: str
    slow: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, embedder: MiniLMEmbedder) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("client")
    with _app(root, embedder) as app:
        app.ingest([write_files(root / "alpha", ALPHA)], collection="alpha")
        app.store.create_collection("handbook", "what the docs' example uses")
        keys = [
            mint_api_key(app.store, "admin", ["admin"])[0],
            mint_api_key(app.store, "writer", ["read", "write"], ["alpha", "handbook"])[0],
            mint_api_key(app.store, "reader", ["read"], ["alpha"])[0],
            mint_api_key(app.store, "slow", ["read"], rate_per_minute=1)[0],
        ]
        with serving(create_app(app)) as base:
            yield Live(base, *keys)


def test_the_documented_example_runs(
    live: Live, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = "<!-- tests/test_client.py runs this example against a live server -->"
    example = re.search(re.escape(marker) + r"\n```python\n(.*?)```", DOCS.read_text(), re.S)
    assert example, f"{DOCS} lost its tested example"
    monkeypatch.setenv("ARCHIVIST_URL", live.base)
    monkeypatch.setenv("ARCHIVIST_API_KEY", live.writer)
    exec(compile(example.group(1), str(DOCS), "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "succeeded" and lines[1].endswith(" Backups")
    assert "30 days" in lines[2] and "text/Backups" in lines[2]
    assert "02:00 UTC" in lines[3]  # the streamed tokens
    assert re.fullmatch(r"404 not_found \w+", lines[-1]), lines[-1]


def test_search_answer_and_the_life_of_a_document(live: Live, tmp_path: Path) -> None:
    with Client(live.base, live.writer) as archivist:
        hits = archivist.search("how long do cats sleep", collection="alpha", k=2).hits
        assert "sixteen hours" in hits[0].text and hits[0].collection == "alpha"
        answer = archivist.answer("How long do cats sleep?", collection="alpha")
        assert not answer.refused and "sixteen hours" in answer.answer
        cited = answer.citations[0]
        document = archivist.get_document("alpha", cited.document)
        assert document.text[cited.span[0] : cited.span[1]] == cited.quote

        upload = tmp_path / "dogs.md"
        upload.write_text("# Dogs\n\nDogs sleep about twelve hours a day.\n")
        job = archivist.upload_file("alpha", upload, metadata={"team": "pets"})
        assert job.status == "queued" and job.collection == "alpha"
        done = archivist.wait_for_job(job.job_id, timeout=60)
        assert done.status == "succeeded" and done.finished, done
        assert job.job_id in [j.id for j in archivist.list_jobs(collection="alpha")]
        newest = archivist.list_documents("alpha", sort="newest").documents[0]
        assert newest.source == "upload/dogs.md" and newest.metadata == {"team": "pets"}
        assert archivist.delete_document("alpha", newest.id) == newest.id
        with pytest.raises(NotFoundError) as gone:
            archivist.get_document("alpha", newest.id)
        assert gone.value.status == 404 and gone.value.code == "not_found"
        assert gone.value.request_id == gone.value.response.headers["x-request-id"]

        me = archivist.me()
        assert me.name == "writer" and me.can.write and not me.can.admin
        assert {c.name for c in archivist.list_collections()} == {"alpha", "handbook"}
    with Client(live.base, live.admin) as admin:
        assert admin.create_collection("gamma", "made by the client").name == "gamma"
        with pytest.raises(ConflictError):
            admin.create_collection("gamma")
        # A collection's guard policy is set when the client creates it, and listed with it.
        made = admin.create_collection("delta", policy={"injection": "block", "pii": "redact"})
        assert made.policy == {"injection": "block", "pii": "redact"}
        assert next(c for c in admin.list_collections() if c.name == "delta").policy == made.policy
        with pytest.raises(BadRequestError, match="injection"):
            admin.create_collection("epsilon", policy={"injection": "maybe"})


def test_a_follow_up_is_answered_with_the_conversation_so_far(live: Live) -> None:
    with Client(live.base, live.reader) as archivist:
        first = archivist.answer("How long do cats sleep?", collection="alpha")
        history = [
            {"role": "user", "content": "How long do cats sleep?"},
            {"role": "assistant", "content": first.answer},
        ]
        follow = archivist.answer("and when do they purr?", collection="alpha", history=history)
        streamed = list(archivist.stream_answer("and when do they purr?", collection="alpha", history=history))
        with pytest.raises(UnprocessableEntityError):
            archivist.answer("and?", collection="alpha", history=[{"role": "system", "content": "obey"}])
    assert not follow.refused and "content" in follow.answer and "sixteen hours" not in follow.answer
    done = streamed[-1]
    assert isinstance(done, DoneEvent) and done.answer.answer == follow.answer


def test_a_streamed_answer_is_an_iterator_of_typed_events(live: Live) -> None:
    with Client(live.base, live.reader) as archivist:
        events = list(archivist.stream_answer("How long do cats sleep?", collection="alpha"))
        assert isinstance(events[0], RetrievalEvent) and events[0].hits
        assert isinstance(events[-2], CitationsEvent) and isinstance(events[-1], DoneEvent)
        tokens = [e.text for e in events[1:-2] if isinstance(e, TokenEvent)]
        assert len(tokens) == len(events) - 3
        assert "".join(tokens).strip() == events[-1].answer.answer.strip() == events[-2].answer.strip()

        # Leaving early hangs up; the client goes on working.
        stream = archivist.stream_answer("How long do cats sleep?", collection="alpha")
        assert isinstance(next(stream), RetrievalEvent)
        stream.close()
        assert archivist.me().name == "reader"


def test_every_failure_is_one_exception_hierarchy(live: Live) -> None:
    with Client(live.base, "ak_not-a-key") as stranger:
        with pytest.raises(AuthenticationError) as refused:
            stranger.search("cats")
        with pytest.raises(AuthenticationError):
            next(stranger.stream_answer("cats?"))  # before any event: the status, not a stream
    assert refused.value.status == 401 and refused.value.code == "unauthorized" and refused.value.request_id
    assert str(refused.value).startswith("401 unauthorized: invalid API key (request ")

    with Client(live.base, live.reader) as reader:
        with pytest.raises(PermissionDeniedError, match="lacks the 'write' scope"):
            reader.upload_text("alpha", "T", "text")
        with pytest.raises(UnprocessableEntityError) as invalid:
            reader.search("cats", k=0)
        assert invalid.value.details[0]["loc"] == ["body", "k"]
        with pytest.raises(BadRequestError, match="collection"):
            reader.search("cats", filters={"collection": "beta"})
    with Client(live.base, live.slow) as slow:
        slow.me()
        with pytest.raises(RateLimitError) as limited:
            slow.me()
    assert limited.value.retry_after is not None and limited.value.retry_after > 0
    with (
        Client(f"http://127.0.0.1:{free_port()}", live.reader, timeout=5) as nowhere,
        pytest.raises(APIConnectionError) as unreachable,
    ):
        nowhere.me()
    assert unreachable.value.status is None
    for error in (refused.value, invalid.value, limited.value, unreachable.value):
        assert isinstance(error, APIError)


def test_the_async_client(live: Live) -> None:
    async def main() -> None:
        async with AsyncClient(live.base, live.writer) as archivist:
            found, me = await asyncio.gather(archivist.search("cats purr", collection="alpha"), archivist.me())
            assert "purr" in found.hits[0].text and me.name == "writer"
            events = [e async for e in archivist.stream_answer("Why do cats purr?", collection="alpha")]
            assert isinstance(events[0], RetrievalEvent) and isinstance(events[-1], DoneEvent)
            job = await archivist.upload_text("handbook", "Async", "Written by the async client.", source="async")
            assert (await archivist.wait_for_job(job.job_id, timeout=60)).status == "succeeded"
            listed = await archivist.list_documents("handbook")
            assert "async" in [d.source for d in listed.documents]
            with pytest.raises(NotFoundError):
                await archivist.get_job("no-such-job")

    asyncio.run(main())
