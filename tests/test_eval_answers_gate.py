"""The answer-quality gate: a COVID-QA slice re-asked against the committed answers baseline, as CI runs it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import DATASETS
from test_eval_retrieval import ROOT, cli

BASELINE = ROOT / "evals" / "baseline-answers.json"
pytestmark = pytest.mark.skipif(
    not (DATASETS / "covidqa").exists(), reason=f"dataset not found at {DATASETS / 'covidqa'}"
)


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the answers gate once against the committed baseline; return the environment and the verdict."""
    tmp = tmp_path_factory.mktemp("answer-gate")
    env = {"ARCHIVIST_STORE": f"sqlite:///{tmp / 'runs.db'}", "ARCHIVIST_EVAL_CACHE": str(tmp / "cache")}
    proc = cli("eval", "gate", "--baseline", str(BASELINE), "--json", env=env)
    return {"proc": proc, "env": env}


def test_answers_gate_reproduces_the_baseline_and_passes(gated: dict[str, Any]) -> None:
    proc = gated["proc"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdict = json.loads(proc.stdout)
    assert verdict["passed"] is True
    assert {c["metric"] for c in verdict["checks"]} == {"gold_doc_cited", "span_in_cited"}
    baseline = json.loads(BASELINE.read_text())
    for check in verdict["checks"]:
        # Extractive answers are deterministic: the same code and settings give the baseline's numbers.
        assert check["n"] == baseline["n_queries"]
        assert check["mean_b"] == pytest.approx(baseline["metrics"][check["metric"]], abs=0.02)
    runs = json.loads(cli("eval", "runs", "--json", env=gated["env"]).stdout)
    assert runs[0]["kind"] == "answers" and runs[0]["tag"] == "gate"


def test_answers_gate_fails_when_answers_stop_quoting_the_gold_span(gated: dict[str, Any], tmp_path: Path) -> None:
    worse = copy.deepcopy(json.loads(BASELINE.read_text()))
    worse["id"] = "degraded0000"
    for values in worse["per_query"].values():
        if "span_in_cited" in values:
            values["span_in_cited"] = 0.0
    path = tmp_path / "degraded.json"
    path.write_text(json.dumps(worse))
    proc = cli("eval", "gate", "--baseline", str(BASELINE), "--run", str(path), env=gated["env"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL span_in_cited" in proc.stdout and "ok gold_doc_cited" in proc.stdout


def test_a_gate_with_nothing_to_check_is_an_error_not_a_pass(gated: dict[str, Any]) -> None:
    proc = cli("eval", "gate", "--baseline", str(BASELINE), "--run", str(BASELINE), "-m", "ndcg@10", env=gated["env"])
    assert proc.returncode == 2 and "none of the metrics to gate" in proc.stderr
    retrieval = ROOT / "evals" / "baseline.json"
    proc = cli("eval", "gate", "--baseline", str(BASELINE), "--run", str(retrieval), env=gated["env"])
    assert proc.returncode == 2 and "cannot gate a retrieval run against a answers baseline" in proc.stderr
