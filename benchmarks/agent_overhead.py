"""The agent loop's own cost, and side effects under random crashes.

1. Per-step overhead (ms) of the loop and its journal, excluding the model: a run of N tool steps against a
   loopback model server that answers at once; overhead = wall time − the model calls' latency − the tools' own
   time, per step, and as a share of a step. Also: journal bytes per step (the rows' stored sizes).
2. Crash and resume: `archivist agent` runs a side-effecting task (it appends a line keyed by its idempotency key to a
   file) and is killed with SIGKILL at a random moment, then resumed (killed again at random) until the run ends;
   each of K runs must end with its line in the file exactly once, or paused for a person (reconciliation).

    python benchmarks/agent_overhead.py [--steps 200] [--kills 100] [--seed 0]

Prints a table and writes benchmarks/results/agent_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, console, print_table, write_result

sys.path.insert(0, str(ROOT / "tests"))
from archivist.agent import AgentLimits, tool
from archivist.app import Archivist
from archivist.config import load_settings
from archivist.store import open_store
from fake_servers import ChatServer

ARCHIVIST = str(Path(sys.executable).with_name("archivist"))
TOOLS = f"{ROOT / 'tests' / 'agent_tools.py'}:TOOLS"


class PlannedModel(ChatServer):
    """A model that calls `append_line` once, then answers: by what the conversation already holds, so a run resumed
    from its journal at any point gets the same plan."""

    def _completion(self, payload: dict[str, Any]) -> dict[str, Any]:
        done = any(m.get("role") == "tool" for m in payload["messages"])
        if done:
            message: dict[str, Any] = {"role": "assistant", "content": "The note is written."}
        else:
            arguments = json.dumps({"text": "crash test"})
            call = {"id": "c1", "type": "function", "function": {"name": "append_line", "arguments": arguments}}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return {
            "id": "cmpl",
            "object": "chat.completion",
            "model": payload["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if not done else "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 5},
        }


@tool(effect="read_only")
def ping(n: int) -> dict[str, int]:
    """Return the number it was given.

    Args:
        n: Any number.
    """
    return {"n": n}


def overhead(steps: int, root: Path) -> dict[str, Any]:
    """Return the loop's per-step overhead and journal bytes per step over a run of `steps` tool calls."""
    with ChatServer().running() as server:
        for i in range(steps):
            call = {"id": f"c{i}", "type": "function", "function": {"name": "ping", "arguments": json.dumps({"n": i})}}
            server.scripted_messages.append({"tool_calls": [call]})
        server.scripted_messages.append({"content": "Done."})
        settings = load_settings(
            store=f"sqlite:///{root / 'overhead.db'}", llm_url=server.url, llm_model="m", llm_cache=False
        )
        with Archivist(settings, open_store(settings.store)) as app:
            limits = AgentLimits(max_steps=2 * steps + 5, max_tokens=10**9, max_wall_s=3600)
            started = time.perf_counter()
            run = app.agent(tools=[ping]).start("Ping many times", limits)
            wall_ms = (time.perf_counter() - started) * 1000
            journal = app.store.agent_steps(run.id)
    assert run.status == "succeeded", run.reason
    model_ms = sum(s.latency_ms for s in journal if s.kind == "model")
    tool_ms = sum(s.latency_ms for s in journal if s.kind == "tool")
    with sqlite3.connect(root / "overhead.db") as conn:
        stored = conn.execute(
            "SELECT SUM(length(run_id) + length(kind) + length(name) + COALESCE(length(call_id), 0)"
            " + COALESCE(length(arguments), 0) + length(data) + length(created_at) + 24) FROM agent_steps"
        ).fetchone()[0]
    per_step = (wall_ms - model_ms - tool_ms) / len(journal)
    return {
        "journal steps": len(journal),
        "wall ms": round(wall_ms, 1),
        "model ms (loopback)": round(model_ms, 1),
        "overhead ms / step": round(per_step, 3),
        "overhead share of a step": round(per_step / (wall_ms / len(journal)), 3),
        "journal bytes / step": round(stored / len(journal), 1),
    }


def crashes(kills: int, seed: int, root: Path) -> dict[str, Any]:
    """Return how K side-effecting runs ended after random SIGKILLs and resumes: effects counted in the file."""
    rng = random.Random(seed)
    outcomes = {"exactly once": 0, "paused for a person": 0, "twice or more": 0, "never": 0}
    kills_done = 0
    with PlannedModel().running() as server:
        settings = load_settings(store=f"sqlite:///{root / 'crash.db'}")
        with Archivist(settings, open_store(settings.store)):
            pass  # create and migrate the store once
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")} | {
            "ARCHIVIST_STORE": f"sqlite:///{root / 'crash.db'}",
            "ARCHIVIST_LLM_URL": server.url,
            "ARCHIVIST_LLM_MODEL": "m",
            "ARCHIVIST_LLM_MAX_RETRIES": "0",
            "ARCHIVIST_LLM_CACHE": "false",
        }
        for k in range(kills):
            notes = root / f"notes-{k}.txt"
            env["AGENT_TEST_FILE"] = str(notes)
            task = f"Write the note, run {k}"
            args = [ARCHIVIST, "agent", "run", task, "--tools", TOOLS, "--json"]
            status, resumes = _kill_at_random(args, env, rng), 0
            kills_done += status == "killed"
            run_id = _run_id(root / "crash.db", task)
            while status not in ("succeeded", "failed", "paused") and resumes < 20:
                resume = [ARCHIVIST, "agent", "resume", run_id, "--tools", TOOLS, "--json"] if run_id else args
                status = _kill_at_random(resume, env, rng, p_kill=0.3)
                kills_done += status == "killed"
                run_id = run_id or _run_id(root / "crash.db", task)
                resumes += 1
            lines = notes.read_text().splitlines() if notes.exists() else []
            if status == "paused":
                outcomes["paused for a person"] += 1
            elif len(lines) == 1:
                outcomes["exactly once"] += 1
            elif len(lines) > 1:
                outcomes["twice or more"] += 1
            else:
                outcomes["never"] += 1
            if (k + 1) % 10 == 0:
                console.print(f"crash runs: {k + 1}/{kills}", style="dim")
    return {"runs": kills, "SIGKILLs delivered": kills_done, **outcomes}


def _kill_at_random(args: list[str], env: dict[str, str], rng: random.Random, p_kill: float = 1.0) -> str:
    """Run a command, SIGKILL it after a random delay (with probability p_kill); return the run's status or
    'killed'."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if rng.random() < p_kill:
        try:
            proc.wait(timeout=rng.uniform(0.2, 1.6))  # from start-up through the model and tool calls
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return "killed"
    out, _ = proc.communicate(timeout=120)
    try:
        return str(json.loads(out)["status"])
    except (ValueError, KeyError, TypeError):
        return "killed"


def _run_id(db: Path, task: str) -> str | None:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT id FROM agent_runs WHERE task = ? ORDER BY created_at DESC", (task,)).fetchone()
    return str(row[0]) if row else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        loop = overhead(args.steps, Path(tmp))
        print_table("Agent loop overhead (model excluded)", [loop])
        crash = crashes(args.kills, args.seed, Path(tmp))
        print_table("Side effects after random SIGKILLs and resumes", [crash])
    write_result("agent_overhead", {"overhead": loop, "crashes": crash, "args": vars(args)})


if __name__ == "__main__":
    main()
