"""`archivist keys …`: create, list and revoke the API keys of the HTTP service."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from archivist.cli._app import open_app
from archivist.cli._command import App
from archivist.cli._errors import fail
from archivist.cli._options import JsonOpt, StoreOpt
from archivist.cli._output import emit_done, emit_json, err, out
from archivist.cli.guard import policy_options

app = App(name="keys", help="Create, list and revoke API keys of the HTTP service.", no_args_is_help=True)


@app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", metavar="NAME", help="Who or what the key is for.")],
    scopes: Annotated[
        str, typer.Option("--scopes", metavar="SCOPES", help="Comma-separated: read, write, admin.")
    ] = "read",
    collections: Annotated[
        str | None,
        typer.Option(
            "--collections", metavar="NAMES", help="Comma-separated collections the key may use (default: all)."
        ),
    ] = None,
    budget_tokens: Annotated[
        int | None, typer.Option("--budget-tokens", min=0, help="LLM tokens the key may spend per period.")
    ] = None,
    budget_usd: Annotated[
        float | None,
        typer.Option("--budget", "--budget-usd", min=0, metavar="USD", help="Dollars the key may spend per period."),
    ] = None,
    period: Annotated[str, typer.Option("--period", metavar="PERIOD", help="Budget period: day or month.")] = "month",
    rate: Annotated[
        int | None, typer.Option("--rate", min=1, help="Requests per minute (default ARCHIVIST_RATE_LIMIT_PER_MINUTE).")
    ] = None,
    injection: Annotated[
        str | None,
        typer.Option(
            "--injection",
            metavar="POLICY",
            help="What the key's flagged questions and tasks get: off, flag or block (default: the server's).",
        ),
    ] = None,
    pii: Annotated[
        str | None,
        typer.Option("--pii", metavar="POLICY", help="off, or redact: personal data in the key's answers redacted."),
    ] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API key; it is printed once and only its hash is stored."""
    from archivist.server.auth import mint_api_key

    if period not in ("day", "month"):
        fail(f"unknown --period {period!r}: use day or month", 2)
    scope_list = [s.strip() for s in scopes.split(",") if s.strip()]
    collection_list = [c.strip() for c in collections.split(",") if c.strip()] if collections else None
    with open_app(store) as archivist:
        key, record = mint_api_key(
            archivist.store,
            name,
            scope_list,
            collection_list,
            budget_tokens=budget_tokens,
            budget_usd=budget_usd,
            budget_period="day" if period == "day" else "month",
            rate_per_minute=rate,
            policy=policy_options(injection=injection, pii=pii),
        )
    if as_json:
        emit_json({"key": key, **record.public()})
        return
    out.print(key)
    err.print(f"[dim]key {record.id} ({escape(record.name)}): store it now, it is not shown again[/]")


@app.command("list")
def keys_list(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """List API keys (never the keys themselves)."""
    with open_app(store, existing=True) as archivist:
        keys = archivist.store.list_api_keys()
    if as_json:
        emit_json({"keys": [k.public() for k in keys]})
        return
    table = Table(
        "id", "name", "scopes", "collections", "budget", "policy", "created", "revoked", box=None, header_style="bold"
    )
    for k in keys:
        budget = ", ".join(
            x
            for x in (
                f"{k.budget_tokens} tok" if k.budget_tokens is not None else "",
                f"${k.budget_usd}" if k.budget_usd is not None else "",
            )
            if x
        )
        table.add_row(
            k.id,
            escape(k.name),
            ",".join(k.scopes),
            ",".join(k.collections) if k.collections is not None else "all",
            f"{budget}/{k.budget_period}" if budget else "",
            ",".join(f"{name}={value}" for name, value in sorted(k.policy.items())),
            k.created_at,
            k.revoked_at or "",
        )
    out.print(table)


@app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (from `archivist keys list`).")],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke an API key: requests with it get 401 from then on (within 2 seconds on a running server)."""
    from datetime import UTC, datetime

    with open_app(store, existing=True) as archivist:
        revoked = archivist.store.revoke_api_key(key_id, datetime.now(UTC).isoformat(timespec="seconds"))
    if not revoked:
        fail(f"no active key {key_id!r} (see `archivist keys list`)", 1)
    emit_done("revoked", key_id, as_json)
