"""Retrieval evals end to end: a SciFact slice, stored runs, compare, report, and the CI regression gate."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from archivist.evals.datasets import Slice, load_dataset, read_qrels
from archivist.evals.gate import run_gate
from archivist.types import UsageError
from conftest import DATASETS

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "evals" / "baseline.json"
SCIFACT = DATASETS / "scifact"
pytestmark = pytest.mark.skipif(not SCIFACT.exists(), reason=f"dataset not found at {SCIFACT}")


def cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the archivist CLI and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "archivist.cli", *args],
        cwd=cwd,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")}, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the CI gate once against the committed baseline; return paths and the gate's JSON verdict."""
    tmp = tmp_path_factory.mktemp("evals")
    env = {"ARCHIVIST_STORE": f"sqlite:///{tmp / 'runs.db'}", "ARCHIVIST_EVAL_CACHE": str(tmp / "cache")}
    proc = cli("eval", "gate", "--baseline", str(BASELINE), "--max-drop", "0.01", "--json", env=env)
    return {"proc": proc, "env": env, "tmp": tmp}


def test_gate_passes_on_the_committed_baseline(gated: dict[str, Any]) -> None:
    proc = gated["proc"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdict = json.loads(proc.stdout)
    assert verdict["passed"] is True
    assert {c["metric"] for c in verdict["checks"]} == {"ndcg@10", "recall@100"}
    baseline = json.loads(BASELINE.read_text())
    # The same code and settings must reproduce the baseline (the pipeline is deterministic).
    for check in verdict["checks"]:
        assert check["mean_b"] == pytest.approx(baseline["metrics"][check["metric"]], abs=0.02)


def test_runs_are_stored_with_fingerprint_and_listed(gated: dict[str, Any]) -> None:
    proc = cli("eval", "runs", "--json", env=gated["env"])
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(proc.stdout)
    assert len(runs) == 1 and runs[0]["dataset"] == "scifact" and runs[0]["tag"] == "gate"
    assert runs[0]["slice"] == json.loads(BASELINE.read_text())["slice"]
    assert 0.0 < runs[0]["metrics"]["ndcg@10"] <= 1.0


def test_gate_fails_on_a_significant_drop_and_names_the_queries(gated: dict[str, Any], tmp_path: Path) -> None:
    baseline = json.loads(BASELINE.read_text())
    worse = copy.deepcopy(baseline)
    worse["id"] = "degraded0000"
    for values in worse["per_query"].values():
        values["ndcg@10"] *= 0.5
    path = tmp_path / "degraded.json"
    path.write_text(json.dumps(worse))
    proc = cli("eval", "gate", "--baseline", str(BASELINE), "--run", str(path), env=gated["env"])
    assert proc.returncode == 1
    assert "FAIL ndcg@10" in proc.stdout and "queries that got worse" in proc.stdout


def test_compare_and_report(gated: dict[str, Any], tmp_path: Path) -> None:
    run_id = json.loads(gated["proc"].stdout)["run"]
    proc = cli("eval", "compare", str(BASELINE), run_id, "--json", env=gated["env"])
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    ndcg = next(c for c in result["comparisons"] if c["metric"] == "ndcg@10")
    assert ndcg["n"] == json.loads(BASELINE.read_text())["n_queries"] and 0 <= ndcg["p_value"] <= 1
    html = tmp_path / "report.html"
    proc = cli("eval", "report", run_id, "--html", str(html), env=gated["env"])
    assert proc.returncode == 0, proc.stderr
    page = html.read_text()
    assert "<svg" in page and "ndcg@10" in page and run_id in page


def test_gate_logic_needs_both_a_large_and_a_significant_drop() -> None:
    base = {"per_query": {str(i): {"m@1": 0.8} for i in range(40)}, "queries": {}}
    small = {"per_query": {str(i): {"m@1": 0.8 - (0.01 if i % 2 else 0.0)} for i in range(40)}}
    noisy = {"per_query": {str(i): {"m@1": 0.8 + (0.5 if i == 0 else -0.03 if i < 3 else 0.0)} for i in range(40)}}
    big = {"per_query": {str(i): {"m@1": 0.6} for i in range(40)}}
    assert run_gate(base, small, ["m@1"], max_drop=0.01).passed  # drop 0.005 ≤ max_drop
    assert run_gate(base, noisy, ["m@1"], max_drop=0.0).passed  # a rise overall
    result = run_gate(base, big, ["m@1"], max_drop=0.01)
    assert not result.passed and len(result.worse) == 10


def test_slices_are_deterministic_and_keep_the_relevant_documents(tmp_path: Path) -> None:
    a = load_dataset(SCIFACT, "test", Slice(10, 50), work_dir=tmp_path)
    b = load_dataset(SCIFACT, "test", Slice(10, 50), work_dir=tmp_path)
    assert a.queries == b.queries and len(a.queries) == 10
    ids = {json.loads(line)["_id"] for line in a.corpus.read_text().splitlines()}
    assert {d for rel in a.qrels.values() for d in rel} <= ids
    assert len(ids) <= 50 + sum(len(r) for r in a.qrels.values())
    train = load_dataset(SCIFACT, "train")
    assert len(train.queries) > 500 and not set(train.queries) & set(load_dataset(SCIFACT, "test").queries)


def test_bad_datasets_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no dataset folder"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "corpus.jsonl").write_text("")
    with pytest.raises(UsageError, match="no test split"):
        load_dataset(tmp_path)
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\n")
    with pytest.raises(UsageError, match="expected 3 tab-separated fields"):
        read_qrels(tmp_path / "qrels.tsv")
    proc = cli("eval", "retrieval", str(tmp_path / "nope"), env={"ARCHIVIST_STORE": f"sqlite:///{tmp_path / 'r.db'}"})
    assert proc.returncode == 2 and "no dataset folder" in proc.stderr
