"""Paired comparison of two runs on the same queries: randomization test and bootstrap confidence interval."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from archivist.types import UsageError

#: Upper bound on the random matrix drawn at once (trials x queries), so memory stays flat for large query sets.
_BLOCK_CELLS = 1 << 22


@dataclass(frozen=True)
class Comparison:
    """How run b differs from run a on one metric over the queries both were evaluated on."""

    metric: str
    mean_a: float
    mean_b: float
    delta: float  # mean_b - mean_a
    p_value: float  # two-sided paired randomization (sign-flip) test on per-query differences
    ci_low: float  # 95% percentile-bootstrap interval of the mean difference
    ci_high: float
    n: int
    wins: int  # queries where b > a
    losses: int  # queries where b < a
    ties: int


def compare(
    per_query_a: Mapping[str, Mapping[str, float]],
    per_query_b: Mapping[str, Mapping[str, float]],
    metric: str,
    *,
    trials: int = 10_000,
    seed: int = 0,
) -> Comparison:
    """Return the Comparison of b against a on `metric`, pairing the queries present in both."""
    if trials < 1:
        raise UsageError(f"trials must be at least 1, got {trials}")
    # Sorted so that the same inputs meet the same random draws whatever the dicts' insertion order.
    common = sorted(per_query_a.keys() & per_query_b.keys())
    if not common:
        raise UsageError("the two runs have no query in common")
    # An answer run holds several kinds of question (answerable, unanswerable…), each with its own metrics.
    qids = [q for q in common if metric in per_query_a[q] and metric in per_query_b[q]]
    if not qids:
        raise UsageError(f"metric {metric!r} is missing from the per-query results")
    a = np.array([per_query_a[q][metric] for q in qids], dtype=np.float64)
    b = np.array([per_query_b[q][metric] for q in qids], dtype=np.float64)
    diff = b - a
    rng = np.random.default_rng(seed)
    low, high = _bootstrap_ci(diff, trials, rng)
    return Comparison(
        metric=metric,
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        delta=float(diff.mean()),
        p_value=_randomization_p(diff, trials, rng),
        ci_low=low,
        ci_high=high,
        n=len(qids),
        wins=int((diff > 0).sum()),
        losses=int((diff < 0).sum()),
        ties=int((diff == 0).sum()),
    )


def _randomization_p(diff: npt.NDArray[np.float64], trials: int, rng: np.random.Generator) -> float:
    """Return the two-sided sign-flip p-value of the mean difference, smoothed as (extreme + 1) / (trials + 1)."""
    observed = abs(float(diff.sum()))
    # Flipped and unflipped sums of the same numbers can differ in the last bits; don't let that decide "as extreme".
    tolerance = 1e-10 * float(np.abs(diff).sum())
    total = float(diff.sum())
    extreme = 0
    for size in _blocks(trials, diff.size):
        flips = rng.integers(0, 2, size=(size, diff.size), dtype=np.int8)
        # Negating the flipped entries turns the sum s into s - 2 * (sum of flipped entries).
        sums = total - 2.0 * (flips @ diff)
        extreme += int((np.abs(sums) >= observed - tolerance).sum())
    return (extreme + 1) / (trials + 1)


def _bootstrap_ci(diff: npt.NDArray[np.float64], trials: int, rng: np.random.Generator) -> tuple[float, float]:
    """Return the 2.5th and 97.5th percentiles of the mean difference over bootstrap resamples of the queries."""
    means = np.empty(trials)
    done = 0
    for size in _blocks(trials, diff.size):
        picks = rng.integers(0, diff.size, size=(size, diff.size))
        means[done : done + size] = diff[picks].mean(axis=1)
        done += size
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def _blocks(trials: int, n: int) -> list[int]:
    """Return block sizes summing to `trials`, each small enough that a block x n matrix fits _BLOCK_CELLS."""
    step = max(1, _BLOCK_CELLS // max(n, 1))
    return [min(step, trials - start) for start in range(0, trials, step)]
