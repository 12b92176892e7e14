"""Calibrate the refusal threshold on data: `archivist eval calibrate-refusal DATASET --unanswerable OTHER`.

Answerable: a QA dataset's questions asked of its own corpus. Unanswerable: another dataset's questions asked of
the same corpus (honest negatives, not hand-written ones). Every question is answered once with refusal off and its
evidence score recorded; the threshold is chosen on half of the questions (even positions) as the one with the best
refusal recall at a minimum precision (0.9 by default), and its precision and recall are measured on the other
half. The bundled default came from `archivist eval calibrate-refusal ../shared/datasets/covidqa --unanswerable
../shared/datasets/pubmedqa --limit 600 --unanswerable-limit 300 --leave-out 400:200` (COVID-QA with PubMedQA
questions, none of them asked by the reported `archivist eval answers --limit 400 --unanswerable-limit 200`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from archivist.config import Settings
from archivist.evals.answers import AnswerEvalConfig, refusal_pr, run_answer_eval
from archivist.evals.datasets import Dataset
from archivist.evals.retrieval import ProgressFn
from archivist.types import UsageError


def sweep(answerable: Sequence[float], unanswerable: Sequence[float], min_precision: float = 0.9) -> dict[str, float]:
    """Return the threshold with the best refusal recall at `min_precision`, with its precision and recall."""
    best = {"threshold": 0.0, "precision": 1.0, "recall": 0.0, "answerable_refused_rate": 0.0}
    for t in sorted({round(x, 3) for x in [*answerable, *unanswerable]}):
        pr = refusal_pr([a < t for a in answerable], [u < t for u in unanswerable])
        if pr["precision"] >= min_precision and pr["recall"] > best["recall"]:
            best = {"threshold": t, **pr}
    return best


def calibrate_refusal(
    settings: Settings,
    dataset: Dataset,
    unanswerable: Path,
    *,
    limit: int | None = None,
    unanswerable_limit: int = 200,
    min_precision: float = 0.9,
    leave_out: tuple[int, int] | None = None,
    cache_dir: Path = Path(".archivist/evals"),
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Return the calibrated threshold, its precision and recall on the tuning and held-out halves, and counts.

    `threshold` is None when no threshold reaches `min_precision` on the tuning half. `leave_out` = (A, U) keeps
    out the questions an answer eval with `--limit A --unanswerable-limit U` asks, so that it measures the
    threshold on questions the calibration never saw.
    """
    config = AnswerEvalConfig(
        limit=limit,
        unanswerable=unanswerable,
        unanswerable_limit=unanswerable_limit,
        leave_out=leave_out,
        refusal_threshold=-1.0,  # never refuse: record every question's evidence
        tag="calibrate-refusal",
    )
    record = run_answer_eval(settings, dataset, config, cache_dir=cache_dir, progress=progress)
    per_query: dict[str, dict[str, Any]] = record["per_query"]
    pos = [v["evidence"] for q, v in sorted(per_query.items()) if ":" not in q]
    neg = [v["evidence"] for q, v in sorted(per_query.items()) if q.startswith("foreign:")]
    if len(pos) < 2 or len(neg) < 2:
        raise UsageError("calibration needs at least 2 answerable and 2 unanswerable questions")
    chosen = sweep(pos[::2], neg[::2], min_precision)
    reached = chosen["recall"] > 0
    t = chosen["threshold"]
    return {
        "threshold": t if reached else None,
        "min_precision": min_precision,
        "tuning_half": chosen,
        "held_out_half": refusal_pr([a < t for a in pos[1::2]], [u < t for u in neg[1::2]]) if reached else None,
        "n_answerable": len(pos),
        "n_unanswerable": len(neg),
        "answer_p50_ms": record["timings"]["answer_p50_ms"],
        "metrics_without_refusal": record["metrics"],
        "dataset": record["dataset"],
        "unanswerable": str(unanswerable),
        "leave_out": list(leave_out) if leave_out else None,
        # each question's best-sentence score ("foreign:ID" = unanswerable), to see how the two kinds overlap
        "evidence": {q: v["evidence"] for q, v in sorted(per_query.items())},
    }
