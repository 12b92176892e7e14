"""Precision and recall of the output leak checks (`archivist.guard.output`) on Tensor Trust's prompt-extraction
detection set: 230 model outputs, half of which leak their defence's access code (directly or not).

Two detectors are scored: the secret check alone (`leak_score` of the output against the access code: what answers
are checked with, our system prompt being the secret), and the secret check or a disclosure phrase ("my
instructions are", "[Pre-prompt]": `leaks`). Usage: python benchmarks/guard_leakage.py [--data FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import datasets_dir, print_table, write_result

from archivist.evals.guard import wilson
from archivist.guard.output import LEAK_THRESHOLD, leak_score, leaks


def main() -> None:
    """Print the table and write benchmarks/results/guard_leakage.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = datasets_dir() / "tensortrust" / "prompt_extraction_detection.jsonl"
    parser.add_argument("--data", type=Path, default=default)
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    detectors = {
        "secret overlap (answers use this)": lambda r: leak_score(r["llm_output"], r["access_code"]) >= LEAK_THRESHOLD,
        "secret overlap or disclosure phrase": lambda r: leaks(r["llm_output"], [r["access_code"]]),
    }
    table = []
    for name, detect in detectors.items():
        said = [(bool(detect(r)), bool(r["is_prompt_extraction"])) for r in rows]
        tp = sum(p and t for p, t in said)
        fp = sum(p and not t for p, t in said)
        fn = sum(t and not p for p, t in said)
        low, high = wilson(tp, tp + fn)
        table.append(
            {
                "detector": name,
                "outputs": len(rows),
                "leaks": tp + fn,
                "precision": round(tp / max(tp + fp, 1), 3),
                "recall": round(tp / max(tp + fn, 1), 3),
                "recall 95%": f"[{low:.3f}, {high:.3f}]",
                "false positives": fp,
            }
        )
    print_table("Leak checks on Tensor Trust prompt_extraction_detection", table)
    write_result("guard_leakage", {"data": str(args.data), "rows": table})


if __name__ == "__main__":
    main()
