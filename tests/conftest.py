"""Fixtures shared across the suite: the real bundled model, loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from archivist.embed.minilm_onnx import MiniLMEmbedder

#: The PostgreSQL test server (`postgres_server`, `postgres_url`): one per session, whichever modules use it.
pytest_plugins = ["pg_server"]

#: The shared datasets (BEIR layout) live beside the repository, never inside it.
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(scope="session")
def embedder() -> MiniLMEmbedder:
    """Return the bundled all-MiniLM-L6-v2 embedder (the real model, loaded once)."""
    return MiniLMEmbedder()


def write_files(folder: Path, files: dict[str, str]) -> Path:
    """Create `folder` with these files (name → text) in it; return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def ingest_corpus(root: Path, docs: dict[str, str], embedder: MiniLMEmbedder) -> Path:
    """Write `docs` (file name → text) under root/docs and ingest them into root/store.db; return root."""
    from archivist.app import Archivist
    from archivist.config import load_settings
    from archivist.store import open_store

    write_files(root / "docs", docs)
    settings = load_settings(store=f"sqlite:///{root / 'store.db'}")
    with Archivist(settings, open_store(settings.store), embedder) as app:
        app.ingest([root / "docs"])
    return root
