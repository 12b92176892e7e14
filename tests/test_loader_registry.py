"""The loader registry: a format added from outside is ingested like a built-in one, and taken suffixes are guarded."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import pytest

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.ingest.loaders import (
    Rejected,
    SourceFile,
    load_path,
    paragraph_blocks,
    register_loader,
    registry,
    supported_suffixes,
)
from archivist.store import open_store
from archivist.types import Document, document_id_for
from conftest import write_files

LIMIT = 50 * 1024 * 1024


@pytest.fixture(autouse=True)
def _own_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A copy of the table for each test, put back by monkeypatch: what a test registers never reaches another.
    monkeypatch.setattr(registry, "_LOADERS", dict(registry._LOADERS))
    monkeypatch.chdir(tmp_path)


def load_csv(file: SourceFile) -> Document:
    """Return a CSV file as one paragraph per row, each cell named by its column."""
    rows = list(csv.DictReader(io.StringIO(file.read_text())))
    if not rows:
        raise Rejected("no rows")
    text = "\n\n".join("; ".join(f"{column}: {value}" for column, value in row.items()) for row in rows)
    return Document(
        source=file.source,
        title=file.path.stem,
        text=text,
        media_type=file.media_type,
        blocks=paragraph_blocks(text),
        metadata={"rows": len(rows)},
    )


def test_a_registered_format_is_ingested_end_to_end(tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    register_loader(".csv", load_csv, media_type="text/csv")
    docs = write_files(
        tmp_path / "docs",
        {
            "people.csv": "name,known for\nAda Lovelace,the first program for the Analytical Engine\n"
            "Grace Hopper,the first compiler and the word debugging\n",
            "header-only.csv": "name,known for\n",
        },
    )
    settings = load_settings(store=f"sqlite:///{tmp_path / 'store.db'}")
    with Archivist(settings, open_store(settings.store), embedder) as app:
        report = app.ingest([docs])
        assert report.added == ["docs/people.csv"]
        assert [(s.source, s.reason) for s in report.skipped] == [("docs/header-only.csv", "no rows")]
        stored = app.store.get_document(document_id_for("docs/people.csv"))
        assert stored is not None
        assert (stored.title, stored.media_type, stored.metadata) == ("people", "text/csv", {"rows": 2})
        hits = app.search("who wrote the first compiler?", k=1)
    assert hits[0].source == "docs/people.csv"
    assert "Grace Hopper" in hits[0].text


def test_registered_suffixes_are_supported_and_listed_in_the_unsupported_reason() -> None:
    register_loader([".csv", ".TSV"], load_csv, media_type="text/csv")
    assert {".csv", ".tsv"} <= supported_suffixes()
    Path("table.TSV").write_text("a,b\n1,2\n")
    assert load_path(Path("table.TSV"), max_file_bytes=LIMIT).documents[0].media_type == "text/csv"
    Path("data.xyz").write_text("x")
    [skipped] = load_path(Path("data.xyz"), max_file_bytes=LIMIT).skipped
    assert ".csv" in skipped.reason and ".tsv" in skipped.reason and ".md" in skipped.reason


def test_a_taken_suffix_is_refused_unless_replaced() -> None:
    with pytest.raises(ValueError, match=r"'\.rst' \(archivist\.ingest\.loaders\.text\.load_text, text/plain\)"):
        register_loader(".rst", load_csv, media_type="text/csv")
    with pytest.raises(ValueError, match="replace=True"):
        register_loader([".csv", ".md"], load_csv, media_type="text/csv")
    # A refused registration adds none of its suffixes.
    assert ".csv" not in supported_suffixes()

    register_loader(".rst", load_csv, media_type="text/csv", replace=True)
    Path("notes.rst").write_text("term,meaning\nchunk,a span of a document\n")
    [document] = load_path(Path("notes.rst"), max_file_bytes=LIMIT).documents
    assert document.media_type == "text/csv"


@pytest.mark.parametrize("suffix", ["csv", ".tar.gz", ".", ""])
def test_a_suffix_that_no_file_can_have_is_refused(suffix: str) -> None:
    with pytest.raises(ValueError, match=r"such as '\.csv'"):
        register_loader(suffix, load_csv, media_type="text/csv")


def test_a_loader_that_fails_skips_only_its_file() -> None:
    def broken(file: SourceFile) -> Document:
        raise KeyError("cell")

    register_loader(".csv", broken, media_type="text/csv")
    Path("bad.csv").write_text("a\n")
    [skipped] = load_path(Path("bad.csv"), max_file_bytes=LIMIT).skipped
    assert skipped.reason == "could not parse: 'cell'"


@pytest.mark.parametrize(
    ("module", "name", "content", "reason"),
    [
        ("pypdf", "paper.pdf", b"%PDF-1.4\n", "reading PDF files needs the 'pypdf' package"),
        ("selectolax.lexbor", "page.html", b"<p>Hi</p>", "reading HTML files needs the 'selectolax' package"),
    ],
)
def test_a_missing_parser_library_is_named_with_what_to_install(
    monkeypatch: pytest.MonkeyPatch, module: str, name: str, content: bytes, reason: str
) -> None:
    # None in sys.modules makes `import` raise ImportError, as on an install without the package.
    monkeypatch.setitem(sys.modules, module, None)
    Path(name).write_bytes(content)
    [skipped] = load_path(Path(name), max_file_bytes=LIMIT).skipped
    assert skipped.reason.startswith(reason) and skipped.reason.endswith(f"pip install {module.split('.')[0]}")


def test_built_in_formats_are_what_the_registry_starts_with() -> None:
    # Runs after the tests above: none of their registrations may have leaked.
    assert supported_suffixes() == {
        ".md",
        ".markdown",
        ".txt",
        ".text",
        ".rst",
        ".html",
        ".htm",
        ".pdf",
        ".jsonl",
        ".ndjson",
    }
