"""LLM providers by kind: a registry from the `kind` of a `[[llm.providers]]` entry to the class that serves it.

```toml
[[llm.providers]]
name = "primary"
kind = "openai"            # openai | anthropic | llamacpp, or a kind registered by a plugin
base_url = "http://127.0.0.1:8000/v1"
model = "qwen2.5-7b-instruct"
api_key_env = "PRIMARY_KEY"
timeout_s = 30
max_retries = 2
```
The list order is the fallback order (one entry from `ARCHIVIST_LLM_*` when there is no list). A local GGUF model
runs in process with `kind = "llamacpp"` and `model_path = "/path/to/model.gguf"` (optional `n_ctx`, `n_threads`).

The built-in kinds are `openai` (any OpenAI-compatible server), `anthropic` and `llamacpp` (a GGUF model in process,
the `llamacpp` extra). `register_provider` adds a kind, as simonw/llm's plugins add models: the registry is the one
module-level state, filled at import by this module and by whoever registers.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from archivist.config import ProviderConfig
from archivist.llm.base import LLM
from archivist.types import UsageError

#: builds a provider from its entry and its API key (None: none configured)
ProviderFactory = Callable[[ProviderConfig, str | None], LLM]

_PROVIDERS: dict[str, ProviderFactory] = {}


def register_provider(kind: str, factory: ProviderFactory, *, replace: bool = False) -> None:
    """Make `kind` a provider kind of `[[llm.providers]]`; a kind that is taken raises unless `replace`."""
    if kind in _PROVIDERS and not replace:
        raise ValueError(f"LLM provider kind {kind!r} is registered already (pass replace=True to replace it)")
    _PROVIDERS[kind] = factory


def provider_kinds() -> list[str]:
    """Return the registered provider kinds, sorted."""
    return sorted(_PROVIDERS)


def build_provider(config: ProviderConfig, default_api_key: str | None = None) -> LLM:
    """Return the provider an entry names, or raise UsageError saying what is wrong with the entry."""
    if config.kind == "extractive":
        # Extraction needs the retrieved chunks and the embedder, not a chat transcript: it lives in the
        # answerer, which uses it whenever no provider is configured or every provider failed.
        raise UsageError(
            f"LLM provider {config.name!r}: kind 'extractive' is not a gateway provider. `archivist ask` already "
            "answers extractively when no provider is configured or all of them fail: remove this entry"
        )
    factory = _PROVIDERS.get(config.kind)
    if factory is None:
        raise UsageError(f"LLM provider {config.name!r}: unknown kind {config.kind!r} (known: {provider_kinds()})")
    if config.api_key_env:
        key = os.environ.get(config.api_key_env)
        if key is None:
            raise UsageError(f"LLM provider {config.name!r}: environment variable {config.api_key_env} is not set")
    else:
        key = default_api_key if config.name == "default" else None
    return factory(config, key)


def _openai(c: ProviderConfig, key: str | None) -> LLM:
    from archivist.llm.openai_compat import OpenAICompatible

    if not c.base_url:
        raise UsageError(f"LLM provider {c.name!r} needs base_url")
    return OpenAICompatible(
        c.name,
        c.base_url,
        c.model,
        api_key=key,
        read_timeout_s=c.timeout_s,
        ttft_timeout_s=c.ttft_timeout_s,
        native_json=c.native_json,
    )


def _anthropic(c: ProviderConfig, key: str | None) -> LLM:
    from archivist.llm.anthropic import AnthropicMessages

    return AnthropicMessages(
        c.name, c.model, base_url=c.base_url, api_key=key, read_timeout_s=c.timeout_s, ttft_timeout_s=c.ttft_timeout_s
    )


def _llamacpp(c: ProviderConfig, key: str | None) -> LLM:
    from archivist.llm.llamacpp import LlamaCpp

    if not c.model_path:
        raise UsageError(f"LLM provider {c.name!r} (kind llamacpp) needs model_path, the GGUF file to run")
    return LlamaCpp(c.name, c.model_path, model=c.model or None, n_ctx=c.n_ctx, n_threads=c.n_threads)


register_provider("openai", _openai)
register_provider("anthropic", _anthropic)
register_provider("llamacpp", _llamacpp)
