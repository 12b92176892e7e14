"""HTTP load on `POST /v1/search`: throughput and latency of `archivist serve`, against in-process search.

    python benchmarks/load.py [--client httpx|wrk] [--requests 1000 | --duration 20] [--concurrency 16]
                              [--mode hybrid|dense|bm25] [--workers N] [--embed-threads N] [--profile OUT]

Builds (or reuses) a SciFact store: a copy of the eval cache `.archivist/evals/scifact-minilm.db` when it
exists (no embedding run; the output says if it was partial), else a slice of the corpus embedded here
(`--slice-docs`, said in the output). Mints a key with no practical rate limit, starts `archivist serve`
(`--workers N`) as a subprocess on a free 127.0.0.1 port, and drives it with distinct real queries (SciFact
test + train questions; the output counts any repeat). Three phases, one after another, never overlapping:

1. HTTP, one request at a time (`--baseline-queries` queries): the latency of one request through the server;
2. HTTP at `--concurrency`: `--requests` requests from an async httpx client, or `--duration` seconds of wrk
   (`apt-get install wrk`; ~0.2 ms of CPU per request against httpx's ~6 ms): req/s, p50/p95/p99, errors,
   and CPU milliseconds per request of the server (all its processes) and of the client;
3. in process, no HTTP (`SearchPipeline.search`, the call the endpoint makes), on phase 1's queries.

The load generator runs on the same machine as the server and takes CPU from it: the figures are a floor.
`--profile OUT` records the server with py-spy during phase 2 (collapsed stacks, for flame graphs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from _common import ROOT, console, datasets_dir, percentiles, print_table, write_result

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.server.auth import mint_api_key
from archivist.store.filters import Filters

EVAL_CACHE = ROOT / ".archivist" / "evals" / "scifact-minilm.db"


def load_queries() -> list[str]:
    """Return every distinct SciFact question (test, then train), in file order."""
    seen: dict[str, None] = {}
    for name in ("queries.jsonl", "queries_train.jsonl"):
        path = datasets_dir() / "scifact" / name
        if path.exists():
            with path.open() as f:
                for line in f:
                    seen.setdefault(json.loads(line)["text"].strip(), None)
    return [q for q in seen if q]


def prepare_store(path: Path, slice_docs: int) -> str:
    """Return a description of the SciFact store at `path`, copying the eval cache or embedding a slice."""
    if path.exists():
        return f"reused {path}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if EVAL_CACHE.exists():
        # The backup API copies a consistent snapshot even while another process writes the WAL.
        src = sqlite3.connect(f"file:{EVAL_CACHE}?mode=ro", uri=True)
        dst = sqlite3.connect(path)
        with dst:
            src.backup(dst)
        src.close()
        dst.close()
        return f"copy of {EVAL_CACHE.relative_to(ROOT)}"
    corpus = datasets_dir() / "scifact" / "corpus.jsonl"
    part = path.with_suffix(".slice.jsonl")
    with corpus.open() as f, part.open("w") as out:
        for i, line in enumerate(f):
            if i >= slice_docs:
                break
            out.write(line)
    console.print(f"[yellow]no eval cache at {EVAL_CACHE}: embedding the first {slice_docs} SciFact documents[/]")
    with Archivist.from_settings(load_settings(store=f"sqlite:///{path}")) as app:
        app.ingest([part], sync=True)
    part.unlink()
    return f"SLICE: first {slice_docs} SciFact documents only (no eval cache found)"


def start_server(
    store_url: str, log_level: str, log_path: Path, workers: int
) -> tuple[list[subprocess.Popen[bytes]], str]:
    """Start the server on a free 127.0.0.1 port; return its processes and base URL once ready.

    `archivist serve`, as users run it (`--workers N` when workers > 1).
    """
    import socket

    env = {**os.environ, "ARCHIVIST_STORE": store_url}
    log = log_path.open("wb")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    exe = shutil.which("archivist", path=str(Path(sys.executable).parent)) or "archivist"
    cmd = [exe, "serve", "--host", "127.0.0.1", "--port", str(port), "--store", store_url, "--log-level", log_level]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    procs = [subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)]
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            stop_server(procs)
            raise RuntimeError(f"a server process exited; see {log_path}")
        try:
            # every worker must be up: a few probes (each lands on whichever worker accepts first)
            if all(httpx.get(f"{base}/readyz", timeout=5).status_code == 200 for _ in range(2 * workers)):
                time.sleep(0.5 if workers > 1 else 0)
                return procs, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(procs)
    raise RuntimeError(f"the server did not become ready; see {log_path}")


def stop_server(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop the server processes (SIGTERM: graceful), killing any that linger."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def cpu_seconds(pid: int | None = None) -> float:
    """Return the user+system CPU seconds of a process and its live children (this process when pid is None)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        total += sum(cpu_seconds(int(child)) for child in task.read_text().split())
    return total


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """Start `py-spy record` on the server (all threads, native frames off); SIGINT stops it and writes `out`."""
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "record", "--pid", str(pid), "--subprocesses", "--format", "raw", "--rate", "200", "--output", str(out)]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attach before the load starts
    return spy


async def drive(
    base: str, key: str, queries: list[str], concurrency: int, max_seconds: float, k: int, mode: str
) -> dict[str, Any]:
    """Send one search per query with `concurrency` requests in flight; return timings and errors."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    todo = iter(queries)
    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60) as client:

        async def worker() -> None:
            for q in todo:
                if time.monotonic() > deadline:
                    return
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/search", json={"query": q, "k": k, "mode": mode})
                    status = str(r.status_code) if r.status_code != 200 or "hits" not in r.json() else ""
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                latencies.append((time.perf_counter() - t0) * 1000)
                if status:
                    errors[status] = errors.get(status, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"sent": len(latencies), "wall_s": round(wall, 2), "latencies": latencies, "errors": errors}


_WRK_LUA = """
local bodies = %(bodies)s
local key = %(key)s
local nthreads = %(threads)d
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  idx = tid
  n = 0
  wrk.headers["Authorization"] = "Bearer " .. key
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  local body = bodies[(idx %% #bodies) + 1]
  idx = idx + nthreads
  n = n + 1
  return wrk.format("POST", "/v1/search", nil, body)
end
function done(summary, latency, requests)
  local repeats = 0
  for i, t in ipairs(threads) do
    local fresh = math.ceil((#bodies - (i - 1)) / nthreads)
    repeats = repeats + math.max(0, t:get("n") - fresh)
  end
  local e = summary.errors
  io.write(string.format(
    '\\nWRK_JSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p95_us": %%d, "p99_us": %%d, '
      .. '"mean_us": %%f, "errors": {"connect": %%d, "read": %%d, "write": %%d, "status": %%d, "timeout": %%d}, '
      .. '"repeats": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.mean, e.connect, e.read, e.write, e.status, e.timeout, repeats))
end
"""


def drive_wrk(
    base: str, key: str, queries: list[str], concurrency: int, seconds: float, k: int, mode: str
) -> dict[str, Any]:
    """Load the server with wrk (C, far cheaper per request than a Python client) for `seconds`."""
    import tempfile

    threads = min(2, concurrency)
    lua_str = lambda v: json.dumps(v)  # noqa: E731 - a JSON string is a valid Lua string literal here
    bodies = "{" + ",".join(lua_str(json.dumps({"query": q, "k": k, "mode": mode})) for q in queries) + "}"
    script = _WRK_LUA % {"bodies": bodies, "key": lua_str(key), "threads": threads}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        cmd = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, int(seconds))}s", "--timeout", "30s"]
        out = subprocess.run([*cmd, "-s", f.name, base], capture_output=True, text=True, timeout=seconds + 60)
    finally:
        Path(f.name).unlink()
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
    r = json.loads(line[len("WRK_JSON ") :])
    errors = {name: n for name, n in r["errors"].items() if n}
    return {
        "sent": r["requests"],
        "wall_s": round(r["duration_us"] / 1e6, 2),
        "percentiles": {
            "p50_ms": round(r["p50_us"] / 1000, 2),
            "p95_ms": round(r["p95_us"] / 1000, 2),
            "p99_ms": round(r["p99_us"] / 1000, 2),
            "mean_ms": round(r["mean_us"] / 1000, 2),
        },
        "errors": errors,
        "repeats": r["repeats"],
    }


def in_process(store_url: str, queries: list[str], k: int, mode: Any) -> tuple[list[float], float]:
    """Return per-query latency (ms) of the search the endpoint runs, called directly, and its CPU ms per query."""
    with Archivist.from_settings(load_settings(store=store_url)) as app:
        searcher = app.searcher()
        for q in ("warm-up: cell biology", "warm-up: vaccine efficacy"):
            searcher.search(q, k=k, filters=Filters(), mode=mode)
        samples = []
        cpu0 = cpu_seconds()
        for q in queries:
            t0 = time.perf_counter()
            searcher.search(q, k=k, filters=Filters(), mode=mode)
            samples.append((time.perf_counter() - t0) * 1000)
        cpu_ms = (cpu_seconds() - cpu0) * 1000 / max(len(queries), 1)
    return samples, cpu_ms


def main() -> None:
    """Run the three phases and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="requests in the concurrent phase")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--client", choices=["httpx", "wrk"], default="httpx", help="concurrent phase: async httpx, or wrk (apt)"
    )
    parser.add_argument("--duration", type=float, default=20, help="seconds of the concurrent phase with wrk")
    parser.add_argument("--baseline-queries", type=int, default=100, help="queries of the sequential phases")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1, help="archivist serve --workers")
    parser.add_argument("--mode", choices=["hybrid", "dense", "bm25"], default="hybrid", help="bm25: no embedding")
    parser.add_argument(
        "--embed-threads", type=int, help="ARCHIVIST_EMBED_THREADS for server and in-process (default: the config's)"
    )
    parser.add_argument("--max-seconds", type=float, default=180, help="stop the concurrent phase after this")
    parser.add_argument("--store", type=Path, default=ROOT / ".archivist" / "bench-load-scifact.db")
    parser.add_argument("--slice-docs", type=int, default=1000, help="documents to embed without an eval cache")
    parser.add_argument("--log-level", default="info", help="the server's --log-level (info logs every request)")
    parser.add_argument(
        "--profile", type=Path, help="py-spy record of the server in the concurrent phase (all its processes)"
    )
    parser.add_argument("--result-name", default="load", help="benchmarks/results/NAME.json")
    parser.add_argument("--server-log", type=Path, default=ROOT / ".archivist" / "bench-load-server.log")
    args = parser.parse_args()
    if args.embed_threads:
        os.environ["ARCHIVIST_EMBED_THREADS"] = str(args.embed_threads)  # the server subprocess inherits it
    load_before = os.getloadavg()[0]

    store_desc = prepare_store(args.store, args.slice_docs)
    store_url = f"sqlite:///{args.store}"
    with Archivist.from_settings(load_settings(store=store_url)) as app:
        key = mint_api_key(app.store, "bench-load", ["read"], rate_per_minute=1_000_000_000)[0]
        stats = app.store.stats()
    with (datasets_dir() / "scifact" / "corpus.jsonl").open() as f:
        corpus_docs = sum(1 for _ in f)
    docs, chunks = stats.get("documents", 0), stats.get("chunks")
    partial = "" if docs >= corpus_docs else f"PARTIAL {docs}/{corpus_docs} docs, "
    store_desc = f"{store_desc}: {partial}{docs} documents, {chunks} chunks"
    pool = load_queries()
    warm, pool = pool[-8:], pool[:-8]  # warm-up questions are never measured
    base_q = pool[: args.baseline_queries]
    load_q = [pool[(args.baseline_queries + i) % len(pool)] for i in range(args.requests)]
    if args.client == "wrk":  # wrk runs for --duration: it gets every question, starting after phase 1's
        load_q = pool[args.baseline_queries :] + pool[: args.baseline_queries]
    distinct = len(set(load_q))
    repeats = 0 if args.client == "wrk" else args.requests - distinct  # wrk counts its own (after the run)
    overlap = 0 if args.client == "wrk" else len(set(load_q) & set(base_q))
    console.print(
        f"store: {store_desc}; {len(pool)} distinct questions; concurrent phase: "
        f"{f'{args.duration:g}s of wrk' if args.client == 'wrk' else f'{args.requests} requests'}, "
        f"{distinct} distinct ({'queries repeat: ' + str(repeats) if repeats else 'no query repeats'}"
        f"{f', {overlap} also in the sequential phase' if overlap else ''})"
    )
    console.print(
        f"[yellow]the load generator shares this machine's {os.cpu_count()} CPUs with the server: "
        "the figures are a floor[/]"
    )

    procs, base = start_server(store_url, args.log_level, args.server_log, args.workers)
    try:
        asyncio.run(drive(base, key, warm, 2, 60, args.k, args.mode))
        seq = asyncio.run(drive(base, key, base_q, 1, args.max_seconds, args.k, args.mode))
        spy = start_profiler(procs[0].pid, args.profile) if args.profile else None
        cpu0 = (sum(cpu_seconds(p.pid) for p in procs), cpu_seconds(), _children_cpu())
        if args.client == "wrk":
            conc = drive_wrk(base, key, load_q, args.concurrency, args.duration, args.k, args.mode)
            repeats = conc["repeats"]
            console.print(
                f"wrk sent {conc['sent']} requests: "
                + (f"{repeats} repeated a question (the pool is {distinct})" if repeats else "no question repeated")
            )
        else:
            conc = asyncio.run(drive(base, key, load_q, args.concurrency, args.max_seconds, args.k, args.mode))
        cpu1 = (sum(cpu_seconds(p.pid) for p in procs), cpu_seconds(), _children_cpu())
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
            console.print(f"py-spy profile of the server (collapsed stacks): {args.profile}")
    finally:
        stop_server(procs)
    local, local_cpu_ms = in_process(store_url, base_q, args.k, args.mode)

    rows = []
    for name, run, conc_n in (
        ("HTTP sequential", seq, 1),
        (f"HTTP x{args.concurrency} ({args.client})", conc, args.concurrency),
    ):
        p = run["percentiles"] if "percentiles" in run else percentiles(run["latencies"])
        rows.append(
            {
                "phase": name,
                "concurrency": conc_n,
                "requests": run["sent"],
                "errors": sum(run["errors"].values()),
                "req_s": round(run["sent"] / run["wall_s"], 1),
                **{m: p[m] for m in ("p50_ms", "p95_ms", "p99_ms", "mean_ms")},
            }
        )
    p = percentiles(local)
    rows.append(
        {
            "phase": "in-process (no HTTP)",
            "concurrency": 1,
            "requests": len(local),
            "errors": 0,
            "req_s": round(1000 / p["mean_ms"], 1),
            **{m: p[m] for m in ("p50_ms", "p95_ms", "p99_ms", "mean_ms")},
        }
    )
    overhead = round(rows[0]["p50_ms"] / rows[2]["p50_ms"], 2)
    sent = max(conc["sent"], 1)
    cpu_ms = {
        "server_cpu_ms_per_request": round((cpu1[0] - cpu0[0]) * 1000 / sent, 2),
        "client_cpu_ms_per_request": round((cpu1[1] - cpu0[1] + cpu1[2] - cpu0[2]) * 1000 / sent, 2),
    }
    rows[1].update(cpu_ms)
    rows[0].update({k: None for k in cpu_ms})
    rows[2].update({"server_cpu_ms_per_request": round(local_cpu_ms, 2), "client_cpu_ms_per_request": None})
    print_table(
        f"POST /v1/search, k={args.k}, mode={args.mode}, workers={args.workers}, SciFact ({store_desc}); "
        f"HTTP p50 / in-process p50 = {overhead}x; load generator on the same CPUs",
        rows,
    )
    console.print(
        f"1-minute load average before/after: {load_before:.2f}/{os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} CPUs (anything above the server and this client skews the figures)"
    )
    if conc["errors"] or seq["errors"]:
        console.print(f"[red]errors: sequential {seq['errors']}, concurrent {conc['errors']}[/]")
    write_result(
        args.result_name,
        {
            "store": store_desc,
            "documents": docs,
            "chunks": chunks,
            "k": args.k,
            "mode": args.mode,
            "concurrency": args.concurrency,
            "workers": args.workers,
            "embed_threads": args.embed_threads,
            "loadavg_1m_before_and_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "server_log_level": args.log_level,
            "distinct_queries": len(pool),
            "client": args.client,
            "concurrent_requests": conc["sent"],
            "concurrent_distinct": distinct,
            "query_repeats": repeats,
            "http_over_in_process_p50": overhead,
            "errors": {"sequential": seq["errors"], "concurrent": conc["errors"]},
            "load_generator_shares_cpus": True,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
