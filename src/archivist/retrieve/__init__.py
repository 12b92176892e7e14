"""Retrieval: dense and BM25 search, rank fusion, filters."""
