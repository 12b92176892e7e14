"""The OpenAI-compatible HTTP embedder against a real loopback server that injects faults."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from archivist.embed.base import Embedder
from archivist.embed.openai_http import OpenAIEmbedder, bundled_tokenizer
from archivist.types import ArchivistError
from fake_servers import EmbeddingServer, Fault, fake_vector


@pytest.fixture
def server() -> Iterator[EmbeddingServer]:
    with EmbeddingServer(dim=16).running() as s:
        yield s


def _client(server: EmbeddingServer, **kw: object) -> OpenAIEmbedder:
    return OpenAIEmbedder(server.url, "emb-1", tokenizer=bundled_tokenizer(256), api_key="sk-test", **kw)  # type: ignore[arg-type]


def test_embeds_in_batches_in_input_order(server: EmbeddingServer) -> None:
    emb = _client(server, batch_size=2)
    texts = ["a", "b", "c", "d", "e"]
    out = emb.embed(texts)
    assert out.shape == (5, 16) and emb.model_id == "openai:emb-1"
    for t, v in zip(texts, out, strict=True):
        ref = np.array(fake_vector(t, 16))
        assert float(v @ (ref / np.linalg.norm(ref))) == pytest.approx(1.0, abs=1e-6)
    assert [len(r["input"]) for r in server.requests] == [2, 2, 1]
    assert server.auth_headers[0] == "Bearer sk-test"
    assert isinstance(emb, Embedder) and emb.dim == 16  # learned from the answers, no extra request
    assert len(server.requests) == 3


def test_retries_429_honouring_retry_after_then_succeeds(server: EmbeddingServer) -> None:
    server.faults.extend([Fault(429, b'{"error":"slow down"}', {"Retry-After": "0.2"}), Fault(500, b"oops")])
    started = time.monotonic()
    out = _client(server).embed(["x"])
    assert out.shape == (1, 16)
    assert time.monotonic() - started >= 0.2
    assert len(server.requests) == 3


def test_gives_up_after_max_retries_with_a_clear_error(server: EmbeddingServer) -> None:
    server.faults.extend([Fault(503, b"down")] * 3)
    with pytest.raises(ArchivistError, match="answered 503"):
        _client(server, max_retries=2).embed(["x"])


def test_malformed_json_is_a_clear_error(server: EmbeddingServer) -> None:
    server.faults.append(Fault(200, b"{not json"))
    with pytest.raises(ArchivistError, match="malformed response"):
        _client(server).embed(["x"])


def test_wrong_dimension_is_rejected(server: EmbeddingServer) -> None:
    with pytest.raises(ArchivistError, match="16-dim vectors, expected 384"):
        _client(server, dim=384).embed(["x"])


def test_timeout_is_retried_then_reported(server: EmbeddingServer) -> None:
    server.faults.extend([Fault(delay_s=0.6), Fault(delay_s=0.6)])
    with pytest.raises(ArchivistError, match="timed out"):
        _client(server, timeout_s=0.2, max_retries=1).embed(["x"])


def test_unreachable_server_is_reported() -> None:
    emb = OpenAIEmbedder("http://127.0.0.1:9/v1", "m", tokenizer=bundled_tokenizer(256), max_retries=0)
    with pytest.raises(ArchivistError, match="unreachable"):
        emb.embed(["x"])
