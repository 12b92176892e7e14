"""The evidence floor under which a question is refused without asking the model (`llm_refusal_floor`).

    python benchmarks/llm_refusal_floor.py [--limit 300]

With a model configured, the cheap similarity gate should refuse only what is clearly out of the documents' scope and
leave the rest to the model. This measures, per corpus, the evidence score (the best sentence's relevance, what the
gate reads) of three kinds of question, answered extractively with refusal off:

- answerable: the corpus's own questions (COVID-QA's; the golden set over docs/), which the gate must pass;
- on-topic unanswerable: questions about the corpus's subject it does not answer (the golden set's unanswerable
  ones; PubMedQA questions asked of COVID-QA), which the model should judge, so the gate should pass them too;
- off-topic: another corpus's questions (docs/ questions asked of COVID-QA; COVID-QA and SciFact questions asked
  of docs/), which the gate may refuse without a model call.

It prints, for each floor, the share of each kind refused, and writes `benchmarks/results/llm_refusal_floor.json`.
docs/ is ingested into a temporary SQLite store with the default settings; COVID-QA into the eval cache's store.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, console, datasets_dir, print_table, write_result

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.evals.answers import spread
from archivist.evals.datasets import load_dataset, read_queries
from archivist.evals.retrieval import eval_store_url

FLOORS = (0.20, 0.25, 0.30, 0.325, 0.35, 0.375, 0.40, 0.45, 0.496)


def evidence(app: Archivist, questions: list[str], label: str) -> list[float]:
    """Return the evidence score of each question, answered extractively with refusal off."""
    answerer = app.answerer(refusal_threshold=0.0)
    out = []
    for i, q in enumerate(questions):
        out.append(float(answerer.answer(q).evidence))
        if i % 50 == 49:
            console.print(f"  {label}: {i + 1}/{len(questions)}")
    return out


def golden(path: Path) -> tuple[list[str], list[str]]:
    """Return the golden set's answerable and unanswerable questions."""
    items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [i["question"] for i in items if i["answerable"]], [i["question"] for i in items if not i["answerable"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=300, help="questions of each other-corpus kind")
    args = parser.parse_args()
    data = datasets_dir()
    docs_ok, docs_unanswerable = golden(ROOT / "evals" / "golden" / "docs.jsonl")

    def queries(name: str) -> list[str]:
        found = read_queries(data / name / "queries.jsonl")
        return [found[q] for q in spread(sorted(found), args.limit)]

    covid = load_dataset(data / "covidqa")
    covid_ok = [covid.queries[q] for q in spread(sorted(covid.queries), args.limit)]
    kinds: dict[str, dict[str, list[str]]] = {
        "docs": {
            "answerable": docs_ok,
            "on-topic unanswerable": docs_unanswerable,
            "off-topic": queries("covidqa")[: args.limit // 2] + queries("scifact")[: args.limit // 2],
        },
        "covidqa": {
            "answerable": covid_ok,
            "on-topic unanswerable": queries("pubmedqa"),
            "off-topic": docs_ok + docs_unanswerable,
        },
    }
    scores: dict[str, dict[str, list[float]]] = {}
    settings = load_settings()
    with tempfile.TemporaryDirectory() as tmp:
        urls = {
            "docs": f"sqlite:///{tmp}/docs.db",
            "covidqa": eval_store_url(settings, covid, ROOT / ".archivist" / "evals"),
        }
        corpora = {"docs": ROOT / "docs", "covidqa": covid.corpus}
        for corpus, by_kind in kinds.items():
            console.print(f"[bold]{corpus}[/]: ingesting (or finding) {corpora[corpus]}")
            with Archivist.from_settings(settings.model_copy(update={"store": urls[corpus]})) as app:
                app.ingest([corpora[corpus]], sync=corpus == "covidqa")
                scores[corpus] = {kind: evidence(app, qs, f"{corpus} {kind}") for kind, qs in by_kind.items()}
    rows: list[dict[str, Any]] = []
    for corpus, by_kind in scores.items():
        for kind, values in by_kind.items():
            v = np.asarray(values)
            rows.append(
                {
                    "corpus": corpus,
                    "questions": kind,
                    "n": len(v),
                    "min": round(float(v.min()), 3),
                    "p5": round(float(np.percentile(v, 5)), 3),
                    "p50": round(float(np.percentile(v, 50)), 3),
                    "p95": round(float(np.percentile(v, 95)), 3),
                    **{f"<{f}": f"{float((v < f).mean()):.1%}" for f in FLOORS},
                }
            )
    print_table(
        "Evidence scores, and the share refused under each floor (python benchmarks/llm_refusal_floor.py)", rows
    )
    write_result("llm_refusal_floor", {"floors": FLOORS, "rows": rows, "scores": scores})


if __name__ == "__main__":
    main()
