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
The list order is the fallback order.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from archivist.config import Settings
from archivist.llm.gateway import Gateway, Route
from archivist.llm.openai_compat import OpenAICompatible
from archivist.types import ArchivistError, UsageError


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


def provider_configs(settings: Settings) -> list[ProviderConfig]:
    """Return the configured providers: the archivist.toml chain, else the ARCHIVIST_LLM_* one, else none."""
    path = Path(os.environ.get("ARCHIVIST_CONFIG", "archivist.toml"))
    raw: list[dict[str, Any]] = []
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{path}: not valid TOML: {exc}") from exc
        raw = list(data.get("llm", {}).get("providers", []))
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


def build_gateway(settings: Settings) -> Gateway:
    """Return a gateway over the configured providers, in fallback order."""
    routes = []
    for c in provider_configs(settings):
        if c.kind != "openai":
            raise ArchivistError(f'LLM provider kind {c.kind!r} ({c.name}) is not built yet: use kind = "openai"')
        if not c.base_url:
            raise UsageError(f"LLM provider {c.name!r} needs base_url")
        if c.api_key_env:
            key = os.environ.get(c.api_key_env)
            if key is None:
                raise UsageError(f"LLM provider {c.name!r}: environment variable {c.api_key_env} is not set")
        else:
            key = settings.llm_api_key if c.name == "default" else None
        llm = OpenAICompatible(
            c.name, c.base_url, c.model, api_key=key, read_timeout_s=c.timeout_s, ttft_timeout_s=c.ttft_timeout_s
        )
        routes.append(Route(llm, max_retries=c.max_retries))
    return Gateway(routes)
