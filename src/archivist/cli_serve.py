"""`archivist serve` (the HTTP service) and `archivist keys` (its API keys)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from archivist.cli_support import JsonOpt, StoreOpt, emit_json, err, fail, open_app, out


def _server_class() -> type[Any]:
    import uvicorn

    class Server(uvicorn.Server):
        """Uvicorn's server, exiting 0 after a graceful stop on SIGTERM/SIGINT (uvicorn re-raises the signal)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server


keys_app = typer.Typer(help="Create, list and revoke API keys of the HTTP service.", no_args_is_help=True)


def serve(
    host: Annotated[
        str | None, typer.Option("--host", help="Address to bind (default ARCHIVIST_HOST, 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port (default ARCHIVIST_PORT, 8000; 0 picks one).")
    ] = None,
    store: StoreOpt = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
    graceful_s: Annotated[
        int, typer.Option("--graceful-timeout", min=0, help="Seconds in-flight requests get to finish on shutdown.")
    ] = 30,
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=64, help="Server processes sharing the port (one per core).")
    ] = 1,
) -> None:
    """Run the HTTP API and web UI (JSON logs on stderr; Ctrl-C or SIGTERM stops gracefully)."""
    import uvicorn

    from archivist.server.app import configure_logging, create_app, proxy_options

    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        fail(f"unknown --log-level {log_level!r}: use debug, info, warning or error", 2)
    configure_logging(log_level)
    with open_app(store, host=host, port=port) as archivist:
        settings = archivist.settings
        log = logging.getLogger("archivist.server")
        if workers > 1:
            # Each worker builds its own app from the environment: pass the resolved settings down that way.
            os.environ.update(ARCHIVIST_STORE=settings.store, ARCHIVIST_LOG_LEVEL=log_level.upper())
            log.info(
                "serving %s on http://%s:%d with %d workers", settings.store, settings.host, settings.port, workers
            )
            archivist.close()
            _serve_workers(settings.host, settings.port, workers, graceful_s, proxy_options(settings))
            return
        if settings.embed_threads is None:
            # Requests overlap: one thread per query embedding uses the cores better than each call taking them all.
            settings.embed_threads = 1
        app = create_app(archivist)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=graceful_s,
            **proxy_options(settings),
        )
        server = _server_class()(config)
        log.info("serving %s on http://%s:%d", archivist.store.url, settings.host, settings.port)
        server.run()
        if not server.started:
            fail(f"could not serve on {settings.host}:{settings.port} (see the log above)", 1)


def _serve_workers(host: str, port: int, workers: int, graceful_s: int, proxy: dict[str, Any]) -> None:
    """Run `workers` processes of the app on one listening socket."""
    import socket

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    # Bound here rather than by uvicorn: its socket has protocol 0, so asyncio never sets TCP_NODELAY on the
    # connections, and every keep-alive request after the first waited ~40 ms for Nagle (uvicorn #3149).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        fail(f"could not serve on {host}:{port}: {exc}", 1)
    sock.set_inheritable(True)
    os.environ.setdefault("ARCHIVIST_EMBED_THREADS", "1")
    config = uvicorn.Config(
        "archivist.server.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=graceful_s,
        **proxy,
    )
    Multiprocess(config, sockets=[sock]).run()


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="Who or what the key is for.")],
    scopes: Annotated[str, typer.Option("--scopes", help="Comma-separated: read, write, admin.")] = "read",
    collections: Annotated[
        str | None, typer.Option("--collections", help="Comma-separated collections the key may use (default: all).")
    ] = None,
    budget_tokens: Annotated[
        int | None, typer.Option("--budget-tokens", min=0, help="LLM tokens the key may spend per period.")
    ] = None,
    budget_usd: Annotated[
        float | None, typer.Option("--budget", "--budget-usd", min=0, help="Dollars the key may spend per period.")
    ] = None,
    period: Annotated[str, typer.Option("--period", help="Budget period: day or month.")] = "month",
    rate: Annotated[
        int | None, typer.Option("--rate", min=1, help="Requests per minute (default ARCHIVIST_RATE_LIMIT_PER_MINUTE).")
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
        )
    if as_json:
        emit_json({"key": key, **record.public()})
        return
    out.print(key)
    err.print(f"[dim]key {record.id} ({escape(record.name)}): store it now, it is not shown again[/]")


@keys_app.command("list")
def keys_list(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """List API keys (never the keys themselves)."""
    with open_app(store, existing=True) as archivist:
        keys = archivist.store.list_api_keys()
    if as_json:
        emit_json({"keys": [k.public() for k in keys]})
        return
    table = Table("id", "name", "scopes", "collections", "budget", "created", "revoked", box=None, header_style="bold")
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
            k.created_at,
            k.revoked_at or "",
        )
    out.print(table)


@keys_app.command("revoke")
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
    if as_json:
        emit_json({"revoked": key_id})
    else:
        out.print(f"revoked {key_id}")
