"""Train the learned-fusion model on a dataset's TRAIN queries only, with query-grouped K-fold CV.

    pip install lightgbm   # training only: inference (archivist.retrieve.learned) is pure numpy
    python benchmarks/train_fusion_model.py [--dataset scifact] [--folds 5] [--variant all-residual]
                                            [--out src/archivist/retrieve/models/fusion-scifact.json]

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
from archivist.store.lexical import Analyzer

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
NO_STRUCTURE = {"doc_chunks", "ordinal"}  # depend on how a corpus is chunked
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


def extract(dataset_name: str, split: str, cache: Path) -> tuple[list[QueryData], dict[str, dict[str, int]]]:
    """Return each train query's head features and doc ids (cached on disk), and the qrels."""
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


def cross_validate(
    data: list[QueryData], qrels: dict[str, dict[str, int]], folds: int, names: list[str]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, dict[str, float]]]]:
    """Return a table row and per-query metrics for z-score fusion and each variant, over the same folds."""
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
    base = per_query["zscore (default)"]
    rows = []
    for name, pq in per_query.items():
        m = mean_metrics(pq)
        c = compare(base, pq, "ndcg@10")
        rows.append(
            {
                "variant": name,
                "ndcg@10": round(m["ndcg@10"], 4),
                "recall@100": round(m["recall@100"], 4),
                "delta": round(c.delta, 4),
                "ci95": f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}]",
                "p": round(c.p_value, 4),
            }
        )
    return rows, per_query


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


def main() -> None:
    """Extract features, cross-validate every variant, then train the chosen one on all train queries."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--split", default="train", choices=["train"], help="training never reads the test split")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--variant", default="all-residual", choices=sorted(VARIANTS), help="the variant written out")
    parser.add_argument("--no-cv", action="store_true", help="skip cross-validation, only train and write")
    parser.add_argument("--cv-variants", nargs="*", choices=sorted(VARIANTS), help="cross-validate only these")
    parser.add_argument("--out", type=Path, default=ROOT / "src/archivist/retrieve/models/fusion-scifact.json")
    args = parser.parse_args()
    data, qrels = extract(args.dataset, args.split, Path(".archivist/evals"))
    result: dict[str, Any] = {"dataset": args.dataset, "split": args.split, "queries": len(data)}
    if not args.no_cv:
        rows, _ = cross_validate(data, qrels, args.folds, args.cv_variants or list(VARIANTS))
        print_table(f"learned fusion, {args.folds}-fold CV on {args.dataset} {args.split} ({len(data)} queries)", rows)
        result["cv"] = rows
    variant = VARIANTS[args.variant]
    booster = fit(data, qrels, variant)
    model = export(booster, variant, {"trained_on": f"{args.dataset} {args.split}", "queries": len(data)})
    # The numpy evaluator must reproduce the trainer on the training rows.
    x, _, _ = design(data, qrels, VARIANTS["all"])
    gap = float(np.max(np.abs(ensemble_from_dict(model).predict(x) - predict(booster, variant, x))))
    if gap > 1e-6:
        raise SystemExit(f"numpy evaluator differs from LightGBM by {gap}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(model, separators=(",", ":")) + "\n")
    console.print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB, max |numpy - lightgbm| = {gap:.2e})")
    result["model"] = {"path": str(args.out), "variant": variant.name, "max_abs_diff": gap}
    write_result(f"train_fusion_{args.dataset}_{args.split}", result)


if __name__ == "__main__":
    main()
