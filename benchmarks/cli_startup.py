"""How long the `archivist` command takes to start: `--help`, `--version` and `search --help`.

    python benchmarks/cli_startup.py [--runs 15] [--command PATH] [--before PATH]

Each case is a fresh process, timed wall-clock from start to exit; the table shows the median of `--runs` runs and
that median less the baseline, `python -c pass` with the same interpreter measured in the same run (what any
Python command costs before it imports anything). `--before` times another build of the command (say, a checkout
of an older commit run as `PYTHONPATH=old/src python -m archivist.cli`) in the same run. Cases take turns run by
run, so a machine that gets busier part way slows them all alike. Writes benchmarks/results/cli_startup.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import print_table, write_result

ARGS = {"--help": ["--help"], "--version": ["--version"], "search --help": ["search", "--help"]}


def console_script() -> str:
    """Return the `archivist` console script next to this interpreter (the one `pip install` made), else on PATH."""
    beside = Path(sys.executable).parent / "archivist"
    found = str(beside) if beside.is_file() else shutil.which("archivist")
    if found is None:
        raise SystemExit("no `archivist` command: install the package (pip install -e .) or pass --command")
    return found


def timed_run(argv: list[str]) -> tuple[float, int]:
    """Return the wall-clock seconds of one run of `argv` and its exit code."""
    start = time.perf_counter()
    code = subprocess.run(argv, capture_output=True).returncode
    return time.perf_counter() - start, code


def main() -> None:
    """Time each case, print the table and write the result JSON (returns nothing)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per case (default 15)")
    parser.add_argument("--command", default=None, help="the archivist executable (default: beside this Python)")
    parser.add_argument("--before", default=None, help="another archivist executable to time in the same run")
    args = parser.parse_args()
    commands = {"": args.command or console_script()}
    if args.before:
        commands["before: "] = args.before
    cases = {"python -c pass (baseline)": [sys.executable, "-c", "pass"]}
    for label, command in commands.items():
        cases.update({f"{label}archivist {name}": [command, *argv] for name, argv in ARGS.items()})
    samples: dict[str, list[float]] = {name: [] for name in cases}
    codes = {name: timed_run(argv)[1] for name, argv in cases.items()}  # untimed: warms the file cache
    for _ in range(args.runs):
        for name, argv in cases.items():
            samples[name].append(timed_run(argv)[0])
    baseline = statistics.median(samples["python -c pass (baseline)"])
    rows = []
    for name, times in samples.items():
        median = statistics.median(times)
        over = round(1000 * (median - baseline), 1)
        rows.append({"case": name, "median_ms": round(1000 * median, 1), "over_baseline_ms": over, "exit": codes[name]})
    print_table(f"CLI startup, median of {args.runs} runs (an older archivist without --version exits 2)", rows)
    write_result("cli_startup", {"runs": args.runs, "commands": commands, "cases": rows})


if __name__ == "__main__":
    main()
