"""The bundled MiniLM embedder against an independent numpy implementation of the fp32 model."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from archivist.embed.base import Embedder
from archivist.embed.minilm_onnx import MiniLMEmbedder, bundled_model_dir, read_safetensors


def _erf(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # Abramowitz-Stegun 7.1.26 is too coarse for a 1e-5 comparison: use math.erf elementwise.
    import math

    return np.vectorize(math.erf)(x)


def _layer_norm(x: npt.NDArray[np.float64], g: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-12) * g + b


def reference_embedding(ids: list[int], w: dict[str, npt.NDArray]) -> npt.NDArray[np.float64]:
    """Return the sentence-transformers all-MiniLM-L6-v2 embedding computed in float64 numpy."""
    n = len(ids)
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][:n]
        + w["embeddings.token_type_embeddings.weight"][0]
    ).astype(np.float64)
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    for layer in range(6):
        p = f"encoder.layer.{layer}."

        def lin(t: npt.NDArray, name: str, p: str = p) -> npt.NDArray:
            return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        q, k, v = (
            lin(x, f"attention.self.{m}").reshape(n, 12, 32).transpose(1, 0, 2) for m in ("query", "key", "value")
        )
        a = q @ k.transpose(0, 2, 1) / np.sqrt(32)
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        ctx = (a @ v).transpose(1, 0, 2).reshape(n, 384)
        x = _layer_norm(
            lin(ctx, "attention.output.dense") + x,
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
        )
        h = lin(x, "intermediate.dense")
        h = 0.5 * h * (1 + _erf(h / np.sqrt(2)))
        x = _layer_norm(lin(h, "output.dense") + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


TEXTS = [
    "How do I rotate an API key?",
    "Archivist ingests Markdown, HTML, PDF and JSONL corpora.",
    "Sildenafil improves erectile function in men who experience sexual dysfunction as a result of SSRIs.",
    "short",
    "A much longer passage " * 20,
]


def test_implements_the_embedder_protocol(embedder: MiniLMEmbedder) -> None:
    assert isinstance(embedder, Embedder)
    assert embedder.dim == 384 and embedder.model_id == "all-MiniLM-L6-v2"


def test_matches_the_fp32_reference_model(embedder: MiniLMEmbedder) -> None:
    w = read_safetensors(bundled_model_dir() / "model.safetensors")
    got = embedder.embed(TEXTS)
    for text, vec in zip(TEXTS, got, strict=True):
        enc = embedder.tokenizer.batch.encode(text)
        ids = [i for i, m in zip(enc.ids, enc.attention_mask, strict=True) if m]
        ref = reference_embedding(ids, w)
        assert float(vec @ ref) > 0.99999, text


def test_batching_and_padding_do_not_change_vectors(embedder: MiniLMEmbedder) -> None:
    together = embedder.embed(TEXTS)
    alone = np.stack([embedder.embed_query(t) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_similar_texts_are_closer_than_unrelated_ones(embedder: MiniLMEmbedder) -> None:
    a, b, c = embedder.embed(["How do I rotate an API key?", "Steps to replace an API key", "Banana bread recipe"])
    assert a @ b > a @ c + 0.2


def test_empty_input_gives_empty_matrix(embedder: MiniLMEmbedder) -> None:
    assert embedder.embed([]).shape == (0, 384)


def test_query_cache_returns_the_same_vector_without_the_model(embedder: MiniLMEmbedder) -> None:
    from archivist.embed.query_cache import QueryCachingEmbedder

    cached = QueryCachingEmbedder(embedder, size=2)
    first = cached.embed_query("how are vectors cached")
    again = cached.embed_query("how are vectors cached")
    assert again is first and (cached.hits, cached.misses) == (1, 1)
    assert np.allclose(first, embedder.embed_query("how are vectors cached"), atol=1e-6)
    assert not first.flags.writeable  # shared between callers: nobody may change it in place
    cached.embed_query("second")
    cached.embed_query("third")  # evicts the least recently used: the first query
    cached.embed_query("how are vectors cached")
    assert cached.misses == 4 and cached.model_id == embedder.model_id
