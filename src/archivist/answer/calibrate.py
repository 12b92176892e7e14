"""Calibrate the refusal threshold on data: `python -m archivist.answer.calibrate [--limit N]`.

Answerable: COVID-QA questions asked of the COVID-QA corpus. Unanswerable: PubMedQA questions asked of the same
corpus (another dataset's questions: honest negatives, not hand-written ones). Every question is answered once with
refusal off, its evidence score recorded; the threshold is chosen on half of the questions (even positions) as the
one with the best refusal recall at precision >= 0.9, and its precision and recall are reported on the other half.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from archivist.config import load_settings
from archivist.evals.answers import AnswerEvalConfig, refusal_pr, run_answer_eval
from archivist.evals.datasets import load_dataset

DATASETS = Path(__file__).resolve().parents[4] / "shared" / "datasets"


def sweep(answerable: list[float], unanswerable: list[float], min_precision: float = 0.9) -> dict[str, float]:
    """Return the threshold with the best refusal recall at `min_precision`, with its precision and recall."""
    best = {"threshold": 0.0, "precision": 1.0, "recall": 0.0, "answerable_refused_rate": 0.0}
    for t in sorted({round(x, 3) for x in answerable + unanswerable}):
        pr = refusal_pr([a < t for a in answerable], [u < t for u in unanswerable])
        if pr["precision"] >= min_precision and pr["recall"] > best["recall"]:
            best = {"threshold": t, **pr}
    return best


def main() -> None:
    """Run the calibration and print the chosen threshold with held-out precision and recall as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DATASETS / "covidqa")
    parser.add_argument("--unanswerable", type=Path, default=DATASETS / "pubmedqa")
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--unanswerable-limit", type=int, default=200)
    parser.add_argument("--cache-dir", type=Path, default=Path(".archivist/evals"))
    parser.add_argument("--no-ingest", action="store_true", help="Use the cached store as is (partial corpus).")
    args = parser.parse_args()
    config = AnswerEvalConfig(
        limit=args.limit,
        unanswerable=args.unanswerable,
        unanswerable_limit=args.unanswerable_limit,
        refusal_threshold=-1.0,  # never refuse: record every question's evidence
        ingest=not args.no_ingest,
        tag="calibrate-refusal",
    )
    record = run_answer_eval(load_settings(), load_dataset(args.dataset), config, cache_dir=args.cache_dir)
    per_query: dict[str, dict[str, Any]] = record["per_query"]
    pos = sorted(v["evidence"] for q, v in per_query.items() if ":" not in q)
    neg = sorted(v["evidence"] for q, v in per_query.items() if q.startswith("foreign:"))
    pos_items = [v["evidence"] for q, v in sorted(per_query.items()) if ":" not in q]
    neg_items = [v["evidence"] for q, v in sorted(per_query.items()) if q.startswith("foreign:")]
    chosen = sweep(pos_items[::2], neg_items[::2])
    t = chosen["threshold"]
    held_out = refusal_pr([a < t for a in pos_items[1::2]], [u < t for u in neg_items[1::2]])
    print(
        json.dumps(
            {
                "threshold": t,
                "tuning_half": chosen,
                "held_out_half": held_out,
                "n_answerable": len(pos),
                "n_unanswerable": len(neg),
                "answer_p50_ms": record["timings"]["answer_p50_ms"],
                "metrics_without_refusal": record["metrics"],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
