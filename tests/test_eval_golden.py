"""The golden set over docs/ as CI runs it: `archivist eval gate` re-asks its questions against the committed baseline
(a significant drop fails), and the scoring counts a fact only inside the quotes."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from archivist.evals.golden import GoldenQuestion, read_golden, score_golden
from archivist.types import UsageError
from test_eval_retrieval import ROOT, cli

BASELINE = ROOT / "evals" / "baseline-golden-docs.json"


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the golden gate once against the committed baseline; return the environment and the process."""
    tmp = tmp_path_factory.mktemp("golden-gate")
    env = {"ARCHIVIST_STORE": f"sqlite:///{tmp / 'runs.db'}", "ARCHIVIST_EVAL_CACHE": str(tmp / "cache")}
    proc = cli(
        "eval",
        "gate",
        "--baseline",
        str(BASELINE),
        "--max-drop",
        "0",
        "--cache-dir",
        str(tmp / "cache"),
        "--json",
        env=env,
    )
    return {"proc": proc, "env": env, "cache": str(tmp / "cache")}


def test_the_golden_gate_reproduces_the_baseline_and_passes(gated: dict[str, Any]) -> None:
    proc = gated["proc"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdict = json.loads(proc.stdout)
    assert verdict["passed"] is True
    assert {c["metric"] for c in verdict["checks"]} == {"correct", "source_cited", "answered", "refused"}
    baseline = json.loads(BASELINE.read_text())
    for check in verdict["checks"]:
        # Deterministic answers over the same docs give the baseline's figures; an edit of docs/ since it was saved
        # may flip a near tie or two (save it again after editing docs/), never more.
        assert check["mean_b"] == pytest.approx(baseline["metrics"][check["metric"]], abs=0.02), check["metric"]
    runs = json.loads(cli("eval", "runs", "--json", env=gated["env"]).stdout)
    assert runs[0]["kind"] == "golden" and runs[0]["tag"] == "gate"


def test_the_golden_gate_fails_when_answers_stop_being_correct(gated: dict[str, Any], tmp_path: Path) -> None:
    worse = copy.deepcopy(json.loads(BASELINE.read_text()))
    worse["id"] = "degraded0000"
    # A third of the correct answers stop being correct: more than the noise of a docs edit, and significant.
    correct = [q for q, row in worse["per_query"].items() if row.get("correct") == 1.0]
    first = correct[0]
    for q in correct[::3]:
        worse["per_query"][q]["correct"] = 0.0
    path = tmp_path / "degraded.json"
    path.write_text(json.dumps(worse))
    proc = cli("eval", "gate", "--baseline", str(BASELINE), "--run", str(path), env=gated["env"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL correct" in proc.stdout and "ok source_cited" in proc.stdout and first in proc.stdout


def test_a_fact_counts_only_inside_the_quoted_text() -> None:
    q = GoldenQuestion("model", "What embedding model is used?", True, "embeddings.md", ("all-MiniLM-L6-v2",))
    quoted = {"citations": [{"source": "docs/embeddings.md", "quote": "The default model is all-MiniLM-L6-v2."}]}
    assert score_golden(q, {"refused": False, **quoted}) == {"answered": 1.0, "correct": 1.0, "source_cited": 1.0}
    # Named in the answer's own words but not in any quote: not shown to the reader from the documents.
    elsewhere = {"answer": "all-MiniLM-L6-v2", "citations": [{"source": "docs/cli.md", "quote": "It loads a model."}]}
    assert score_golden(q, {"refused": False, **elsewhere}) == {"answered": 1.0, "correct": 0.0, "source_cited": 0.0}
    assert score_golden(q, {"refused": True, "citations": []})["answered"] == 0.0
    unanswerable = GoldenQuestion("graphql", "Is there a GraphQL API?", False)
    assert score_golden(unanswerable, {"refused": True}) == {"refused": 1.0}


def test_a_bad_golden_set_is_refused_naming_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "set.jsonl"
    bad.write_text('{"id": "a", "question": "Q?", "answerable": false}\n{"id": "b", "question": "Q?"}\n')
    with pytest.raises(UsageError, match=r"set\.jsonl:2: not a golden question"):
        read_golden(bad)
    bad.write_text('{"id": "a", "question": "Q?", "answerable": true, "source": "x.md"}\n')
    with pytest.raises(UsageError, match="needs its source and facts"):
        read_golden(bad)
    proc = cli("eval", "golden", str(bad), "--corpus", str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "needs its source and facts" in proc.stderr
    for line in (
        '{"id": "a", "question": "Q?", "answerable": "false"}',
        '{"id": "a", "question": "Q?", "answerable": true, "source": "x.md", "facts": "all-MiniLM"}',
    ):
        bad.write_text(line + "\n")
        with pytest.raises(UsageError, match="answerable must be true or false, facts a list of strings"):
            read_golden(bad)


def test_the_table_lists_the_questions_that_went_wrong(gated: dict[str, Any]) -> None:
    args = ("eval", "golden", "evals/golden/docs.jsonl", "--corpus", "docs", "--cache-dir", gated["cache"])
    proc = cli(*args, env=gated["env"])
    assert proc.returncode == 0, proc.stderr
    record = json.loads(cli(*args, "--json", env=gated["env"]).stdout)
    wrong = {q for q, row in record["per_query"].items() if row.get("refused") == 0.0 or row.get("correct") == 0.0}
    right = {q for q, row in record["per_query"].items() if row.get("refused") == 1.0}
    listed = set(re.findall(r"^ ?(\S+) ", proc.stdout, re.M))
    assert wrong <= listed and not right & listed
