"""The SQLite store under concurrency: connections stay bounded, a fresh file migrates once whoever opens it."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from archivist.store.filters import Filters
from archivist.store.records import DocumentWrite
from archivist.store.sqlite import SQLiteStore
from archivist.types import Block, Chunk, Document, sha256_hex


def _open_files(path: Path) -> int:
    """Return how many file descriptors of this process point at the store's file."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
        except OSError:
            continue
    return count


def _one_document(store: SQLiteStore) -> None:
    text = "Connections are opened per thread and closed when their thread ends."
    doc = Document("notes.md", "Notes", text, "text/plain", [Block("paragraph", 0, len(text))])
    chunk = Chunk(doc.id, 0, text, 0, len(text), (), 12)
    h = sha256_hex(text)
    store.write_documents("m", [DocumentWrite(doc, [chunk], [h], "c")], {h: np.ones(4, dtype=np.float32) / 2})


def test_connections_stay_bounded_whatever_the_number_of_threads(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SQLiteStore(path)
    _one_document(store)
    files = []
    try:
        for _ in range(5):  # cycles of 40 concurrent short-lived threads, as a burst of searches makes
            barrier = threading.Barrier(40)

            def search(barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                assert store.bm25_search("threads", 5, Filters()) and store.count_documents() == 1

            threads = [threading.Thread(target=search) for _ in range(40)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            files.append(_open_files(path))
        gc.collect()
        # Only live threads keep a connection: this one (the others ended), whatever ran before.
        assert store.open_connections() <= 2
        # SQLite parks a closed connection's descriptor while other connections hold locks on the file, and reuses
        # it for the next one: the count follows the live connections (here at most two cycles' worth, when a new
        # cycle opens before the last one's are reaped), never the 200 threads ever created.
        assert max(files) <= 2 * 40 + 2, files
    finally:
        store.close()
    assert _open_files(path) == 0


_OPEN = """
import sys, time
from pathlib import Path
from archivist.server.auth import mint_api_key
from archivist.store.sqlite import SQLiteStore
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
store = SQLiteStore(Path(sys.argv[1]))
mint_api_key(store, sys.argv[3], ["read"])
print(store.schema_version())
"""


def test_processes_opening_one_fresh_store_at_once_all_succeed(tmp_path: Path) -> None:
    for trial in range(6):
        path, go = tmp_path / f"fresh{trial}.db", tmp_path / f"go{trial}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _OPEN, str(path), str(go), f"key{i}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(3)
        ]
        time.sleep(1.0)  # every process imported and is waiting
        go.touch()
        outcomes = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outcomes]
        store = SQLiteStore(path)
        try:
            assert {k.name for k in store.list_api_keys()} == {"key0", "key1", "key2"}
            assert {out.strip() for out, _ in outcomes} == {str(store.schema_version())}
        finally:
            store.close()
