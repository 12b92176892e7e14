"""PII evaluation: the detector of `guard.pii` on sentences with labelled spans (Presidio's synthetic PII set).

The dataset is a JSON list of `{"full_text", "spans": [{"entity_type", "start_position", "end_position"}]}` (the
layout of presidio-research's `synth_dataset_v2.json`). Its labels are mapped to our kinds (GPE and
STREET_ADDRESS are both LOCATION, US_SSN is NATIONAL_ID…); labels of kinds we do not detect (dates, titles, ages,
zip codes…) are not expected, and a span we find on one counts as a false positive.

Spans are matched two ways, both reported: exact (same kind, same offsets once surrounding whitespace is trimmed)
and overlap (same kind, sharing a character; each labelled span and each found span matched once). Per kind and
overall (micro: counts summed over kinds) precision, recall and F1, the share of sentences without PII in which
anything was found, and throughput in sentences per second (the model load apart). The detector is deterministic,
so the gate compares figures directly: any drop larger than allowed fails.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archivist.evals.datasets import Dataset
from archivist.evals.retrieval import code_version, run_header
from archivist.guard.pii import ENTITY_KINDS, PiiDetector, PiiKind, PiiSpan
from archivist.types import UsageError

ProgressFn = Callable[[str, int, int], None]

#: the dataset's labels as our kinds (Presidio's names); other labels are kinds the detector does not look for
GOLD_KINDS = ENTITY_KINDS
#: the file a dataset folder holds (presidio-research's name for it)
DATASET_FILE = "synth_dataset_v2.json"
MATCHES = ("exact", "overlap")
#: the overall metrics the gate checks, and each kind's F1 (overlap) where the baseline has this many labels of it
GATED_METRICS = ("precision_overlap", "recall_overlap", "f1_overlap", "f1_exact")
GATED_KIND_MIN_LABELS = 10


@dataclass(frozen=True, slots=True)
class PiiExample:
    """One sentence and its labelled spans (of our kinds)."""

    id: str
    text: str
    spans: tuple[PiiSpan, ...]


@dataclass(frozen=True, slots=True)
class PiiEvalConfig:
    """What an eval run measures: the first `limit` sentences (all when None), a tag stored with the run."""

    limit: int | None = None
    tag: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def dataset_file(path: Path) -> Path:
    """Return the JSON file of a PII dataset given as that file or as the folder holding it."""
    if path.is_dir():
        candidates = [path / DATASET_FILE, *sorted(path.glob("*.json"))]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise UsageError(f"{path}: no {DATASET_FILE} (or other .json file) in this folder")
        return found
    if not path.is_file():
        raise UsageError(f"no PII dataset at {path}: give presidio_synth_pii's folder or its JSON file")
    return path


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def read_pii_dataset(path: Path, limit: int | None = None) -> list[PiiExample]:
    """Return the dataset's sentences (the first `limit`), each with its labelled spans of our kinds."""
    file = dataset_file(path)
    try:
        rows = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{file}: not a JSON file ({exc})") from None
    if not isinstance(rows, list) or not rows:
        raise UsageError(f"{file}: expected a non-empty JSON list of sentences with 'full_text' and 'spans'")
    examples = []
    for i, row in enumerate(rows[:limit]):
        try:
            text = row["full_text"]
            labels = [(s["entity_type"], int(s["start_position"]), int(s["end_position"])) for s in row["spans"]]
        except (KeyError, TypeError, ValueError):
            raise UsageError(
                f"{file}: sentence {i + 1} needs 'full_text' and 'spans' of entity_type, start_position, end_position"
            ) from None
        spans = []
        for label, start, end in labels:
            if not 0 <= start < end <= len(text):
                raise UsageError(f"{file}: sentence {i + 1} has a {label} span [{start}, {end}) outside its text")
            if label in GOLD_KINDS:
                spans.append(PiiSpan(GOLD_KINDS[label], *_trimmed(text, start, end), 1.0))
        examples.append(PiiExample(str(i), text, tuple(sorted(spans, key=lambda s: s.start))))
    return examples


def match(gold: Sequence[PiiSpan], found: Sequence[PiiSpan], how: str) -> int:
    """Return how many found spans match a labelled span (each matched at most once), by `how`: exact or overlap."""
    used: set[int] = set()
    hits = 0
    for g in gold:
        for j, f in enumerate(found):
            if j in used or f.kind != g.kind:
                continue
            if (f.start, f.end) == (g.start, g.end) if how == "exact" else f.start < g.end and g.start < f.end:
                used.add(j)
                hits += 1
                break
    return hits


def _prf(tp: int, n_found: int, n_gold: int) -> dict[str, float]:
    p = tp / n_found if n_found else 0.0
    r = tp / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def score(
    examples: Sequence[PiiExample], found: Sequence[Sequence[PiiSpan]], kinds: Sequence[PiiKind]
) -> dict[str, Any]:
    """Return per kind and overall (micro) counts and precision, recall, F1 for each way of matching."""
    per_kind: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        row: dict[str, Any] = {"labels": 0, "found": 0}
        tps = dict.fromkeys(MATCHES, 0)
        for ex, spans in zip(examples, found, strict=True):
            gold = [s for s in ex.spans if s.kind == kind]
            mine = [_trim(ex.text, s) for s in spans if s.kind == kind]
            row["labels"] += len(gold)
            row["found"] += len(mine)
            for how in MATCHES:
                tps[how] += match(gold, mine, how)
        for how in MATCHES:
            row[how] = {"tp": tps[how], **_prf(tps[how], row["found"], row["labels"])}
        per_kind[kind] = row
    overall: dict[str, Any] = {
        "labels": sum(r["labels"] for r in per_kind.values()),
        "found": sum(r["found"] for r in per_kind.values()),
    }
    for how in MATCHES:
        tp = sum(r[how]["tp"] for r in per_kind.values())
        overall[how] = {"tp": tp, **_prf(tp, overall["found"], overall["labels"])}
    return {"overall": overall, "per_kind": per_kind}


def _trim(text: str, span: PiiSpan) -> PiiSpan:
    start, end = _trimmed(text, span.start, span.end)
    return PiiSpan(span.kind, start, end, span.score)


def run_pii_eval(
    detector: PiiDetector, path: Path, config: PiiEvalConfig, *, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Return an eval run record (kind "pii"): per kind and overall precision, recall and F1 (exact and overlap
    matches), the clean sentences flagged, throughput; per sentence, its labels, what was found and matched."""
    if config.limit is not None and config.limit < 1:
        raise UsageError(f"--limit is at least 1, not {config.limit}")
    examples = read_pii_dataset(path, config.limit)
    t0 = time.perf_counter()
    detector.load()
    load_s = time.perf_counter() - t0
    found: list[list[PiiSpan]] = []
    t0 = time.perf_counter()
    step = max(1, detector.batch_size * 4)
    for i in range(0, len(examples), step):
        found += detector.find_many([e.text for e in examples[i : i + step]])
        if progress:
            progress("sentences", len(found), len(examples))
    detect_s = time.perf_counter() - t0
    scored = score(examples, found, detector.kinds)
    metrics: dict[str, float] = {}
    for how in MATCHES:
        metrics |= {f"{m}_{how}": round(scored["overall"][how][m], 4) for m in ("precision", "recall", "f1")}
    for kind, row in scored["per_kind"].items():
        for how in MATCHES:
            metrics |= {f"{kind}/{m}_{how}": round(row[how][m], 4) for m in ("precision", "recall", "f1")}
    clean = [spans for ex, spans in zip(examples, found, strict=True) if not ex.spans]
    metrics["clean_flagged"] = round(sum(1 for s in clean if s) / len(clean), 4) if clean else 0.0
    metrics["sentences_per_s"] = round(len(examples) / detect_s, 1) if detect_s else 0.0
    per_query: dict[str, dict[str, float]] = {}
    for ex, spans in zip(examples, found, strict=True):
        mine = [_trim(ex.text, s) for s in spans]
        per_query[ex.id] = {
            "labels": float(len(ex.spans)),
            "found": float(len(mine)),
            "tp_overlap": float(match(ex.spans, mine, "overlap")),
        }
    file = dataset_file(path)
    fp = {"pii": detector.fingerprint(), "code_version": code_version()}
    dataset = Dataset(file.parent.name, path, "all", file, {}, {})
    return {
        **run_header("pii", dataset, config.tag, fp),
        "config": {"limit": config.limit, "kinds": list(detector.kinds), **config.extra},
        "metrics": metrics,
        "overall": scored["overall"],
        "per_kind": scored["per_kind"],
        "per_query": per_query,
        "found": {
            ex.id: [[s.kind, s.start, s.end, round(s.score, 3)] for s in spans]
            for ex, spans in zip(examples, found, strict=True)
            if spans or ex.spans
        },
        "n_queries": len(examples),
        "timings": {"load_s": round(load_s, 2), "detect_s": round(detect_s, 2)},
    }


@dataclass(frozen=True, slots=True)
class PiiCheck:
    """One gated figure: the baseline's value, the run's, and whether it dropped by more than allowed."""

    metric: str
    baseline: float
    current: float
    failed: bool


def gated_metrics(baseline: dict[str, Any]) -> list[str]:
    """Return the metrics the gate checks on this baseline: the overall ones, and each kind's F1 (overlap) where the
    baseline has enough labels of that kind for it to mean something."""
    names = [m for m in GATED_METRICS if m in baseline["metrics"]]
    for kind, row in baseline.get("per_kind", {}).items():
        if row["labels"] >= GATED_KIND_MIN_LABELS and f"{kind}/f1_overlap" in baseline["metrics"]:
            names.append(f"{kind}/f1_overlap")
    return names


def gate_pii(baseline: dict[str, Any], current: dict[str, Any], *, max_drop: float = 0.01) -> list[PiiCheck]:
    """Return the gate's checks of `current` against `baseline`; raise UsageError where they measured different
    things (another kind of run, dataset, sample or detector level)."""
    if baseline.get("kind") != "pii":
        raise UsageError(f"not a PII baseline: its kind is {baseline.get('kind')!r}")
    for what, a, b in (
        ("sample (--limit)", baseline["config"]["limit"], current["config"]["limit"]),
        ("dataset", baseline["dataset"], current["dataset"]),
        ("detector level", baseline["fingerprint"]["pii"]["level"], current["fingerprint"]["pii"]["level"]),
    ):
        if a != b:
            raise UsageError(f"the baseline and this run differ in {what} ({a} vs {b}): gate like against like")
    checks = []
    for name in gated_metrics(baseline):
        before, after = float(baseline["metrics"][name]), float(current["metrics"].get(name, 0.0))
        checks.append(PiiCheck(name, before, after, before - after > max_drop))
    if not checks:
        raise UsageError("the baseline has none of the metrics the PII gate checks")
    return checks
