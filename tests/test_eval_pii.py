"""`archivist eval pii`: per-kind precision, recall and F1 on Presidio's synthetic PII set, stored and gated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from archivist.evals.pii import GOLD_KINDS, PiiExample, gate_pii, match, read_pii_dataset, score
from archivist.guard.pii import PiiSpan
from archivist.types import UsageError
from conftest import DATASETS
from test_eval_retrieval import ROOT, cli

SYNTH = DATASETS / "presidio_synth_pii"
SAMPLE_BASELINE = ROOT / "evals" / "baseline-pii-sample.json"
needs_synth = pytest.mark.skipif(not SYNTH.exists(), reason=f"dataset not found at {SYNTH}")


def _env(tmp: Path) -> dict[str, str]:
    return {"ARCHIVIST_STORE": f"sqlite:///{tmp / 'runs.db'}", "COLUMNS": "200"}


def test_spans_match_exactly_or_by_overlap_each_one_once() -> None:
    text = "Ann Lee lives at 5 Elm Street, Oslo."
    gold = [PiiSpan("PERSON", 0, 7, 1.0), PiiSpan("LOCATION", 17, 29, 1.0), PiiSpan("LOCATION", 31, 35, 1.0)]
    found = [PiiSpan("PERSON", 0, 3, 0.9), PiiSpan("LOCATION", 19, 35, 0.9), PiiSpan("ORGANIZATION", 31, 35, 0.9)]
    assert match(gold, found, "exact") == 0
    # One found span overlapping two labels counts once; a span of another kind never matches.
    assert match(gold, found, "overlap") == 2
    scored = score([PiiExample("0", text, tuple(gold))], [found], ["PERSON", "LOCATION", "ORGANIZATION"])
    loc = scored["per_kind"]["LOCATION"]
    assert (loc["labels"], loc["found"], loc["overlap"]["tp"]) == (2, 1, 1)
    assert loc["overlap"]["precision"] == 1.0 and loc["overlap"]["recall"] == 0.5
    overall = scored["overall"]
    assert (overall["labels"], overall["found"], overall["overlap"]["tp"], overall["exact"]["tp"]) == (3, 3, 2, 0)
    assert scored["per_kind"]["ORGANIZATION"]["overlap"]["precision"] == 0.0


def test_the_dataset_layout_is_read_and_its_labels_mapped_to_our_kinds(tmp_path: Path) -> None:
    rows = [
        {
            "full_text": "Call Ann at 555-0100 in Oslo ",
            "spans": [
                {"entity_type": "PERSON", "start_position": 5, "end_position": 8},
                {"entity_type": "PHONE_NUMBER", "start_position": 12, "end_position": 20},
                {"entity_type": "GPE", "start_position": 24, "end_position": 29},  # trailing space trimmed
                {"entity_type": "DATE_TIME", "start_position": 0, "end_position": 4},  # not a kind we detect
            ],
        },
        {"full_text": "What are my options?", "spans": []},
    ]
    (tmp_path / "synth_dataset_v2.json").write_text(json.dumps(rows))
    first, clean = read_pii_dataset(tmp_path)
    assert [(s.kind, first.text[s.start : s.end]) for s in first.spans] == [
        ("PERSON", "Ann"),
        ("PHONE", "555-0100"),
        ("LOCATION", "Oslo"),
    ]
    assert clean.spans == () and len(read_pii_dataset(tmp_path, limit=1)) == 1
    assert GOLD_KINDS["STREET_ADDRESS"] == GOLD_KINDS["GPE"] == "LOCATION"
    (tmp_path / "synth_dataset_v2.json").write_text(json.dumps([{"full_text": "x", "spans": [{"start": 0}]}]))
    with pytest.raises(UsageError, match="sentence 1 needs 'full_text' and 'spans'"):
        read_pii_dataset(tmp_path)
    with pytest.raises(UsageError, match="no PII dataset at"):
        read_pii_dataset(tmp_path / "missing.json")


def test_the_cli_refuses_bad_usage_with_exit_2(tmp_path: Path) -> None:
    env = _env(tmp_path)
    proc = cli("eval", "pii", str(tmp_path / "nowhere"), env=env)
    assert proc.returncode == 2 and "no PII dataset at" in proc.stderr
    proc = cli("eval", "pii", env=env)
    assert proc.returncode == 2 and "give a DATASET" in proc.stderr
    proc = cli("eval", "pii", str(tmp_path), "--level", "huge", env=env)
    assert proc.returncode == 2 and "unknown --level 'huge'" in proc.stderr
    proc = cli("eval", "pii", "--baseline", str(tmp_path / "none.json"), env=env)
    assert proc.returncode == 2 and "no baseline file at" in proc.stderr


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run `eval pii` on the first 120 sentences once, saving the run as a baseline."""
    tmp = tmp_path_factory.mktemp("eval-pii")
    baseline = tmp / "baseline.json"
    proc = cli("eval", "pii", str(SYNTH), "--limit", "120", "--json", "--save-baseline", str(baseline), env=_env(tmp))
    return {"proc": proc, "baseline": baseline, "tmp": tmp}


@needs_synth
def test_a_run_reports_each_kind_both_ways_and_is_stored(sample_run: dict[str, Any]) -> None:
    proc = sample_run["proc"]
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)  # one JSON document, nothing else on stdout
    assert run["kind"] == "pii" and run["dataset"] == "presidio_synth_pii" and run["n_queries"] == 120
    assert run["fingerprint"]["pii"]["level"] == "ner" and run["fingerprint"]["pii"]["model"] == "3.8.0"
    assert set(run["per_kind"]) == {"EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "NATIONAL_ID", "PERSON", "LOCATION",
                                    "ORGANIZATION"}  # fmt: skip
    metrics = run["metrics"]
    for how in ("exact", "overlap"):
        for m in ("precision", "recall", "f1"):
            assert 0.0 <= metrics[f"{m}_{how}"] <= 1.0
            assert f"PERSON/{m}_{how}" in metrics
        assert metrics[f"recall_{how}"] == pytest.approx(run["overall"][how]["tp"] / run["overall"]["labels"], abs=1e-4)
    # Overlap is the looser match; checksummed card numbers are found in full.
    assert metrics["f1_overlap"] >= metrics["f1_exact"] > 0.3
    assert metrics["CREDIT_CARD/precision_exact"] == 1.0
    assert metrics["sentences_per_s"] > 10 and 0.0 <= metrics["clean_flagged"] < 0.5
    runs = json.loads(cli("eval", "runs", "--json", env=_env(sample_run["tmp"])).stdout)
    assert runs[0]["id"] == run["id"] and runs[0]["kind"] == "pii"


@needs_synth
def test_the_gate_fails_on_a_drop_and_refuses_unlike_runs(sample_run: dict[str, Any]) -> None:
    tmp: Path = sample_run["tmp"]
    saved = json.loads(sample_run["baseline"].read_text())
    better = {**saved, "id": "better000000", "metrics": {**saved["metrics"]}}
    better["metrics"]["PERSON/f1_overlap"] = saved["metrics"]["PERSON/f1_overlap"] + 0.05
    path = tmp / "better.json"
    path.write_text(json.dumps(better))
    proc = cli("eval", "pii", "--baseline", str(path), env=_env(tmp))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL PERSON/f1_overlap" in proc.stdout and "ok f1_overlap" in proc.stdout
    # The gate compares like with like: another sample is refused, not judged.
    with pytest.raises(UsageError, match="differ in sample"):
        gate_pii(saved, {**saved, "config": {**saved["config"], "limit": 300}})


@needs_synth
def test_the_committed_sample_baseline_gate_passes(tmp_path: Path) -> None:
    proc = cli("eval", "pii", "--baseline", str(SAMPLE_BASELINE), "--json", env=_env(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdict = json.loads(proc.stdout)
    assert verdict["gate"]["passed"] is True and verdict["n_queries"] == 300
    baseline = json.loads(SAMPLE_BASELINE.read_text())
    checked = {c["metric"] for c in verdict["gate"]["checks"]}
    assert {"f1_overlap", "PERSON/f1_overlap", "CREDIT_CARD/f1_overlap"} <= checked
    for c in verdict["gate"]["checks"]:
        # The detector is deterministic: the same data and model give the baseline's figures.
        assert c["current"] == pytest.approx(baseline["metrics"][c["metric"]], abs=1e-4)
