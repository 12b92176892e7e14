"""Typed settings: environment variables `ARCHIVIST_*`, then `archivist.toml`, then defaults.

The one reader of `archivist.toml`: its `[archivist]` table (or top-level keys) fills the flat settings, its `[llm]`
table (the provider fallback chain and prices) the nested `Settings.llm`.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from archivist.types import UsageError

DEFAULT_STORE = "sqlite:///.archivist/archivist.db"


class ProviderConfig(BaseModel):
    """One entry of the LLM fallback chain (`[[llm.providers]]`)."""

    name: str
    #: a registered provider kind (`archivist.llm.providers`): openai, anthropic, llamacpp
    kind: str
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


class LLMSettings(BaseModel):
    """The `[llm]` table: the provider fallback chain in order, and prices per model glob (USD per million
    input and output tokens)."""

    providers: list[ProviderConfig] = []
    prices: dict[str, tuple[float, float]] = {}


class Settings(BaseSettings):
    """Everything `Archivist.from_settings()` needs to wire the components."""

    model_config = SettingsConfigDict(env_prefix="ARCHIVIST_", extra="ignore")

    store: str = DEFAULT_STORE

    #: a registered embedder (`archivist.embed.registry`): minilm (bundled), openai (any OpenAI-compatible server)
    embedder: str = "minilm"
    embed_url: str | None = Field(default=None, description="OpenAI-compatible base URL ending in /v1")
    embed_model: str | None = None
    embed_api_key: str | None = None
    embed_dim: int | None = None
    embed_batch_size: int = Field(default=8, ge=1, le=1024)
    embed_threads: int | None = Field(default=None, ge=1, le=64)
    embed_timeout_s: float = Field(default=60.0, gt=0)
    #: Vectors of the most recent distinct queries kept in memory (0: off); a repeated query skips the model.
    query_cache_size: int = Field(default=4096, ge=0, le=1_000_000)

    # MiniLM reads 256 tokens; leave room for the title/heading prefix each chunk is embedded with.
    chunk_max_tokens: int = Field(default=224, ge=16, le=8192)
    chunk_target_tokens: int = Field(default=192, ge=8, le=8192)
    chunk_overlap_tokens: int = Field(default=32, ge=0, le=4096)

    max_file_mb: float = Field(default=50.0, gt=0)

    # One OpenAI-compatible provider; a fallback chain goes in archivist.toml ([[llm.providers]]).
    llm_url: str | None = Field(default=None, description="OpenAI-compatible base URL ending in /v1")
    llm_model: str | None = None
    llm_api_key: str | None = None
    llm_timeout_s: float = Field(default=60.0, gt=0)
    llm_max_retries: int = Field(default=2, ge=0, le=10)
    #: The fallback chain and prices from archivist.toml's [llm] table (see `provider_configs`).
    llm: LLMSettings = LLMSettings()
    llm_cache: bool = True
    llm_cache_ttl_s: float = Field(default=86_400.0, gt=0)
    #: With a model configured, check each cited claim by an entailment judgment of the model (else similarity).
    verify_with_model: bool = True
    #: Time limit of that check (default: llm_timeout_s).
    verify_timeout_s: float | None = Field(default=None, gt=0)

    #: Extractive answers (no model, or the model failed) refuse when their best sentence scores below this (unset:
    #: the threshold calibrated on COVID-QA and PubMedQA; `archivist eval calibrate-refusal` measures one on your
    #: own questions; 0 never refuses). With a model, llm_refusal_floor decides what it is not asked.
    refusal_threshold: float | None = Field(default=None, ge=0.0, le=2.0)
    #: With a model configured, questions whose best sentence scores below this are refused without asking the
    #: model (clearly out of scope); the model judges the rest (unset: the measured default,
    #: answer/refusal.py's LLM_REFUSAL_FLOOR; never above refusal_threshold; 0 always asks the model).
    llm_refusal_floor: float | None = Field(default=None, ge=0.0, le=2.0)

    fusion: Literal["zscore", "rrf", "learned"] = "learned"
    # learned fusion only: a model file from benchmarks/train_fusion_model.py (unset: the bundled model).
    fusion_model: str | None = None
    rrf_k: int = Field(default=60, ge=1)
    # Fitted on SciFact's train queries only (benchmarks/tune_fusion.py); with fusion = "rrf", 1.0 / 1.0 is usual.
    dense_weight: float = Field(default=0.75, ge=0)
    bm25_weight: float = Field(default=0.15, ge=0)
    # z-score fusion only: BM25 of the chunk's whole document, which sees query terms spread over chunks.
    doc_bm25_weight: float = Field(default=0.10, ge=0)
    candidates: int = Field(default=100, ge=1, le=10_000)

    # Off by default: both need a model. "llm" grades passages through the gateway (ARCHIVIST_LLM_* or
    # [[llm.providers]]); "cross-encoder" runs local ONNX weights from cross_encoder_dir.
    reranker: Literal["none", "llm", "cross-encoder"] = "none"
    rerank_depth: int = Field(default=20, ge=1, le=1000)
    cross_encoder_dir: str | None = None
    query_expansion: Literal["none", "multi-query", "hyde"] = "none"
    expansion_queries: int = Field(default=3, ge=1, le=10)

    # The HTTP service (`archivist serve`).
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    #: Largest request body, uploads included.
    max_body_mb: float = Field(default=25.0, gt=0)
    #: Wall-clock limit of one request (a streamed answer: until its first event).
    request_timeout_s: float = Field(default=60.0, gt=0)
    #: Requests per minute per API key (a key's own --rate overrides it); bursts up to one minute's worth.
    rate_limit_per_minute: int = Field(default=600, ge=1)
    #: Failed authentications per minute per client address before further failures answer 429 (a valid key is
    #: always served); bursts up to one minute's worth.
    auth_failures_per_minute: int = Field(default=30, ge=1)
    #: Proxies (comma-separated addresses or networks, "*" for any) whose X-Forwarded-For and X-Forwarded-Proto are
    #: trusted as the client's address and scheme; empty: none, the TCP peer is the client.
    forwarded_allow_ips: str = ""
    #: Browser origins allowed to call the API, comma-separated ("*" for any); empty: same origin only.
    cors_origins: str = ""
    #: Ingestion workers `serve` runs in its own process; 0: the API only queues jobs, and `archivist worker`
    #: processes (on any host that reaches the store) run them.
    workers_inline: int = Field(default=1, ge=0, le=64)
    #: A worker holds a job this long and renews it every third of it while working; a job whose worker stopped
    #: renewing (killed, host gone) is taken by another worker once the lease runs out.
    job_lease_s: float = Field(default=60.0, ge=1.0, le=3600.0)
    #: How many times a job is taken before it ends failed (a worker that died counts as an attempt).
    job_max_attempts: int = Field(default=3, ge=1, le=100)
    #: Agent runs (and their journal) not updated for this many days are deleted when a new run starts.
    agent_run_retention_days: int = Field(default=30, ge=1, le=3650)
    #: Personal data (emails, phone and card numbers, IBANs, SSNs; names, places and organisations with the `pii`
    #: extra) in the server's log lines is replaced by placeholders such as <EMAIL> before they are written.
    pii_redact_logs: bool = True
    #: Score every chunk with the injection detector at ingest and store the score with it (flagged chunks are
    #: fenced in prompts and listed by `archivist guard review`); off: chunks are stored unscored.
    guard_scan_ingest: bool = True
    #: What a question or agent task that the injection detector flags gets: "off" (not checked), "flag" (answered
    #: with a warning naming the score) or "block" (refused, nothing run). A collection's or key's stored policy can
    #: only make this stricter (docs/guards.md).
    guard_injection: Literal["off", "flag", "block"] = "flag"
    #: Replace personal data in answers and their quoted citations by placeholders such as <EMAIL>; a collection's
    #: or key's policy `pii=redact` turns it on for their answers.
    pii_redact_answers: bool = False
    #: The user's own tools ("path/to/tools.py:NAME", NAME a list of @tool functions), given to every agent (CLI,
    #: HTTP API) and exposed by the MCP server; `archivist agent --tools` overrides it for one command.
    agent_tools: str | None = None
    #: Agent runs one `archivist serve` process drives at once for the HTTP API (streamed or in the background);
    #: a run asked of a process whose drivers are all busy is refused with 429, never queued. At most 32: a streamed
    #: run's watcher holds one of the server's 40 worker threads, and the other routes need some.
    agent_concurrency: int = Field(default=4, ge=1, le=32)
    #: How the agent's model calls tools: "native" (the provider's tool calling), "text" (tool calls written in the
    #: reply, for models without native tools), or "auto" (native unless the first provider cannot do tools).
    agent_tool_protocol: Literal["auto", "native", "text"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.chunk_target_tokens > self.chunk_max_tokens:
            raise ValueError("chunk_target_tokens must not exceed chunk_max_tokens")
        if self.chunk_overlap_tokens >= self.chunk_target_tokens:
            raise ValueError("chunk_overlap_tokens must be smaller than chunk_target_tokens")
        if self.reranker == "cross-encoder" and not self.cross_encoder_dir:
            raise ValueError("reranker 'cross-encoder' needs cross_encoder_dir (a folder with model.onnx)")
        if self.embedder == "openai" and not (self.embed_url and self.embed_model):
            raise ValueError("embedder 'openai' needs embed_url and embed_model")
        return self

    def provider_configs(self) -> list[ProviderConfig]:
        """Return the configured LLM providers in fallback order: the archivist.toml chain, else the one
        ARCHIVIST_LLM_* names, else none."""
        if self.llm.providers:
            return list(self.llm.providers)
        if not self.llm_url:
            return []
        if not self.llm_model:
            raise UsageError("ARCHIVIST_LLM_URL is set but ARCHIVIST_LLM_MODEL is not")
        return [
            ProviderConfig(
                name="default",
                kind="openai",
                base_url=self.llm_url,
                model=self.llm_model,
                timeout_s=self.llm_timeout_s,
                max_retries=self.llm_max_retries,
            )
        ]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Return the sources in priority order: explicit arguments, environment, archivist.toml."""
        return (init_settings, env_settings, _TomlSource(settings_cls))


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the `[archivist]` table (or top-level keys) of `archivist.toml` or `$ARCHIVIST_CONFIG`."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = Path(os.environ.get("ARCHIVIST_CONFIG", "archivist.toml"))
        if not path.is_file():
            if "ARCHIVIST_CONFIG" in os.environ:
                raise UsageError(f"ARCHIVIST_CONFIG names {path}, which does not exist")
            return {}
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{path}: not valid TOML: {exc}") from exc
        table = data.get("archivist", data)
        values = {k: v for k, v in table.items() if not isinstance(v, dict | list)}
        if isinstance(data.get("llm"), dict):
            values["llm"] = data["llm"]
        return values


def load_settings(**overrides: Any) -> Settings:
    """Return settings from the environment and config file, with explicit overrides on top."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        where = ".".join(str(p) for p in first["loc"])
        if first["loc"][:1] == ("llm",):
            # As the user wrote it in archivist.toml: [[llm.providers]] 0.kind, [llm.prices] "gpt-*"
            path = os.environ.get("ARCHIVIST_CONFIG", "archivist.toml")
            section, rest = (str(first["loc"][1]) if len(first["loc"]) > 1 else ""), first["loc"][2:]
            shown = {"providers": "[[llm.providers]]", "prices": "[llm.prices]"}.get(section, "[llm]")
            detail = ".".join(str(p) for p in rest)
            raise UsageError(f"{path}: {shown} {detail}: {message}".replace("  ", " ")) from exc
        raise UsageError(f"invalid setting {where}: {message}" if where else f"invalid settings: {message}") from exc
