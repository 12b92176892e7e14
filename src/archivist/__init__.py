"""Archivist: a RAG service over your documents — ingest, hybrid search, grounded answers, evals."""

__version__ = "0.1.0"
