"""`archivist agent …`: run a task with tools, list and show runs, resume one, approve or reject a paused step, prune.

`archivist agent "TASK"` is short for `archivist agent run "TASK"`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from archivist.cli._app import open_app
from archivist.cli._command import App
from archivist.cli._errors import fail
from archivist.cli._options import JsonOpt, StoreOpt
from archivist.cli._output import emit_json, err, out, short, warn

if TYPE_CHECKING:
    from typer._click import Context

    from archivist.agent.loop import Agent
    from archivist.app import Archivist
    from archivist.store.records import AgentRunRecord, AgentStepRecord


class _TaskOrCommand(TyperGroup):
    """The `agent` group: a first word that names no subcommand is a task (`agent "TASK"` runs `agent run`)."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        """Return the arguments left after the group's own, `run` put in front of a task."""
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return list(super().parse_args(ctx, args))


app = App(
    name="agent",
    cls=_TaskOrCommand,
    help='Run a task with tools (archivist agent "TASK"), list, show, resume and approve runs.',
    no_args_is_help=True,
)

ToolsOpt = Annotated[
    str | None,
    typer.Option("--tools", metavar="FILE:NAME", help="Your own tools: NAME, a list of @tool functions in FILE.py."),
]
RunIdArg = Annotated[str, typer.Argument(metavar="RUN_ID", help="The run's id (or a unique prefix of it).")]
StreamOpt = Annotated[
    bool,
    typer.Option("--stream", help="Print every step on stdout as it happens (with --json: one JSON object per line)."),
]


def _agent(
    archivist: Archivist,
    collection: str | None,
    tools: str | None,
    as_json: bool,
    stream: bool = False,
    workflow: str | None = None,
) -> Agent:
    from archivist.agent.tools import load_tools
    from archivist.agent.workflow import load_workflow

    on_step = _stream_step(as_json) if stream else None if as_json else _print_step
    agent = archivist.agent(
        collection=collection,
        tools=load_tools(tools) if tools else None,
        on_step=on_step,
        workflow=load_workflow(workflow) if workflow else None,
        policy=archivist.guard_policy([collection] if collection else None),
    )
    if agent.workflow is not None and workflow is None:
        steps = " → ".join(s.name for s in agent.workflow.steps)
        err.print(f"[dim]no model configured: new runs follow the {agent.workflow.name} workflow ({steps})[/]")
    return agent


def _stream_step(as_json: bool) -> Callable[[AgentStepRecord], None]:
    """Return the step printer of --stream: a JSON line per step, or a readable line with what the step did."""

    def show(step: AgentStepRecord) -> None:
        if as_json:
            print(json.dumps({"event": "step", "step": step.public()}, ensure_ascii=False), flush=True)
            return
        if step.kind == "workflow":
            steps = " → ".join(s["name"] for s in step.data["workflow"]["steps"])
            out.print(f"[bold]{step.seq}[/] workflow {escape(step.name)}: {escape(steps)}")
        elif step.kind == "model":
            calls = step.data.get("tool_calls", [])
            said = short(str(step.data.get("text") or ""), 200)
            what = ", ".join(c["name"] for c in calls) if calls else "answers"
            out.print(f"[bold]{step.seq}[/] model {escape(step.name)} → {escape(what)} [dim]({step.tokens} tokens)[/]")
            if said and calls:
                out.print(f"   [dim]{escape(said)}[/]")
        else:
            arguments = short(json.dumps(step.arguments or {}, ensure_ascii=False), 100)
            result = short(json.dumps(step.data.get("result"), ensure_ascii=False), 160)
            status = step.data.get("status")
            took = f"[dim]{step.latency_ms:.0f} ms[/]"
            out.print(f"[bold]{step.seq}[/] {escape(step.name)} {escape(arguments)} → {status} {took}")
            out.print(f"   [dim]{escape(result)}[/]")
        out.file.flush()

    return show


def _print_step(step: AgentStepRecord) -> None:
    if step.kind == "workflow":
        steps = " → ".join(s["name"] for s in step.data["workflow"]["steps"])
        err.print(f"[dim]step {step.seq}: workflow {escape(step.name)} ({escape(steps)})[/]")
        return
    if step.kind == "model":
        calls = step.data.get("tool_calls", [])
        what = f"{len(calls)} tool call(s)" if calls else "answered"
        err.print(f"[dim]step {step.seq}: model {escape(step.name)}: {what} ({step.tokens} tokens)[/]")
        return
    arguments = short(json.dumps(step.arguments or {}, ensure_ascii=False), 80)
    err.print(f"[dim]step {step.seq}: {escape(step.name)} {escape(arguments)} → {step.data.get('status')}[/]")


def _report(run: AgentRunRecord, as_json: bool, stream: bool = False) -> None:
    """Print a run's outcome; exit 1 when it failed (a paused run waits for a person: not a failure)."""
    if as_json and stream:
        print(json.dumps({"event": "run", "run": run.public()}, ensure_ascii=False), flush=True)
    elif as_json:
        emit_json(run.public())
    elif run.status == "succeeded" and run.result is not None:
        if run.result.get("answer") or "output" not in run.result:
            out.print(escape(run.result["answer"]))
        else:  # a workflow whose last step is not an answer: its result as JSON
            out.print(escape(json.dumps(run.result["output"], ensure_ascii=False, indent=2)))
        citations = run.result.get("citations", [])
        if citations:
            out.print()
            out.print("[bold]Sources[/]")
        for c in citations:
            where = f"{escape(c['source'])}, chars {c['span'][0]}–{c['span'][1]}"
            out.print(f"  [{c['n']}] {escape(c['title'] or c['source'])} [dim]({where})[/]")
        for claim in run.result.get("unsupported", []):
            warn(f"unsupported claim: {claim['text']!r}: {claim['reason']}")
        err.print(f"[dim]run {run.id}: succeeded in {run.totals.get('steps', 0)} steps[/]")
    elif run.status == "paused":
        out.print(f"[yellow]paused[/] run {run.id}: {escape(run.reason or '')}")
    else:
        err.print(f"[bold red]{run.status}:[/] run {run.id}: {escape(run.reason or '')}")
    if run.status == "failed":
        raise typer.Exit(1)


@app.command("run")
def agent_run(
    task: Annotated[str, typer.Argument(metavar="TASK", help="What the agent should do, in plain words.")],
    collection: Annotated[
        str | None, typer.Option("--collection", metavar="NAME", help="Read only this collection (default: all).")
    ] = None,
    tools: ToolsOpt = None,
    max_steps: Annotated[int, typer.Option("--max-steps", min=1, help="Model and tool calls the run may make.")] = 30,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Model tokens the run may use.")] = 200_000,
    max_cost: Annotated[
        float | None, typer.Option("--max-cost", min=0, metavar="USD", help="Dollars the run may spend.")
    ] = None,
    max_time: Annotated[
        float, typer.Option("--max-time", min=1, metavar="SECONDS", help="Active time the run may take.")
    ] = 600.0,
    allow_untrusted: Annotated[
        bool,
        typer.Option(
            "--allow-untrusted-side-effects",
            help="Run side-effecting tools even after document text entered the context.",
        ),
    ] = False,
    workflow: Annotated[
        str | None,
        typer.Option(
            "--workflow",
            metavar="NAME|FILE",
            help="Follow a declared sequence of steps instead of a model: research, or a YAML file.",
        ),
    ] = None,
    stream: StreamOpt = False,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a task: the model calls tools until it answers, citing what it read; every step is journaled."""
    from archivist.agent.loop import AgentLimits

    with open_app(store, existing=True) as archivist:
        limits = AgentLimits(
            max_steps=max_steps,
            max_tokens=max_tokens,
            max_cost_usd=max_cost,
            max_wall_s=max_time,
            allow_untrusted_side_effects=allow_untrusted,
        )
        run = _agent(archivist, collection, tools, as_json, stream, workflow).start(task, limits)
    _report(run, as_json, stream)


@app.command("runs")
def agent_runs(
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many runs to list.")] = 20,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List agent runs, the most recently updated first."""
    with open_app(store, existing=True) as archivist:
        runs = archivist.store.list_agent_runs(limit=limit)
    if as_json:
        emit_json([r.public() for r in runs])
        return
    table = Table("id", "status", "steps", "tokens", "updated", "task", box=None)
    for r in runs:
        table.add_row(
            r.id[:12],
            _status(r),
            str(r.totals.get("steps", 0)),
            str(r.totals.get("tokens", 0)),
            r.updated_at,
            escape(short(r.task, 60)),
        )
    out.print(table)


def _status(run: AgentRunRecord) -> str:
    """Return a run's status as a person reads it: a running run that no live process drives is "stale"."""
    if run.status != "running":
        return run.status
    from datetime import UTC, datetime

    now = datetime.now(UTC).isoformat(timespec="seconds")
    return "running" if run.lease_until is not None and run.lease_until >= now else "running (stale: resume it)"


def _find_run(archivist: Archivist, run_id: str) -> AgentRunRecord:
    run = archivist.store.get_agent_run(run_id)
    if run is None:
        fail(f"no agent run {run_id!r} (archivist agent runs lists them)", 1)
    return run


@app.command("show")
def agent_show(run_id: RunIdArg, store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """Show a run: its status, every journaled step, side effects and approvals."""
    with open_app(store, existing=True) as archivist:
        run = _find_run(archivist, run_id)
        steps = archivist.store.agent_steps(run.id)
        effects = archivist.store.agent_effects(run.id)
        approvals = archivist.store.agent_approvals(run.id)
    if as_json:
        emit_json(
            {
                **run.public(),
                "steps": [s.public() for s in steps],
                "effects": [_plain(e) for e in effects],
                "approvals": [_plain(a) for a in approvals],
            }
        )
        return
    out.print(f"run {run.id}: [bold]{_status(run)}[/]" + (f" ({escape(run.reason)})" if run.reason else ""))
    if run.lease_holder is not None:
        out.print(f"driven by {escape(run.lease_holder)} (lease until {run.lease_until})")
    out.print(f"task: {escape(run.task)}")
    table = Table("step", "kind", "name", "status", "tokens", "ms", "detail", box=None)
    for s in steps:
        if s.kind == "workflow":
            detail, status = " → ".join(f"{x['name']}:{x['tool']}" for x in s.data["workflow"]["steps"]), "plan"
        elif s.kind == "model":
            calls = s.data.get("tool_calls", [])
            detail = ", ".join(c["name"] for c in calls) or short(str(s.data.get("text", "")), 60)
            status = "tool calls" if calls else "answer"
        else:
            detail, status = short(json.dumps(s.arguments or {}, ensure_ascii=False), 60), str(s.data.get("status"))
        table.add_row(str(s.seq), s.kind, escape(s.name), status, str(s.tokens), f"{s.latency_ms:.0f}", escape(detail))
    out.print(table)
    for e in effects:
        out.print(f"effect step {e.step}: {escape(e.tool)} {e.status} (key {e.idempotency_key})")
    for a in approvals:
        out.print(f"approval step {a.step} ({a.kind}): {escape(a.tool)} {a.status}")


def _plain(record: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(record)


@app.command("resume")
def agent_resume(
    run_id: RunIdArg,
    tools: ToolsOpt = None,
    stream: StreamOpt = False,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Resume a run from its journal: recorded calls are replayed, never made again."""
    with open_app(store, existing=True) as archivist:
        run = _find_run(archivist, run_id)
        run = _agent(archivist, run.collection, tools, as_json, stream).resume(run.id)
    _report(run, as_json, stream)


@app.command("approve")
def agent_approve(
    run_id: RunIdArg,
    step: Annotated[int, typer.Argument(metavar="STEP", help="The step waiting for a decision.")],
    reject: Annotated[bool, typer.Option("--reject", help="Reject the call instead: the model is told.")] = False,
    tools: ToolsOpt = None,
    stream: StreamOpt = False,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve (or --reject) a paused run's tool call, then continue the run."""
    with open_app(store, existing=True) as archivist:
        run = _find_run(archivist, run_id)
        run = _agent(archivist, run.collection, tools, as_json, stream).approve(run.id, step, approved=not reject)
    _report(run, as_json, stream)


@app.command("prune")
def agent_prune(
    days: Annotated[
        int | None,
        typer.Option(
            "--days", min=1, help="Delete finished runs not updated for this many days (default: the setting)."
        ),
    ] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete old agent runs and their journal (a new run also prunes by ARCHIVIST_AGENT_RUN_RETENTION_DAYS)."""
    from datetime import UTC, datetime, timedelta

    with open_app(store, existing=True) as archivist:
        keep = days if days is not None else archivist.settings.agent_run_retention_days
        cutoff = (datetime.now(UTC) - timedelta(days=keep)).isoformat(timespec="seconds")
        deleted = archivist.store.prune_agent_runs(cutoff)
    if as_json:
        emit_json({"deleted": deleted, "before": cutoff})
    else:
        out.print(f"deleted {deleted} run(s) not updated since {cutoff}")
