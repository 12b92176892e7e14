"""Embedders by name: `ARCHIVIST_EMBEDDER` names one; `register_embedder` adds one (heavy imports stay lazy).

The registry is the module's one state: the built-in embedders register at import, a plugin by calling
`register_embedder` before the app is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from archivist.config import Settings
from archivist.embed.base import Embedder
from archivist.types import UsageError


@dataclass(frozen=True, slots=True)
class EmbedderEntry:
    """How to build an embedder from settings, and the model id its vectors are stored under without building it
    (commands that only read the store never load a model)."""

    build: Callable[[Settings], Embedder]
    model_id: Callable[[Settings], str]


_EMBEDDERS: dict[str, EmbedderEntry] = {}


def register_embedder(
    name: str,
    build: Callable[[Settings], Embedder],
    model_id: Callable[[Settings], str],
    *,
    replace: bool = False,
) -> None:
    """Make `name` a value of the `embedder` setting; a name that is taken raises unless `replace`."""
    if name in _EMBEDDERS and not replace:
        raise ValueError(f"embedder {name!r} is registered already (pass replace=True to replace it)")
    _EMBEDDERS[name] = EmbedderEntry(build, model_id)


def embedder_entry(name: str) -> EmbedderEntry:
    """Return the registered embedder of that name, or raise UsageError listing the known ones."""
    entry = _EMBEDDERS.get(name)
    if entry is None:
        raise UsageError(f"unknown embedder {name!r} (known: {sorted(_EMBEDDERS)})")
    return entry


def _minilm(settings: Settings) -> Embedder:
    from archivist.embed.minilm_onnx import MiniLMEmbedder

    return MiniLMEmbedder(batch_size=settings.embed_batch_size, threads=settings.embed_threads)


def _minilm_id(settings: Settings) -> str:
    from archivist.embed.minilm_onnx import MODEL_ID

    return MODEL_ID


def _openai(settings: Settings) -> Embedder:
    from archivist.embed.openai_http import OpenAIEmbedder, bundled_tokenizer

    if not (settings.embed_url and settings.embed_model):
        raise UsageError("embedder 'openai' needs embed_url and embed_model")
    return OpenAIEmbedder(
        settings.embed_url,
        settings.embed_model,
        tokenizer=bundled_tokenizer(settings.chunk_max_tokens),
        api_key=settings.embed_api_key,
        dim=settings.embed_dim,
        timeout_s=settings.embed_timeout_s,
    )


register_embedder("minilm", _minilm, _minilm_id)
register_embedder("openai", _openai, lambda settings: f"openai:{settings.embed_model}")
