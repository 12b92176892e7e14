"""`archivist serve`: the HTTP API and web UI."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from archivist.cli._app import open_app
from archivist.cli._command import App
from archivist.cli._errors import fail
from archivist.cli._options import StoreOpt

app = App()


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


@app.command()
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
    workers_inline: Annotated[
        int | None,
        typer.Option(
            "--workers-inline",
            min=0,
            max=64,
            help="Ingestion job threads in each server process (default ARCHIVIST_WORKERS_INLINE, 1); 0: the API "
            "only queues uploads and `archivist worker` processes run them.",
        ),
    ] = None,
) -> None:
    """Run the HTTP API and web UI (JSON logs on stderr; Ctrl-C or SIGTERM stops gracefully)."""
    import uvicorn

    from archivist.server.app import configure_logging, create_app, proxy_options

    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        fail(f"unknown --log-level {log_level!r}: use debug, info, warning or error", 2)
    configure_logging(log_level)
    with open_app(store, host=host, port=port, workers_inline=workers_inline) as archivist:
        settings = archivist.settings
        log = logging.getLogger("archivist.server")
        if workers > 1:
            # Each worker builds its own app from the environment: pass the resolved settings down that way.
            os.environ.update(
                ARCHIVIST_STORE=settings.store,
                ARCHIVIST_LOG_LEVEL=log_level.upper(),
                ARCHIVIST_WORKERS_INLINE=str(settings.workers_inline),
            )
            log.info(
                "serving %s on http://%s:%d with %d workers", settings.store, settings.host, settings.port, workers
            )
            archivist.close()
            _serve_workers(settings.host, settings.port, workers, graceful_s, proxy_options(settings))
            return
        if settings.embed_threads is None:
            # Requests overlap: one thread per query embedding uses the cores better than each call taking them all.
            settings.embed_threads = 1
        config = uvicorn.Config(
            create_app(archivist),
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
    import shutil
    import socket
    import tempfile

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from archivist.server.metrics import MULTIPROC_ENV

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
    # Every worker writes its metrics to files here (prometheus_client reads the variable when a worker imports it),
    # so a scrape answered by any one of them counts the whole server. Fresh per run: old files would add up.
    metrics_dir = tempfile.mkdtemp(prefix="archivist-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    logging.getLogger("archivist.server").info("the workers share their metrics in %s", metrics_dir)
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
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        del os.environ[MULTIPROC_ENV]
        shutil.rmtree(metrics_dir, ignore_errors=True)
