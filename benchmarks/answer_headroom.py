"""Where extractive answers lose the gold paper and the gold span: each stage's ceiling, measured per question.

    python benchmarks/answer_headroom.py [--dataset covidqa] [--questions dev|reported|all] [--limit N]

For every question (by default COVID-QA's dev questions: every judged question except the 400 that
`archivist eval answers --limit 400` reports on) the answerer runs as `archivist ask` does, with the
extractive answerer, and this script records how far the gold paper and the gold answer span get:

- retrieval: the gold paper among the first 1 / 3 / 5 / 10 distinct documents of the hits, or anywhere in them;
- evidence: the gold paper among the packed passages an answer reads (hits plus sentence hits); the gold span
  anywhere in their text; the gold span inside ONE of their sentences (an answer quotes whole sentences, so this
  is what a perfect sentence picker could reach);
- ranking: a sentence holding the gold span first, or among the first 3, by the extractive relevance score;
- answer: not refused, the gold paper cited and the gold span inside the quotes (what `eval answers` reports).

Each stage bounds the ones after it. A citation target above a stage's ceiling cannot be met by work on the
later stages. Retrieval-dependent numbers follow the configured fusion (`ARCHIVIST_FUSION`); the default learned
model was trained on the dev questions, so use `ARCHIVIST_FUSION=zscore` there, or `--questions reported`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import console, datasets_dir, percentiles, print_table, write_result

from archivist.answer.answerer import Answerer
from archivist.answer.sentences import split_sentences
from archivist.app import Archivist
from archivist.config import load_settings
from archivist.evals.answers import Gold, normalize, read_answers, score_answerable, spread
from archivist.evals.datasets import load_dataset
from archivist.evals.retrieval import corpus_id, eval_store_url
from archivist.store.filters import Filters

REPORTED = 400  # `archivist eval answers --limit 400`
STAGES = (
    ("retrieval", "gold paper is the first document of the hits", "doc@1"),
    ("retrieval", "gold paper among the first 3 documents", "doc@3"),
    ("retrieval", "gold paper among the first 5 documents", "doc@5"),
    ("retrieval", "gold paper among the first 10 documents", "doc@10"),
    ("retrieval", "gold paper anywhere in the hits", "doc_in_hits"),
    ("evidence", "gold paper among the passages read", "doc_in_evidence"),
    ("evidence", "gold span in the passages' text", "span_in_evidence"),
    ("evidence", "gold span inside one sentence of them", "span_in_one_sentence"),
    ("ranking", "gold-span sentence ranked first", "span_sentence@1"),
    ("ranking", "gold-span sentence among the first 3", "span_sentence@3"),
    ("answer", "answered, not refused", "answered"),
    ("answer", "gold paper cited", "gold_doc_cited"),
    ("answer", "gold span inside the quotes", "span_in_cited"),
)


def questions(dataset_path: Path, which: str, limit: int) -> tuple[Any, dict[str, Gold]]:
    """Return the dataset and the gold of the chosen questions (dev, reported or all judged ones)."""
    dataset = load_dataset(dataset_path, "test")
    answers = read_answers(dataset_path / "answers.jsonl")
    judged = [q for q in answers if q in dataset.qrels]
    reported = set(spread(judged, REPORTED))
    chosen = {
        "dev": [q for q in sorted(judged) if q not in reported],
        "reported": [q for q in judged if q in reported],
        "all": judged,
    }[which]
    chosen = spread(chosen, limit or None)
    golds = {q: Gold(tuple(answers[q]), frozenset(d for d, v in dataset.qrels[q].items() if v > 0)) for q in chosen}
    return dataset, golds


def first_documents(sources: list[str], n: int) -> list[str]:
    """Return the first n distinct documents of a ranked list of sources."""
    return list(dict.fromkeys(corpus_id(s) for s in sources))[:n]


def measure(answerer: Answerer, question: str, gold: Gold) -> dict[str, float]:
    """Return one question's stage flags (1.0 reached, 0.0 not)."""
    # The stages between retrieval and the answer are not public API; the answer is built from the same parts.
    prep = answerer._prepare(question, None, Filters(), frozenset())
    answer = answerer._refusal(prep) or answerer._extractive(prep)
    spans = [s for a in gold.answers if (s := normalize(a))]
    hit_sources = [h.source for h in prep.hits]
    out = {f"doc@{n}": float(bool(set(first_documents(hit_sources, n)) & gold.documents)) for n in (1, 3, 5, 10)}
    out["doc_in_hits"] = float(bool({corpus_id(s) for s in hit_sources} & gold.documents))
    out["doc_in_evidence"] = float(any(corpus_id(p.source) in gold.documents for p in prep.passages))
    evidence = normalize(" ".join(seg.text for p in prep.passages for seg in p.segments))
    out["span_in_evidence"] = float(any(s in evidence for s in spans))
    sentences = [normalize(s.text) for p in prep.passages for s in split_sentences(p)]
    out["span_in_one_sentence"] = float(any(s in x for s in spans for x in sentences))
    ranked = sorted(prep.extraction.candidates, key=lambda c: -c.score)
    holds = [any(s in normalize(c.sentence.text) for s in spans) for c in ranked]
    out["span_sentence@1"] = float(any(holds[:1]))
    out["span_sentence@3"] = float(any(holds[:3]))
    scored = score_answerable(answer, gold)
    out["gold_doc_cited"] = scored["gold_doc_cited"]
    out["span_in_cited"] = scored["span_in_cited"]
    out["quoted_words"] = scored["quoted_words"]
    out["answered"] = 1.0 - scored["refused"]
    return out


def main() -> None:
    """Run the chosen questions, print each stage's share and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="covidqa", help="a BEIR-layout dataset with answers.jsonl")
    parser.add_argument("--questions", choices=("dev", "reported", "all"), default="dev")
    parser.add_argument("--limit", type=int, default=0, help="spread over at most N questions (0 = all)")
    args = parser.parse_args()
    dataset, golds = questions(datasets_dir() / args.dataset, args.questions, args.limit)
    settings = load_settings()
    store = eval_store_url(settings, dataset, Path(".archivist/evals"))
    per_question: dict[str, dict[str, float]] = {}
    latencies: list[float] = []
    with Archivist.from_settings(settings.model_copy(update={"store": store})) as app:
        app.ingest([dataset.corpus], sync=True)
        answerer = app.answerer()
        answerer.answer("warm-up question")
        t0 = time.perf_counter()
        for i, (q, gold) in enumerate(golds.items(), start=1):
            q0 = time.perf_counter()
            per_question[q] = measure(answerer, dataset.queries[q], gold)
            latencies.append((time.perf_counter() - q0) * 1000)
            if i % 100 == 0:
                console.print(f"{i}/{len(golds)} questions, {time.perf_counter() - t0:.0f} s")
    fusion = {"fusion": settings.fusion, **answerer.searcher.retriever.fusion_fingerprint()}
    mean = {k: float(np.mean([m[k] for m in per_question.values()])) for k in next(iter(per_question.values()))}
    rows = [{"stage": stage, "reached": label, "share": f"{mean[key]:.3f}", "key": key} for stage, label, key in STAGES]
    title = f"{args.dataset}, {len(golds)} {args.questions} questions, {settings.fusion} fusion"
    print_table(title, rows)
    write_result(
        f"answer_headroom-{args.dataset}-{args.questions}",
        {
            "dataset": args.dataset,
            "questions": args.questions,
            "n": len(golds),
            "fusion": fusion,
            "shares": {k: round(v, 4) for k, v in mean.items()},
            "latency": percentiles(latencies),
            "stages": [{**r, "share": float(r["share"])} for r in rows],
        },
    )


if __name__ == "__main__":
    main()
