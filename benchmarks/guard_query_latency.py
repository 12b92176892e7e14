"""Latency of the question guard (`archivist.guard.policy.QuestionGuard.check`) per question, on SciFact's test
queries: the whole check with the question's vector computed there (the answer path then takes that vector from the
query cache for retrieval), and the check alone when the vector is cached already. Bundled MiniLM.
Usage: python benchmarks/guard_query_latency.py [--n 300]
"""

from __future__ import annotations

import argparse
import json
import time

from _common import datasets_dir, percentiles, print_table, write_result

from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.embed.query_cache import QueryCachingEmbedder
from archivist.guard.injection import load_injection_detector
from archivist.guard.policy import GuardPolicy, QuestionGuard


def main() -> None:
    """Print p50/p95 per question and write benchmarks/results/guard_query_latency.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    path = datasets_dir() / "scifact" / "queries.jsonl"
    questions = [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()][: args.n]
    embedder = QueryCachingEmbedder(MiniLMEmbedder(), 10_000)
    detector = load_injection_detector(embedder)
    guard = QuestionGuard(lambda: detector, GuardPolicy(), embedder)
    guard.check("warm-up question about the documents")
    rows = []
    for label in ("vector computed in the check", "vector cached (retrieval's)"):
        samples = []
        for q in questions:
            t0 = time.perf_counter()
            guard.check(q)
            samples.append((time.perf_counter() - t0) * 1000)
        rows.append({"check": label, **percentiles(samples)})
    print_table(f"Question guard latency, {len(questions)} SciFact test queries", rows)
    write_result("guard_query_latency", {"rows": rows})


if __name__ == "__main__":
    main()
