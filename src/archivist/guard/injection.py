"""Prompt-injection detection: the `InjectionDetector` protocol and the shipped model.

The shipped detector is a logistic regression over three kinds of feature of a *unit* of text: its all-MiniLM-L6-v2
vector (the one the bundled embedder gives), markers of text aimed at the model that reads it (`guard._lexical`:
"ignore previous …", fake system headers, role play, "in your answer", requests for the hidden prompt…) and hashed
word n-grams. A text's units are the text itself and, when it has two or more, each of its sentences (pooled in the
context of the whole text, as ingest pools the sentence vectors it stores); a text's score is its highest unit's,
so one injected sentence in a long benign passage is enough. Texts longer than one model window are cut into
overlapping windows first. Inference is numpy: a dot product per unit, after the vectors.

Weights and the threshold come from `benchmarks/train_injection_guard.py`, written to `guard/models/injection.npz`;
docs/guards.md says how the threshold was chosen and what it measures.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from archivist.embed.base import Embedder, Span, Vectors, span_pooling
from archivist.guard._lexical import FEATURE_NAMES, N_DENSE, dense_features, hashed_ngrams, word_count
from archivist.text.sentences import sentence_spans
from archivist.types import UsageError

#: the shipped weights, trained by benchmarks/train_injection_guard.py
MODEL_FILE = Path(__file__).resolve().parent / "models" / "injection.npz"
#: bumped whenever units or features are computed differently: weights of another version are refused
FEATURE_VERSION = "injection-v4"
#: a text longer than this many model tokens is scored in windows of it, `WINDOW_STRIDE` tokens apart
WINDOW_TOKENS = 224
WINDOW_STRIDE = 192
#: unit vectors have entries near ±0.1; this puts them on the scale of the 0/1 lexical features
EMBED_SCALE = 4.0
#: a unit of fewer words than this has its vector count in proportion: the vector of "Why?" says little about whom
#: the text addresses, yet lies among short attack strings, so at full weight it alone flagged one-word follow-ups
FULL_VECTOR_WORDS = 3


@dataclass(frozen=True, slots=True)
class EmbeddedText:
    """A text with the vectors a caller already has: its own, and optionally its sentences' (span, vector)."""

    text: str
    vector: Vectors
    sentences: Sequence[tuple[Span, Vectors]] = ()


@runtime_checkable
class InjectionDetector(Protocol):
    """Scores how likely each text is to carry instructions aimed at the model reading it."""

    @property
    def threshold(self) -> float:
        """Return the score at or above which a text is flagged."""
        ...

    @property
    def model_id(self) -> str:
        """Return a name for the weights (file and hash), for fingerprints."""
        ...

    def score(self, texts: Sequence[str]) -> list[float]:
        """Return one score in [0, 1] per text, computing the vectors it needs."""
        ...

    def score_embedded(self, items: Sequence[EmbeddedText]) -> list[float]:
        """Return one score in [0, 1] per text, reusing the vectors given with it (no model pass)."""
        ...


@dataclass(frozen=True, slots=True)
class InjectionWeights:
    """The trained model: one weight per feature, the bias and the threshold, and what they were trained on."""

    embed: npt.NDArray[np.float32]
    dense: npt.NDArray[np.float32]
    hashed: npt.NDArray[np.float32]
    bias: float
    threshold: float
    embed_model: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def hash_bits(self) -> int:
        """Return the number of bits the n-gram buckets are hashed to."""
        return int(self.hashed.shape[0]).bit_length() - 1

    def save(self, path: Path) -> None:
        """Write the weights as an .npz file (plain arrays and a JSON header, never pickles)."""
        header = {
            "feature_version": FEATURE_VERSION,
            "features": list(FEATURE_NAMES),
            "embed_model": self.embed_model,
            "bias": self.bias,
            "threshold": self.threshold,
            "meta": self.meta,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            np.savez_compressed(
                f,
                embed=self.embed.astype(np.float32),
                dense=self.dense.astype(np.float32),
                hashed=self.hashed.astype(np.float32),
                header=np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8),
            )

    @classmethod
    def load(cls, path: Path = MODEL_FILE) -> InjectionWeights:
        """Return the weights of an .npz file; raise UsageError when it is missing or of another feature version."""
        if not path.is_file():
            raise UsageError(f"no injection model at {path} (train one: python benchmarks/train_injection_guard.py)")
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data["header"]).decode())
            if header.get("feature_version") != FEATURE_VERSION or tuple(header.get("features", ())) != FEATURE_NAMES:
                raise UsageError(
                    f"{path} was trained for features {header.get('feature_version')!r}, this code computes "
                    f"{FEATURE_VERSION!r}: retrain it (python benchmarks/train_injection_guard.py)"
                )
            hashed = data["hashed"].astype(np.float32)
            if hashed.shape[0] & (hashed.shape[0] - 1) or data["dense"].shape[0] != N_DENSE:
                raise UsageError(f"{path}: weight shapes do not match the features")
            return cls(
                embed=data["embed"].astype(np.float32),
                dense=data["dense"].astype(np.float32),
                hashed=hashed,
                bias=float(header["bias"]),
                threshold=float(header["threshold"]),
                embed_model=str(header["embed_model"]),
                meta=dict(header.get("meta") or {}),
            )


def window_spans(embedder: Embedder, text: str) -> list[Span]:
    """Return the (start, end) character spans a text is scored in: the whole text when it fits one model
    window, else windows of `WINDOW_TOKENS` tokens every `WINDOW_STRIDE` tokens."""
    offsets = embedder.tokenizer.offsets(text)
    if len(offsets) <= WINDOW_TOKENS:
        return [(0, len(text))]
    spans: list[Span] = []
    for first in range(0, len(offsets), WINDOW_STRIDE):
        last = min(first + WINDOW_TOKENS, len(offsets)) - 1
        spans.append((offsets[first][0], offsets[last][1]))
        if last == len(offsets) - 1:
            break
    return spans


def embed_windows(embedder: Embedder, texts: Sequence[str]) -> list[list[EmbeddedText]]:
    """Return, per text, its windows with their vectors and their sentences' vectors (one model pass for all)."""
    windows = [[text[a:b] for a, b in window_spans(embedder, text)] for text in texts]
    flat = [w for ws in windows for w in ws]
    spans = [_sentence_units(w) for w in flat]
    pooling = span_pooling(embedder)
    if pooling is not None:
        vectors, pooled = pooling.embed_with_spans(flat, spans)
    else:
        # An embedder that cannot pool spans in context embeds each sentence on its own.
        vectors = embedder.embed(flat)
        pooled = [
            embedder.embed([w[a:b] for a, b in s]) if s else vectors[:0] for w, s in zip(flat, spans, strict=True)
        ]
    items = [
        EmbeddedText(w, vectors[i], [(s, pooled[i][j]) for j, s in enumerate(spans[i]) if pooled[i][j].any()])
        for i, w in enumerate(flat)
    ]
    out: list[list[EmbeddedText]] = []
    at = 0
    for ws in windows:
        out.append(items[at : at + len(ws)])
        at += len(ws)
    return out


def _sentence_units(text: str) -> list[Span]:
    """Return the sentences scored on their own: none for a text of one sentence (the text is that unit)."""
    spans = sentence_spans(text)
    return spans if len(spans) >= 2 else []


def units(item: EmbeddedText) -> tuple[list[str], Vectors]:
    """Return a text's scoring units (the text, then each of its sentences when it has two or more) and their
    vectors, one row per unit."""
    sentences = list(item.sentences) if len(item.sentences) >= 2 else []
    texts = [item.text, *(item.text[a:b] for (a, b), _ in sentences)]
    vectors = np.vstack([item.vector[None, :], *(v[None, :] for _, v in sentences)]).astype(np.float32)
    return texts, vectors


def vector_weights(texts: Sequence[str]) -> npt.NDArray[np.float64]:
    """Return, per unit text, the factor its vector is scaled by: `EMBED_SCALE`, less for texts of very few words."""
    return np.array([EMBED_SCALE * min(1.0, word_count(t) / FULL_VECTOR_WORDS) for t in texts], dtype=np.float64)


def unit_logits(weights: InjectionWeights, texts: Sequence[str], vectors: Vectors) -> npt.NDArray[np.float64]:
    """Return the model's logit for each unit (text and its vector)."""
    if vectors.shape != (len(texts), weights.embed.shape[0]):
        raise UsageError(
            f"expected {len(texts)} vectors of dimension {weights.embed.shape[0]} ({weights.embed_model}), "
            f"got shape {vectors.shape}"
        )
    logits = vector_weights(texts) * (vectors.astype(np.float64) @ weights.embed.astype(np.float64)) + weights.bias
    bits = weights.hash_bits
    for i, text in enumerate(texts):
        buckets, values = hashed_ngrams(text, bits)
        logits[i] += float(dense_features(text) @ weights.dense) + float(values @ weights.hashed[buckets])
    return np.asarray(logits, dtype=np.float64)


def _sigmoid(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * x))  # tanh form: no overflow warning for large |x|
    return out


class LinearInjectionDetector:
    """The shipped detector: logistic regression over MiniLM vectors and lexical features, max over units."""

    def __init__(self, weights: InjectionWeights, embedder: Embedder, *, name: str = MODEL_FILE.name) -> None:
        if embedder.model_id != weights.embed_model:
            raise UsageError(
                f"the injection model reads {weights.embed_model} vectors; the embedder given is {embedder.model_id}"
            )
        self.weights = weights
        self.embedder = embedder
        digest = hashlib.sha256(weights.embed.tobytes() + weights.dense.tobytes() + weights.hashed.tobytes())
        self._model_id = f"{name}:{digest.hexdigest()[:12]}"

    @property
    def threshold(self) -> float:
        """Return the score at or above which a text is flagged."""
        return self.weights.threshold

    @property
    def model_id(self) -> str:
        """Return the weights file's name and a hash of its weights."""
        return self._model_id

    def score(self, texts: Sequence[str]) -> list[float]:
        """Return one score in [0, 1] per text: the highest of its windows' (each embedded here)."""
        return [max(self.score_embedded(windows)) for windows in embed_windows(self.embedder, texts)]

    def score_embedded(self, items: Sequence[EmbeddedText]) -> list[float]:
        """Return one score in [0, 1] per text, from the vectors given with it: the highest unit's probability."""
        return [float(_sigmoid(unit_logits(self.weights, *units(item))).max()) for item in items]

    def flagged(self, scores: Sequence[float]) -> list[bool]:
        """Return, per score, whether it is at or above the threshold."""
        return [s >= self.threshold for s in scores]


def load_injection_detector(embedder: Embedder, path: Path = MODEL_FILE) -> LinearInjectionDetector:
    """Return the detector with the weights at `path` (the shipped ones by default), reading `embedder`'s vectors."""
    return LinearInjectionDetector(InjectionWeights.load(path), embedder, name=path.name)
