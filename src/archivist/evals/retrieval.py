"""Retrieval evaluation: ingest a dataset's corpus into its own (cached) store, run its queries, score them."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

import archivist
from archivist.app import Archivist
from archivist.config import Settings
from archivist.evals.datasets import Dataset
from archivist.evals.metrics import DEFAULT_METRICS, doc_scores_from_chunks, evaluate, mean_metrics
from archivist.retrieve.hybrid import Mode

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class RetrievalEvalConfig:
    """What to run: retriever mode, how many chunk hits to fetch per query, which metrics, a free tag."""

    mode: Mode = "hybrid"
    depth: int = 300
    metrics: Sequence[str] = DEFAULT_METRICS
    tag: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def code_version() -> str:
    """Return the package version plus the git commit (and '+dirty') when run from a checkout."""
    version = archivist.__version__
    root = Path(__file__).resolve().parents[3]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return f"{version}+{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return version


def fingerprint(app: Archivist, config: RetrievalEvalConfig) -> dict[str, Any]:
    """Return every setting that can change retrieval results, so runs can be compared and traced."""
    s = app.settings
    return {
        "embedder": app.embedding_model,
        "chunker": app.chunker().fingerprint(),
        "retriever": {
            "mode": config.mode,
            "depth": config.depth,
            "candidates": max(s.candidates, config.depth),
            "fusion": s.fusion,
            "rrf_k": s.rrf_k,
            "dense_weight": s.dense_weight,
            "bm25_weight": s.bm25_weight,
            "doc_bm25_weight": s.doc_bm25_weight,
            # learned fusion only: the model file's name and hash, so a retrained model is a new fingerprint.
            **app.retriever().fusion_fingerprint(),
        },
        **app.searcher().fingerprint(),
        "prompt_versions": {},
        "code_version": code_version(),
    }


def fingerprint_hash(fp: dict[str, Any]) -> str:
    """Return a short hash of a fingerprint, ignoring the code version (same settings, same hash)."""
    stable = {k: v for k, v in fp.items() if k != "code_version"}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:12]


def eval_store_url(settings: Settings, dataset: Dataset, cache_dir: Path) -> str:
    """Return the URL of the dataset's own store (one per dataset, split slice and embedding model)."""
    model = settings.embed_model if settings.embedder == "openai" else "minilm"
    name = dataset.name + (f"-{dataset.split}-{dataset.slice.label()}" if dataset.slice else "")
    return f"sqlite:///{cache_dir / f'{name}-{model}.db'}"


def corpus_id(source: str) -> str:
    """Return the corpus id of a JSONL record's source (`path#id`)."""
    return source.rsplit("#", 1)[-1]


def run_header(kind: str, dataset: Dataset, tag: str | None, fp: dict[str, Any]) -> dict[str, Any]:
    """Return the fields every stored eval run starts with: id, kind, dataset, split, slice, tag, time, fingerprint."""
    return {
        "id": uuid.uuid4().hex[:12],
        "kind": kind,
        "dataset": dataset.name,
        "dataset_path": str(dataset.path),
        "split": dataset.split,
        "slice": {"queries": dataset.slice.queries, "distractors": dataset.slice.distractors}
        if dataset.slice
        else None,
        "tag": tag,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "fingerprint": fp,
        "fingerprint_hash": fingerprint_hash(fp),
    }


def run_retrieval_eval(
    settings: Settings,
    dataset: Dataset,
    config: RetrievalEvalConfig,
    *,
    cache_dir: Path,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Return an eval run record: config fingerprint, metrics, per-query results and timings."""
    store_url = eval_store_url(settings, dataset, cache_dir)
    eval_settings = settings.model_copy(
        update={"store": store_url, "candidates": max(settings.candidates, config.depth)}
    )
    with Archivist.from_settings(eval_settings) as app:
        t0 = time.perf_counter()
        report = app.ingest(
            [dataset.corpus],
            sync=True,
            progress=(lambda p: progress("ingest", p.done, p.total)) if progress else None,
        )
        ingest_s = time.perf_counter() - t0
        run: dict[str, dict[str, float]] = {}
        latencies = []
        ids = sorted(dataset.queries)
        t0 = time.perf_counter()
        for i, qid in enumerate(ids):
            q0 = time.perf_counter()
            hits = app.search(dataset.queries[qid], k=config.depth, mode=config.mode)
            latencies.append((time.perf_counter() - q0) * 1000)
            run[qid] = doc_scores_from_chunks((corpus_id(h.source), h.score) for h in hits)
            if progress and (i % 10 == 0 or i == len(ids) - 1):
                progress("queries", i + 1, len(ids))
        search_s = time.perf_counter() - t0
        fp = fingerprint(app, config)
    per_query = evaluate(run, dataset.qrels, config.metrics)
    return {
        **run_header("retrieval", dataset, config.tag, fp),
        "config": {"mode": config.mode, "depth": config.depth, "metrics": list(config.metrics), **config.extra},
        "metrics": {k: round(v, 6) for k, v in mean_metrics(per_query).items()},
        "per_query": per_query,
        "queries": {q: dataset.queries[q] for q in ids},
        "n_queries": len(ids),
        "timings": {
            "ingest_s": round(ingest_s, 2),
            "search_s": round(search_s, 2),
            "query_p50_ms": round(float(np.percentile(latencies, 50)), 2) if latencies else None,
            "query_p95_ms": round(float(np.percentile(latencies, 95)), 2) if latencies else None,
            "total_s": round(ingest_s + search_s, 2),
        },
        "corpus": {
            "store": store_url,
            "added": len(report.added),
            "updated": len(report.updated),
            "unchanged": len(report.unchanged),
            "skipped": len(report.skipped),
            "chunks_embedded": report.chunks_embedded,
        },
    }
