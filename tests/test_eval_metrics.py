"""Ranking metrics checked against pytrec_eval (trec_eval itself) and by hand; paired significance tests."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import pytrec_eval

from archivist.evals.metrics import (
    DEFAULT_METRICS,
    Qrels,
    Run,
    doc_scores_from_chunks,
    evaluate,
    mean_metrics,
    parse_metric,
)
from archivist.evals.significance import compare
from archivist.types import UsageError

#: Our metric name -> the trec_eval measure that must give the same value.
TREC_MEASURES = {
    "ndcg@10": "ndcg_cut_10",
    "ndcg@5": "ndcg_cut_5",
    "ndcg@100": "ndcg_cut_100",
    "recall@10": "recall_10",
    "recall@100": "recall_100",
    "precision@10": "P_10",
    "precision@100": "P_100",
    "map@100": "map_cut_100",
    "map@10": "map_cut_10",
}
MRR_CUTOFFS = (1, 10, 100)


def random_case(seed: int) -> tuple[Run, Qrels]:
    """Return a random run and graded qrels with every awkward case trec_eval has an opinion on."""
    rng = np.random.default_rng(seed)
    # Unpadded numbers, so that lexicographic order ("d9" > "d10") differs from numeric order.
    pool = [f"d{j}" for j in range(300)] + [f"é{j}" for j in range(100)]  # strcmp order is UTF-8 byte order
    run: Run = {}
    qrels: Qrels = {}
    for q in range(60):
        qid = f"q{q}"
        kind = rng.integers(0, 10)
        if kind != 0:  # one query in ten has no judgments at all, and may still be in the run
            judged = rng.choice(pool, size=int(rng.integers(1, 40)), replace=False)
            # one query in ten is judged with nothing relevant (only grade 0)
            grades = (
                np.zeros(len(judged), int) if kind == 1 else rng.choice([0, 1, 2], size=len(judged), p=[0.5, 0.3, 0.2])
            )
            qrels[qid] = {str(d): int(g) for d, g in zip(judged, grades, strict=True)}
        if kind == 2:
            continue  # judged but missing from the run
        retrieved = rng.choice(pool, size=int(rng.integers(0, 300)), replace=False)
        # A coarse score grid makes ties common, including across every cutoff.
        scores = np.round(rng.normal(size=len(retrieved)), int(rng.integers(0, 3)))
        if judged_here := qrels.get(qid):
            # Score some judged docs higher, so that metrics are not all near zero.
            boost = {d for d in judged_here if rng.random() < 0.5}
            scores = np.where([str(d) in boost for d in retrieved], scores + 1.0, scores)
        if kind == 3:
            # Distinct as doubles, tied as the float32 that trec_eval keeps.
            scores = scores + rng.integers(0, 3, size=len(retrieved)) * 1e-9
        run[qid] = {str(d): float(s) for d, s in zip(retrieved, scores, strict=True)}
    run["not-in-qrels"] = {"d1": 1.0}
    return run, qrels


def trec_order(scores: dict[str, float]) -> list[str]:
    """Return doc ids in trec_eval's order, written independently: float32 score descending, then id descending."""
    return [d for d, _ in sorted(scores.items(), key=lambda kv: (float(np.float32(kv[1])), kv[0]), reverse=True)]


@pytest.mark.parametrize("seed", range(8))
def test_every_metric_matches_pytrec_eval_per_query(seed: int) -> None:
    run, qrels = random_case(seed)
    metrics = [*TREC_MEASURES, *(f"mrr@{k}" for k in MRR_CUTOFFS), "hit_rate@10", "hit_rate@1"]
    ours = evaluate(run, qrels, metrics)

    evaluable = {q for q, judged in qrels.items() if any(g > 0 for g in judged.values())}
    assert set(ours) == evaluable
    assert any(not any(judged.values()) for judged in qrels.values()), "case lacks a query with only rel=0"
    assert evaluable - set(run), "case lacks a judged query missing from the run"

    nonempty_run = {q: docs for q, docs in run.items() if docs}
    nonempty_qrels = {q: judged for q, judged in qrels.items() if judged}
    theirs = pytrec_eval.RelevanceEvaluator(nonempty_qrels, set(TREC_MEASURES.values())).evaluate(nonempty_run)
    rr = pytrec_eval.RelevanceEvaluator(nonempty_qrels, {"recip_rank"})
    truncated = {
        k: rr.evaluate({q: {d: docs[d] for d in trec_order(docs)[:k]} for q, docs in nonempty_run.items()})
        for k in MRR_CUTOFFS
    }

    checked = 0
    for qid in evaluable:
        got = ours[qid]
        if qid not in nonempty_run:
            assert got == dict.fromkeys(metrics, 0.0)
            continue
        for name, measure in TREC_MEASURES.items():
            assert got[name] == pytest.approx(theirs[qid][measure], abs=1e-9), (qid, name)
        for k in MRR_CUTOFFS:
            assert got[f"mrr@{k}"] == pytest.approx(truncated[k][qid]["recip_rank"], abs=1e-9), (qid, k)
        assert got["hit_rate@10"] == float(theirs[qid]["P_10"] > 0)
        assert got["hit_rate@1"] == float(truncated[1][qid]["recip_rank"] > 0)
        checked += 1
    assert checked >= 30


def test_hand_computed_graded_example() -> None:
    qrels = {"q": {"a": 2, "b": 1, "c": 0}}
    run = {"q": {"a": 0.1, "b": 0.9, "c": 0.5}}  # ranked b (1), c (0), a (2)
    got = evaluate(run, qrels)["q"]
    dcg = 1 / math.log2(2) + 0 + 2 / math.log2(4)  # linear gain, log2(rank + 1) discount
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert got["ndcg@10"] == pytest.approx(dcg / idcg, abs=1e-12)
    assert got["ndcg@10"] == pytest.approx(0.7601875334, abs=1e-9)
    assert got["recall@10"] == 1.0
    assert got["precision@10"] == pytest.approx(0.2)  # two relevant, divided by 10 though only 3 retrieved
    assert got["mrr@10"] == 1.0
    assert got["map@100"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert got["hit_rate@10"] == 1.0
    assert set(got) == set(DEFAULT_METRICS)


def test_cutoffs_and_ties() -> None:
    qrels = {"q": {"d10": 1, "x": 3}}
    # Equal scores: trec_eval ranks the larger id first, and "d9" > "d10" as strings.
    run = {"q": {"d9": 1.0, "d10": 1.0}}
    got = evaluate(run, qrels, ["mrr@10", "mrr@1", "recall@1", "recall@2", "ndcg@2", "hit_rate@1"])["q"]
    assert got["mrr@10"] == 0.5
    assert got["mrr@1"] == 0.0
    assert got["recall@1"] == 0.0
    assert got["recall@2"] == 0.5
    assert got["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (3 + 1 / math.log2(3)))
    assert got["hit_rate@1"] == 0.0


def test_query_selection() -> None:
    qrels = {"judged": {"a": 1}, "missing": {"a": 2, "b": 0}, "only-zero": {"a": 0}, "empty": {}}
    run = {"judged": {"a": 0.3}, "only-zero": {"a": 1.0}, "empty": {"a": 1.0}, "unjudged": {"a": 1.0}}
    got = evaluate(run, qrels, ["ndcg@10", "recall@100"])
    assert got == {
        "judged": {"ndcg@10": 1.0, "recall@100": 1.0},
        "missing": {"ndcg@10": 0.0, "recall@100": 0.0},
    }
    assert evaluate({"judged": {}}, qrels, ["map@10"])["judged"] == {"map@10": 0.0}
    assert mean_metrics(got) == {"ndcg@10": 0.5, "recall@100": 0.5}


def test_metric_names() -> None:
    assert parse_metric("ndcg@10") == ("ndcg", 10)
    assert parse_metric("hit_rate@1") == ("hit_rate", 1)
    assert parse_metric("MAP@100") == ("map", 100)
    for bad in ("ndcg", "ndcg@0", "ndcg@-1", "ndcg@ten", "ndcg@10@2", "P@10", "recall@", "@10", ""):
        with pytest.raises(UsageError, match="ndcg@k"):
            parse_metric(bad)
    with pytest.raises(UsageError):
        evaluate({}, {"q": {"a": 1}}, ["ndcg@10", "bogus@3"])
    with pytest.raises(UsageError):
        evaluate({}, {"q": {"a": 1}}, [])
    assert evaluate({}, {"q": {"a": 1}}, "recall@5") == {"q": {"recall@5": 0.0}}


def test_nan_scores_are_refused() -> None:
    with pytest.raises(UsageError, match="NaN"):
        evaluate({"q": {"a": math.nan}}, {"q": {"a": 1}})


def test_mean_metrics() -> None:
    assert mean_metrics({}) == {}
    assert mean_metrics({"a": {"m@1": 1.0}, "b": {"m@1": 0.0}, "c": {"m@1": 0.5}}) == {"m@1": 0.5}
    with pytest.raises(UsageError):
        mean_metrics({"a": {"x@1": 1.0}, "b": {"y@1": 0.0}})


def test_doc_scores_from_chunks_keeps_each_docs_best_chunk() -> None:
    hits = [("a", 0.2), ("b", 0.5), ("a", 0.7), ("a", 0.1), ("c", -3.0), ("c", -1.0)]
    assert doc_scores_from_chunks(hits) == {"a": 0.7, "b": 0.5, "c": -1.0}
    assert doc_scores_from_chunks(iter(())) == {}


def test_float32_score_ties_match_pytrec_eval() -> None:
    # Distinct doubles that trec_eval, storing scores as float32, sees as equal: the doc id then decides.
    run = {"q": {"a": 0.1 + 0.2, "b": 0.3, "c": 1.0 + 1e-9, "d": 1.0, "e": 1.0 + 1e-6}}
    qrels = {"q": {"a": 1, "d": 2, "e": 0}}
    got = evaluate(run, qrels, ["ndcg@10", "map@10", "mrr@10"])["q"]
    theirs = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "map_cut_10", "recip_rank"}).evaluate(run)["q"]
    assert got["mrr@10"] == theirs["recip_rank"] == 0.5  # e, then d (over c); ...then b over a
    assert got["ndcg@10"] == pytest.approx(theirs["ndcg_cut_10"], abs=1e-12)
    assert got["map@10"] == pytest.approx(theirs["map_cut_10"], abs=1e-12)
    assert got["map@10"] == pytest.approx((1 / 2 + 2 / 5) / 2)


# --- significance -------------------------------------------------------------------------------------------------


def per_query(values: list[float], metric: str = "ndcg@10") -> dict[str, dict[str, float]]:
    return {f"q{i}": {metric: v} for i, v in enumerate(values)}


def test_identical_runs() -> None:
    a = per_query(np.random.default_rng(1).random(40).tolist())
    c = compare(a, a, "ndcg@10")
    assert c.p_value == 1.0
    assert c.delta == 0.0
    assert (c.ci_low, c.ci_high) == (0.0, 0.0)
    assert (c.n, c.wins, c.losses, c.ties) == (40, 0, 0, 40)
    assert c.mean_a == c.mean_b


def test_uniformly_better_run_is_significant() -> None:
    base = np.random.default_rng(2).random(50) * 0.7
    c = compare(per_query(base.tolist()), per_query((base + 0.2).tolist()), "ndcg@10")
    assert c.p_value < 0.01
    assert c.p_value == pytest.approx(1 / 10_001)  # no sign flip is as extreme as the observed one
    assert 0 < c.ci_low <= c.delta <= c.ci_high
    assert c.delta == pytest.approx(0.2)
    assert (c.wins, c.losses, c.ties) == (50, 0, 0)


def test_tiny_noisy_difference_is_not_significant() -> None:
    base = np.random.default_rng(3).random(100) * 0.4 + 0.3
    noise = np.where(np.arange(100) % 2 == 0, 0.25, -0.25) + 0.002
    c = compare(per_query(base.tolist()), per_query((base + noise).tolist()), "ndcg@10")
    assert c.p_value > 0.05
    assert c.ci_low < 0 < c.ci_high
    assert c.delta == pytest.approx(0.002)


def test_randomization_p_value_matches_exact_enumeration() -> None:
    diff = np.array([0.3, 0.1, -0.05, 0.2, 0.15, -0.1, 0.25, 0.05, 0.0, 0.12])
    observed = abs(diff.sum())
    signs = np.array(list(itertools.product((1, -1), repeat=len(diff))))
    exact = float((np.abs(signs @ diff) >= observed - 1e-12).mean())
    a = per_query([0.5] * len(diff))
    c = compare(a, per_query((0.5 + diff).tolist()), "ndcg@10", trials=40_000, seed=7)
    assert c.p_value == pytest.approx(exact, abs=0.006)
    assert (c.wins, c.losses, c.ties) == (7, 2, 1)


def test_bootstrap_ci_matches_normal_theory_for_many_queries() -> None:
    diff = np.random.default_rng(6).normal(0.05, 0.2, size=400)
    c = compare(per_query([0.0] * 400), per_query(diff.tolist()), "ndcg@10", trials=20_000)
    half_width = 1.96 * diff.std() / math.sqrt(len(diff))  # the mean of 400 draws is close to normal
    assert (c.ci_high - c.ci_low) / 2 == pytest.approx(half_width, rel=0.05)
    assert (c.ci_high + c.ci_low) / 2 == pytest.approx(diff.mean(), abs=0.1 * half_width)


def test_pairing_counts_and_errors() -> None:
    a = {"q1": {"m@1": 0.5}, "q2": {"m@1": 0.5}, "q3": {"m@1": 0.5}, "only-a": {"m@1": 1.0}}
    b = {"q1": {"m@1": 0.7}, "q2": {"m@1": 0.2}, "q3": {"m@1": 0.5}, "only-b": {"m@1": 0.0}}
    c = compare(a, b, "m@1")
    assert (c.n, c.wins, c.losses, c.ties) == (3, 1, 1, 1)
    assert c.mean_a == pytest.approx(0.5)  # over the paired queries only
    assert c.mean_b == pytest.approx(1.4 / 3)
    assert c.delta == pytest.approx(c.mean_b - c.mean_a)
    swapped = compare(b, a, "m@1")
    assert swapped.delta == pytest.approx(-c.delta)
    assert (swapped.wins, swapped.losses, swapped.p_value) == (c.losses, c.wins, c.p_value)
    with pytest.raises(UsageError, match="no query in common"):
        compare({"x": {"m@1": 1.0}}, {"y": {"m@1": 1.0}}, "m@1")
    with pytest.raises(UsageError, match="missing"):
        compare(a, b, "ndcg@10")
    with pytest.raises(UsageError):
        compare(a, b, "m@1", trials=0)


def test_deterministic_given_seed() -> None:
    rng = np.random.default_rng(4)
    a = per_query(rng.random(30).tolist())
    b = per_query(rng.random(30).tolist())
    assert compare(a, b, "ndcg@10", seed=11) == compare(dict(reversed(a.items())), b, "ndcg@10", seed=11)
    assert compare(a, b, "ndcg@10", seed=11) != compare(a, b, "ndcg@10", seed=12)


def test_answer_runs_pair_only_the_questions_that_have_the_metric() -> None:
    # An answer run mixes answerable questions (gold metrics) with unanswerable ones (refusal only).
    a = {"q1": {"span": 1.0, "refused": 0.0}, "q2": {"span": 0.0, "refused": 0.0}, "foreign:x": {"refused": 1.0}}
    b = {"q1": {"span": 1.0, "refused": 0.0}, "q2": {"span": 1.0, "refused": 0.0}, "foreign:x": {"refused": 0.0}}
    c = compare(a, b, "span")
    assert (c.n, c.wins, c.losses, c.delta) == (2, 1, 0, 0.5)
    assert compare(a, b, "refused").n == 3
