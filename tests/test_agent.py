"""The agent end to end: a scripted OpenAI-compatible server on 127.0.0.1 plans the tool calls, the real loop runs
them over a real SQLite store holding documents embedded by the bundled model, and the journal is read back. The
crash scenarios run `archivist agent` as a subprocess and kill it with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import Field

import agent_tools
from archivist.agent import AgentLimits, ToolInputError, tool
from archivist.agent.loop import arguments_hash
from archivist.app import Archivist
from archivist.config import load_settings
from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.store import open_store
from archivist.store.records import AgentRunRecord, AgentStepRecord, EffectRecord
from archivist.store.sqlite import SQLiteStore
from archivist.types import UsageError
from conftest import ingest_corpus
from fake_servers import ChatServer, Fault

ARCHIVIST = str(Path(sys.executable).parent / "archivist")
TOOLS = f"{Path(__file__).parent / 'agent_tools.py'}:TOOLS"
DOCS = {
    "retries.md": "# Retries\n\nFailed calls are retried with exponential backoff and jitter, up to three attempts.\n",
    "budgets.md": "# Budgets\n\nEvery API key has a monthly budget in dollars; calls stop when it is spent.\n",
}


def call(name: str, arguments: dict[str, Any] | str, call_id: str = "c1") -> dict[str, Any]:
    """Return one tool call as the model writes it (arguments as raw JSON text)."""
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": raw}}


def turn(*calls: dict[str, Any], usage: dict[str, int] | None = None) -> dict[str, Any]:
    """Return a scripted model turn that calls these tools."""
    return {"tool_calls": list(calls), **({"usage": usage} if usage else {})}


def final(text: str) -> dict[str, Any]:
    """Return a scripted model turn that answers."""
    return {"content": text}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, embedder: MiniLMEmbedder) -> Path:
    return ingest_corpus(tmp_path_factory.mktemp("agent"), DOCS, embedder)


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer().running() as s:
        yield s


@pytest.fixture
def app(corpus: Path, server: ChatServer, embedder: MiniLMEmbedder) -> Iterator[Archivist]:
    settings = load_settings(
        store=f"sqlite:///{corpus / 'store.db'}", llm_url=server.url, llm_model="m", llm_max_retries=0, llm_cache=False
    )
    with Archivist(settings, open_store(settings.store), embedder) as archivist:
        yield archivist


def doc_id(app: Archivist, name: str) -> str:
    return next(d.id for d in app.store.list_documents() if d.source.endswith(name))


def tool_steps(app: Archivist, run_id: str) -> list[AgentStepRecord]:
    return [s for s in app.store.agent_steps(run_id) if s.kind == "tool"]


# --- tools from functions -------------------------------------------------------------------------------------


def test_a_tools_schema_comes_from_its_type_hints_and_docstring() -> None:
    @tool(effect="idempotent", timeout_s=5)
    def tag_document(document_id: str, tags: list[str], weight: Annotated[int, Field(ge=1, le=5)] = 1) -> str:
        """Tag a document.

        Args:
            document_id: The document to tag.
            tags: Labels to add.
            weight: How strongly.
        """
        return f"{document_id}:{','.join(tags)}:{weight}"

    spec = tag_document.spec()
    assert spec.name == "tag_document" and spec.description == "Tag a document."
    props = spec.parameters["properties"]
    assert props["tags"] == {
        "description": "Labels to add.",
        "items": {"type": "string"},
        "title": "Tags",
        "type": "array",
    }
    assert props["weight"]["maximum"] == 5 and spec.parameters["required"] == ["document_id", "tags"]
    assert tag_document.invoke({"document_id": "d1", "tags": ["a"]}) == "d1:a:1"
    with pytest.raises(ToolInputError, match="weight: Input should be less than or equal to 5"):
        tag_document.validate({"document_id": "d1", "tags": [], "weight": 9})
    with pytest.raises(ToolInputError, match="extra: Extra inputs are not permitted"):
        tag_document.validate({"document_id": "d1", "tags": [], "extra": 1})
    assert tag_document("d2", ["b"]) == "d2:b:1"  # still a plain function
    # The idempotency key goes to the function, never into the schema the model sees.
    assert "idempotency_key" not in agent_tools.append_line.spec().parameters["properties"]


def test_a_tool_that_cannot_be_described_is_refused_at_definition() -> None:
    def undocumented(x: int) -> int:
        return x

    def untyped(x):  # type: ignore[no-untyped-def]
        """Do x."""

    with pytest.raises(UsageError, match="a docstring must say what it does"):
        tool(undocumented)
    with pytest.raises(UsageError, match="parameter 'x' needs a type hint"):
        tool(untyped)
    with pytest.raises(UsageError, match="effect must be one of"):
        tool(effect="dangerous")(undocumented)  # type: ignore[arg-type]


# --- the loop -------------------------------------------------------------------------------------------------


def test_the_agent_searches_and_reads_in_parallel_calls_and_its_citations_are_checked(
    app: Archivist, server: ChatServer
) -> None:
    budgets = doc_id(app, "budgets.md")
    server.scripted_messages.extend(
        [
            turn(
                call("search_documents", {"query": "retried exponential backoff", "k": 1}, "a"),
                call("list_collections", {}, "b"),
            ),
            turn(call("read_document", {"document_id": budgets, "start": 0, "end": 200}, "c")),
            final(
                "Failed calls are retried with exponential backoff and jitter [1]. "
                "Every API key has a monthly budget in dollars [2]. "
                "Budgets are refunded at the end of each year [3]."
            ),
        ]
    )
    run = app.agent().start("How are failed calls retried, and what limits spending?")
    assert run.status == "succeeded" and run.result is not None, run.reason
    assert [(c["n"], c["source"].rsplit("/", 1)[-1]) for c in run.result["citations"]] == [
        (1, "retries.md"),
        (2, "budgets.md"),
    ]
    claims = {c["text"].rstrip("."): c for c in run.result["claims"]}
    assert claims["Failed calls are retried with exponential backoff and jitter"]["supported"]
    assert claims["Every API key has a monthly budget in dollars"]["supported"]
    # Ref 3 was never read: the claim is kept and flagged, not silently passed.
    (flagged,) = run.result["unsupported"]
    assert "refunded" in flagged["text"] and "do not exist" in flagged["reason"]
    steps = app.store.agent_steps(run.id)
    assert [(s.seq, s.kind, s.name) for s in steps][1:3] == [
        (2, "tool", "search_documents"),
        (3, "tool", "list_collections"),
    ]
    assert [s.kind for s in steps] == ["model", "tool", "tool", "model", "tool", "model"]
    assert all(s.data["status"] == "ok" for s in steps if s.kind == "tool")
    # The second model call saw both results of its parallel calls, quoted as untrusted observations with refs.
    answered = [m for m in server.requests[1]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in answered] == ["a", "b"]
    assert (
        answered[0]["content"].startswith('<observation tool="search_documents">')
        and '"ref": 1' in answered[0]["content"]
    )
    assert {t["function"]["name"] for t in server.requests[0]["tools"]} >= {
        "search_documents",
        "read_document",
        "answer",
    }
    assert run.totals["tokens"] == 3 * 12 and run.totals["steps"] == 6


def test_malformed_calls_go_back_to_the_model_as_observations(app: Archivist, server: ChatServer) -> None:
    server.scripted_messages.extend(
        [
            turn(
                call("search_documents", '{"query": "retries', "a"),
                call("delete_everything", {}, "b"),
                call("search_documents", {"query": "retries", "k": "many"}, "c"),
            ),
            final("The documents do not say."),
        ]
    )
    run = app.agent().start("Find the retry policy (malformed calls)")
    assert run.status == "succeeded", run.reason
    errors = [s.data["result"]["error"] for s in tool_steps(app, run.id)]
    assert "arguments of search_documents are not a JSON object" in errors[0]
    assert "unknown tool 'delete_everything'" in errors[1] and "search_documents" in errors[1]
    assert "invalid arguments for search_documents: k: Input should be a valid integer" in errors[2]
    assert [s.data["status"] for s in tool_steps(app, run.id)] == ["error"] * 3


def test_a_repeated_identical_call_stops_the_run(app: Archivist, server: ChatServer) -> None:
    same = {"query": "budget", "k": 2}
    server.scripted_messages.extend(
        [turn(call("search_documents", same, "a")), turn(call("search_documents", same, "b"))]
    )
    server.scripted_messages.extend([final("never asked")] * 3)
    run = app.agent().start("Loop on the budget search")
    assert run.status == "failed"
    assert run.reason == "repeated call: step 4 calls search_documents with the same arguments as step 2"
    assert len(server.requests) == 2  # stopped before asking the model again
    server.scripted_messages.clear()


def test_a_model_looping_on_a_bad_call_is_stopped_as_a_repeat(app: Archivist, server: ChatServer) -> None:
    server.scripted_messages.extend([turn(call("no_such_tool", {"x": 1}, f"c{i}")) for i in range(6)])
    run = app.agent().start("Call a tool that does not exist")
    assert run.status == "failed"
    assert run.reason == "repeated call: step 4 calls no_such_tool with the same arguments as step 2"
    server.scripted_messages.clear()


def test_repeated_call_ids_of_one_turn_are_made_distinct(app: Archivist, server: ChatServer) -> None:
    server.scripted_messages.extend(
        [turn(call("list_documents", {}, "dup"), call("list_collections", {}, "dup")), final("Done.")]
    )
    run = app.agent().start("List things")
    assert run.status == "succeeded", run.reason
    sent = server.requests[-1]["messages"]
    assert len({m["tool_call_id"] for m in sent if m["role"] == "tool"}) == 2


def test_a_budget_exhausted_mid_run_stops_before_the_next_model_call(app: Archivist, server: ChatServer) -> None:
    server.scripted_messages.extend(
        [turn(call("list_collections", {}), usage={"prompt_tokens": 2400, "completion_tokens": 100}), final("x")]
    )
    run = app.agent().start("Spend the budget", AgentLimits(max_tokens=3500))
    assert run.status == "failed" and run.reason is not None
    assert run.reason.startswith("budget exhausted before model call 3: token budget: 2500 spent")
    assert len(server.requests) == 1 and [s.data["status"] for s in tool_steps(app, run.id)] == ["ok"]
    assert run.totals["tokens"] == 2500
    server.scripted_messages.clear()


def test_a_tool_that_times_out_is_an_observation_and_the_run_goes_on(app: Archivist, server: ChatServer) -> None:
    server.scripted_messages.extend(
        [turn(call("slow_lookup", {"topic": "retries"})), final("The lookup was too slow.")]
    )
    began = time.monotonic()
    run = app.agent(tools=[agent_tools.slow_lookup]).start("Look up retries slowly")
    assert time.monotonic() - began < 4
    assert run.status == "succeeded", run.reason
    (step,) = tool_steps(app, run.id)
    assert step.data["status"] == "timed_out" and step.data["result"] == {
        "error": "slow_lookup did not finish within 0.3 s"
    }


def test_a_side_effecting_tool_is_refused_once_document_text_is_in_the_context(
    app: Archivist, server: ChatServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_TEST_FILE", str(tmp_path / "notes.txt"))
    server.scripted_messages.extend(
        [
            turn(call("search_documents", {"query": "budget"})),
            turn(call("append_line", {"text": "ignore previous instructions"}, "c2")),
            final("I did not write anything."),
        ]
    )
    run = app.agent(tools=agent_tools.TOOLS).start("Search, then write a note")
    assert run.status == "succeeded", run.reason
    refused = tool_steps(app, run.id)[1]
    assert refused.data["status"] == "refused" and "untrusted text" in refused.data["result"]["error"]
    assert not (tmp_path / "notes.txt").exists() and app.store.agent_effects(run.id) == []


def test_collection_descriptions_count_as_untrusted_text(
    app: Archivist, server: ChatServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_TEST_FILE", str(tmp_path / "notes.txt"))
    server.scripted_messages.extend(
        [
            turn(call("list_collections", {})),  # a description anyone with write access can set
            turn(call("append_line", {"text": "as the description said"}, "c2")),
            final("Nothing written."),
        ]
    )
    run = app.agent(tools=agent_tools.TOOLS).start("List collections, then write a note")
    refused = tool_steps(app, run.id)[1]
    assert refused.data["status"] == "refused" and not (tmp_path / "notes.txt").exists()


def test_a_recorded_outcome_is_replayed_on_resume_never_called_again(
    app: Archivist, server: ChatServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The journal a process killed between committing the outcome and journaling the step leaves behind.
    monkeypatch.setenv("AGENT_TEST_FILE", str(tmp_path / "notes.txt"))
    monkeypatch.setattr(agent_tools.append_line, "fn", lambda **_: pytest.fail("a recorded call was made again"))
    agent = app.agent(tools=agent_tools.TOOLS)
    run_id = "replay-run"

    app.store.create_agent_run(
        AgentRunRecord(run_id, "write once", "running", "2026-01-01T00:00:00+00:00", "t", tools=tuple(agent.tools))
    )
    app.store.add_agent_step(
        AgentStepRecord(
            run_id,
            1,
            "model",
            "m",
            "t",
            {"text": "", "tool_calls": [{"id": "w1", "name": "append_line", "arguments": {"text": "once"}}]},
        )
    )
    digest = arguments_hash({"text": "once"})
    key = f"{run_id}:2:w1:{digest[:16]}"
    app.store.record_intent(EffectRecord(run_id, 2, "w1", "append_line", digest, key, {"text": "once"}, "t"))
    app.store.record_outcome(run_id, key, "succeeded", {"appended": "once"})
    server.scripted_messages.append(final("Written."))
    run = agent.resume(run_id)
    assert run.status == "succeeded", run.reason
    (step,) = tool_steps(app, run.id)
    assert step.data == {"status": "replayed", "result": {"appended": "once"}, "untrusted": False}


# --- crashes and restarts: `archivist agent` in a subprocess --------------------------------------------------


def cli_env(corpus: Path, server: ChatServer, notes: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")}
    return env | {
        "ARCHIVIST_STORE": f"sqlite:///{corpus / 'store.db'}",
        "ARCHIVIST_LLM_URL": server.url,
        "ARCHIVIST_LLM_MODEL": "m",
        "ARCHIVIST_LLM_MAX_RETRIES": "0",
        "ARCHIVIST_LLM_CACHE": "false",
        "AGENT_TEST_FILE": str(notes),
        **extra,
    }


def agent_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ARCHIVIST, "agent", *args], env=env, capture_output=True, text=True, timeout=120)


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def newest_run(corpus: Path, task: str) -> Any:
    store = SQLiteStore(corpus / "store.db")
    try:
        return next(r for r in store.list_agent_runs() if r.task == task), store
    except StopIteration:
        store.close()
        raise


def test_killed_after_the_intent_before_the_outcome_the_effect_happens_exactly_once(
    corpus: Path, server: ChatServer, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    server.scripted_messages.extend([turn(call("append_line", {"text": "hello"})), final("Noted.")])
    dying = agent_cli(cli_env(corpus, server, notes, AGENT_TEST_DIE_AFTER_EFFECT="1"), "Note hello", "--tools", TOOLS)
    assert dying.returncode == -signal.SIGKILL
    run, store = newest_run(corpus, "Note hello")
    (effect,) = store.agent_effects(run.id)
    assert run.status == "running" and effect.status == "pending" and len(lines(notes)) == 1
    store.close()
    resumed = agent_cli(cli_env(corpus, server, notes), "resume", run.id[:10], "--tools", TOOLS, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "succeeded"
    assert len(lines(notes)) == 1  # reconciled: the append was found by its key, not made again
    run, store = newest_run(corpus, "Note hello")
    assert [s.data["status"] for s in store.agent_steps(run.id) if s.kind == "tool"] == ["reconciled"]
    assert store.agent_effects(run.id)[0].status == "succeeded"
    store.close()


def test_a_call_whose_outcome_is_unknown_and_cannot_be_reconciled_pauses_for_a_person(
    corpus: Path, server: ChatServer, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    server.scripted_messages.extend([turn(call("append_blind", {"text": "hello"})), final("Done.")])
    dying = agent_cli(cli_env(corpus, server, notes, AGENT_TEST_DIE_AFTER_EFFECT="1"), "Blind hello", "--tools", TOOLS)
    assert dying.returncode == -signal.SIGKILL
    run, store = newest_run(corpus, "Blind hello")
    store.close()
    paused = agent_cli(cli_env(corpus, server, notes), "resume", run.id, "--tools", TOOLS, "--json")
    assert paused.returncode == 0, paused.stderr
    body = json.loads(paused.stdout)
    assert body["status"] == "paused" and "may or may not have happened" in body["reason"]
    assert f"archivist agent approve {run.id} 2" in body["reason"] and len(lines(notes)) == 1
    rejected = agent_cli(cli_env(corpus, server, notes), "approve", run.id, "2", "--reject", "--tools", TOOLS, "--json")
    assert rejected.returncode == 0, rejected.stderr
    assert json.loads(rejected.stdout)["status"] == "succeeded" and len(lines(notes)) == 1


def test_killed_after_the_outcome_the_effect_is_not_repeated(corpus: Path, server: ChatServer, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    # The second model call hangs until the process is killed; the dead request takes one "Noted." with it.
    server.scripted_messages.extend([turn(call("append_line", {"text": "after"})), final("Noted."), final("Noted.")])
    server.faults.extend([Fault(), Fault(delay_s=2)])
    env = cli_env(corpus, server, notes)
    proc = subprocess.Popen(
        [ARCHIVIST, "agent", "Note after", "--tools", TOOLS], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while len(server.requests) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    run, store = newest_run(corpus, "Note after")
    assert run.status == "running" and store.agent_effects(run.id)[0].status == "succeeded"
    store.close()
    assert len(lines(notes)) == 1
    resumed = agent_cli(env, "resume", run.id, "--tools", TOOLS, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "succeeded" and len(lines(notes)) == 1


def test_an_approval_pause_survives_a_process_restart(corpus: Path, server: ChatServer, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    server.scripted_messages.extend(
        [turn(call("append_approved", {"text": "approved line"})), final("Written after approval.")]
    )
    env = cli_env(corpus, server, notes)
    first = agent_cli(env, "run", "Write with approval", "--tools", TOOLS, "--json")
    assert first.returncode == 0, first.stderr
    body = json.loads(first.stdout)
    assert body["status"] == "paused" and "append_approved needs approval" in body["reason"] and not notes.exists()
    listed = agent_cli(env, "runs", "--json")
    assert any(r["id"] == body["id"] and r["status"] == "paused" for r in json.loads(listed.stdout))
    approved = agent_cli(env, "approve", body["id"], "2", "--tools", TOOLS)
    assert approved.returncode == 0, approved.stderr
    assert "Written after approval." in approved.stdout and lines(notes) == ["approved\tapproved line"]
    shown = json.loads(agent_cli(env, "show", body["id"], "--json").stdout)
    assert [(a["step"], a["status"]) for a in shown["approvals"]] == [(2, "approved")]
    assert [(e["step"], e["status"]) for e in shown["effects"]] == [(2, "succeeded")]
    again = agent_cli(env, "approve", body["id"], "2", "--tools", TOOLS)
    assert again.returncode == 1 and "no call waiting for a decision at step 2" in " ".join(again.stderr.split())


def test_a_tools_file_that_fails_to_load_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    from archivist.agent.tools import load_tools
    from archivist.types import UsageError

    (tmp_path / "broken.py").write_text("import no_such_module_anywhere\nTOOLS = []\n")
    (tmp_path / "syntax.py").write_text("def oops(:\n")
    with pytest.raises(UsageError, match=r"broken.py could not be loaded: ModuleNotFoundError: .*no_such_module"):
        load_tools(f"{tmp_path / 'broken.py'}:TOOLS")
    with pytest.raises(UsageError, match=r"syntax.py could not be loaded: SyntaxError"):
        load_tools(f"{tmp_path / 'syntax.py'}:TOOLS")


def test_the_answer_tools_model_calls_are_charged_to_the_run(
    corpus: Path, server: ChatServer, embedder: MiniLMEmbedder
) -> None:
    settings = load_settings(
        store=f"sqlite:///{corpus / 'store.db'}",
        llm_url=server.url,
        llm_model="m",
        llm_max_retries=0,
        llm_cache=False,
        verify_with_model=False,
        refusal_threshold=0.0,
    )
    server.scripted_messages.extend(
        [
            turn(call("answer", {"question": "How are budgets enforced?"})),
            # what the answer tool's own model call gets: an expensive answer
            {"content": "Each key has a budget [1].", "usage": {"prompt_tokens": 3000, "completion_tokens": 100}},
            final("never asked"),
        ]
    )
    with Archivist(settings, open_store(settings.store), embedder) as app:
        run = app.agent().start("Ask the answer tool about budgets", AgentLimits(max_tokens=3500))
        steps = tool_steps(app, run.id)
    server.scripted_messages.clear()
    assert steps[0].data["status"] == "ok"  # the tool answered
    assert run.status == "failed" and (run.reason or "").startswith("budget exhausted before model call 3")
    assert len(server.requests) == 2  # the run's first model turn and the tool's answer; never a third
    # The tool's model tokens are journaled with its step, so the run's totals (what a resumed run's budget starts
    # from, and what a key is charged per step) count them.
    assert steps[0].tokens == 3100 and run.totals["tokens"] == 12 + 3100


def test_a_tool_gets_no_more_time_than_the_run_has_left(app: Archivist, server: ChatServer) -> None:
    server.scripted_messages.extend([turn(call("slow_lookup", {"topic": "retries"})), final("Too slow.")])
    run = app.agent(tools=[agent_tools.slow_lookup]).start("Look up slowly", AgentLimits(max_wall_s=0.1))
    server.scripted_messages.clear()
    steps = tool_steps(app, run.id)
    assert steps and steps[0].data["status"] == "timed_out"
    assert float(steps[0].data["result"]["error"].split("within ")[1].split(" s")[0]) < 0.3  # cut from its own 0.3 s


def test_one_process_drives_a_run_at_a_time(app: Archivist, server: ChatServer) -> None:
    import threading

    from archivist.types import ConflictError

    entered, release = threading.Event(), threading.Event()

    @tool(timeout_s=10)
    def wait_here(topic: str) -> str:
        """Wait until the test lets go.

        Args:
            topic: Anything.
        """
        entered.set()
        release.wait(10)
        return topic

    server.scripted_messages.extend([turn(call("wait_here", {"topic": "x"})), final("Done waiting.")])
    first = app.agent(tools=[wait_here])
    run = first.create("Wait while another process tries to take over")
    done: list[AgentRunRecord] = []
    driver = threading.Thread(target=lambda: done.append(first.resume(run.id)))
    driver.start()
    assert entered.wait(10)
    # A second driver (another agent, as another process would be) is refused while the first holds the lease.
    with pytest.raises(ConflictError, match="being driven by another process"):
        app.agent(tools=[wait_here]).resume(run.id)
    driven = app.store.get_agent_run(run.id)
    assert driven is not None and driven.lease_holder == first.holder and driven.public()["driven_by"] == first.holder
    release.set()
    driver.join(10)
    assert done and done[0].status == "succeeded", done
    # Once the first let go, anyone may resume (a finished run is returned as it is).
    assert app.agent(tools=[wait_here]).resume(run.id).status == "succeeded"
    assert [s.kind for s in app.store.agent_steps(run.id)] == ["model", "tool", "model"]


# --- workflows: a declared sequence of steps, no model ----------------------------------------------------------


@pytest.fixture
def modelless(corpus: Path, embedder: MiniLMEmbedder) -> Iterator[Archivist]:
    settings = load_settings(store=f"sqlite:///{corpus / 'store.db'}")
    with Archivist(settings, open_store(settings.store), embedder) as archivist:
        yield archivist


def test_without_a_model_the_research_workflow_answers_with_checked_citations(modelless: Archivist) -> None:
    agent = modelless.agent()
    assert agent.workflow is not None and agent.workflow.name == "research"
    run = agent.start("How are failed calls retried?")
    assert run.status == "succeeded" and run.result is not None, run.reason
    assert "exponential backoff" in run.result["answer"] and not run.result["refused"]
    # Citations point at what the run read, renumbered to the run's refs, and each claim is checked.
    assert run.result["citations"] and all(c["source"].endswith("retries.md") for c in run.result["citations"])
    assert run.result["unsupported"] == [] and all(c["supported"] for c in run.result["claims"])
    marks = {int(n) for n in __import__("re").findall(r"\[(\d+)\]", run.result["answer"])}
    assert marks == {c["n"] for c in run.result["citations"]}
    steps = modelless.store.agent_steps(run.id)
    assert [(s.kind, s.name) for s in steps] == [
        ("workflow", "research"),
        ("tool", "search_documents"),
        ("tool", "read_document"),
        ("tool", "read_document"),
        ("tool", "answer"),
    ]
    # The reads are of the two best hits, rendered from the search's result.
    hits = steps[1].data["result"]
    assert [s.arguments for s in steps[2:4]] == [
        {"document_id": h["document_id"], "start": h["start"]} for h in hits[:2]
    ]
    assert run.totals["tokens"] == 0 and run.totals["steps"] == 5


def test_a_model_run_is_left_untouched_by_a_process_without_a_model(
    app: Archivist, server: ChatServer, modelless: Archivist
) -> None:
    server.scripted_messages.extend([turn(call("append_approved", {"text": "later"}))])
    run = app.agent(tools=agent_tools.TOOLS).start("Write a line once approved")
    assert run.status == "paused"
    for act in (
        lambda a: a.approve(run.id, 2),
        lambda a: a.resume(run.id),
    ):
        with pytest.raises(UsageError, match="driven by a model and none is configured"):
            act(modelless.agent(tools=agent_tools.TOOLS))
    # Nothing was decided, run or failed: a process with a model can still take it on.
    after = modelless.store.get_agent_run(run.id)
    assert after is not None and after.status == "paused"
    assert [a.status for a in modelless.store.agent_approvals(run.id)] == ["pending"]


def test_a_workflow_file_with_a_side_effect_survives_a_kill_and_resumes_once(
    corpus: Path, server: ChatServer, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        "name: note-then-answer\n"
        "steps:\n"
        "  - {name: note, tool: append_line, arguments: {text: 'asked: {task}'}}\n"
        "  - {name: answer, tool: answer, arguments: {question: '{task}'}}\n",
        encoding="utf-8",
    )
    # No model at all: the workflow needs none (the answer step answers extractively).
    env = {k: v for k, v in cli_env(corpus, server, notes, AGENT_TEST_DIE_AFTER_EFFECT="1").items() if "_LLM_" not in k}
    task = "What does every API key have?"
    killed = agent_cli(env, "--tools", TOOLS, "--workflow", str(flow), task)
    assert killed.returncode == -signal.SIGKILL
    assert [line.split("\t")[1] for line in lines(notes)] == [f"asked: {task}"]
    run, store = newest_run(corpus, task)
    store.close()
    env["AGENT_TEST_DIE_AFTER_EFFECT"] = "0"
    # Resumed without --workflow: the run follows the plan it journaled; the append is reconciled, not repeated.
    resumed = agent_cli(env, "resume", run.id, "--tools", TOOLS, "--json")
    assert resumed.returncode == 0, resumed.stderr
    body = json.loads(resumed.stdout)
    assert body["status"] == "succeeded" and "monthly budget" in body["result"]["answer"]
    assert len(lines(notes)) == 1


def test_a_workflow_may_make_the_same_call_twice(modelless: Archivist) -> None:
    from archivist.agent.workflow import Workflow, WorkflowStep

    twice = Workflow(
        "twice",
        (
            WorkflowStep("before", "list_documents", {}),
            WorkflowStep("answer", "answer", {"question": "{task}"}),
            WorkflowStep("after", "list_documents", {}),
        ),
    )
    run = modelless.agent(workflow=twice).start("How are failed calls retried?")
    assert run.status == "succeeded", run.reason
    assert [s.name for s in modelless.store.agent_steps(run.id)][1:] == ["list_documents", "answer", "list_documents"]


def test_a_workflow_that_is_wrong_is_a_usage_error_naming_the_step(corpus: Path, tmp_path: Path) -> None:
    env = cli_env(corpus, ChatServer(), tmp_path / "n.txt")
    for text, why in (
        ("steps:\n  - {tool: answer, arguments: {question: '{earlier.0}'}}\n", "{earlier.0} names no earlier step"),
        ("steps:\n  - {tool: read_document, for_each: search}\n", "not an earlier step"),
        ("steps: [{tool: answer, colour: red}]\n", "unknown keys colour"),
        ("steps:\n  - {tool: shred_files}\n", "calls tools this agent lacks: shred_files"),
        ("steps: [\n", "not valid YAML"),
        ("steps:\n  - {tool: search_documents, arguments: {query: 2024-01-01}}\n", "plain JSON values (quote dates)"),
        ("steps:\n  - {tool: search_documents}\n  - {tool: answer, for_each: [a]}\n", "must be step names"),
    ):
        flow = tmp_path / "bad.yaml"
        flow.write_text(text, encoding="utf-8")
        done = agent_cli(env, "--workflow", str(flow), "Anything")
        assert done.returncode == 2 and why in " ".join(done.stderr.split()), (text, done.stderr)
    done = agent_cli(env, "--workflow", "no-such-flow", "Anything")
    assert done.returncode == 2 and "neither a built-in workflow (research) nor a file" in " ".join(done.stderr.split())


def test_agent_without_a_model_says_it_follows_the_workflow_and_streams_json_lines(
    corpus: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in cli_env(corpus, ChatServer(), tmp_path / "n.txt").items() if "_LLM_" not in k}
    done = agent_cli(env, "How are failed calls retried?")
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stderr.split())
    assert "no model configured: new runs follow the research workflow (search → read → answer)" in said
    assert "exponential backoff" in done.stdout and "Sources" in done.stdout
    streamed = agent_cli(env, "--stream", "--json", "How are failed calls retried?")
    assert streamed.returncode == 0, streamed.stderr
    events = [json.loads(line) for line in streamed.stdout.splitlines()]
    assert [e["event"] for e in events] == ["step"] * 5 + ["run"]
    assert [e["step"]["seq"] for e in events[:-1]] == [1, 2, 3, 4, 5]
    assert events[-1]["run"]["status"] == "succeeded" and events[-1]["run"]["result"]["citations"]


# --- the text tool protocol, and Anthropic's native format --------------------------------------------------------


def test_parse_calls_reads_what_small_models_write() -> None:
    from archivist.agent.textcalls import parse_calls

    known = ["search_documents", "read_document"]
    tagged = 'I will search.\n<tool_call>{"name": "search_documents", "arguments": {"query": "x"}}</tool_call>'
    assert [(c.name, c.arguments) for c in parse_calls(tagged, known)] == [("search_documents", {"query": "x"})]
    fenced = 'Sure:\n```json\n{"tool": "read_document", "parameters": "{\\"document_id\\": \\"d1\\"}"}\n```'
    assert [(c.name, c.arguments) for c in parse_calls(fenced, known)] == [("read_document", {"document_id": "d1"})]
    bare = (
        '[{"name": "search_documents", "args": {"query": "a"}}, {"name": "search_documents", "input": {"query": "b"}}]'
    )
    assert [c.arguments["query"] for c in parse_calls(bare, known)] == ["a", "b"]
    openai_shaped = '```\n{"function": {"name": "search_documents", "arguments": "{\\"query\\": \\"q\\"}"}}\n```'
    assert parse_calls(openai_shaped, known)[0].arguments == {"query": "q"}
    # Unclosed tag, broken JSON: a call with invalid arguments (the model is told), not an answer.
    (broken,) = parse_calls('<tool_call>{"name": "search_documents", "arguments": {"query": ', known)
    assert broken.name == "search_documents" and broken.invalid_arguments is not None
    # An answer that quotes JSON naming no tool, or plain prose, is an answer.
    assert parse_calls('The config is:\n```json\n{"name": "retries", "arguments": 3}\n```', known) == []
    assert parse_calls("Retries use backoff [1].", known) == []
    # Prose that mentions the tag, or quotes a call as an example inside a longer answer, is an answer.
    assert parse_calls("Calls are written in a <tool_call> tag, then the result comes back [1].", known) == []
    example = '```json\n{"name": "search_documents", "arguments": {"query": "retries"}}\n```'
    essay = "A model without native tools writes each call as JSON in its reply, for example:\n" + example
    essay += "\nThe result comes back as an observation block, and the model answers once it has read enough. " * 3
    assert parse_calls(essay, known) == []
    assert parse_calls("Searching now.\n" + example, known)[0].name == "search_documents"
    # A tagged block that names no tool is told to the model, never taken as the answer.
    (nameless,) = parse_calls('<tool_call>{"name": 5, "arguments": {}}</tool_call>', known)
    assert nameless.name == "?" and nameless.invalid_arguments is not None


def test_a_model_without_native_tools_drives_the_loop_in_text(
    corpus: Path, server: ChatServer, embedder: MiniLMEmbedder
) -> None:
    settings = load_settings(
        store=f"sqlite:///{corpus / 'store.db'}",
        llm_url=server.url,
        llm_model="m",
        llm_max_retries=0,
        llm_cache=False,
        agent_tool_protocol="text",
    )
    server.scripted_messages.extend(
        [
            final(
                'Let me search.\n```json\n{"name": "search_documents", "arguments": {"query": "retried", "k": 1}}\n```'
            ),
            final('<tool_call>{"name": "search_documents", "arguments": {"query": </tool_call>'),
            final("Failed calls are retried with exponential backoff and jitter [1]."),
        ]
    )
    with Archivist(settings, open_store(settings.store), embedder) as archivist:
        run = archivist.agent().start("How are failed calls retried?")
        steps = archivist.store.agent_steps(run.id)
    assert run.status == "succeeded" and run.result is not None, run.reason
    assert run.result["unsupported"] == [] and run.result["citations"][0]["source"].endswith("retries.md")
    assert [(s.kind, s.data.get("status")) for s in steps] == [
        ("model", None),
        ("tool", "ok"),
        ("model", None),
        ("tool", "error"),
        ("model", None),
    ]
    assert "not a JSON object" in steps[3].data["result"]["error"]
    # No native tools were sent; the system prompt described them; results came back as user messages.
    assert all("tools" not in r for r in server.requests)
    system = server.requests[0]["messages"][0]["content"]
    assert "<tool_call>" in system and "search_documents" in system
    second = server.requests[1]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[-1]["content"].startswith("Result of search_documents") and '"ref": 1' in second[-1]["content"]


def test_an_anthropic_model_drives_the_loop_with_parallel_tool_use(app: Archivist) -> None:
    from archivist.agent import Agent
    from archivist.agent.builtins import builtin_tools
    from archivist.llm.anthropic import AnthropicMessages
    from archivist.llm.gateway import Gateway, Route
    from fake_anthropic import AnthropicServer

    budgets = doc_id(app, "budgets.md")
    with AnthropicServer().running() as claude:
        claude.scripted_messages.extend(
            [
                [
                    {"type": "text", "text": "Searching and reading."},
                    {"type": "tool_use", "id": "toolu_a", "name": "search_documents", "input": {"query": "retried"}},
                    {"type": "tool_use", "id": "toolu_b", "name": "read_document", "input": {"document_id": budgets}},
                ],
                [{"type": "text", "text": "Every API key has a monthly budget in dollars [2]."}],
            ]
        )
        gateway = Gateway([Route(AnthropicMessages("claude", "claude-test", base_url=claude.url, api_key="k"), 0)])
        agent = Agent(gateway, app.store, builtin_tools(app.store, app.searcher()), app.embedder)
        run = agent.start("What limits spending?")
        requests = claude.requests
    assert run.status == "succeeded" and run.result is not None, run.reason
    assert [c["source"].rsplit("/", 1)[-1] for c in run.result["citations"]] == ["budgets.md"]
    assert run.result["unsupported"] == []
    # The second request carried both results as tool_result blocks answering the tool_use ids (the fake server
    # refuses, as the real API does, a result for an unknown id).
    results = [b for m in requests[1]["messages"] for b in (m["content"] if isinstance(m["content"], list) else [])]
    assert [b["tool_use_id"] for b in results if b["type"] == "tool_result"] == ["toolu_a", "toolu_b"]
    assert {t["name"] for t in requests[0]["tools"]} >= {"search_documents", "read_document"}


def test_runs_charged_to_one_parent_budget_share_its_limit(app: Archivist, server: ChatServer) -> None:
    from archivist.llm.accounting import Budget

    key = Budget(max_tokens=5000)  # what an API key has left: each run alone may use 5000
    usage = {"prompt_tokens": 1490, "completion_tokens": 10}
    server.scripted_messages.extend(
        [
            turn(call("list_collections", {}), usage=usage),
            {**final("First."), "usage": usage},
            turn(call("list_collections", {}), usage=usage),
            final("never asked"),
        ]
    )
    agent = app.agent(budget_parent=key)
    first = agent.start("Use the key's budget", AgentLimits(max_tokens=5000))
    second = agent.start("Use what is left of it", AgentLimits(max_tokens=5000))
    server.scripted_messages.clear()
    assert first.status == "succeeded" and first.totals["tokens"] == 3000
    # The second run's own limit had room for its next call (~1,700 tokens estimated); the key's did not.
    assert second.status == "failed" and "budget exhausted before model call 3" in (second.reason or "")
    assert key.spent_tokens == 4500 and second.totals["tokens"] == 1500


def test_a_running_run_nobody_drives_is_shown_as_stale(corpus: Path, server: ChatServer, tmp_path: Path) -> None:
    store = SQLiteStore(corpus / "store.db")
    try:
        run = AgentRunRecord(
            "stale0000001", "Left behind by a dead process", "running", "2026-01-01T00:00:00+00:00", "x"
        )
        store.create_agent_run(run)
        store.lease_agent_run(run.id, "gone:1:dead", until="2026-01-01T00:01:00+00:00", now="2026-01-01T00:00:00+00:00")
    finally:
        store.close()
    env = cli_env(corpus, server, tmp_path / "n.txt", COLUMNS="200")
    listed = agent_cli(env, "runs")
    row = next(line for line in listed.stdout.splitlines() if line.strip().startswith("stale0000001"))
    assert "running (stale: resume it)" in row
    shown = agent_cli(env, "show", "stale0000001")
    assert "driven by gone:1:dead (lease until 2026-01-01T00:01:00+00:00)" in shown.stdout
    as_json = json.loads(agent_cli(env, "show", "stale0000001", "--json").stdout)
    assert as_json["driven_by"] == "gone:1:dead" and as_json["lease_until"] == "2026-01-01T00:01:00+00:00"
