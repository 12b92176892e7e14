"""Train the learned-fusion model on training queries only (one or more datasets), with query-grouped K-fold CV.

    pip install lightgbm   # training only: inference (archivist.retrieve.learned) is pure numpy
    python benchmarks/train_fusion_model.py [--train scifact:train covidqa:dev] [--folds 5] [--variant all-residual]
                                            [--heldout covidqa:answers pubmedqa:all]
                                            [--out src/archivist/retrieve/models/fusion.json]

Splits: `train` is a dataset's own train split (SciFact's `queries_train.jsonl`); `dev` is every question
of a dataset without a train split EXCEPT the ones `archivist eval answers --limit 400` reports on
(`answers`, the same `spread` of ids), so the answer evaluation stays on questions no model was fitted to;
`all` is every test question (only for a dataset never trained on, as a held-out check).

Every train query runs through the hybrid retriever's candidate pool (dense top 300 and BM25 top
300, as `archivist eval retrieval` at depth 300 does), and the features of the top `RERANK_DEPTH`
chunks by z-score fusion are computed by the same code the search path uses
(`archivist.retrieve.learned.features`). Each variant below (docs/evaluation.md says in which order
they were added) is scored by 5-fold cross-validation over queries, against z-score fusion on the
same folds; then the chosen variant is trained on all train queries and written as a JSON tree
ensemble. Test queries are never read: report test figures once, with `archivist eval retrieval`,
after the model is fixed.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, console, datasets_dir, print_table, write_result

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.evals.answers import read_answers, spread
from archivist.evals.datasets import load_dataset
from archivist.evals.metrics import evaluate, mean_metrics
from archivist.evals.retrieval import corpus_id, eval_store_url
from archivist.evals.significance import compare
from archivist.retrieve.learned import (
    FEATURES,
    MODEL_FORMAT,
    MODEL_VERSION,
    TIE_BREAK,
    ensemble_from_dict,
    features,
    fused_zscore,
    lightgbm_trees,
)
from archivist.text.analyzer import Analyzer

POOL = 300  # candidates per retriever and chunk hits per query, as the eval runs at its default depth
RERANK_DEPTH = 100  # chunks (by z-score fusion) the model re-orders
SEED = 0
PARAMS: dict[str, Any] = {
    "objective": "lambdarank",
    "lambdarank_truncation_level": 20,
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "seed": SEED,
    "deterministic": True,
    "num_threads": 1,
    "verbosity": -1,
}
# +1: a higher value never lowers the score; -1: never raises it; 0: free. Without these constraints a
# tree ensemble can rank a chunk that is better on every signal below another (seen on a 4-document store).
MONOTONE = {
    "z_dense": 1,
    "z_bm25": 1,
    "z_doc_bm25": 1,
    "z_fused": 1,
    "cosine": 1,
    "title_coverage": 1,
    "text_coverage": 1,
    "doc_best_z_dense": 1,
    "rank_fused": -1,
    "rank_dense": -1,
    "gap_fused": 1,
    "gap_dense": 1,
}
MONOTONE_PARAMS = {
    **PARAMS,
    "monotone_constraints": [MONOTONE.get(f, 0) for f in FEATURES],
    "monotone_constraints_method": "intermediate",
}
NO_STRUCTURE = {"doc_chunks", "ordinal", "pool_chunks_per_doc"}  # depend on how a corpus is chunked
LEXICAL_EXTRA = {"title_coverage", "text_coverage"}
DOC_AGG = {"doc_best_z_dense", "doc_chunks"}


@dataclass(frozen=True)
class Variant:
    name: str
    dropped: frozenset[str]  # features held constant in training, so the model never splits on them
    rounds: int
    params: dict[str, Any]
    # Boosting starts from this weight times z_fused (0: from zero), so the trees learn a correction of
    # z-score fusion and, where they are flat (data unlike the training data), z-score order stands.
    residual: float = 0.0


VARIANTS = {
    v.name: v
    for v in (
        Variant("all", frozenset(), 300, PARAMS),
        Variant("all-small", frozenset(), 150, {**PARAMS, "num_leaves": 7}),
        Variant("no-structure", frozenset(NO_STRUCTURE), 300, PARAMS),
        Variant("scores-only", frozenset(NO_STRUCTURE | LEXICAL_EXTRA | DOC_AGG), 300, PARAMS),
        Variant("all-monotone", frozenset(), 300, MONOTONE_PARAMS),
        Variant("no-structure-monotone", frozenset(NO_STRUCTURE), 300, MONOTONE_PARAMS),
        Variant("all-residual", frozenset(), 300, PARAMS, residual=1.0),
        # all-residual lost 0.022 nDCG@10 on COVID-QA (long papers, ~37 chunks each): drop the two features
        # whose range depends on document length and chunking, which SciFact's abstracts never exercise.
        Variant("no-structure-residual", frozenset(NO_STRUCTURE), 300, PARAMS, residual=1.0),
        # Trained on SciFact train and COVID-QA dev at once: more capacity for two kinds of corpus.
        Variant("all-residual-large", frozenset(), 500, {**PARAMS, "num_leaves": 31}, residual=1.0),
    )
}


@dataclass
class QueryData:
    qid: str
    x: np.ndarray  # (head, features)
    head_docs: list[str]
    head_ids: list[int]
    tail_docs: list[str]  # the chunks after the head, in z-score order, down to POOL chunks
    tail_z: np.ndarray
    head_z: np.ndarray


ANSWER_EVAL_QUESTIONS = 400  # `archivist eval answers --limit 400`: these questions are never trained on


def load_split(spec: str, cache: Path) -> tuple[list[QueryData], dict[str, dict[str, int]]]:
    """Return the query data and qrels of a `dataset:split` spec (split: train, dev, answers or all)."""
    name, _, split = spec.partition(":")
    if split == "train":
        return extract(name, "train", cache)
    if split not in ("dev", "answers", "all"):
        raise SystemExit(f"unknown split in {spec!r}: use train, dev, answers or all")
    data, qrels = extract(name, "test", cache)
    if split == "all":
        return data, qrels
    golds = read_answers(datasets_dir() / name / "answers.jsonl")
    # `eval answers` spreads over the judged questions that have gold answers: the same ids here.
    reported = set(spread([q for q in golds if q in qrels], ANSWER_EVAL_QUESTIONS))
    keep = [d for d in data if (d.qid in reported) == (split == "answers")]
    return keep, qrels


def extract(dataset_name: str, split: str, cache: Path) -> tuple[list[QueryData], dict[str, dict[str, int]]]:
    """Return each judged query's head features and doc ids (cached on disk), and the qrels."""
    settings = load_settings()
    dataset = load_dataset(datasets_dir() / dataset_name, split, work_dir=cache)
    store = eval_store_url(settings, dataset, cache)
    cached = cache / f"fusion-features-{dataset_name}-{split}.pkl"
    qrels = {q: dict(r) for q, r in dataset.qrels.items()}
    if cached.exists():
        data: list[QueryData] = pickle.loads(cached.read_bytes())
        if [d.x.shape[1] for d in data[:1]] == [len(FEATURES)]:
            return data, qrels
    analyzer = Analyzer()
    out = []
    t0 = time.perf_counter()
    with Archivist.from_settings(settings.model_copy(update={"store": store, "candidates": POOL})) as app:
        app.ingest([dataset.corpus], sync=True)
        retriever = app.retriever()
        for qid in sorted(dataset.queries):
            if qid not in qrels:
                continue  # only judged queries are evaluated
            query = dataset.queries[qid]
            ids, scores = retriever.scored_candidates(query, POOL)
            zf = fused_zscore(scores)
            order = sorted(range(len(ids)), key=lambda i: (-zf[i], ids[i]))[:POOL]
            head, tail = order[:RERANK_DEPTH], order[RERANK_DEPTH:]
            chunks = app.store.get_chunks([ids[i] for i in order])
            head_scores = scores.subset(head)
            head_ids = [ids[i] for i in head]
            out.append(
                QueryData(
                    qid=qid,
                    x=features(query, head_ids, head_scores, chunks, analyzer),
                    head_docs=[corpus_id(chunks[ids[i]].source) for i in head],
                    head_ids=head_ids,
                    tail_docs=[corpus_id(chunks[ids[i]].source) for i in tail],
                    tail_z=np.array([zf[i] for i in tail]),
                    head_z=np.array([zf[i] for i in head]),
                )
            )
    console.print(f"extracted features of {len(out)} {split} queries in {time.perf_counter() - t0:.1f} s")
    cached.write_bytes(pickle.dumps(out))
    return out, qrels


def doc_run(d: QueryData, head_scores: np.ndarray) -> dict[str, float]:
    """Return document scores (best chunk) from head scores, the tail kept below in z-score order."""
    head_scores = head_scores + TIE_BREAK * d.head_z  # as learned_fusion does
    ranked = sorted(zip(d.head_ids, head_scores.tolist(), d.head_docs, strict=True), key=lambda t: (-t[1], t[0]))
    scores: dict[str, float] = {}
    for _, s, doc in ranked:
        scores.setdefault(doc, s)
    if len(d.tail_docs):
        floor = ranked[-1][1] - 1.0
        for doc, z in zip(d.tail_docs, d.tail_z.tolist(), strict=True):
            scores.setdefault(doc, floor - (float(d.tail_z[0]) - z))
    return scores


def design(data: list[QueryData], qrels: dict[str, dict[str, int]], variant: Variant) -> tuple[Any, Any, Any]:
    """Return the stacked feature matrix (dropped features zeroed), chunk labels and group sizes."""
    x = np.vstack([d.x for d in data])
    for name in variant.dropped:
        x[:, FEATURES.index(name)] = 0.0
    y = np.concatenate([[qrels[d.qid].get(doc, 0) for doc in d.head_docs] for d in data]).astype(np.float64)
    return x, np.maximum(y, 0), [len(d.head_docs) for d in data]


def fit(data: list[QueryData], qrels: dict[str, dict[str, int]], variant: Variant) -> Any:
    """Train a LightGBM LambdaMART booster on the given queries."""
    import lightgbm as lgb

    x, y, groups = design(data, qrels, variant)
    init = variant.residual * x[:, FEATURES.index("z_fused")] if variant.residual else None
    train = lgb.Dataset(x, y, group=groups, init_score=init, feature_name=list(FEATURES), free_raw_data=False)
    return lgb.train(variant.params, train, num_boost_round=variant.rounds)


def predict(booster: Any, variant: Variant, x: np.ndarray) -> np.ndarray:
    """Return the variant's scores: the trees' sum plus its starting point."""
    start = variant.residual * x[:, FEATURES.index("z_fused")] if variant.residual else 0.0
    return np.asarray(booster.predict(x) + start)


def table_rows(per_query: dict[str, dict[str, dict[str, float]]], qids: set[str], label: str) -> list[dict[str, Any]]:
    """Return one row per run over the given queries: nDCG@10, Recall@100, and the paired test vs z-score."""
    base = {q: m for q, m in per_query["zscore (default)"].items() if q in qids}
    rows = []
    for name, pq in per_query.items():
        sub = {q: m for q, m in pq.items() if q in qids}
        m = mean_metrics(sub)
        c = compare(base, sub, "ndcg@10")
        rows.append(
            {
                "queries": label,
                "variant": name,
                "ndcg@10": round(m["ndcg@10"], 4),
                "recall@100": round(m["recall@100"], 4),
                "delta": round(c.delta, 4),
                "ci95": f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}]",
                "p": round(c.p_value, 4),
            }
        )
    return rows


def cross_validate(
    data: list[QueryData], qrels: dict[str, dict[str, int]], folds: int, names: list[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """Return per-query metrics of z-score fusion and of each variant, cross-validated over the same folds."""
    metrics = ("ndcg@10", "recall@100")
    rng = np.random.default_rng(SEED)
    fold_of = rng.permutation(len(data)) % folds
    per_query: dict[str, dict[str, dict[str, float]]] = {
        "zscore (default)": evaluate({d.qid: doc_run(d, np.zeros(len(d.head_z))) for d in data}, qrels, metrics)
    }
    for variant in (VARIANTS[n] for n in names):
        run: dict[str, dict[str, float]] = {}
        t0 = time.perf_counter()
        for f in range(folds):
            booster = fit([d for d, k in zip(data, fold_of, strict=True) if k != f], qrels, variant)
            for d, k in zip(data, fold_of, strict=True):
                if k == f:
                    run[d.qid] = doc_run(d, predict(booster, variant, d.x))
        per_query[variant.name] = evaluate(run, qrels, metrics)
        console.print(f"{variant.name}: {folds}-fold CV in {time.perf_counter() - t0:.1f} s")
    return per_query


def held_out(
    booster: Any, variant: Variant, data: list[QueryData], qrels: dict[str, dict[str, int]]
) -> dict[str, dict[str, dict[str, float]]]:
    """Return per-query metrics of z-score fusion and of the trained model on queries it never saw."""
    metrics = ("ndcg@10", "recall@100")
    zscore = {d.qid: doc_run(d, np.zeros(len(d.head_z))) for d in data}
    learned = {d.qid: doc_run(d, predict(booster, variant, d.x)) for d in data}
    return {"zscore (default)": evaluate(zscore, qrels, metrics), variant.name: evaluate(learned, qrels, metrics)}


def export(booster: Any, variant: Variant, meta: dict[str, Any]) -> dict[str, Any]:
    """Return the model as an archivist tree-ensemble JSON object (numerical `<=` splits only)."""
    dump = booster.dump_model()
    if dump["feature_names"] != list(FEATURES):
        raise SystemExit(f"feature names differ: {dump['feature_names']}")
    trees = lightgbm_trees(dump)
    return {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "features": list(FEATURES),
        "rerank_depth": RERANK_DEPTH,
        "base_score": 0.0,
        "linear": [variant.residual if f == "z_fused" else 0.0 for f in FEATURES],
        "trees": trees,
        "meta": {"variant": variant.name, "rounds": variant.rounds, "params": variant.params, **meta},
    }


def prefixed(spec: str, data: list[QueryData], qrels: dict[str, dict[str, int]]) -> tuple[list[QueryData], Any]:
    """Return the data and qrels with query ids prefixed by the dataset name (ids may repeat across datasets)."""
    name = spec.partition(":")[0]
    out = [QueryData(**{**d.__dict__, "qid": f"{name}/{d.qid}"}) for d in data]
    return out, {f"{name}/{q}": r for q, r in qrels.items()}


def main() -> None:
    """Extract features, cross-validate every variant, train the chosen one on all training queries, check it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", nargs="+", default=["scifact:train", "covidqa:dev"], help="dataset:split specs")
    parser.add_argument("--heldout", nargs="*", default=["covidqa:answers", "pubmedqa:all"], help="checked after")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--variant", default="all-residual", choices=sorted(VARIANTS), help="the variant written out")
    parser.add_argument("--no-cv", action="store_true", help="skip cross-validation, only train and write")
    parser.add_argument("--cv-variants", nargs="*", choices=sorted(VARIANTS), help="cross-validate only these")
    parser.add_argument("--out", type=Path, default=ROOT / "src/archivist/retrieve/models/fusion.json")
    args = parser.parse_args()
    cache = Path(".archivist/evals")
    trained = {spec.partition(":")[0] for spec in args.train}
    for spec in args.heldout:
        if spec.partition(":")[0] in trained and not spec.endswith(":answers"):
            raise SystemExit(f"{spec}: held-out queries must come from a dataset not trained on, or be `:answers`")
    data: list[QueryData] = []
    qrels: dict[str, dict[str, int]] = {}
    groups: dict[str, set[str]] = {}
    for spec in args.train:
        d, q = prefixed(spec, *load_split(spec, cache))
        data += d
        qrels |= q
        groups[spec] = {x.qid for x in d}
    result: dict[str, Any] = {"train": args.train, "queries": {k: len(v) for k, v in groups.items()}}
    if not args.no_cv:
        per_query = cross_validate(data, qrels, args.folds, args.cv_variants or list(VARIANTS))
        rows = [r for spec, qids in groups.items() for r in table_rows(per_query, qids, spec)]
        if len(groups) > 1:
            rows += table_rows(per_query, set().union(*groups.values()), "all")
        print_table(f"learned fusion, {args.folds}-fold CV over {' + '.join(args.train)}", rows)
        result["cv"] = rows
    variant = VARIANTS[args.variant]
    booster = fit(data, qrels, variant)
    meta = {"trained_on": args.train, "queries": result["queries"]}
    model = export(booster, variant, meta)
    # The numpy evaluator must reproduce the trainer on the training rows.
    x, _, _ = design(data, qrels, VARIANTS["all"])
    gap = float(np.max(np.abs(ensemble_from_dict(model).predict(x) - predict(booster, variant, x))))
    if gap > 1e-6:
        raise SystemExit(f"numpy evaluator differs from LightGBM by {gap}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(model, separators=(",", ":")) + "\n")
    console.print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB, max |numpy - lightgbm| = {gap:.2e})")
    result["model"] = {"path": str(args.out), "variant": variant.name, "max_abs_diff": gap}
    if args.heldout:
        rows = []
        for spec in args.heldout:
            d, q = prefixed(spec, *load_split(spec, cache))
            rows += table_rows(held_out(booster, variant, d, q), {x.qid for x in d}, spec)
        print_table(f"held out: {variant.name} trained on {' + '.join(args.train)}", rows)
        result["heldout"] = rows
    write_result("train_fusion", result)


if __name__ == "__main__":
    main()
