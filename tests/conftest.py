"""Fixtures shared across the suite: the real bundled model, loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from archivist.embed.minilm_onnx import MiniLMEmbedder

#: The shared datasets (BEIR layout) live beside the repository, never inside it.
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(scope="session")
def embedder() -> MiniLMEmbedder:
    """Return the bundled all-MiniLM-L6-v2 embedder (the real model, loaded once)."""
    return MiniLMEmbedder()
