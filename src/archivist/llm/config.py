"""Provider configuration: one provider from `ARCHIVIST_LLM_*`, or a fallback chain in `archivist.toml`.

```toml
[[llm.providers]]
name = "primary"
kind = "openai"            # openai | anthropic | llamacpp | extractive
base_url = "http://127.0.0.1:8000/v1"
model = "qwen2.5-7b-instruct"
api_key_env = "PRIMARY_KEY"
timeout_s = 30
max_retries = 2
```
The list order is the fallback order. A local GGUF model runs in process with `kind = "llamacpp"` and
`model_path = "/path/to/model.gguf"` (optional `n_ctx`, `n_threads`; needs the `llamacpp` extra).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from archivist.config import Settings
from archivist.llm.accounting import Price, PriceTable
from archivist.llm.anthropic import AnthropicMessages
from archivist.llm.base import LLM
from archivist.llm.cache import ResponseCache
from archivist.llm.gateway import Gateway, Route
from archivist.llm.llamacpp import LlamaCpp
from archivist.llm.openai_compat import OpenAICompatible
from archivist.store.base import Store
from archivist.types import UsageError


class ProviderConfig(BaseModel):
    """One entry of the fallback chain."""

    name: str
    kind: Literal["openai", "anthropic", "llamacpp", "extractive"]
    base_url: str | None = None
    model: str = ""
    api_key_env: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    ttft_timeout_s: float = Field(default=20.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    #: openai only: send `response_format: json_schema` for structured output (OpenAI, recent vLLM, llama.cpp server)
    native_json: bool = False
    #: llamacpp only: the GGUF file, the context length, and CPU threads (1 keeps it fast beside a busy core)
    model_path: str | None = None
    n_ctx: int = Field(default=4096, gt=0)
    n_threads: int = Field(default=1, gt=0)


def _llm_table() -> tuple[Path, dict[str, Any]]:
    """Return the config file's path and its `[llm]` table (empty when there is no file)."""
    path = Path(os.environ.get("ARCHIVIST_CONFIG", "archivist.toml"))
    if not path.is_file():
        return path, {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from exc
    return path, dict(data.get("llm", {}))


def price_table() -> PriceTable:
    """Return prices from `[llm.prices]`: `"model-glob" = [input_per_mtok, output_per_mtok]` (USD)."""
    path, table = _llm_table()
    prices = {}
    for pattern, pair in table.get("prices", {}).items():
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, int | float) for x in pair)):
            raise UsageError(f"{path}: [llm.prices] {pattern!r} must be [input_per_mtok, output_per_mtok]")
        prices[str(pattern)] = Price(float(pair[0]), float(pair[1]))
    return PriceTable(prices)


def provider_configs(settings: Settings) -> list[ProviderConfig]:
    """Return the configured providers: the archivist.toml chain, else the ARCHIVIST_LLM_* one, else none."""
    path, table = _llm_table()
    raw: list[dict[str, Any]] = list(table.get("providers", []))
    try:
        configs = [ProviderConfig(**r) for r in raw]
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"{path}: [[llm.providers]] {'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
    if not configs and settings.llm_url:
        if not settings.llm_model:
            raise UsageError("ARCHIVIST_LLM_URL is set but ARCHIVIST_LLM_MODEL is not")
        configs = [
            ProviderConfig(
                name="default",
                kind="openai",
                base_url=settings.llm_url,
                model=settings.llm_model,
                timeout_s=settings.llm_timeout_s,
                max_retries=settings.llm_max_retries,
            )
        ]
    return configs


def build_gateway(settings: Settings, store: Store | None = None) -> Gateway:
    """Return a gateway over the configured providers, in fallback order, caching in `store` if given."""
    routes = []
    for c in provider_configs(settings):
        if c.kind == "extractive":
            # Extraction needs the retrieved chunks and the embedder, not a chat transcript: it lives in the
            # answerer, which uses it whenever no provider is configured or every provider failed.
            raise UsageError(
                f"LLM provider {c.name!r}: kind 'extractive' is not a gateway provider. `archivist ask` already "
                "answers extractively when no provider is configured or all of them fail: remove this entry"
            )
        if c.kind == "llamacpp":
            if not c.model_path:
                raise UsageError(f"LLM provider {c.name!r} (kind llamacpp) needs model_path, the GGUF file to run")
            llama = LlamaCpp(c.name, c.model_path, model=c.model or None, n_ctx=c.n_ctx, n_threads=c.n_threads)
            routes.append(Route(llama, max_retries=c.max_retries))
            continue
        if c.kind == "openai" and not c.base_url:
            raise UsageError(f"LLM provider {c.name!r} needs base_url")
        if c.api_key_env:
            key = os.environ.get(c.api_key_env)
            if key is None:
                raise UsageError(f"LLM provider {c.name!r}: environment variable {c.api_key_env} is not set")
        else:
            key = settings.llm_api_key if c.name == "default" else None
        llm: LLM
        if c.kind == "anthropic":
            llm = AnthropicMessages(
                c.name,
                c.model,
                base_url=c.base_url,
                api_key=key,
                read_timeout_s=c.timeout_s,
                ttft_timeout_s=c.ttft_timeout_s,
            )
        else:
            assert c.base_url is not None  # checked above
            llm = OpenAICompatible(
                c.name,
                c.base_url,
                c.model,
                api_key=key,
                read_timeout_s=c.timeout_s,
                ttft_timeout_s=c.ttft_timeout_s,
                native_json=c.native_json,
            )
        routes.append(Route(llm, max_retries=c.max_retries))
    cache = ResponseCache(store, settings.llm_cache_ttl_s) if store is not None and settings.llm_cache else None
    return Gateway(routes, prices=price_table(), cache=cache)
