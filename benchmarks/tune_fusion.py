"""Fit z-score fusion weights on a dataset's TRAIN queries only; print a table and write JSON.

    python benchmarks/tune_fusion.py [--dataset scifact] [--split train]

Every train query is scored once against the whole corpus (dense cosine, chunk BM25, document
BM25, each with its corpus-wide mean and spread), then every weight combination on the grid is
evaluated from those arrays, exactly as `zscore_fusion` would rank. Test queries are never read:
report test figures once, with `archivist eval retrieval`, after the weights are fixed.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
from _common import console, datasets_dir, print_table, write_result

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.evals.datasets import load_dataset
from archivist.evals.metrics import evaluate, mean_metrics
from archivist.evals.retrieval import corpus_id, eval_store_url

BM25_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
DOC_GRID = (0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)
TOP_DOCS = 100


def main() -> None:
    """Score the train queries once, grid-search the weights, print and save the ranking of settings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--split", default="train", choices=["train"], help="tuning never reads the test split")
    args = parser.parse_args()
    settings = load_settings()
    cache = Path(".archivist/evals")
    dataset = load_dataset(datasets_dir() / args.dataset, args.split, work_dir=cache)
    store = eval_store_url(settings, dataset, cache)
    with Archivist.from_settings(settings.model_copy(update={"store": store})) as app:
        app.ingest([dataset.corpus], sync=True)
        chunk_ids = sorted(c.id for d in app.store.list_documents(limit=10**9) for c in app.store.document_chunks(d.id))
        chunks = app.store.get_chunks(chunk_ids)
        docs = np.array([corpus_id(chunks[c].source) for c in chunk_ids])
        names, owner = np.unique(docs, return_inverse=True)
        qids = sorted(dataset.queries)
        signals = []
        t0 = time.perf_counter()
        for qid in qids:
            query = dataset.queries[qid]
            s = app.store.candidate_scores(app.embedding_model, app.embedder.embed_query(query), query, chunk_ids)
            signals.append(
                np.stack(
                    [
                        (np.asarray(s.dense) - s.dense_mean) / s.dense_std,
                        (np.asarray(s.bm25) - s.bm25_mean) / s.bm25_std,
                        (np.asarray(s.doc_bm25) - s.doc_bm25_mean) / s.doc_bm25_std,
                    ]
                )
            )
        console.print(f"scored {len(qids)} {args.split} queries in {time.perf_counter() - t0:.1f} s")
    rows = []
    for wb, wdoc in itertools.product(BM25_GRID, DOC_GRID):
        w = np.array([0.75, wb, wdoc])
        w = w / w.sum()
        run: dict[str, dict[str, float]] = {}
        for qid, z in zip(qids, signals, strict=True):
            fused = w @ z
            best = np.full(names.size, -np.inf)
            np.maximum.at(best, owner, fused)  # a document's score is its best chunk's
            top = np.argsort(-best)[:TOP_DOCS]
            run[qid] = {str(names[i]): float(best[i]) for i in top}
        m = mean_metrics(evaluate(run, dataset.qrels, ("ndcg@10", "recall@100")))
        rows.append(
            {"dense": 0.75, "bm25": wb, "doc_bm25": wdoc, "ndcg@10": m["ndcg@10"], "recall@100": m["recall@100"]}
        )
    rows.sort(key=lambda r: -float(r["ndcg@10"]))
    print_table(f"z-score fusion weights on {args.dataset} {args.split} ({len(qids)} queries), best first", rows[:15])
    write_result(f"tune_fusion_{args.dataset}_{args.split}", {"split": args.split, "grid": rows})


if __name__ == "__main__":
    main()
