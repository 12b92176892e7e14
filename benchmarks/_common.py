"""Shared helpers for the benchmark scripts: dataset paths, tables, JSON results."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
console = Console(stderr=True)


def datasets_dir() -> Path:
    """Return the folder holding the BEIR-layout datasets (`$ARCHIVIST_DATASETS` or ../shared/datasets)."""
    return Path(os.environ.get("ARCHIVIST_DATASETS", ROOT.parent / "shared" / "datasets"))


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """Return p50/p95/p99/mean of latency samples in milliseconds."""
    import numpy as np

    arr = np.asarray(samples_ms)
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p95_ms": round(float(np.percentile(arr, 95)), 2),
        "p99_ms": round(float(np.percentile(arr, 99)), 2),
        "mean_ms": round(float(arr.mean()), 2),
        "n": len(samples_ms),
    }


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    """Print rows (dicts with the same keys) as a table on stdout."""
    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key)
    for row in rows:
        table.add_row(*(f"{v:,.2f}" if isinstance(v, float) else str(v) for v in row.values()))
    Console().print(table)


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write a benchmark's result JSON (with machine info) and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {
        "benchmark": name,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        **data,
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    console.print(f"wrote {path}")
    return path
