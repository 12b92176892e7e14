"""An LRU of query vectors in front of any embedder: a repeated question skips the model (~10 ms of CPU)."""

from __future__ import annotations

from collections.abc import Sequence

from archivist.embed.base import Embedder, Tokenizer, Vectors
from archivist.embed.lru import VectorLRU


class QueryCachingEmbedder:
    """An `Embedder` that remembers the vectors of the last `size` distinct queries; documents pass through."""

    def __init__(self, inner: Embedder, size: int = 4096) -> None:
        self.inner = inner
        self.size = size
        self._vectors = VectorLRU(size)
        self.hits = 0
        self.misses = 0

    @property
    def model_id(self) -> str:
        """Return the wrapped model's id."""
        return self.inner.model_id

    @property
    def dim(self) -> int:
        """Return the vector dimension."""
        return self.inner.dim

    @property
    def max_tokens(self) -> int:
        """Return how many tokens the model reads."""
        return self.inner.max_tokens

    @property
    def tokenizer(self) -> Tokenizer:
        """Return the wrapped model's tokenizer."""
        return self.inner.tokenizer

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return one unit vector per text (never cached here: the store caches document vectors)."""
        return self.inner.embed(texts)

    def embed_query(self, text: str) -> Vectors:
        """Return the query's unit vector, from the cache when it was asked recently (read-only array)."""
        vector = self._vectors.get(text)
        if vector is not None:
            self.hits += 1
            return vector
        self.misses += 1
        vector = self.inner.embed_query(text)
        vector.flags.writeable = False  # shared between callers
        self._vectors.put(text, vector)
        return vector
