"""Ranking metrics per query and averaged, computed exactly as trec_eval (and so pytrec_eval and BEIR) does.

Conventions shared by every metric, all of them trec_eval's:

* A document is relevant when its qrels grade is > 0 (trec_eval's default ``-l 1``); documents in the run but
  not in the qrels are simply not relevant.
* The run is ranked by score descending, ties broken by document id in *descending* lexicographic order.
  trec_eval keeps scores as 32-bit floats, so scores that are equal once rounded to float32 are tied.
* Only queries with at least one relevant document are evaluated; such a query missing from the run scores 0
  on every metric (trec_eval ``-c``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from archivist.types import UsageError

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]

DEFAULT_METRICS = ("ndcg@10", "recall@10", "recall@100", "precision@10", "mrr@10", "map@100", "hit_rate@10")
METRIC_NAMES = ("ndcg", "recall", "precision", "mrr", "map", "hit_rate")

FloatArray = npt.NDArray[np.float64]


def parse_metric(name: str) -> tuple[str, int]:
    """Return (metric, cutoff) for a name like "ndcg@10"; raise UsageError if it is not one we compute."""
    base, sep, cutoff = name.strip().lower().partition("@")
    if not sep or base not in METRIC_NAMES or not cutoff.isdigit() or int(cutoff) < 1:
        valid = ", ".join(f"{m}@k" for m in METRIC_NAMES)
        raise UsageError(f"unknown metric {name!r}: expected one of {valid} with k a positive integer")
    return base, int(cutoff)


def evaluate(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> dict[str, dict[str, float]]:
    """Return {query id: {metric: value}} for every query with a relevant document in the qrels."""
    if isinstance(metrics, str):
        metrics = (metrics,)  # a lone "ndcg@10" would otherwise be read as its characters
    parsed = {name: parse_metric(name) for name in metrics}
    if not parsed:
        raise UsageError("no metrics to evaluate")
    depth = max(k for _, k in parsed.values())

    relevant = {q: {d: rel for d, rel in judged.items() if rel > 0} for q, judged in qrels.items()}
    qids = [q for q, rels in relevant.items() if rels]
    # Every metric here depends only on where the relevant docs rank, so rather than sort each run we place its
    # relevant docs: `ranked` holds the grade found at each rank up to `depth`, `ideal` the best possible grades.
    ranked = np.zeros((len(qids), depth))
    ideal = np.zeros((len(qids), depth))
    num_rel = np.zeros(len(qids))
    rows: list[int] = []
    columns: list[int] = []
    grades: list[int] = []
    # Scores beyond float32's range become infinite, as they do in trec_eval: not worth a warning.
    with np.errstate(over="ignore"):
        for row, qid in enumerate(qids):
            rels = relevant[qid]
            best = sorted(rels.values(), reverse=True)[:depth]
            num_rel[row] = len(rels)
            ideal[row, : len(best)] = best
            for rank, grade in _relevant_ranks(run.get(qid, {}), rels):
                if rank <= depth:
                    rows.append(row)
                    columns.append(rank - 1)
                    grades.append(grade)
    ranked[np.array(rows, dtype=np.intp), np.array(columns, dtype=np.intp)] = grades

    values = {name: _metric(ranked, ideal, num_rel, base, k) for name, (base, k) in parsed.items()}
    return {qid: {name: float(column[row]) for name, column in values.items()} for row, qid in enumerate(qids)}


def mean_metrics(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Return {metric: mean over queries} of per-query values as `evaluate` returns them ({} for no queries)."""
    if not per_query:
        return {}
    names = list(next(iter(per_query.values())))
    for qid, values in per_query.items():
        if set(values) != set(names):
            raise UsageError(f"query {qid!r} has metrics {sorted(values)}, expected {sorted(names)}")
    return {name: math.fsum(v[name] for v in per_query.values()) / len(per_query) for name in names}


def doc_scores_from_chunks(hits: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Return {doc id: score of its best chunk} from (doc id, chunk score) pairs (MaxP aggregation)."""
    best: dict[str, float] = {}
    for doc, score in hits:
        if doc not in best or score > best[doc]:
            best[doc] = score
    return best


def _relevant_ranks(scores: Mapping[str, float], relevant: Mapping[str, int]) -> list[tuple[int, int]]:
    """Return (rank from 1, grade) of each relevant doc in the run, ranked as trec_eval ranks the run."""
    retrieved = [(doc, grade) for doc, grade in relevant.items() if doc in scores]
    if not retrieved:
        return []
    # float32 because trec_eval stores scores so: doubles a rounding apart tie there, and the doc id decides.
    values = np.fromiter(scores.values(), dtype=np.float32, count=len(scores))
    ordered = np.sort(values)
    if np.isnan(ordered[-1]):  # NaNs sort last
        raise UsageError("run has a NaN score; scores must be comparable numbers")
    targets = np.array([scores[doc] for doc, _ in retrieved], dtype=np.float32)
    below_or_tied = np.searchsorted(ordered, targets, side="right")
    tied = below_or_tied - np.searchsorted(ordered, targets, side="left")
    ranks: list[int] = (len(values) - below_or_tied + 1).tolist()
    if (tied > 1).any():
        # Among equal scores trec_eval puts the larger doc id first.
        docs = list(scores)
        for i, (doc, _) in enumerate(retrieved):
            if tied[i] > 1:
                ranks[i] += sum(docs[j] > doc for j in np.flatnonzero(values == targets[i]).tolist())
    return [(rank, grade) for rank, (_, grade) in zip(ranks, retrieved, strict=True)]


def _metric(ranked: FloatArray, ideal: FloatArray, num_rel: FloatArray, base: str, k: int) -> FloatArray:
    """Return one metric at cutoff k for every query (row) of the graded-relevance matrices."""
    # Every row has a relevant doc (evaluate skips other queries), so num_rel and the ideal DCG are never 0.
    grades = ranked[:, :k]
    relevant = grades > 0
    hits = relevant.sum(axis=1).astype(np.float64)
    value: FloatArray
    if base == "ndcg":
        discount = 1.0 / np.log2(np.arange(2, k + 2))  # linear gain (the grade itself), as trec_eval's ndcg_cut
        value = (grades @ discount) / (ideal[:, :k] @ discount)
    elif base == "recall":
        value = hits / num_rel
    elif base == "precision":
        value = hits / k  # trec_eval's P_k: divided by k even when fewer than k docs were retrieved
    elif base == "hit_rate":
        value = (hits > 0).astype(np.float64)
    elif base == "mrr":
        first = relevant.argmax(axis=1)
        value = np.where(relevant.any(axis=1), 1.0 / (first + 1), 0.0)
    elif base == "map":
        precision_at_hits = np.where(relevant, np.cumsum(relevant, axis=1) / np.arange(1, k + 1), 0.0)
        value = precision_at_hits.sum(axis=1) / num_rel
    else:
        raise AssertionError(f"unhandled metric {base!r}")  # parse_metric admits only the names above
    return value
