"""Answer evaluation: ask a QA dataset's questions of its own (cached) store, score answers, citations, refusal."""

from __future__ import annotations

import json
import re
import string
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from archivist.answer.answerer import Answer
from archivist.answer.verify import strip_markers
from archivist.app import Archivist
from archivist.config import Settings
from archivist.evals.datasets import Dataset, read_queries
from archivist.evals.judge import DEFAULT_SAMPLES, DEFAULT_TEMPERATURE, FaithfulnessJudge, Judgment, judge_metrics
from archivist.evals.retrieval import RetrievalEvalConfig, corpus_id, eval_store_url, fingerprint, run_header
from archivist.llm.gateway import Gateway
from archivist.types import UsageError

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class AnswerEvalConfig:
    """What to run: evidence depth, how many questions, where unanswerable questions come from."""

    k: int = 12
    #: answerable questions asked (evenly spaced over the sorted ids); None = all
    limit: int | None = None
    #: another dataset whose questions are asked of this corpus, as unanswerable ones
    unanswerable: Path | None = None
    unanswerable_limit: int = 100
    #: also ask this many answerable questions with their gold document removed from the evidence
    gold_removed: int = 0
    #: (answerable, unanswerable) counts of another run whose questions this one must not ask: with (400, 200),
    #: none of the questions `--limit 400 --unanswerable-limit 200` asks (tuning on data a report never sees)
    leave_out: tuple[int, int] | None = None
    #: None: the answerer's own (the `refusal_threshold` setting, else the calibrated default)
    refusal_threshold: float | None = None
    #: False: use the store as it is (no ingest) and ask only questions whose gold documents it holds
    ingest: bool = True
    tag: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: faithfulness by LLM-as-judge: None = on when a model is configured, False = off, True = required
    judge: bool | None = None
    judge_samples: int = DEFAULT_SAMPLES
    judge_temperature: float = DEFAULT_TEMPERATURE


@dataclass(frozen=True, slots=True)
class Gold:
    """A question's gold answer texts and gold documents."""

    answers: tuple[str, ...]
    documents: frozenset[str]


def read_answers(path: Path) -> dict[str, list[str]]:
    """Return {query id: gold answer texts} from a dataset's `answers.jsonl`."""
    out: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                answers = row["answers"]
                out[str(row["query_id"])] = [answers] if isinstance(answers, str) else [str(a) for a in answers]
            except (ValueError, KeyError, TypeError) as exc:
                raise UsageError(f"{path}:{lineno}: not an answer record ({exc})") from exc
    return out


def spread(ids: Sequence[str], limit: int | None) -> list[str]:
    """Return `limit` ids evenly spaced over the sorted ids (all of them when limit is None or larger)."""
    ordered = sorted(ids)
    if limit is None or limit >= len(ordered):
        return ordered
    step = len(ordered) / limit
    return [ordered[int(i * step)] for i in range(limit)]


def _left(ids: Sequence[str], left_out: int | None) -> list[str]:
    """Return the ids a run asking `spread(ids, left_out)` of them does not ask (all of them when None or 0)."""
    if not left_out:
        return list(ids)
    taken = set(spread(ids, left_out))
    return [q for q in ids if q not in taken]


def normalize(text: str) -> str:
    """Return SQuAD-normalized text: lowercase, no punctuation or articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    """Return the SQuAD token F1 between a prediction and one gold answer."""
    p, g = normalize(prediction).split(), normalize(gold).split()
    common = sum((Counter(p) & Counter(g)).values())
    if not p or not g or common == 0:
        return float(p == g)
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def score_answerable(answer: Answer, gold: Gold) -> dict[str, float]:
    """Return one answerable question's metrics."""
    cited_docs = [corpus_id(c.source) for c in answer.citations]
    quotes = normalize(" ".join(c.quote for c in answer.citations))
    text = "" if answer.refused else strip_markers(answer.answer)
    return {
        "gold_doc_cited": float(any(d in gold.documents for d in cited_docs)),
        "span_in_cited": float(any(normalize(a) and normalize(a) in quotes for a in gold.answers)),
        "token_f1": max(token_f1(text, a) for a in gold.answers),
        "exact_match": float(any(normalize(text) == normalize(a) for a in gold.answers)),
        "citation_precision": float(np.mean([c.support >= 0.5 for c in answer.citations])) if answer.citations else 0.0,
        "gold_doc_citation_share": float(np.mean([d in gold.documents for d in cited_docs])) if cited_docs else 0.0,
        # How much text the citations quote: span_in_cited rises with it, so a gain must be read next to it.
        "quoted_words": float(sum(len(c.quote.split()) for c in answer.citations)),
        "support": answer.support,
        "refused": float(answer.refused),
        "evidence": answer.evidence,
    }


def refusal_pr(answerable: Sequence[bool], unanswerable: Sequence[bool]) -> dict[str, float]:
    """Return refusal precision and recall given which answerable and which unanswerable questions were refused."""
    true_pos = sum(unanswerable)
    refused = true_pos + sum(answerable)
    return {
        "precision": true_pos / refused if refused else 1.0,
        "recall": true_pos / len(unanswerable) if unanswerable else 0.0,
        "answerable_refused_rate": sum(answerable) / len(answerable) if answerable else 0.0,
    }


def run_answer_eval(
    settings: Settings,
    dataset: Dataset,
    config: AnswerEvalConfig,
    *,
    cache_dir: Path,
    progress: ProgressFn | None = None,
    judge_gateway: Gateway | None = None,
) -> dict[str, Any]:
    """Return an eval run record (kind "answers"): fingerprint with prompt version, metrics, per-question results.

    With a model configured (or `judge_gateway` given, e.g. a separate judge model), answered questions are also
    rated for faithfulness by LLM-as-judge, `config.judge_samples` times each; `record["judge"]` says whether it
    ran and, if not, why.
    """
    answers_file = dataset.path / "answers.jsonl"
    if not answers_file.is_file():
        raise UsageError(f"dataset {dataset.path} has no answers.jsonl: answer evals need gold answers")
    gold_answers = read_answers(answers_file)
    golds = {
        q: Gold(tuple(gold_answers[q]), frozenset(d for d, v in dataset.qrels[q].items() if v > 0))
        for q in dataset.queries
        if q in gold_answers
    }
    foreign: dict[str, str] = {}
    if config.unanswerable is not None:
        others = read_queries(config.unanswerable / "queries.jsonl")
        pool = _left(list(others), config.leave_out[1] if config.leave_out else None)
        foreign = {q: others[q] for q in spread(pool, config.unanswerable_limit)}
    store_url = eval_store_url(settings, dataset, cache_dir)
    with Archivist.from_settings(settings.model_copy(update={"store": store_url})) as app:
        t0 = time.perf_counter()
        added = embedded = 0
        if config.ingest:
            report = app.ingest(
                [dataset.corpus],
                sync=True,
                progress=(lambda p: progress("ingest", p.done, p.total)) if progress else None,
            )
            added, embedded = len(report.added), report.chunks_embedded
        else:
            stored = {corpus_id(s) for s in app.store.sources()}
            golds = {q: g for q, g in golds.items() if g.documents <= stored}
        ingest_s = time.perf_counter() - t0
        ids = spread(_left(list(golds), config.leave_out[0] if config.leave_out else None), config.limit)
        removed = spread(ids, config.gold_removed) if config.gold_removed else []
        threshold = {} if config.refusal_threshold is None else {"refusal_threshold": config.refusal_threshold}
        answerer = app.answerer(k=config.k, **threshold)
        judge, judge_reason = _judge(config, judge_gateway or app.gateway())
        answerer.answer("warm-up question")  # load the model and caches before timing anything
        per_query: dict[str, dict[str, float]] = {}
        judgments: dict[str, Judgment] = {}
        verifiers: Counter[str] = Counter()
        judge_s = 0.0
        latencies: list[float] = []
        jobs = [("answerable", q) for q in ids] + [("foreign", q) for q in foreign] + [("removed", q) for q in removed]
        for i, (kind, q) in enumerate(jobs):
            exclude = frozenset(f"{dataset.corpus}#{d}" for d in golds[q].documents) if kind == "removed" else None
            question = foreign[q] if kind == "foreign" else dataset.queries[q]
            q0 = time.perf_counter()
            answer = answerer.answer(question, exclude_documents=exclude or frozenset())
            latencies.append((time.perf_counter() - q0) * 1000)
            if kind == "answerable":
                per_query[q] = score_answerable(answer, golds[q])
                verifiers[answer.verification] += 1
                if judge is not None and not answer.refused:
                    j0 = time.perf_counter()
                    judgments[q] = judged = judge.judge(answer)
                    judge_s += time.perf_counter() - j0
                    if judged.mean is not None:
                        per_query[q]["judge_faithfulness"] = judged.mean
                        per_query[q]["judge_faithfulness_var"] = judged.variance
            else:
                per_query[f"{kind}:{q}"] = {"refused": float(answer.refused), "evidence": answer.evidence}
            if progress and (i % 10 == 0 or i == len(jobs) - 1):
                progress("questions", i + 1, len(jobs))
        cache = answerer.vectors
        hit_rate = cache.hits / (cache.hits + cache.misses) if cache.hits + cache.misses else 0.0
        prompt_versions = {"answer": answerer.prompt_version}
        if answerer.entails:
            prompt_versions["verify"] = answerer.verify_prompt.id
        fp = {
            **fingerprint(app, RetrievalEvalConfig(depth=config.k)),
            "answerer": answerer.fingerprint(),
            "prompt_versions": prompt_versions,
        }
        if judge is not None:
            fp["prompt_versions"]["judge"] = judge.prompt.id
            fp["judge"] = judge.fingerprint()
    metrics = _metrics(per_query, ids, list(foreign), removed)
    judge_record: dict[str, Any] = {"enabled": judge is not None, "reason": judge_reason}
    if judge is not None:
        scored = judge_metrics(judgments, judge.samples)
        metrics |= {k: round(v, 6) for k, v in scored.items()}
        judge_record |= {
            **judge.fingerprint(),
            "questions_judged": sum(1 for j in judgments.values() if j.scores),
            "samples_ok": sum(len(j.scores) for j in judgments.values()),
            "samples_failed": sum(len(j.errors) for j in judgments.values()),
            "samples_cached": sum(j.cached for j in judgments.values()),
            "errors": [e for j in judgments.values() for e in j.errors][:10],
            "seconds": round(judge_s, 2),
        }
        if not scored:
            judge_record["reason"] = "no answered question could be judged (see errors)"
    return {
        **run_header("answers", dataset, config.tag, fp),
        "config": {
            "k": config.k,
            "limit": config.limit,
            "unanswerable": str(config.unanswerable) if config.unanswerable else None,
            "unanswerable_limit": config.unanswerable_limit,
            "gold_removed": config.gold_removed,
            "leave_out": list(config.leave_out) if config.leave_out else None,
            "refusal_threshold": answerer.refusal_threshold,
            "judge_samples": config.judge_samples if judge is not None else None,
            **config.extra,
        },
        "metrics": metrics,
        "judge": judge_record,
        # which verifier decided each answerable question's claims ("similarity" under a model = the judge failed)
        "verification": dict(verifiers),
        "per_query": per_query,
        "queries": {q: dataset.queries[q] for q in ids} | {f"foreign:{q}": t for q, t in foreign.items()},
        "n_queries": len(ids),
        "timings": {
            "ingest_s": round(ingest_s, 2),
            "answer_p50_ms": round(float(np.percentile(latencies, 50)), 2) if latencies else None,
            "answer_p95_ms": round(float(np.percentile(latencies, 95)), 2) if latencies else None,
            # Sentence vectors are cached in the answerer: later questions over the same papers embed less.
            "sentence_vector_cache_hit_rate": round(hit_rate, 4),
        },
        "corpus": {"store": store_url, "ingested": config.ingest, "added": added, "chunks_embedded": embedded},
    }


def _judge(config: AnswerEvalConfig, gateway: Gateway) -> tuple[FaithfulnessJudge | None, str | None]:
    """Return the faithfulness judge for this run, or None and why there is none."""
    if config.judge is False:
        return None, "turned off (--no-judge)"
    if not gateway.routes:
        if config.judge:
            raise UsageError(
                "the faithfulness judge needs an LLM provider: set ARCHIVIST_LLM_URL and ARCHIVIST_LLM_MODEL, "
                "or [[llm.providers]] in archivist.toml"
            )
        return None, "no LLM configured: faithfulness by LLM-as-judge needs a model (ARCHIVIST_LLM_*)"
    return FaithfulnessJudge(gateway, samples=config.judge_samples, temperature=config.judge_temperature), None


def _metrics(
    per_query: dict[str, dict[str, float]], ids: Sequence[str], foreign: Sequence[str], removed: Sequence[str]
) -> dict[str, float]:
    names = ("gold_doc_cited", "span_in_cited", "token_f1", "exact_match", "refused")
    metrics = {n: float(np.mean([per_query[q][n] for q in ids])) if ids else 0.0 for n in names}
    answered = [q for q in ids if not per_query[q]["refused"]]
    # Of what was said (refusals cite nothing): citations that support their sentence, and cited claims supported.
    for name, source in (
        ("citation_precision", "citation_precision"),
        ("faithfulness", "support"),
        ("quoted_words", "quoted_words"),
    ):
        metrics[name] = float(np.mean([per_query[q][source] for q in answered])) if answered else 0.0
    refused_answerable = [bool(per_query[q]["refused"]) for q in ids]
    for label, group in (("foreign", foreign), ("removed", removed)):
        if group:
            pr = refusal_pr(refused_answerable, [bool(per_query[f"{label}:{q}"]["refused"]) for q in group])
            metrics[f"refusal_precision_{label}"] = pr["precision"]
            metrics[f"refusal_recall_{label}"] = pr["recall"]
    metrics["answerable_refused_rate"] = metrics.pop("refused")
    return {k: round(v, 6) for k, v in metrics.items()}
