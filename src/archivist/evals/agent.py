"""Agent evaluation: give the agent each task of a JSON Lines file, score its answer's facts, tools and citations.

A task file holds one task a line; its first line may instead be a header naming the corpus the tasks are about,
which is then ingested into the eval's own cached store (without a header the tasks run against the store given).
The agent is `Archivist.agent()` as it is configured: with a model it calls tools, without one it runs its
workflow; the harness reads only what every run records (status, result, totals, journaled steps).
"""

from __future__ import annotations

import hashlib
import json
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from archivist.agent.loop import MAX_TASK_CHARS, Agent, AgentLimits
from archivist.answer.verify import strip_markers
from archivist.app import Archivist
from archivist.config import Settings
from archivist.evals.datasets import Dataset
from archivist.evals.retrieval import RetrievalEvalConfig, fingerprint, run_header
from archivist.store.records import AgentRunRecord
from archivist.types import NotFoundError, UsageError

ProgressFn = Callable[[str, int, int], None]

#: the metrics `eval gate` checks on an agent baseline unless told otherwise
GATED_METRICS = ("success", "fact_recall", "citation_correctness")
#: the order metrics are listed in (the gold-source ones exist only when a task names gold sources)
METRIC_ORDER = (
    *GATED_METRICS,
    "citations_verified",
    "gold_source_cited",
    "gold_source_recall",
    "calls_ok",
    "steps",
    "tokens",
    "cost_usd",
)


class AgentTask(BaseModel):
    """One task: the request, the facts its answer must contain, and optional tool, step and source checks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    task: str = Field(min_length=1, max_length=MAX_TASK_CHARS)
    #: each fact a string, or a list of alternatives of which one must be present
    facts: list[str | list[str]] = Field(min_length=1)
    collection: str | None = None
    must_call: list[str] = []
    must_not_call: list[str] = []
    max_steps: int | None = Field(default=None, ge=1)
    gold_sources: list[str] = []

    @field_validator("task")
    @classmethod
    def _task_has_text(cls, task: str) -> str:
        if not task.strip():
            raise ValueError("the task is empty: say what the agent should do")
        return task

    @field_validator("facts")
    @classmethod
    def _facts_have_text(cls, facts: list[str | list[str]]) -> list[str | list[str]]:
        for i, fact in enumerate(facts):
            alternatives = [fact] if isinstance(fact, str) else fact
            if not alternatives or not all(normalize_fact(a) for a in alternatives):
                raise ValueError(f"fact {i + 1} is empty: give its text, or a non-empty list of alternatives")
        return facts

    @field_validator("must_call", "must_not_call", "gold_sources")
    @classmethod
    def _names_have_text(cls, names: list[str]) -> list[str]:
        if not all(n.strip() for n in names):
            raise ValueError("names cannot be empty")
        return names


class TaskFileHeader(BaseModel):
    """A task file's optional first line: the corpus its tasks are about (relative to the task file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: a folder or file ingested as `archivist ingest` does it; a BEIR dataset folder means its corpus.jsonl
    corpus: str = Field(min_length=1)
    #: only these records of a JSON Lines corpus (their `_id`), so a gate ingests a few documents, not all
    documents: list[str] | None = Field(default=None, min_length=1)


@dataclass(frozen=True, slots=True)
class TaskFile:
    """A parsed task file: its tasks, and the corpus to ingest (None: run against the store as it is)."""

    path: Path
    tasks: list[AgentTask]
    corpus: Path | None = None
    documents: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class AgentEvalConfig:
    """How to run the tasks: the step limit of a task that sets none, a free tag."""

    max_steps: int = AgentLimits().max_steps
    tag: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _error(exc: ValidationError) -> str:
    """Return a pydantic error as `field: message; …` (what a person fixing the line needs)."""
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"])
        message = str(e["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def read_tasks(path: Path) -> TaskFile:
    """Return the tasks of a JSON Lines task file; raise UsageError naming the line of the first bad one."""
    if not path.is_file():
        raise UsageError(f"no task file at {path}")
    tasks: list[AgentTask] = []
    header: TaskFileHeader | None = None
    lines: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise UsageError(f"{path}:{lineno}: not JSON ({exc})") from None
            if not isinstance(row, dict):
                raise UsageError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            try:
                if "task" not in row and "corpus" in row:
                    if tasks or header is not None:
                        raise UsageError(f"{path}:{lineno}: a header line (corpus) may only be the first line")
                    header = TaskFileHeader.model_validate(row)
                    continue
                task = AgentTask.model_validate(row)
            except ValidationError as exc:
                raise UsageError(f"{path}:{lineno}: {_error(exc)}") from None
            if task.id in lines:
                raise UsageError(f"{path}:{lineno}: task id {task.id!r} is already used on line {lines[task.id]}")
            lines[task.id] = lineno
            tasks.append(task)
    if not tasks:
        raise UsageError(f"{path}: no tasks (one JSON object a line with id, task and facts)")
    if header is None:
        return TaskFile(path, tasks)
    corpus = (path.parent / header.corpus).resolve()
    if corpus.is_dir() and (corpus / "corpus.jsonl").is_file():
        corpus = corpus / "corpus.jsonl"
    if not corpus.exists():
        raise UsageError(f"{path}: its corpus {header.corpus!r} is not there (looked for {corpus})")
    documents = tuple(header.documents) if header.documents else None
    if documents is not None and corpus.suffix != ".jsonl":
        raise UsageError(f"{path}: `documents` picks records of a JSON Lines corpus; {corpus} is not one")
    return TaskFile(path, tasks, corpus, documents)


def normalize_fact(text: str) -> str:
    """Return text as facts are matched: Unicode-normalized (NFKC), case-folded, every run of whitespace one space."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def fact_present(answer: str, fact: str | Sequence[str]) -> bool:
    """Return whether the answer contains the fact (or one of its alternatives), ignoring case and whitespace."""
    text = normalize_fact(answer)
    alternatives = [fact] if isinstance(fact, str) else fact
    return any(normalize_fact(a) in text for a in alternatives)


def source_matches(source: str, gold: str) -> bool:
    """Return whether a cited document's source is the gold one: equal, ending in `/GOLD`, or its `#id` part."""
    return source == gold or source.endswith("/" + gold) or source.endswith("#" + gold)


def _verified(citation: dict[str, Any], claims: list[dict[str, Any]]) -> bool:
    """Return whether a citation backs what the answer says: a supported claim cites it (or, for citations checked
    one by one, its own verdict or support says so)."""
    if claims:
        return any(c.get("supported") and citation.get("n") in (c.get("cited") or []) for c in claims)
    if "supported" in citation:
        return bool(citation["supported"])
    return float(citation.get("support", 0.0)) >= 0.5


def score_task(task: AgentTask, run: AgentRunRecord, called: Sequence[str], max_steps: int) -> dict[str, float]:
    """Return one task's metrics from its finished run and the tools it called, in order."""
    result = run.result or {}
    answer = strip_markers(str(result.get("answer") or ""))
    present = [fact_present(answer, f) for f in task.facts]
    citations: list[dict[str, Any]] = list(result.get("citations") or [])
    claims: list[dict[str, Any]] = list(result.get("claims") or [])
    verified = float(np.mean([_verified(c, claims) for c in citations])) if citations else 0.0
    steps = int(run.totals.get("steps", 0))
    calls_ok = set(task.must_call) <= set(called) and not set(task.must_not_call) & set(called)
    row = {
        "success": float(run.status == "succeeded" and all(present) and calls_ok and steps <= max_steps),
        "fact_recall": sum(present) / len(present),
        "citations_verified": verified,
        "calls_ok": float(calls_ok),
        "steps": float(steps),
        "tokens": float(run.totals.get("tokens", 0)),
        "cost_usd": float(run.totals.get("cost_usd", 0.0)),
    }
    gold_factor = 1.0
    if task.gold_sources:
        sources = [str(c.get("source", "")) for c in citations]
        cited = sum(any(source_matches(s, g) for s in sources) for g in task.gold_sources)
        row["gold_source_cited"] = float(cited > 0)
        row["gold_source_recall"] = cited / len(task.gold_sources)
        gold_factor = row["gold_source_cited"]
    row["citation_correctness"] = verified * gold_factor
    return row


def _corpus_file(tasks: TaskFile, cache_dir: Path) -> Path:
    """Return the path to ingest: the corpus, or the header's `documents` of it written once under `cache_dir`."""
    assert tasks.corpus is not None
    if tasks.documents is None:
        return tasks.corpus
    wanted = set(tasks.documents)
    kept: list[str] = []
    with tasks.corpus.open(encoding="utf-8") as f:
        for line in f:
            if line.strip() and str(json.loads(line).get("_id")) in wanted:
                kept.append(line if line.endswith("\n") else line + "\n")
    missing = wanted - {str(json.loads(x).get("_id")) for x in kept}
    if missing:
        raise UsageError(f"{tasks.path}: documents not in {tasks.corpus}: {', '.join(sorted(missing)[:5])}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    subset = cache_dir / f"agent-{tasks.path.stem}-corpus.jsonl"
    text = "".join(kept)
    # Rewrite only on change: the file's hash is part of incremental ingestion's bookkeeping.
    if not subset.exists() or subset.read_text(encoding="utf-8") != text:
        subset.write_text(text, encoding="utf-8")
    return subset


def agent_store_url(settings: Settings, tasks: TaskFile, cache_dir: Path) -> str:
    """Return the URL of a task file's own store (one per task file, corpus and embedding model)."""
    model = settings.embed_model if settings.embedder == "openai" else "minilm"
    where = hashlib.sha256(str(tasks.corpus).encode()).hexdigest()[:8]
    return f"sqlite:///{cache_dir / f'agent-{tasks.path.stem}-{where}-{model}.db'}"


def run_agent_eval(
    app: Archivist,
    tasks_path: Path,
    config: AgentEvalConfig,
    *,
    cache_dir: Path,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Return an eval run record (kind "agent"): each task given to the agent, its metrics, the aggregate metrics.

    A task file with a corpus header runs in its own cached store (ingested first); one without runs against
    `app`'s store. Runs are journaled in the store they ran against, like any agent run.
    """
    tasks = read_tasks(tasks_path)
    if tasks.corpus is None:
        return _evaluate(app, tasks, config, store_url=app.settings.store, ingest=None, progress=progress)
    corpus = _corpus_file(tasks, cache_dir)
    url = agent_store_url(app.settings, tasks, cache_dir)
    with Archivist.from_settings(app.settings.model_copy(update={"store": url})) as own:
        return _evaluate(own, tasks, config, store_url=url, ingest=corpus, progress=progress)


def _evaluate(
    app: Archivist,
    tasks: TaskFile,
    config: AgentEvalConfig,
    *,
    store_url: str,
    ingest: Path | None,
    progress: ProgressFn | None,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    added = embedded = 0
    if ingest is not None:
        report = app.ingest(
            [ingest], sync=True, progress=(lambda p: progress("ingest", p.done, p.total)) if progress else None
        )
        added, embedded = len(report.added), report.chunks_embedded
    ingest_s = time.perf_counter() - t0
    per_task: dict[str, dict[str, float]] = {}
    runs: dict[str, dict[str, Any]] = {}
    latencies: list[float] = []
    tool_names: set[str] = set()
    # Every task is checked before the first one runs: a bad one found halfway would waste what was spent so far.
    agents: dict[str | None, Agent] = {}
    for task in tasks.tasks:
        try:
            agent = agents[task.collection] = agents.get(task.collection) or app.agent(collection=task.collection)
        except NotFoundError as exc:
            raise UsageError(f"task {task.id!r}: {exc}") from None
        unknown = sorted((set(task.must_call) | set(task.must_not_call)) - set(agent.tools))
        if unknown:
            raise UsageError(
                f"task {task.id!r} names tools the agent does not have: {', '.join(unknown)} "
                f"(it has {', '.join(sorted(agent.tools))})"
            )
    for i, task in enumerate(tasks.tasks):
        agent = agents[task.collection]
        tool_names |= set(agent.tools)
        max_steps = task.max_steps or config.max_steps
        q0 = time.perf_counter()
        run = agent.start(task.task, AgentLimits(max_steps=max_steps))
        latency_ms = (time.perf_counter() - q0) * 1000
        latencies.append(latency_ms)
        called = [s.name for s in app.store.agent_steps(run.id) if s.kind == "tool"]
        per_task[task.id] = score_task(task, run, called, max_steps) | {"latency_ms": round(latency_ms, 2)}
        answer = str((run.result or {}).get("answer") or "")
        runs[task.id] = {
            "run_id": run.id,
            "status": run.status,
            "reason": run.reason,
            "tools_called": called,
            "answer": answer,
            "missing_facts": [f for f in task.facts if not fact_present(strip_markers(answer), f)],
        }
        if progress:
            progress("tasks", i + 1, len(tasks.tasks))
    answerer = app.answerer()
    fp = {
        **fingerprint(app, RetrievalEvalConfig(depth=answerer.k)),
        "answerer": answerer.fingerprint(),
        "agent": {
            # The same tasks measure different things with and without a model: a run says which it measured.
            "mode": "model" if app.gateway().routes else "workflow",
            "models": answerer.fingerprint()["models"],
            "tools": sorted(tool_names),
            "max_steps": config.max_steps,
        },
        "prompt_versions": {"answer": answerer.prompt_version},
    }
    dataset = Dataset(
        tasks.path.stem,
        tasks.path,
        "tasks",
        tasks.corpus or Path(store_url),
        {t.id: t.task for t in tasks.tasks},
        {},
    )
    totals = {
        "tokens": int(sum(r["tokens"] for r in per_task.values())),
        "cost_usd": round(sum(r["cost_usd"] for r in per_task.values()), 6),
        "steps": int(sum(r["steps"] for r in per_task.values())),
    }
    return {
        **run_header("agent", dataset, config.tag, fp),
        "config": {"max_steps": config.max_steps, **config.extra},
        "metrics": agent_metrics(per_task, latencies),
        "per_query": per_task,
        "queries": {t.id: t.task for t in tasks.tasks},
        "runs": runs,
        "n_queries": len(tasks.tasks),
        "totals": totals,
        "timings": {"ingest_s": round(ingest_s, 2), "tasks_s": round(sum(latencies) / 1000, 2)},
        "corpus": {
            "path": str(tasks.corpus) if tasks.corpus else None,
            "documents": len(tasks.documents) if tasks.documents else None,
            "store": store_url,
            "added": added,
            "chunks_embedded": embedded,
        },
    }


def _percentile(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2) if values else 0.0


def agent_metrics(per_task: dict[str, dict[str, float]], latencies: Sequence[float]) -> dict[str, float]:
    """Return the aggregate metrics: each per-task metric's mean over the tasks that have it, latency p50/p95."""
    names = [n for n in METRIC_ORDER if any(n in row for row in per_task.values())]
    metrics = {n: float(np.mean([row[n] for row in per_task.values() if n in row])) for n in names}
    metrics["latency_p50_ms"] = _percentile(latencies, 50)
    metrics["latency_p95_ms"] = _percentile(latencies, 95)
    return {k: round(v, 6) for k, v in metrics.items()}
