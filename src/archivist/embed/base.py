"""The `Embedder` and `Tokenizer` protocols every embedding backend satisfies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


@runtime_checkable
class Tokenizer(Protocol):
    """Counts and locates the tokens of the embedding model's own vocabulary."""

    def count(self, texts: Sequence[str]) -> list[int]:
        """Return the number of model tokens in each text (special tokens excluded)."""
        ...

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Return the character span of each model token of a text."""
        ...


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors."""

    @property
    def model_id(self) -> str:
        """Return the identifier vectors are cached and stored under."""
        ...

    @property
    def dim(self) -> int:
        """Return the vector dimension."""
        ...

    @property
    def max_tokens(self) -> int:
        """Return how many tokens the model reads before truncating."""
        ...

    @property
    def tokenizer(self) -> Tokenizer:
        """Return the tokenizer chunk sizes are measured with."""
        ...

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return one unit vector per text, shape (len(texts), dim)."""
        ...

    def embed_query(self, text: str) -> Vectors:
        """Return the unit vector of a search query, shape (dim,)."""
        ...


#: (start, end) character offsets into a text
Span = tuple[int, int]


@runtime_checkable
class SpanEmbedder(Protocol):
    """An embedder that can also pool its token states over spans of each text, in the same model pass."""

    def embed_with_spans(self, texts: Sequence[str], spans: Sequence[Sequence[Span]]) -> tuple[Vectors, list[Vectors]]:
        """Return one unit vector per text and, per text, one unit vector per span (zeros where the model
        truncated the text before the span ended)."""
        ...


def span_pooling(embedder: Embedder) -> SpanEmbedder | None:
    """Return the embedder, or the one it wraps, if it can pool spans in context; None if it cannot."""
    for candidate in (embedder, getattr(embedder, "inner", None)):
        if isinstance(candidate, SpanEmbedder):
            return candidate
    return None
