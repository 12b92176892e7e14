"""The regression gate: fail only on a drop that is both larger than allowed and statistically significant."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from archivist.evals.significance import Comparison, compare


@dataclass(frozen=True, slots=True)
class GateCheck:
    """One metric's verdict."""

    comparison: Comparison
    failed: bool
    reason: str


@dataclass(slots=True)
class GateResult:
    """All metrics' verdicts and the queries that got worse on the first failing (or first) metric."""

    checks: list[GateCheck]
    worse: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Return whether no metric failed."""
        return not any(c.failed for c in self.checks)


def run_gate(
    baseline: dict[str, Any],
    current: dict[str, Any],
    metrics: list[str],
    *,
    max_drop: float,
    alpha: float = 0.05,
    show_worse: int = 10,
    exact: bool = False,
) -> GateResult:
    """Return the gate's verdict on `current` against `baseline` for each metric. `exact`: the runs are
    deterministic (the same inputs give the same scores), so any drop beyond `max_drop` fails, significant or not."""
    checks = []
    for metric in metrics:
        c = compare(baseline["per_query"], current["per_query"], metric)
        drop = -c.delta
        if drop > max_drop and exact:
            reason = f"dropped {drop:.4f} > {max_drop} (a deterministic run: every drop is real)"
            failed = True
        elif drop > max_drop and c.p_value < alpha:
            reason = f"dropped {drop:.4f} > {max_drop} (p={c.p_value:.4f} < {alpha})"
            failed = True
        elif drop > max_drop:
            reason = f"dropped {drop:.4f} but not significantly (p={c.p_value:.4f} ≥ {alpha})"
            failed = False
        else:
            reason = f"change {c.delta:+.4f} within {max_drop}"
            failed = False
        checks.append(GateCheck(c, failed, reason))
    focus = next((c.comparison.metric for c in checks if c.failed), metrics[0] if metrics else None)
    worse: list[dict[str, Any]] = []
    if focus is not None:
        texts = {**baseline.get("queries", {}), **current.get("queries", {})}
        for qid, before in baseline["per_query"].items():
            after = current["per_query"].get(qid)
            # Answer runs mix kinds of question: only those measured on the focus metric count.
            if after is None or focus not in before or focus not in after or after[focus] >= before[focus]:
                continue
            worse.append(
                {
                    "query_id": qid,
                    "query": texts.get(qid, ""),
                    "metric": focus,
                    "before": before[focus],
                    "after": after[focus],
                }
            )
        worse.sort(key=lambda w: w["after"] - w["before"])
    return GateResult(checks, worse[:show_worse])
