"""Write evals/agent/covidqa.jsonl: two-paper COVID-QA tasks for `archivist eval agent`, built deterministically.

    python evals/agent/build_covidqa.py [--dataset ../shared/datasets/covidqa] [--out evals/agent/covidqa.jsonl]

Each task asks two expert questions whose gold papers differ, so the answer needs two documents; its facts are the
two gold answer spans, which are text of the gold papers. The procedure is in evals/agent/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path

#: answer spans kept as facts: short enough that an answer can state them, long enough not to match by chance
MIN_WORDS, MAX_WORDS, MIN_CHARS = 2, 8, 8
PAPERS = 22
HERE = Path(__file__).resolve().parent
DEFAULT_DATASET = HERE.parents[2] / "shared" / "datasets" / "covidqa"


def _numeric(value: str) -> tuple[int, str]:
    return (int(value), value) if value.isdigit() else (1 << 62, value)


def build(dataset: Path, out: Path) -> list[dict[str, object]]:
    """Return the task file's lines (header first) built from a COVID-QA folder; `out` fixes the corpus path."""
    queries = {}
    with (dataset / "queries.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            queries[str(row["_id"])] = str(row["text"]).strip()
    by_paper: dict[str, list[tuple[str, str]]] = {}
    with (dataset / "answers.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            span = " ".join(str(row["answers"][0]).split()).rstrip(" .,;:")
            if MIN_WORDS <= len(span.split()) <= MAX_WORDS and len(span) >= MIN_CHARS:
                by_paper.setdefault(str(row["doc_id"]), []).append((str(row["query_id"]), span))
    papers = sorted((p for p, qs in by_paper.items() if len(qs) >= 2), key=_numeric)[:PAPERS]
    picks = {p: sorted(by_paper[p], key=lambda qa: _numeric(qa[0]))[:2] for p in papers}
    corpus = os.path.relpath(dataset.resolve(), out.resolve().parent)
    lines: list[dict[str, object]] = [{"corpus": corpus, "documents": papers}]
    # Paper k's second question goes with paper k+1's first: every task spans two papers, each question used once.
    for first, second in itertools.pairwise(papers):
        (q1, a1), (q2, a2) = picks[first][1], picks[second][0]
        lines.append(
            {
                "id": f"covidqa-{q1}-{q2}",
                "task": f"{queries[q1]} Also: {queries[q2]}",
                "facts": [a1, a2],
                "gold_sources": [first, second],
            }
        )
    return lines


def main() -> None:
    """Write the task file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--out", type=Path, default=HERE / "covidqa.jsonl")
    args = parser.parse_args()
    lines = build(args.dataset, args.out)
    args.out.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    print(f"wrote {len(lines) - 1} tasks over {PAPERS} papers to {args.out}")


if __name__ == "__main__":
    main()
