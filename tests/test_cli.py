"""The `archivist` command as a user runs it: real processes, exit codes, stdout that is pure JSON."""

from __future__ import annotations

import importlib.metadata
import json
import os
import pty
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from conftest import write_files


def run(
    cwd: Path, *args: str, store: str | None = "sqlite:///store.db", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in `cwd` (with `env` added to the environment) and return the finished process."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")}, **(env or {})}
    if store:
        env["ARCHIVIST_STORE"] = store
    return subprocess.run(
        [sys.executable, "-m", "archivist.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def run_json(cwd: Path, *args: str) -> Any:
    """Run the CLI with --json, assert success and that stdout is one JSON document; return it."""
    proc = run(cwd, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a folder with a small corpus, ingested once into store.db."""
    root = tmp_path_factory.mktemp("cli")
    write_files(
        root / "docs",
        {
            "keys.md": "---\nlang: en\n---\n# API keys\n\nEvery request carries an API key.\n\n## Rotating a key\n\n"
            "Create a second key, roll it out, then revoke the first one.\n",
            "backup.md": "# Backups\n\nRun the online backup nightly and test a restore monthly.\n",
            "empty.txt": "",
        },
    )
    summary = run_json(root, "ingest", "docs")
    assert summary["added"] == 2 and summary["skipped"] == 1
    assert summary["skipped_items"] == [{"source": "docs/empty.txt", "reason": "empty file"}]
    return root


def test_ingest_json_counts_and_idempotent_rerun(workdir: Path) -> None:
    summary = run_json(workdir, "ingest", "docs")
    assert {k: summary[k] for k in ("added", "updated", "unchanged", "skipped", "failed")} == {
        "added": 0,
        "updated": 0,
        "unchanged": 2,
        "skipped": 1,
        "failed": 0,
    }


def test_search_json_has_the_documented_fields(workdir: Path) -> None:
    hits = run_json(workdir, "search", "how do I rotate an API key", "--k", "2")
    assert len(hits) == 2  # k=2 over a store of more than two chunks
    top = hits[0]
    for key in ("document_id", "source", "title", "heading_path", "text", "score", "dense_score", "bm25_score"):
        assert key in top
    assert top["source"] == "docs/keys.md" and top["heading_path"][-1] == "Rotating a key"


def test_search_human_output_and_explain(workdir: Path) -> None:
    proc = run(workdir, "search", "nightly backup", "--explain")
    assert proc.returncode == 0, proc.stderr
    assert "docs/backup.md" in proc.stdout and "dense #" in proc.stdout and "bm25 #" in proc.stdout


def test_filters_on_metadata_and_glob(workdir: Path) -> None:
    hits = run_json(workdir, "search", "key", "--filter", "lang=en")
    assert {h["source"] for h in hits} == {"docs/keys.md"}
    assert run_json(workdir, "search", "key", "--filter", "source=docs/b*.md")[0]["source"] == "docs/backup.md"


def test_docs_list_show_delete(workdir: Path) -> None:
    listing = run_json(workdir, "docs", "list")
    assert listing["total"] == 2
    doc = next(d for d in listing["documents"] if d["source"] == "docs/keys.md")
    shown = run_json(workdir, "docs", "show", doc["id"])
    assert shown["metadata"] == {"lang": "en"} and shown["chunks"][0]["document_id"] == doc["id"]
    proc = run(workdir, "docs", "delete", doc["id"], "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"deleted": doc["id"]}
    assert run_json(workdir, "docs", "list")["total"] == 1
    again = run(workdir, "docs", "delete", doc["id"])
    assert again.returncode == 1 and "no document with id" in again.stderr
    assert run_json(workdir, "ingest", "docs")["added"] == 1  # restores it for other tests


def test_stats_json(workdir: Path) -> None:
    stats = run_json(workdir, "stats")
    assert stats["documents"] == 2 and stats["chunks"] >= 2
    assert stats["embedding_model"] == "all-MiniLM-L6-v2" and stats["bytes"] > 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("search", "key", "--filter", "colour=red"), 2, "unknown filter key 'colour'"),
        (("search", "key", "--filter", "nonsense"), 2, "expected key=value"),
        (("search", "key", "--mode", "fuzzy"), 2, "unknown --mode"),
        (("search", "   "), 2, "empty query"),
        (("docs", "show", "nope"), 1, "no document with id"),
        (("ingest", "missing-folder"), 1, "no such file or directory"),
        (("search", "--k", "0", "key"), 2, "--k"),
        (("frobnicate",), 2, "No such command"),
    ],
)
def test_bad_input_gets_a_clear_error_and_exit_code(
    workdir: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    proc = run(workdir, *args)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert run_json(workdir, "stats")["documents"] == 2  # nothing stored was lost


def test_unknown_store_scheme_is_a_usage_error(workdir: Path) -> None:
    proc = run(workdir, "stats", store="mongodb://localhost/db")
    assert proc.returncode == 2 and "unsupported store URL scheme 'mongodb'" in proc.stderr


def test_json_stdout_stays_clean_when_ingest_skips(workdir: Path) -> None:
    (workdir / "bad.jsonl").write_text('{"_id": "1", "text": "fine"}\n{broken\n')
    proc = run(workdir, "ingest", "bad.jsonl", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["added"] == 1 and summary["skipped_items"][0]["source"].endswith("bad.jsonl:2")
    added = run_json(workdir, "docs", "list", "--filter", "source=bad.jsonl*")["documents"]
    assert [d["source"] for d in added] == ["bad.jsonl#1"]
    assert run(workdir, "docs", "delete", added[0]["id"]).returncode == 0


def test_default_store_location(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A\n\nSome words here.\n")
    proc = run(tmp_path, "ingest", "a.md", store=None)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / ".archivist" / "archivist.db").exists()


def test_reading_a_store_that_does_not_exist_fails_instead_of_creating_it(tmp_path: Path) -> None:
    # A mistyped --store would otherwise be created empty, and every search would quietly find nothing.
    reads = [("search", "keys"), ("ask", "How are keys rotated?"), ("stats",), ("docs", "list"), ("eval", "runs")]
    reads += [("keys", "list"), ("keys", "revoke", "k1"), ("eval", "compare", "r1", "r2")]
    for args in reads:
        proc = run(tmp_path, *args, "--json", store="sqlite:///typo.db")
        assert proc.returncode == 1, (args, proc.stderr)
        assert "no store at sqlite:///typo.db" in proc.stderr and proc.stdout == ""
        assert not (tmp_path / "typo.db").exists()


def test_an_empty_store_or_filters_that_match_nothing_are_named_not_just_no_results(workdir: Path) -> None:
    # Creating a key creates the store, with no documents.
    assert run(workdir, "keys", "create", "--name", "k", "--scopes", "read", store="sqlite:///fresh.db").returncode == 0
    proc = run(workdir, "search", "keys", "--json", store="sqlite:///fresh.db")
    assert proc.returncode == 0 and json.loads(proc.stdout) == []
    assert "the store holds no documents" in proc.stderr
    answer = json.loads(run(workdir, "ask", "How are keys rotated?", "--json", store="sqlite:///fresh.db").stdout)
    assert answer["refused"] and any("the store holds no documents" in w for w in answer["warnings"])
    proc = run(workdir, "ask", "How are keys rotated?", store="sqlite:///fresh.db")
    assert "the store holds no documents" in proc.stderr and "do not answer" in proc.stdout
    proc = run(workdir, "search", "key", "--filter", "lang=fr")
    assert proc.returncode == 0 and "no stored document is in the collections searched or passes" in proc.stderr
    # A search that finds nothing in a store that has matching documents warns of nothing.
    assert "warning" not in run(workdir, "search", "key", "--filter", "lang=en").stderr


ARCHIVIST = str(Path(sys.executable).parent / "archivist")  # the console script: completion names the program by it


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed `archivist` console script with `args` and return the finished process."""
    return subprocess.run(
        [ARCHIVIST, *args], env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60
    )


def test_version_prints_the_installed_package_version() -> None:
    for flag in ("--version", "-V"):
        proc = run_script(flag)
        assert (proc.returncode, proc.stdout) == (0, f"archivist {importlib.metadata.version('archivist')}\n")


def test_help_and_version_load_no_model_numpy_or_server(tmp_path: Path) -> None:
    # `archivist --help` took 1.2 s when every command's modules (numpy, onnxruntime, the app) were imported first.
    for args in (["--help"], ["--version"], ["search", "--help"], ["eval", "answers", "--help"]):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "archivist.cli", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        loaded = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import ")}
        heavy = {"numpy", "onnxruntime", "fastapi", "httpx", "uvicorn", "archivist.app", "archivist.store"}
        assert "typer" in loaded and not heavy & loaded, (args, heavy & loaded)


def test_shell_completion_is_offered_and_completes_commands_and_values() -> None:
    script = run_script("--show-completion", "bash")
    assert script.returncode == 0 and "_ARCHIVIST_COMPLETE=complete_bash" in script.stdout

    def complete(words: str) -> list[str]:
        current = len(words.split()) - (0 if words.endswith(" ") else 1)  # the index of the word being typed
        env = {"_ARCHIVIST_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(current)}
        proc = run_script(env=env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert complete("archivist ev") == ["eval"]
    assert complete("archivist eval c") == ["compare", "calibrate-refusal"]
    assert complete("archivist search q --mode ") == ["hybrid", "dense", "bm25"]


def test_llm_ping_json_without_a_provider_is_one_json_document_and_exit_1(tmp_path: Path) -> None:
    proc = run(tmp_path, "llm", "ping", "--json", store=f"sqlite:///{tmp_path / 's.db'}")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["providers"] == [] and report["error"].startswith("no LLM provider configured: set ARCHIVIST_LLM_URL")
    assert "no LLM provider configured" in proc.stderr


def test_eval_runs_at_80_columns_shows_the_whole_ids_that_compare_takes(tmp_path: Path) -> None:
    from archivist.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    ids = [uuid.uuid4().hex[:12] for _ in range(2)]
    runs = zip(ids, ("scifact", "covidqa-answers"), ("bm25-only-baseline", None), strict=True)
    for i, (run_id, dataset, tag) in enumerate(runs):
        store.save_eval_run(
            {
                "id": run_id,
                "kind": "retrieval",
                "dataset": dataset,
                "split": "test",
                "tag": tag,
                "created_at": f"2026-05-0{i + 1}T14:22:00+00:00",
                "fingerprint_hash": "a1b2c3d4e5f6",
                "fingerprint": {},
                "metrics": {"ndcg@10": 0.7559, "recall@100": 0.966},
                "per_query": {"q1": {"ndcg@10": 0.5 + i / 10}, "q2": {"ndcg@10": 0.9}},
                "n_queries": 2,
            }
        )
    store.close()
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    proc = run(tmp_path, "eval", "runs", store=url, env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(map(len, lines)) <= 80, proc.stdout
    # A row starts at column 0; the lines of a wrapped cell under it start with spaces.
    shown = [line.split()[0] for line in lines[1:] if not line.startswith(" ")]
    assert shown == ids[::-1], proc.stdout  # newest first, every id whole
    compared = run(tmp_path, "eval", "compare", *shown, "--json", store=url)
    assert compared.returncode == 0 and json.loads(compared.stdout)["a"] == ids[1], compared.stderr


@pytest.fixture(scope="module")
def many_notes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a folder of 300 short notes: an ingest that takes a second or more."""
    return write_files(
        tmp_path_factory.mktemp("notes") / "notes",
        {f"note{i:03}.md": f"# Note {i}\n\nNote {i} is about backups, keys and topic {i % 7}.\n" for i in range(300)},
    )


def test_ingest_with_stderr_piped_prints_progress_lines_not_bars(many_notes: Path, tmp_path: Path) -> None:
    proc = run(tmp_path, "ingest", str(many_notes), env={"ARCHIVIST_PROGRESS_EVERY": "0.05"})
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ingest: ")]
    counted = [line for line in lines if re.fullmatch(r"ingest: \d+/300 \(\d+%\) · \d+s · \S+note\d+\.md", line)]
    assert len(lines) >= 2 and counted, proc.stderr
    assert "━" not in proc.stderr and "\x1b[" not in proc.stderr  # no bar, no terminal codes in a log
    # Work shorter than the interval prints no progress at all.
    quick = run(tmp_path, "ingest", str(many_notes), env={"ARCHIVIST_PROGRESS_EVERY": "60"})
    assert quick.returncode == 0 and "ingest:" not in quick.stderr and "300 unchanged" in quick.stdout
    bad = run(tmp_path, "ingest", str(many_notes), env={"ARCHIVIST_PROGRESS_EVERY": "often"})
    assert bad.returncode == 2 and "ARCHIVIST_PROGRESS_EVERY must be a number of seconds above 0" in bad.stderr


def test_ingest_on_a_terminal_draws_bars(many_notes: Path, tmp_path: Path) -> None:
    primary, secondary = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")}
    env.update(ARCHIVIST_STORE="sqlite:///store.db", TERM="xterm", ARCHIVIST_PROGRESS_EVERY="0.05")
    proc = subprocess.Popen(
        [sys.executable, "-m", "archivist.cli", "ingest", str(many_notes)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=secondary,
    )
    os.close(secondary)
    seen = b""
    while True:
        try:
            piece = os.read(primary, 65536)
        except OSError:  # EIO: the child exited and closed the terminal
            break
        if not piece:
            break
        seen += piece
    os.close(primary)
    assert proc.wait(timeout=120) == 0
    assert proc.stdout is not None and b"300 added" in proc.stdout.read()
    text = seen.decode(errors="replace")
    assert "━" in text and "ingest" in text and "ingest: " not in text  # bars, and none of the plain lines
