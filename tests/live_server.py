"""The real HTTP app served by uvicorn on a free 127.0.0.1 port, in a thread of the test process."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(app: FastAPI, **options: Any) -> Iterator[str]:
    """Serve `app` over real HTTP until the block ends (graceful shutdown, lifespan included); yield its base URL.

    Proxy headers are not trusted unless `options` say so, as `archivist serve` does by default."""
    port = free_port()
    config = {"proxy_headers": False, **options}
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, **config)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(30)


def wait_for_job(client: httpx.Client, job_id: str, timeout_s: float = 60.0) -> dict[str, object]:
    """Poll a job until it is no longer queued or running; return its last status."""
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, object] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return job
        time.sleep(0.1)
