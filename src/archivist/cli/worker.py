"""`archivist worker`: run the ingestion jobs queued in the store, in a process of their own."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Annotated

import typer

from archivist.cli._app import open_app
from archivist.cli._command import App
from archivist.cli._errors import fail
from archivist.cli._options import StoreOpt
from archivist.types import ArchivistError

app = App()

#: seconds between the status lines a running worker logs
STATUS_EVERY_S = 30.0


@app.command()
def worker(
    store: StoreOpt = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, max=64, help="Jobs run at once, one thread each.")
    ] = 1,
    log_level: Annotated[
        str, typer.Option("--log-level", metavar="LEVEL", help="debug, info, warning or error.")
    ] = "info",
) -> None:
    """Run ingestion jobs from the store's queue (what `serve` enqueues) until SIGTERM or Ctrl-C (JSON logs on
    stderr). Any number of workers, on any host that reaches the store, share the queue; a job cut short by a stop
    goes back to it, and one whose worker died is taken over when its lease runs out."""
    from archivist.server.app import configure_logging

    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        fail(f"unknown --log-level {log_level!r}: use debug, info, warning or error", 2)
    configure_logging(log_level)
    log = logging.getLogger("archivist.worker")
    with open_app(store, existing=True) as archivist:
        from archivist.guard.pii import install_log_redaction

        # As `serve` does: user text in this process's log lines is redacted unless the settings turn it off.
        install_log_redaction(archivist.settings.pii_redact_logs)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        runners = [archivist.job_runner() for _ in range(concurrency)]
        for runner in runners:
            runner.start()
        log.info("worker running %d job thread(s) on %s", concurrency, archivist.store.url)
        while not stop.wait(STATUS_EVERY_S):
            try:
                counts = archivist.store.job_counts()
            except ArchivistError as exc:  # the runners keep going (and retry the store) whatever a status read does
                log.warning("could not read the queue: %s", exc)
                continue
            log.info(
                "queue: %d queued, %d running; this worker finished %d",
                counts.get("queued", 0),
                counts.get("running", 0),
                sum(r.finished for r in runners),
            )
        log.info("stopping: unfinished jobs go back to the queue")
        for runner in runners:
            runner.request_stop()  # all at once: none takes a new job while another finishes its batch
        for runner in runners:
            runner.stop()
        log.info("stopped after finishing %d job(s)", sum(r.finished for r in runners))
