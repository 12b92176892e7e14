"""An `Embedder` that calls an OpenAI-compatible `/v1/embeddings` endpoint (OpenAI, vLLM, TEI, Ollama…)."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from archivist.embed.base import Tokenizer, Vectors
from archivist.types import ArchivistError

_RETRYABLE = {408, 409, 429, 500, 502, 503, 504}


class OpenAIEmbedder:
    """Embeddings from an HTTP server speaking the OpenAI embeddings API."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        tokenizer: Tokenizer,
        api_key: str | None = None,
        dim: int | None = None,
        max_tokens: int = 512,
        batch_size: int = 64,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._url = base_url.rstrip("/") + "/embeddings"
        self._model = model
        self._tokenizer = tokenizer
        self._dim = dim
        self._max_tokens = max_tokens
        self.batch_size = batch_size
        self._max_retries = max_retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s), transport=transport)

    @property
    def model_id(self) -> str:
        """Return the identifier vectors are cached and stored under."""
        return f"openai:{self._model}"

    @property
    def dim(self) -> int:
        """Return the vector dimension (asked of the server once when not configured)."""
        if self._dim is None:
            self._dim = int(self.embed(["dimension probe"]).shape[1])
        return self._dim

    @property
    def max_tokens(self) -> int:
        """Return how many tokens the model reads before truncating."""
        return self._max_tokens

    @property
    def tokenizer(self) -> Tokenizer:
        """Return the tokenizer chunk sizes are measured with (an approximation of the server's)."""
        return self._tokenizer

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return one unit vector per text, shape (len(texts), dim)."""
        parts = [self._request(list(texts[i : i + self.batch_size])) for i in range(0, len(texts), self.batch_size)]
        if not parts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        out = np.concatenate(parts).astype(np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        unit: Vectors = (out / np.maximum(norms, 1e-12)).astype(np.float32)
        return unit

    def embed_query(self, text: str) -> Vectors:
        """Return the unit vector of a search query, shape (dim,)."""
        vector: Vectors = self.embed([text])[0]
        return vector

    def _request(self, batch: list[str]) -> Vectors:
        payload: dict[str, Any] = {"model": self._model, "input": batch, "encoding_format": "float"}
        for attempt in range(self._max_retries + 1):
            try:
                resp = self._client.post(self._url, json=payload)
            except httpx.TimeoutException as exc:
                if attempt < self._max_retries:
                    self._sleep(attempt, None)
                    continue
                raise ArchivistError(f"embedding server {self._url} timed out") from exc
            except httpx.HTTPError as exc:
                raise ArchivistError(f"embedding server {self._url} unreachable: {exc}") from exc
            if resp.status_code in _RETRYABLE and attempt < self._max_retries:
                self._sleep(attempt, resp.headers.get("retry-after"))
                continue
            if resp.status_code != 200:
                raise ArchivistError(f"embedding server {self._url} answered {resp.status_code}: {resp.text[:200]!r}")
            return self._parse(resp, len(batch))
        raise AssertionError("unreachable")

    def _parse(self, resp: httpx.Response, n: int) -> Vectors:
        try:
            data = resp.json()["data"]
            rows = sorted(data, key=lambda d: d["index"])
            vectors = np.array([r["embedding"] for r in rows], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise ArchivistError(f"embedding server {self._url} returned a malformed response: {exc}") from exc
        if vectors.ndim != 2 or vectors.shape[0] != n:
            raise ArchivistError(f"embedding server {self._url} returned {vectors.shape[0]} vectors for {n} texts")
        if self._dim is None:
            self._dim = int(vectors.shape[1])
        elif vectors.shape[1] != self._dim:
            raise ArchivistError(
                f"embedding server {self._url} returned {vectors.shape[1]}-dim vectors, expected {self._dim}"
            )
        return vectors

    @staticmethod
    def _sleep(attempt: int, retry_after: str | None) -> None:
        delay = random.uniform(0, min(8.0, 0.25 * 2**attempt))  # full jitter
        if retry_after:
            with contextlib.suppress(ValueError):
                delay = min(float(retry_after), 30.0)
        time.sleep(delay)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()


def bundled_tokenizer(max_tokens: int) -> Tokenizer:
    """Return the bundled MiniLM tokenizer, used to size chunks when the model's own is not local."""
    from archivist.embed.hf_tokenizer import HFTokenizer
    from archivist.embed.minilm_onnx import bundled_model_dir

    return HFTokenizer(Path(bundled_model_dir()) / "tokenizer.json", max_tokens)
