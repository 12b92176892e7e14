"""Ingest input that once broke a whole run: odd file names, symlinks, FIFOs, concurrent runs, giant "words".

Everything goes through the real `archivist` command (a subprocess) or the real pipeline, on real SQLite files.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.ingest.chunker import MAX_CHARS_PER_TOKEN
from archivist.store import open_store


def run(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the CLI in `cwd` on cwd/store.db and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "archivist.cli", *args],
        cwd=cwd,
        env=_env("sqlite:///store.db"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _env(store: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")}
    env["ARCHIVIST_STORE"] = store
    return env


def run_json(cwd: Path, *args: str) -> Any:
    """Run the CLI with --json, assert success and that stdout is one JSON document; return it."""
    proc = run(cwd, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def stored(cwd: Path) -> dict[str, int]:
    """Return {source: version} of every stored document, read with `archivist docs list`."""
    listing = run_json(cwd, "docs", "list", "--limit", "10000")
    return {d["source"]: d["version"] for d in listing["documents"]}


def skips(summary: dict[str, Any]) -> dict[str, str]:
    return {s["source"]: s["reason"] for s in summary["skipped_items"]}


# --- file names that are not UTF-8 ---------------------------------------------------------------


def test_a_name_that_is_not_utf8_is_one_skip_and_the_rest_of_the_folder_is_ingested(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.md").write_text("# Good\n\nThe good document sits beside a badly named one.\n")
    raw = os.fsencode(docs)
    try:
        with open(os.path.join(raw, b"bad\xff.md"), "wb") as f:
            f.write(b"# Bad\n\nA file whose name is not UTF-8.\n")
        os.mkdir(os.path.join(raw, b"sub\xfe"))
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    with open(os.path.join(raw, b"sub\xfe", b"inside.md"), "wb") as f:
        f.write(b"# Inside\n\nIn a folder whose name is not UTF-8.\n")

    summary = run_json(tmp_path, "ingest", "docs")
    assert (summary["added"], summary["failed"]) == (1, 0)
    assert summary["skipped_items"] == [
        {"source": "docs/bad\\xff.md", "reason": "file name is not valid UTF-8"},
        {"source": "docs/sub\\xfe", "reason": "folder name is not valid UTF-8"},
    ]
    assert stored(tmp_path) == {"docs/good.md": 1}
    # The human report names the file too, and a second run is a clean no-op.
    proc = run(tmp_path, "ingest", "docs")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "docs/bad\\xff.md: file name is not valid UTF-8" in proc.stderr
    assert "1 unchanged" in proc.stdout


def test_a_path_named_on_the_command_line_that_is_not_utf8_is_a_skip(tmp_path: Path) -> None:
    (tmp_path / "good.md").write_text("# Good\n\nStill ingested.\n")
    try:
        with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.md"), "wb") as f:
            f.write(b"# Cafe\n\nNamed in Latin-1.\n")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    proc = subprocess.run(
        [sys.executable, "-m", "archivist.cli", "ingest", "good.md", os.fsdecode(b"caf\xe9.md"), "--json"],
        cwd=tmp_path,
        env=_env("sqlite:///store.db"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["added"] == 1
    assert summary["skipped_items"] == [{"source": "caf\\xe9.md", "reason": "file name is not valid UTF-8"}]


# --- symlinks, loops, FIFOs ----------------------------------------------------------------------


@pytest.fixture
def linked(tmp_path: Path) -> Path:
    """Return a folder holding docs/ with symlinks pointing inside it and outside it."""
    docs = tmp_path / "docs"
    (docs / "guide").mkdir(parents=True)
    (docs / "inner.md").write_text("# Inner\n\nA document inside the folder.\n")
    (docs / "guide" / "deep.md").write_text("# Deep\n\nA document in a subfolder.\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret\n\nA document outside the folder being ingested.\n")
    (docs / "alias.md").symlink_to("inner.md")  # inside: read as before
    (docs / "secret.md").symlink_to(outside / "secret.md")
    (docs / "elsewhere").symlink_to(outside, target_is_directory=True)
    (docs / "guide-again").symlink_to("guide", target_is_directory=True)
    return tmp_path


def test_symlinks_out_of_the_folder_are_skipped_with_a_reason(linked: Path) -> None:
    summary = run_json(linked, "ingest", "docs")
    assert stored(linked) == {"docs/alias.md": 1, "docs/guide/deep.md": 1, "docs/inner.md": 1}
    assert skips(summary) == {
        "docs/elsewhere": "symlink to a folder outside the ingested folder (--follow-symlinks reads it)",
        "docs/guide-again": "symlink to a folder inside the ingested folder (its files are read under their own path)",
        "docs/secret.md": "symlink to a file outside the ingested folder (--follow-symlinks reads it)",
    }


def test_follow_symlinks_reads_links_out_of_the_folder(linked: Path) -> None:
    summary = run_json(linked, "ingest", "docs", "--follow-symlinks")
    assert summary["added"] == 5
    assert set(stored(linked)) == {
        "docs/alias.md",
        "docs/elsewhere/secret.md",
        "docs/guide/deep.md",
        "docs/inner.md",
        "docs/secret.md",
    }
    assert list(skips(summary)) == ["docs/guide-again"]


def test_a_symlink_named_on_the_command_line_is_read(linked: Path) -> None:
    summary = run_json(linked, "ingest", "docs/secret.md")
    assert (summary["added"], summary["skipped"]) == (1, 0)


@pytest.mark.parametrize("follow", [False, True], ids=["default", "follow"])
def test_symlink_loops_end(tmp_path: Path, follow: bool) -> None:
    docs = tmp_path / "docs"
    (docs / "a").mkdir(parents=True)
    (docs / "a" / "note.md").write_text("# Note\n\nThe only real document.\n")
    (docs / "a" / "back").symlink_to("..", target_is_directory=True)  # docs/a/back -> docs
    (docs / "up").symlink_to("../..", target_is_directory=True)  # outside: the folder holding docs/
    (docs / "self.md").symlink_to("self.md")
    (docs / "gone.md").symlink_to("missing.md")
    args = ("ingest", "docs", "--follow-symlinks") if follow else ("ingest", "docs")
    summary = run_json(tmp_path, *args)  # a loop would hang here until the timeout
    assert "docs/a/note.md" in stored(tmp_path)
    reasons = skips(summary)
    assert reasons["docs/self.md"] == "symlink loop"
    assert reasons["docs/gone.md"] == "broken symlink"
    assert reasons["docs/a/back"].startswith("symlink to a folder inside the ingested folder")
    if follow:
        assert (
            reasons[f"docs/up/{tmp_path.name}/docs"]
            == "folder already walked (reached again through a symlink: a loop)"
        )
    else:
        assert reasons["docs/up"].startswith("symlink to a folder outside the ingested folder")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_in_a_folder_is_skipped_not_waited_on(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "note.md").write_text("# Note\n\nA document beside a named pipe.\n")
    os.mkfifo(docs / "feed.jsonl")
    os.mkfifo(docs / "feed.md")
    summary = run_json(tmp_path, "ingest", "docs")  # reading a FIFO would block until the timeout
    assert summary["added"] == 1
    assert skips(summary) == {"docs/feed.jsonl": "not a regular file", "docs/feed.md": "not a regular file"}


# --- JSONL lines that once cost the whole file or the whole run ------------------------------------


def test_bad_jsonl_lines_cost_only_themselves(tmp_path: Path) -> None:
    good = [json.dumps({"_id": f"r{i}", "text": f"Record {i} is a good one."}) for i in range(4)]
    (tmp_path / "mixed.jsonl").write_bytes(
        "\n".join(good[:2]).encode()
        + b"\n\x00\x00\x00\n"
        + b'{"_id": "nul", "text": "a \x00 inside"}\n'
        + b'{"_id": "lone", "text": "half a pair \\ud83d here"}\n'
        + "\n".join(good[2:]).encode()
        + b"\n"
    )
    summary = run_json(tmp_path, "ingest", "mixed.jsonl")
    assert summary["added"] == 4
    assert skips(summary) == {
        "mixed.jsonl:3": "line 3: binary content, not text (NUL byte at column 1)",
        "mixed.jsonl:4": "line 4: binary content, not text (NUL byte at column 27)",
        "mixed.jsonl:5": "line 5: not valid Unicode: unpaired surrogate \\ud83d",
    }
    assert sorted(stored(tmp_path)) == [f"mixed.jsonl#r{i}" for i in range(4)]


# --- a file with no breaks at all --------------------------------------------------------------------


@pytest.fixture
def app(tmp_path: Path, embedder: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch) -> Iterator[Archivist]:
    """Yield an app on a fresh store in tmp_path (the cwd), sharing the loaded model."""
    monkeypatch.chdir(tmp_path)
    settings = load_settings(store=f"sqlite:///{tmp_path / 'store.db'}")
    with Archivist(settings, open_store(settings.store), embedder) as archivist:
        yield archivist


def test_a_file_that_is_one_unbroken_word_is_stored_in_chunks_within_both_caps(app: Archivist, tmp_path: Path) -> None:
    text = "A" * 2_000_000
    (tmp_path / "blob.txt").write_text(text + "\n\nThe end of the blob.\n")
    report = app.ingest([tmp_path / "blob.txt"])
    assert report.added == ["blob.txt"] and not report.failed
    cap_tokens = app.settings.chunk_max_tokens
    cap_chars = cap_tokens * MAX_CHARS_PER_TOKEN
    with sqlite3.connect(tmp_path / "store.db") as conn:
        rows = conn.execute('SELECT text, start, "end", token_count FROM chunks ORDER BY ordinal').fetchall()
    assert len(rows) > len(text) // cap_chars
    document = (tmp_path / "blob.txt").read_text()
    for chunk, start, end, tokens in rows:
        assert len(chunk) <= cap_chars and tokens <= cap_tokens
        assert chunk == document[start:end], "a stored span does not index the document text"
    # Cut into pieces, the word comes back whole: no character is lost between chunks.
    assert rows[0][1] == 0 and rows[-1][2] == len(document.rstrip())
    for (_, _, end, _), (_, start, _, _) in itertools.pairwise(rows):
        assert start <= end or not document[end:start].strip()
    # A search hit shows one chunk, not the file.
    [hit] = app.search("AAAA", k=1)
    assert len(hit.text) <= cap_chars


# --- two ingests of the same file at once ------------------------------------------------------------


@pytest.mark.parametrize("trial", range(3))
def test_two_concurrent_ingests_of_one_file_store_each_document_once(tmp_path: Path, trial: int) -> None:
    records = 150
    (tmp_path / "corpus.jsonl").write_text(
        "".join(
            json.dumps(
                {"_id": f"d{i}", "title": f"Note {i}", "text": f"Note {i} of trial {trial} is about item {i * 7}."}
            )
            + "\n"
            for i in range(records)
        )
    )
    db = tmp_path / "store.db"
    # The store file exists before the race (two processes creating one SQLite file at the same instant is a
    # different race, in the store); the documents and the new collection do not.
    open_store(f"sqlite:///{db}").close()
    cmd = [sys.executable, "-m", "archivist.cli", "ingest", "corpus.jsonl", "--collection", "shared", "--json"]
    procs = [
        subprocess.Popen(
            cmd, cwd=tmp_path, env=_env(f"sqlite:///{db}"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    summaries = [json.loads(out) for out, _ in outputs]
    # Each document is written by exactly one of the two runs; the other finds it unchanged.
    assert sum(s["added"] for s in summaries) == records
    assert sum(s["unchanged"] for s in summaries) == records
    assert all(s["updated"] == 0 and s["failed"] == 0 for s in summaries)
    with sqlite3.connect(db) as conn:
        versions = conn.execute("SELECT version, COUNT(*) FROM documents GROUP BY version").fetchall()
        chunk_docs = conn.execute("SELECT COUNT(DISTINCT document_id) FROM chunks").fetchone()[0]
    assert versions == [(1, records)]
    assert chunk_docs == records
