"""Golden question sets: `archivist eval golden SET --corpus DIR` asks each question of a corpus and scores the answer.

A golden set is a JSON Lines file written from the corpus by hand (evals/golden/docs.jsonl is the one over docs/):
answerable questions name the document (`source`), the span of it that answers them and the `facts` a correct
answer holds; unanswerable ones are on-topic questions the corpus does not answer. Per question:

- answerable: `answered` (not refused), `correct` (every fact inside the answer's cited quotes: the reader sees
  the answer in what is quoted, not only somewhere in the evidence), `source_cited` (the gold document is cited);
- unanswerable: `refused`.

Aggregates add the refusal rates of both kinds and refusal precision (refused questions that were unanswerable).
The corpus is ingested into its own cached store, as the agent eval's task files are.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from archivist.app import Archivist
from archivist.config import Settings
from archivist.evals.agent import fact_present, source_matches
from archivist.evals.answers import refusal_pr
from archivist.evals.datasets import Dataset
from archivist.evals.retrieval import RetrievalEvalConfig, fingerprint, run_header
from archivist.types import UsageError

ProgressFn = Callable[[str, int, int], None]
#: the per-question metrics, in the order tables show them
METRIC_ORDER = ("answered", "correct", "source_cited", "refused")
#: what `eval gate` checks on a golden baseline by default
GATED_METRICS = ("correct", "source_cited", "answered", "refused")


@dataclass(frozen=True, slots=True)
class GoldenQuestion:
    """One question of a golden set: answerable ones with their gold document and facts."""

    id: str
    question: str
    answerable: bool
    source: str = ""
    facts: tuple[str, ...] = ()


def read_golden(path: Path) -> list[GoldenQuestion]:
    """Return the questions of a golden set; raise UsageError naming the line of the first bad one."""
    if not path.is_file():
        raise UsageError(f"no golden set at {path}")
    out: list[GoldenQuestion] = []
    seen: set[str] = set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            answerable, facts = row["answerable"], row.get("facts", [])
            # A string "false" or a string of facts would pass a loose reading and score nonsense.
            if (
                not isinstance(answerable, bool)
                or not isinstance(facts, list)
                or not all(isinstance(f, str) and f for f in facts)
            ):
                raise TypeError("answerable must be true or false, facts a list of strings")
            q = GoldenQuestion(
                id=str(row["id"]),
                question=str(row["question"]),
                answerable=answerable,
                source=str(row.get("source", "")),
                facts=tuple(facts),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UsageError(f"{path}:{lineno}: not a golden question (id, question, answerable): {exc}") from None
        if q.answerable and (not q.source or not q.facts):
            raise UsageError(f"{path}:{lineno}: an answerable question needs its source and facts")
        if q.id in seen:
            raise UsageError(f"{path}:{lineno}: question id {q.id!r} is used twice")
        seen.add(q.id)
        out.append(q)
    if not out:
        raise UsageError(f"{path}: no questions")
    return out


def quoted_text(answer: dict[str, Any]) -> str:
    """Return the text an answer quotes from the documents: its citations' quotes, joined."""
    return " ".join(str(c.get("quote", "")) for c in answer.get("citations") or [])


def score_golden(question: GoldenQuestion, answer: dict[str, Any]) -> dict[str, float]:
    """Return one question's metrics from its answer (as `Answer.to_dict` gives it)."""
    refused = bool(answer.get("refused"))
    if not question.answerable:
        return {"refused": float(refused)}
    citations = list(answer.get("citations") or [])
    quoted = quoted_text(answer)
    return {
        "answered": float(not refused),
        "correct": float(not refused and all(fact_present(quoted, f) for f in question.facts)),
        "source_cited": float(any(source_matches(str(c.get("source", "")), question.source) for c in citations)),
    }


def golden_store_url(settings: Settings, path: Path, corpus: Path, cache_dir: Path) -> str:
    """Return the URL of a golden set's own store (one per set, corpus and embedding model)."""
    model = settings.embed_model if settings.embedder == "openai" else "minilm"
    where = hashlib.sha256(str(corpus.resolve()).encode()).hexdigest()[:8]
    return f"sqlite:///{cache_dir / f'golden-{path.stem}-{where}-{model}.db'}"


def golden_metrics(per_query: dict[str, dict[str, float]], latencies: list[float]) -> dict[str, float]:
    """Return each per-question metric's mean over the questions that have it, refusal rates and precision, and
    latency percentiles."""
    metrics = {
        n: float(np.mean([row[n] for row in per_query.values() if n in row]))
        for n in METRIC_ORDER
        if any(n in row for row in per_query.values())
    }
    answerable = [row["answered"] == 0.0 for row in per_query.values() if "answered" in row]
    unanswerable = [row["refused"] == 1.0 for row in per_query.values() if "refused" in row]
    pr = refusal_pr(answerable, unanswerable)
    metrics["answerable_refused"] = float(np.mean(answerable)) if answerable else 0.0
    metrics["refusal_precision"] = pr["precision"]
    metrics["refusal_recall"] = pr["recall"]
    metrics["latency_p50_ms"] = float(np.percentile(latencies, 50)) if latencies else 0.0
    metrics["latency_p95_ms"] = float(np.percentile(latencies, 95)) if latencies else 0.0
    return {k: round(v, 6) for k, v in metrics.items()}


def run_golden_eval(
    app: Archivist,
    path: Path,
    corpus: Path,
    *,
    tag: str | None = None,
    cache_dir: Path,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Return an eval run record (kind "golden"): each question asked of the corpus, its metrics, the aggregates."""
    questions = read_golden(path)
    if not corpus.exists():
        raise UsageError(f"no corpus at {corpus}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    url = golden_store_url(app.settings, path, corpus, cache_dir)
    with Archivist.from_settings(app.settings.model_copy(update={"store": url})) as own:
        t0 = time.perf_counter()
        report = own.ingest(
            [corpus], sync=True, progress=(lambda p: progress("ingest", p.done, p.total)) if progress else None
        )
        ingest_s = time.perf_counter() - t0
        answerer = own.answerer()
        per_query: dict[str, dict[str, float]] = {}
        answers: dict[str, dict[str, Any]] = {}
        latencies: list[float] = []
        for i, q in enumerate(questions):
            q0 = time.perf_counter()
            answer = answerer.answer(q.question).to_dict()
            latencies.append((time.perf_counter() - q0) * 1000)
            per_query[q.id] = score_golden(q, answer)
            answers[q.id] = {
                "refused": answer["refused"],
                "answer": answer["answer"],
                "evidence": answer.get("evidence"),
                "cited": [str(c.get("source", "")) for c in answer.get("citations") or []],
                "missing_facts": [f for f in q.facts if not fact_present(quoted_text(answer), f)],
            }
            if progress:
                progress("questions", i + 1, len(questions))
        fp = {**fingerprint(own, RetrievalEvalConfig(depth=answerer.k)), "answerer": answerer.fingerprint()}
    dataset = Dataset(path.stem, path, "golden", corpus, {q.id: q.question for q in questions}, {})
    return {
        **run_header("golden", dataset, tag, fp),
        "config": {"corpus": str(corpus)},
        "metrics": golden_metrics(per_query, latencies),
        "per_query": per_query,
        "queries": {q.id: q.question for q in questions},
        "answers": answers,
        "n_queries": len(questions),
        "timings": {"ingest_s": round(ingest_s, 2), "questions_s": round(sum(latencies) / 1000, 2)},
        "corpus": {"path": str(corpus), "store": url, "added": len(report.added)},
    }
