"""`archivist keys` and `archivist serve` as a user runs them: real processes, real signals, real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fake_servers import ChatServer, Fault
from live_server import free_port
from test_cli import run, run_json


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    (root / "kb").mkdir()
    (root / "kb" / "tea.md").write_text("# Tea\n\nGreen tea is steeped at 80 degrees for two minutes.\n")
    summary = run_json(root, "ingest", "kb", "--collection", "kb")
    assert summary["added"] == 1 and summary["collection"] == "kb"
    return root


def test_keys_create_list_revoke(workdir: Path) -> None:
    created = run_json(
        workdir,
        "keys",
        "create",
        "--name",
        "ci",
        "--scopes",
        "read,write",
        "--collections",
        "kb",
        "--budget-tokens",
        "5000",
        "--period",
        "day",
    )
    assert created["key"].startswith("ak_") and created["scopes"] == ["read", "write"]
    assert created["collections"] == ["kb"] and created["budget_tokens"] == 5000
    listed = run_json(workdir, "keys", "list")["keys"]
    assert any(k["id"] == created["id"] for k in listed)
    assert all("key" not in k and "secret_hash" not in k for k in listed)  # never shown again
    assert run_json(workdir, "keys", "revoke", created["id"]) == {"revoked": created["id"]}
    again = run(workdir, "keys", "revoke", created["id"])
    assert again.returncode == 1 and "no active key" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "create", "--name", "x", "--scopes", "root"], "bad scopes"),
        (["keys", "create", "--name", "x", "--collections", "missing"], "no collection 'missing'"),
        (["keys", "create", "--name", "x", "--period", "week"], "unknown --period"),
        (["ingest", "kb", "--collection", "Bad Name"], "bad collection name"),
    ],
)
def test_bad_usage_exits_2_with_a_message(workdir: Path, args: list[str], message: str) -> None:
    proc = run(workdir, *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_serve_finishes_in_flight_requests_on_sigterm(workdir: Path) -> None:
    key = run_json(workdir, "keys", "create", "--name", "srv", "--scopes", "read")["key"]
    port = free_port()
    with ChatServer(reply="Steep green tea at 80 degrees [1].").running() as llm:
        llm.faults.append(Fault(delay_s=2.0))  # the model takes its time
        proc = _serve(workdir, port, ARCHIVIST_LLM_URL=llm.url, ARCHIVIST_LLM_MODEL="m", ARCHIVIST_LLM_CACHE="false")
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_up(base, proc)
            result: dict[str, Any] = {}

            def ask() -> None:
                r = httpx.post(
                    f"{base}/v1/answer",
                    json={"question": "How hot for green tea?"},
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=60,
                )
                result.update(status=r.status_code, body=r.json())

            asker = threading.Thread(target=ask)
            asker.start()
            deadline = time.monotonic() + 30
            while not llm.requests and time.monotonic() < deadline:
                time.sleep(0.05)
            assert llm.requests, "the answer never reached the model"
            proc.send_signal(signal.SIGTERM)
            asker.join(60)
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert result["status"] == 200 and result["body"]["mode"] == "llm"
    assert proc.returncode == 0
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    access = [entry for entry in lines if entry.get("path") == "/v1/answer"]
    assert access and access[0]["status"] == 200 and access[0]["request_id"]


def _serve(workdir: Path, port: int, *args: str, **settings: str) -> subprocess.Popen[str]:
    """Start `archivist serve` with these options over workdir's store.db with these ARCHIVIST_* settings (and no
    others)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVIST_", "PROMETHEUS_"))}
    env.update(ARCHIVIST_STORE="sqlite:///store.db", **settings)
    return subprocess.Popen(
        [sys.executable, "-m", "archivist.cli", "serve", "--port", str(port), *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_up(base: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("serve did not come up")


@pytest.mark.parametrize("trusted", [False, True])
def test_serve_throttles_failed_keys_per_client_address_trusting_only_configured_proxies(
    workdir: Path, trusted: bool
) -> None:
    port = free_port()
    proxies = {"ARCHIVIST_FORWARDED_ALLOW_IPS": "127.0.0.1"} if trusted else {}
    proc = _serve(workdir, port, ARCHIVIST_AUTH_FAILURES_PER_MINUTE="3", **proxies)
    base = f"http://127.0.0.1:{port}"

    def bad_from(address: str) -> int:
        headers = {"X-Forwarded-For": address, "Authorization": "Bearer ak_000000000000_wrongwrongwrongwrongwrong"}
        return httpx.get(f"{base}/v1/me", headers=headers, timeout=10).status_code

    try:
        _wait_up(base, proc)
        assert [bad_from("2001:db8::1") for _ in range(3)] == [401, 401, 401]
        # Another address of the same IPv6 /64 is the same client.
        assert bad_from("2001:db8::2") == 429
        if trusted:  # addresses of other clients behind the proxy are not throttled by that one
            assert bad_from("2001:db8:0:1::1") == 401 and bad_from("198.51.100.4") == 401
        else:  # a header from an untrusted peer is ignored: it cannot dodge the throttle
            assert bad_from("2001:db8:0:1::1") == 429 and bad_from("198.51.100.4") == 429
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def _scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return one scrape of /metrics (on a new connection) as {(sample name, sorted labels): value}."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_one_scrape_reports_the_whole_server_with_any_number_of_workers(workdir: Path, workers: int) -> None:
    key = run_json(workdir, "keys", "create", "--name", f"metrics{workers}", "--scopes", "read")["key"]
    port = free_port()
    proc = _serve(workdir, port, "--workers", str(workers))
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {key}"}
    try:
        _wait_up(base, proc)
        n = 60

        def ready(_: int) -> int:
            # A new connection per request, several at once: the worker processes take turns accepting them.
            return httpx.get(f"{base}/readyz", timeout=30).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(ready, range(n))) == {200}
        found = httpx.post(f"{base}/v1/search", json={"query": "green tea", "k": 3}, headers=auth, timeout=60)
        answered = httpx.post(
            f"{base}/v1/answer", json={"question": "How hot for green tea?"}, headers=auth, timeout=60
        )
        assert found.status_code == 200 and found.json()["hits"] and answered.status_code == 200
        readyz = ("archivist_http_requests_total", (("method", "GET"), ("route", "/readyz"), ("status", "200")))
        scrapes = [_scrape(base) for _ in range(4)]
        # Before: each scrape showed only the counters of the process that answered it (30 of the 60, measured).
        assert [s[readyz] for s in scrapes] == [n] * 4
        last = scrapes[-1]
        assert last[("archivist_search_duration_seconds_count", (("mode", "hybrid"),))] == 2  # search + answer's
        assert last[("archivist_answer_duration_seconds_count", (("mode", "extractive"),))] == 1
        assert last[("archivist_embed_duration_seconds_count", (("kind", "query"),))] == 2
        assert last[("archivist_embed_duration_seconds_bucket", (("kind", "query"), ("le", "60.0")))] == 2
        assert last[("archivist_documents", ())] == 1
        rss = {labels: v for (name, labels), v in last.items() if name == "process_resident_memory_bytes"}
        fds = {labels: v for (name, labels), v in last.items() if name == "process_open_fds"}
        cpu = {labels: v for (name, labels), v in last.items() if name == "process_cpu_seconds_total"}
        if workers == 1:
            assert rss.keys() == fds.keys() == cpu.keys() == {()}
            assert last[("archivist_server_process", ())] == 1
        else:  # one sample per worker process, by pid
            pids = {labels for (name, labels), _ in last.items() if name == "archivist_server_process"}
            assert len(pids) == workers and rss.keys() == fds.keys() == cpu.keys() == pids
        assert all(v > 0 for v in [*rss.values(), *fds.values()])
        if workers > 1:
            # A worker killed outright (no shutdown): what it served stays counted, and it leaves the process
            # metrics once uvicorn has started its replacement.
            victim = dict(next(iter(pids)))["pid"]
            os.kill(int(victim), signal.SIGKILL)
            deadline = time.monotonic() + 60
            while True:
                after = _scrape(base)
                now = {dict(labels)["pid"] for (name, labels), _ in after.items() if name == "archivist_server_process"}
                if (len(now) == workers and victim not in now) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert len(now) == workers and victim not in now
            assert after[readyz] == n
            assert {dict(labels)["pid"] for (name, labels), _ in after.items() if name == "process_open_fds"} == now
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    shared = [
        json.loads(line)["message"].rpartition(" ")[2]
        for line in stderr.splitlines()
        if "share their metrics in" in line
    ]
    if workers == 1:
        assert not shared  # one process: its own registry, no files
    else:
        assert len(shared) == 1 and not Path(shared[0]).exists()  # the workers' metric files go with the server
