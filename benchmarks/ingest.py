"""Ingest throughput on SciFact vs the raw throughput of the embedding model on the same chunk texts.

    python benchmarks/ingest.py [--limit N] [--store PATH]

The pipeline (load, chunk, hash, embed, write) runs into a fresh store; then the same embedder embeds
exactly the texts the pipeline embedded, with nothing else around it. The ratio of the two is the
pipeline's efficiency: embedding is the physical limit on this machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import ROOT, console, datasets_dir, print_table, write_result

from archivist.app import Archivist
from archivist.config import load_settings


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=0, help="only the first N documents (0 = all 5,183)")
    parser.add_argument("--store", type=Path, default=ROOT / ".archivist/bench-scifact.db")
    args = parser.parse_args()

    corpus = datasets_dir() / "scifact" / "corpus.jsonl"
    if args.limit:
        sliced = ROOT / ".archivist/bench-scifact-slice.jsonl"
        sliced.parent.mkdir(parents=True, exist_ok=True)
        with corpus.open() as src:
            sliced.write_text("".join(line for _, line in zip(range(args.limit), src, strict=False)))
        corpus = sliced
    for suffix in ("", "-wal", "-shm"):
        Path(f"{args.store}{suffix}").unlink(missing_ok=True)

    app = Archivist.from_settings(load_settings(store=f"sqlite:///{args.store}"))
    embedder = app.embedder
    embedder.embed(["warm up the session"])
    console.print(f"ingesting {corpus} …")
    t0 = time.perf_counter()
    report = app.ingest([corpus])
    pipeline_s = time.perf_counter() - t0
    docs = len(report.added)
    chunks = report.chunks_written

    # The same texts the pipeline embedded: each chunk with its title/heading prefix.
    texts = []
    for rec in app.store.list_documents(limit=10**9):
        for c in app.store.document_chunks(rec.id):
            prefix = " > ".join(p for p in (rec.title, *c.heading_path) if p)
            texts.append(f"{prefix}\n{c.text}" if prefix else c.text)
    unique = list(dict.fromkeys(texts))
    console.print(f"raw embedding of the same {len(unique)} texts …")
    t0 = time.perf_counter()
    embedder.embed(unique)
    raw_s = time.perf_counter() - t0

    pipeline_rate = report.chunks_embedded / pipeline_s
    raw_rate = len(unique) / raw_s
    row = {
        "docs": docs,
        "chunks": chunks,
        "embedded": report.chunks_embedded,
        "pipeline s": round(pipeline_s, 1),
        "docs/s": docs / pipeline_s,
        "chunks/s": chunks / pipeline_s,
        "raw embed texts/s": raw_rate,
        "pipeline / raw": pipeline_rate / raw_rate,
    }
    print_table("ingest: SciFact corpus", [row])
    write_result(
        "ingest",
        {
            "corpus": str(corpus),
            "documents": docs,
            "chunks": chunks,
            "chunks_embedded": report.chunks_embedded,
            "skipped": len(report.skipped),
            "pipeline_seconds": round(pipeline_s, 2),
            "docs_per_s": round(docs / pipeline_s, 2),
            "chunks_per_s": round(chunks / pipeline_s, 2),
            "raw_embed_texts_per_s": round(raw_rate, 2),
            "raw_embed_seconds": round(raw_s, 2),
            "ratio_pipeline_to_raw": round(pipeline_rate / raw_rate, 3),
            "embedding_model": embedder.model_id,
        },
    )
    app.close()


if __name__ == "__main__":
    main()
