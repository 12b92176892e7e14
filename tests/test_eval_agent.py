"""Agent evals end to end: task files checked line by line, a scripted model on 127.0.0.1 driving the real agent
through `archivist eval agent`, and the no-model gate over the committed task files, as `make test` runs it."""

from __future__ import annotations

import copy
import json
import runpy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from archivist.evals.agent import GATED_METRICS, fact_present, read_tasks, source_matches
from archivist.types import UsageError
from conftest import DATASETS, write_files
from fake_servers import ChatServer
from test_eval_retrieval import ROOT, cli

DOCS_TASKS = ROOT / "evals" / "agent" / "docs.jsonl"
COVIDQA_TASKS = ROOT / "evals" / "agent" / "covidqa.jsonl"
DOCS_BASELINE = ROOT / "evals" / "baseline-agent-docs.json"
COVIDQA_BASELINE = ROOT / "evals" / "baseline-agent-covidqa.json"
COVIDQA = DATASETS / "covidqa"
needs_covidqa = pytest.mark.skipif(not COVIDQA.exists(), reason=f"dataset not found at {COVIDQA}")

CORPUS = {
    "retries.md": "# Retries\n\nFailed calls are retried with exponential backoff and jitter, up to three attempts.\n",
    "budgets.md": "# Budgets\n\nEvery API key has a monthly budget in dollars; calls stop when it is spent.\n",
}


def call(name: str, arguments: dict[str, Any], call_id: str = "c1") -> dict[str, Any]:
    """Return one tool call as the model writes it."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def turn(*calls: dict[str, Any], tokens: int = 100) -> dict[str, Any]:
    """Return a scripted model turn that calls these tools, reporting `tokens` used."""
    return {"tool_calls": list(calls), "usage": {"prompt_tokens": tokens - 10, "completion_tokens": 10}}


def final(text: str, tokens: int = 50) -> dict[str, Any]:
    """Return a scripted model turn that answers."""
    return {"content": text, "usage": {"prompt_tokens": tokens - 10, "completion_tokens": 10}}


def write_tasks(path: Path, *lines: dict[str, Any] | str) -> Path:
    """Write a task file of these lines (objects as JSON, strings as they are); return its path."""
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


# --- the task file --------------------------------------------------------------------------------------------


TASK = {"id": "t1", "task": "How often are calls retried?", "facts": ["three attempts"]}


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([TASK, "{not json"], r"tasks.jsonl:2: not JSON"),
        ([TASK, '["a list"]'], r"tasks.jsonl:2: expected a JSON object, got list"),
        ([{"id": "t2", "task": "x"}], r"tasks.jsonl:1: facts: Field required"),
        ([{**TASK, "facts": []}], r"tasks.jsonl:1: facts: List should have at least 1 item"),
        ([{**TASK, "facts": ["ok", "  "]}], r"tasks.jsonl:1: facts: fact 2 is empty"),
        ([{**TASK, "facts": [[]]}], r"tasks.jsonl:1: facts: fact 1 is empty"),
        ([{**TASK, "max_steps": 0}], r"tasks.jsonl:1: max_steps: Input should be greater than or equal to 1"),
        ([{**TASK, "task": "   "}], r"tasks.jsonl:1: task: the task is empty"),
        ([{**TASK, "task": "x" * 8001}], r"tasks.jsonl:1: task: String should have at most 8000 characters"),
        ([{**TASK, "must_cal": ["search_documents"]}], r"tasks.jsonl:1: must_cal: Extra inputs are not permitted"),
        ([TASK, "", {**TASK, "task": "again"}], r"tasks.jsonl:3: task id 't1' is already used on line 1"),
        ([TASK, {"corpus": "docs"}], r"tasks.jsonl:2: a header line \(corpus\) may only be the first line"),
        ([{"corpus": "nowhere"}, TASK], r"its corpus 'nowhere' is not there"),
        ([{"corpus": "."}], r"tasks.jsonl: no tasks"),
    ],
)
def test_a_bad_task_file_is_refused_naming_the_line(tmp_path: Path, lines: list[Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        read_tasks(write_tasks(tmp_path / "tasks.jsonl", *lines))


def test_the_cli_exits_2_on_a_bad_line_and_on_a_tool_the_agent_lacks(tmp_path: Path) -> None:
    write_files(tmp_path / "docs", CORPUS)
    env = {
        "ARCHIVIST_STORE": f"sqlite:///{tmp_path / 'runs.db'}",
        "ARCHIVIST_EVAL_CACHE": str(tmp_path / "cache"),
        "COLUMNS": "400",  # one message a line, however long its path
    }
    bad = write_tasks(tmp_path / "bad.jsonl", {"corpus": "docs"}, TASK, {"id": "t2", "task": "x", "facts": "a"})
    proc = cli("eval", "agent", str(bad), env=env)
    assert proc.returncode == 2 and f"{bad}:3: facts: Input should be a valid list" in proc.stderr
    unknown = write_tasks(tmp_path / "unknown.jsonl", {"corpus": "docs"}, {**TASK, "must_call": ["web_search"]})
    proc = cli("eval", "agent", str(unknown), env=env)
    assert proc.returncode == 2
    assert "task 't1' names tools the agent does not have: web_search (it has answer, " in proc.stderr
    # A bad task late in the file is found before the first task runs: nothing is run, nothing stored.
    late = {"id": "t9", "task": "Anything", "facts": ["x"], "collection": "legal"}
    elsewhere = write_tasks(tmp_path / "elsewhere.jsonl", {"corpus": "docs"}, TASK, late)
    proc = cli("eval", "agent", str(elsewhere), env=env)
    assert proc.returncode == 2 and "task 't9': no collection 'legal'" in proc.stderr
    assert "tasks: 1/" not in proc.stderr


def test_facts_match_ignoring_case_and_whitespace_and_any_alternative_will_do() -> None:
    answer = "Failed calls are retried up to THREE\n  attempts [1]; the breaker opens after 5 consecutive failures."
    assert fact_present(answer, "three attempts")
    assert fact_present(answer, ["four attempts", "5  consecutive failures"])
    assert not fact_present(answer, "four attempts")
    assert not fact_present(answer, "three  attempts!")  # punctuation counts: a fact is text the answer states
    assert fact_present("ﬁve attempts", "five attempts")  # NFKC: a ligature is its letters
    assert source_matches("docs/llm.md", "llm.md") and source_matches("/data/c.jsonl#630", "630")
    assert not source_matches("docs/allm.md", "llm.md") and not source_matches("/data/c.jsonl#1630", "630")


# --- agent mode: a scripted model plans the calls -------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer().running() as s:
        yield s


def test_agent_mode_scores_facts_tools_steps_tokens_and_citations(tmp_path: Path, server: ChatServer) -> None:
    write_files(tmp_path / "docs", CORPUS)
    tasks = write_tasks(
        tmp_path / "tasks.jsonl",
        {"corpus": "docs"},
        {
            "id": "retries",
            "task": "How often are failed calls retried?",
            "facts": ["three attempts", ["backoff", "back-off"]],
            "must_call": ["search_documents"],
            "must_not_call": ["list_documents"],
            "gold_sources": ["retries.md"],
        },
        {
            "id": "budgets",
            "task": "What budget does an API key have?",
            "facts": ["monthly budget"],
            "must_not_call": ["list_documents"],
            "gold_sources": ["budgets.md"],
        },
        {"id": "runaway", "task": "Search until told to stop.", "facts": ["never"], "max_steps": 2},
    )
    server.scripted_messages.extend(
        [
            # retries: one search, then an answer citing the passage it read (ref 1)
            turn(call("search_documents", {"query": "retried exponential backoff", "k": 1}), tokens=120),
            final("Failed calls are retried with exponential backoff and jitter, up to three attempts [1].", 80),
            # budgets: a forbidden call first, then an answer that cites a passage it never read
            turn(call("list_documents", {"limit": 5})),
            final("Every API key has a monthly budget in dollars [7]."),
            # runaway: its step limit (2) stops it before the second model call
            turn(call("search_documents", {"query": "stop"})),
        ]
    )
    env = {
        "ARCHIVIST_STORE": f"sqlite:///{tmp_path / 'runs.db'}",
        "ARCHIVIST_EVAL_CACHE": str(tmp_path / "cache"),
        "ARCHIVIST_LLM_URL": server.url,
        "ARCHIVIST_LLM_MODEL": "m",
        "ARCHIVIST_LLM_MAX_RETRIES": "0",
        "ARCHIVIST_LLM_CACHE": "false",
    }
    baseline = tmp_path / "baseline.json"
    proc = cli("eval", "agent", str(tasks), "--tag", "scripted", "--save-baseline", str(baseline), "--json", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads(proc.stdout)
    assert record["kind"] == "agent" and record["tag"] == "scripted" and record["n_queries"] == 3
    assert record["fingerprint"]["agent"]["mode"] == "model"
    rows, runs = record["per_query"], record["runs"]

    assert runs["retries"]["status"] == "succeeded" and runs["retries"]["tools_called"] == ["search_documents"]
    retries = rows["retries"]
    assert retries["success"] == 1.0 and retries["fact_recall"] == 1.0 and retries["calls_ok"] == 1.0
    assert retries["citations_verified"] == 1.0 and retries["gold_source_cited"] == 1.0
    assert retries["citation_correctness"] == 1.0
    assert (retries["steps"], retries["tokens"]) == (3.0, 200.0)

    # The facts are there, but a forbidden tool was called and the citation names nothing it read.
    assert runs["budgets"]["tools_called"] == ["list_documents"]
    budgets = rows["budgets"]
    assert budgets["fact_recall"] == 1.0 and budgets["calls_ok"] == 0.0 and budgets["success"] == 0.0
    assert budgets["citation_correctness"] == 0.0 and budgets["gold_source_cited"] == 0.0

    assert runs["runaway"]["status"] == "failed" and "step limit" in runs["runaway"]["reason"]
    assert rows["runaway"]["success"] == 0.0 and rows["runaway"]["steps"] == 2.0
    assert runs["runaway"]["missing_facts"] == ["never"]

    metrics = record["metrics"]
    assert metrics["success"] == pytest.approx(1 / 3, abs=1e-6)
    assert metrics["fact_recall"] == pytest.approx(2 / 3, abs=1e-6)
    assert metrics["gold_source_cited"] == 0.5  # over the two tasks that name gold sources
    assert metrics["tokens"] == pytest.approx((200 + 150 + 100) / 3, abs=1e-6)
    assert 0 < metrics["latency_p50_ms"] <= metrics["latency_p95_ms"]
    assert record["totals"]["tokens"] == 450

    # Stored like every eval run: listed, compared, gated.
    listed = json.loads(cli("eval", "runs", "--json", env=env).stdout)
    assert [(r["id"], r["kind"], r["dataset"]) for r in listed] == [(record["id"], "agent", "tasks")]
    proc = cli("eval", "compare", record["id"], str(baseline), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert [c["metric"] for c in json.loads(proc.stdout)["comparisons"]][:3] == list(GATED_METRICS)
    proc = cli("eval", "gate", "--baseline", str(baseline), "--run", record["id"], env=env)
    assert proc.returncode == 0 and "ok success" in proc.stdout, proc.stdout + proc.stderr


# --- the committed task files and their gate, with no model ---------------------------------------------------


def test_every_docs_fact_is_in_a_gold_document_as_the_docs_are_today() -> None:
    tasks = read_tasks(DOCS_TASKS)
    assert len(tasks.tasks) >= 20 and tasks.corpus == ROOT / "docs"
    for task in tasks.tasks:
        text = " ".join((ROOT / "docs" / g).read_text(encoding="utf-8") for g in task.gold_sources)
        assert all(fact_present(text, f) for f in task.facts), task.id


@needs_covidqa
def test_the_covidqa_task_file_is_what_its_builder_writes_and_needs_two_papers() -> None:
    build = runpy.run_path(str(ROOT / "evals" / "agent" / "build_covidqa.py"))["build"]
    lines = [json.loads(line) for line in COVIDQA_TASKS.read_text(encoding="utf-8").splitlines()]
    assert build(COVIDQA, COVIDQA_TASKS) == lines
    papers = {}
    with (COVIDQA / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            papers[row["_id"]] = row["text"]
    tasks = read_tasks(COVIDQA_TASKS)
    assert len(tasks.tasks) >= 20 and tasks.documents is not None
    for task in tasks.tasks:
        first, second = task.gold_sources
        assert first != second and {first, second} <= set(tasks.documents)
        assert fact_present(papers[first], task.facts[0]) and fact_present(papers[second], task.facts[1])


def _gate(baseline: Path, tmp: Path) -> dict[str, Any]:
    env = {"ARCHIVIST_STORE": f"sqlite:///{tmp / 'runs.db'}", "ARCHIVIST_EVAL_CACHE": str(tmp / "cache")}
    return {"proc": cli("eval", "gate", "--baseline", str(baseline), "--json", env=env), "env": env}


@pytest.fixture(scope="module")
def docs_gate(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the docs agent gate once, with no model configured (workflow mode), against the committed baseline."""
    return _gate(DOCS_BASELINE, tmp_path_factory.mktemp("agent-gate"))


def _passes_and_reproduces(gated: dict[str, Any], baseline_path: Path) -> None:
    proc = gated["proc"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdict = json.loads(proc.stdout)
    assert verdict["passed"] is True
    assert [c["metric"] for c in verdict["checks"]] == list(GATED_METRICS)
    baseline = json.loads(baseline_path.read_text())
    assert baseline["fingerprint"]["agent"]["mode"] == "workflow"
    for check in verdict["checks"]:
        # Workflow mode is deterministic: the same code, settings and documents give the baseline's numbers.
        assert check["n"] == baseline["n_queries"]
        assert check["mean_b"] == pytest.approx(baseline["metrics"][check["metric"]], abs=0.05)
    runs = json.loads(cli("eval", "runs", "--json", env=gated["env"]).stdout)
    assert runs[0]["kind"] == "agent" and runs[0]["tag"] == "gate"


def test_the_docs_agent_gate_passes_without_a_model(docs_gate: dict[str, Any]) -> None:
    _passes_and_reproduces(docs_gate, DOCS_BASELINE)


def test_the_docs_agent_gate_fails_when_tasks_stop_succeeding(docs_gate: dict[str, Any], tmp_path: Path) -> None:
    worse = copy.deepcopy(json.loads(DOCS_BASELINE.read_text()))
    worse["id"] = "degraded0000"
    # Two of 22 tasks stop succeeding: too few for a significance test, but a workflow run is deterministic, so
    # the gate counts every drop beyond --max-drop.
    for values in [v for v in worse["per_query"].values() if v["success"] == 1.0][:2]:
        values["success"] = 0.0
    path = tmp_path / "degraded.json"
    path.write_text(json.dumps(worse))
    proc = cli("eval", "gate", "--baseline", str(DOCS_BASELINE), "--run", str(path), env=docs_gate["env"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL success" in proc.stdout and "ok fact_recall" in proc.stdout
    assert "a deterministic run: every drop is real" in " ".join(proc.stdout.split())
    # A run made with a model is not gated against a workflow baseline.
    model_run = copy.deepcopy(worse)
    model_run["id"], model_run["fingerprint"]["agent"]["mode"] = "modelrun0000", "model"
    path.write_text(json.dumps(model_run))
    proc = cli("eval", "gate", "--baseline", str(DOCS_BASELINE), "--run", str(path), env=docs_gate["env"])
    assert proc.returncode == 2 and "measured in workflow mode and this run in model mode" in " ".join(
        proc.stderr.split()
    )


@needs_covidqa
def test_the_covidqa_agent_gate_passes_without_a_model(tmp_path_factory: pytest.TempPathFactory) -> None:
    _passes_and_reproduces(_gate(COVIDQA_BASELINE, tmp_path_factory.mktemp("agent-covidqa")), COVIDQA_BASELINE)
