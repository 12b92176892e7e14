"""Guard evaluation: detection and false-positive rates of the injection detector, with Wilson 95% intervals.

Datasets, one or more per run:
- direct sets, JSON Lines: `{"text", "label"}` rows (label 1/0, true/false, or a name such as "injection",
  "jailbreak", "benign"; optional "category" and "id"), and the public files as they are: Tensor Trust's
  `*_robustness.jsonl` (the `attack` strings) and the in-the-wild jailbreak `prompts.jsonl`;
- a BEIR folder (`queries.jsonl`): its questions, all benign;
- indirect sets in the BIPIA layout (a folder of `{email,table,code}_{split}.jsonl` contexts and
  `{text,code}_attack_{split}.json` attacks): each attack inserted at the start, middle and end of contexts of its
  task, and every clean context as a negative.

A run is stored as an eval run of kind "guard"; `gate` fails when a dataset's detection falls below the baseline's
interval, or its false-positive rate rises above it.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from archivist.evals.answers import spread
from archivist.evals.datasets import Dataset
from archivist.evals.retrieval import code_version, run_header
from archivist.guard.injection import FEATURE_VERSION, InjectionDetector
from archivist.types import UsageError

ProgressFn = Callable[[str, int, int], None]
Split = Literal["all", "holdout", "train"]
POSITIONS = ("start", "middle", "end")
#: every `HOLDOUT_MOD`-th attack and benign text (by a hash of its text) is never trained on: `--split holdout`
HOLDOUT_MOD = 5
_TRUE = frozenset({"1", "true", "injection", "jailbreak", "attack", "malicious", "unsafe", "prompt_injection"})
_FALSE = frozenset({"0", "false", "benign", "safe", "clean", "normal"})
_BIPIA_TASKS = {"email": "text", "table": "text", "code": "code"}


@dataclass(frozen=True, slots=True)
class GuardItem:
    """One text to score: attack (label True) or benign, its category, and where an inserted attack sits."""

    id: str
    text: str
    label: bool
    category: str
    attack: str | None = None
    span: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class GuardEvalConfig:
    """Which items of each dataset to score: the split, an even sample per label, BIPIA contexts per insertion."""

    split: Split = "all"
    sample: int | None = None
    contexts_per_attack: int = 1
    seed: int = 0
    tag: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def parse_split(value: str) -> Split:
    """Return a split name, or raise UsageError listing the three there are."""
    splits: dict[str, Split] = {"all": "all", "holdout": "holdout", "train": "train"}
    if value in splits:
        return splits[value]
    raise UsageError(f"bad split {value!r}: expected all, holdout (never trained on) or train")


def in_holdout(text: str) -> bool:
    """Return whether a text is in the held-out fifth the shipped injection model was never trained on."""
    return zlib.crc32(text.strip().encode()) % HOLDOUT_MOD == 0


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Return the Wilson score interval (95% by default) of a proportion; (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _label(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    name = str(value).strip().lower()
    if name in _TRUE:
        return True
    if name in _FALSE:
        return False
    raise UsageError(f"{where}: label {value!r} is neither an attack ({sorted(_TRUE)}) nor benign ({sorted(_FALSE)})")


def read_direct(path: Path) -> list[GuardItem]:
    """Return the labelled prompts of a JSON Lines file; raise UsageError naming the first bad line."""
    items: list[GuardItem] = []
    tensortrust = path.stem.replace("_robustness", "")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise UsageError(f"{where}: not JSON ({exc})") from None
            if not isinstance(row, dict):
                raise UsageError(f"{where}: expected a JSON object, got {type(row).__name__}")
            rid = str(row.get("id", row.get("_id", row.get("sample_id", lineno))))
            if "attack" in row and "text" not in row:  # Tensor Trust: every row is an attack
                items.append(GuardItem(rid, str(row["attack"]), True, tensortrust))
                continue
            if not isinstance(row.get("text"), str) or "label" not in row:
                raise UsageError(f"{where}: needs a string `text` and a `label` (or an `attack`, as Tensor Trust's)")
            label = _label(row["label"], where)
            named = row["label"] if isinstance(row["label"], str) else None
            category = str(row.get("category") or named or ("attack" if label else "benign"))
            items.append(GuardItem(rid, row["text"], label, category.lower()))
    if not items:
        raise UsageError(f"{path}: no rows")
    return items


def read_queries(folder: Path) -> list[GuardItem]:
    """Return a BEIR folder's test questions as benign items."""
    items = read_direct_rows(folder / "queries.jsonl")
    return [GuardItem(f"q{qid}", text, False, "question") for qid, text in items]


def read_direct_rows(path: Path) -> list[tuple[str, str]]:
    """Return the (`_id`, `text`) of each row of a BEIR JSON Lines file."""
    with path.open(encoding="utf-8") as f:
        return [(str(r["_id"]), str(r["text"])) for r in map(json.loads, f) if r.get("text")]


def bipia_split(folder: Path) -> str:
    """Return the split a BIPIA folder holds (`train` for `email_train.jsonl`…); raise UsageError if it is none."""
    for p in sorted(folder.glob("text_attack_*.json")):
        return p.stem.removeprefix("text_attack_")
    raise UsageError(f"{folder}: not a BIPIA folder (no text_attack_SPLIT.json)")


def bipia_contexts(folder: Path, task: str, split: str) -> list[str]:
    """Return the contexts of one BIPIA task (code contexts are lists of lines, joined)."""
    path = folder / f"{task}_{split}.jsonl"
    if not path.is_file():
        return []
    out = []
    with path.open(encoding="utf-8") as f:
        for row in map(json.loads, f):
            ctx = row["context"]
            out.append("\n".join(ctx) if isinstance(ctx, list) else str(ctx))
    return out


def bipia_attacks(folder: Path, kind: str, split: str) -> dict[str, list[str]]:
    """Return a BIPIA attack file's strings by category (empty when the file is absent)."""
    path = folder / f"{kind}_attack_{split}.json"
    data: dict[str, list[str]] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return data


def insert(context: str, attack: str, position: str) -> tuple[str, tuple[int, int]]:
    """Return the context with the attack inserted at the start, middle (the nearest line or sentence break to the
    middle) or end, and the attack's span in it."""
    if position == "start":
        return f"{attack}\n{context}", (0, len(attack))
    if position == "end":
        return f"{context}\n{attack}", (len(context) + 1, len(context) + 1 + len(attack))
    breaks = [m.end() for m in re.finditer(r"\n|(?<=[.!?])\s", context)] or [len(context) // 2]
    cut = min(breaks, key=lambda b: abs(b - len(context) / 2))
    head = context[:cut].rstrip()
    text = f"{head}\n{attack}\n{context[cut:].lstrip()}"
    return text, (len(head) + 1, len(head) + 1 + len(attack))


def read_bipia(folder: Path, contexts_per_attack: int = 1, seed: int = 0) -> list[GuardItem]:
    """Return a BIPIA folder's attacks inserted into its contexts (each attack × position × N contexts of its task,
    chosen with a fixed seed), and every clean context as a benign item."""
    split = bipia_split(folder)
    rng = random.Random(seed)
    items: list[GuardItem] = []
    for task, kind in _BIPIA_TASKS.items():
        contexts = bipia_contexts(folder, task, split)
        if not contexts:
            continue
        items += [GuardItem(f"{task}-clean-{i}", c, False, f"{task}/clean") for i, c in enumerate(contexts)]
        for category, attacks in bipia_attacks(folder, kind, split).items():
            for a, attack in enumerate(attacks):
                for position in POSITIONS:
                    for c in rng.sample(range(len(contexts)), min(contexts_per_attack, len(contexts))):
                        text, span = insert(contexts[c], attack, position)
                        rid = f"{task}-{category}-{a}-{position}-{c}"
                        items.append(GuardItem(rid, text, True, category.lower(), attack, span))
    if not items:
        raise UsageError(f"{folder}: no contexts ({', '.join(f'{t}_{split}.jsonl' for t in _BIPIA_TASKS)})")
    return items


def dataset_kind(path: Path) -> str:
    """Return how a dataset path is read: direct, queries or bipia; raise UsageError for anything else."""
    if path.is_file() and path.suffix == ".jsonl":
        return "direct"
    if path.is_dir() and any(path.glob("text_attack_*.json")):
        return "bipia"
    if path.is_dir() and (path / "queries.jsonl").is_file():
        return "queries"
    if not path.exists():
        raise UsageError(f"no guard dataset at {path}")
    raise UsageError(
        f"{path}: not a guard dataset (a .jsonl of labelled prompts, a BEIR folder with queries.jsonl, "
        "or a BIPIA folder with text_attack_SPLIT.json)"
    )


def read_dataset(path: Path, config: GuardEvalConfig) -> list[GuardItem]:
    """Return the items of one dataset, narrowed to the config's split and sample."""
    kind = dataset_kind(path)
    if kind == "direct":
        items = read_direct(path)
    elif kind == "queries":
        items = read_queries(path)
    else:
        items = read_bipia(path, config.contexts_per_attack, config.seed)
    if config.split != "all":
        want = config.split == "holdout"
        items = [i for i in items if in_holdout(i.attack or i.text) == want]
    if config.sample is not None:
        kept: list[GuardItem] = []
        for label in (True, False):
            group = {i.id: i for i in items if i.label == label}
            kept += [group[k] for k in spread(list(group), config.sample)]
        items = kept
    if not items:
        raise UsageError(f"{path}: no items left in split {config.split!r}")
    return items


def rates(items: Sequence[GuardItem], flagged: Sequence[bool]) -> dict[str, Any]:
    """Return detection (attacks flagged) and false-positive (benign flagged) counts, rates and Wilson intervals."""
    attacks = [f for i, f in zip(items, flagged, strict=True) if i.label]
    benign = [f for i, f in zip(items, flagged, strict=True) if not i.label]
    out: dict[str, Any] = {"n_attacks": len(attacks), "n_benign": len(benign)}
    if attacks:
        out |= {"detected": sum(attacks), "detection": round(sum(attacks) / len(attacks), 6)}
        out["detection_ci"] = [round(x, 6) for x in wilson(sum(attacks), len(attacks))]
    if benign:
        out |= {"false_positives": sum(benign), "fp_rate": round(sum(benign) / len(benign), 6)}
        out["fp_ci"] = [round(x, 6) for x in wilson(sum(benign), len(benign))]
    return out


def dataset_name(path: Path) -> str:
    """Return the name a dataset is reported under: its folder, or folder/file stem for a file."""
    return f"{path.parent.name}/{path.stem}" if path.is_file() else path.name


def run_guard_eval(
    detector: InjectionDetector,
    paths: Sequence[Path],
    config: GuardEvalConfig,
    *,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Return an eval run record (kind "guard"): per dataset and per category, detection and false-positive rates
    with Wilson 95% intervals at the detector's threshold; per item, whether it was flagged."""
    if not paths:
        raise UsageError("give at least one guard dataset")
    loaded = {dataset_name(p): (p, read_dataset(p, config)) for p in paths}
    per_dataset: dict[str, Any] = {}
    per_query: dict[str, dict[str, float]] = {}
    queries: dict[str, str] = {}
    latencies: list[float] = []
    all_items: list[GuardItem] = []
    all_flags: list[bool] = []
    for d, (name, (_, items)) in enumerate(loaded.items()):
        scores: list[float] = []
        for i, item in enumerate(items):
            t0 = time.perf_counter()
            scores += detector.score([item.text])
            latencies.append((time.perf_counter() - t0) * 1000)
            if progress and (i % 25 == 0 or i == len(items) - 1):
                progress(f"{name} ({d + 1}/{len(loaded)})", i + 1, len(items))
        flags = [s >= detector.threshold for s in scores]
        categories = sorted({i.category for i in items})
        per_dataset[name] = rates(items, flags) | {
            "categories": {
                c: rates(*zip(*[(i, f) for i, f in zip(items, flags, strict=True) if i.category == c], strict=True))
                for c in categories
            }
        }
        for item, score, flag in zip(items, scores, flags, strict=True):
            key = f"{name}:{item.id}"
            metric = "detected" if item.label else "false_positive"
            per_query[key] = {metric: float(flag), "score": round(score, 6)}
            queries[key] = item.text[:300]
        all_items += items
        all_flags += flags
    overall = rates(all_items, all_flags)
    metrics: dict[str, float] = {k: overall[k] for k in ("detection", "fp_rate") if k in overall}
    for name, r in per_dataset.items():
        metrics |= {f"{name}/{k}": r[k] for k in ("detection", "fp_rate") if k in r}
    fp = {
        "detector": detector.model_id,
        "threshold": detector.threshold,
        "feature_version": FEATURE_VERSION,
        "code_version": code_version(),
    }
    first = next(iter(loaded.values()))[0]
    dataset = Dataset("+".join(loaded), first, config.split, first, {}, {})
    return {
        **run_header("guard", dataset, config.tag, fp),
        "config": {
            "datasets": [str(p) for p in paths],
            "split": config.split,
            "sample": config.sample,
            "contexts_per_attack": config.contexts_per_attack,
            "seed": config.seed,
            **config.extra,
        },
        "metrics": metrics,
        "overall": overall,
        "per_dataset": per_dataset,
        "per_query": per_query,
        "queries": queries,
        "n_queries": len(per_query),
        "timings": {
            "score_s": round(sum(latencies) / 1000, 2),
            "p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p95_ms": round(float(np.percentile(latencies, 95)), 2),
        },
    }


@dataclass(frozen=True, slots=True)
class GuardCheck:
    """One gated rate: the baseline's value and interval, the run's value, and whether it regressed."""

    name: str
    baseline: float
    interval: tuple[float, float]
    current: float | None
    failed: bool
    reason: str


def gate_guard(baseline: dict[str, Any], current: dict[str, Any]) -> list[GuardCheck]:
    """Return the gate's checks: per dataset of the baseline, detection must stay at or above the low end of the
    baseline's Wilson interval and the false-positive rate at or below its high end."""
    checks: list[GuardCheck] = []
    for name, base in baseline["per_dataset"].items():
        now = current["per_dataset"].get(name, {})
        for rate, ci, worse in (("detection", "detection_ci", "below"), ("fp_rate", "fp_ci", "above")):
            if rate not in base:
                continue
            low, high = base[ci]
            value = now.get(rate)
            if value is None:
                checks.append(GuardCheck(f"{name}/{rate}", base[rate], (low, high), None, True, "not measured"))
                continue
            failed = value < low if worse == "below" else value > high
            reason = f"{worse} the baseline's 95% interval [{low:.4f}, {high:.4f}]" if failed else "within"
            checks.append(GuardCheck(f"{name}/{rate}", base[rate], (low, high), value, failed, reason))
    return checks
