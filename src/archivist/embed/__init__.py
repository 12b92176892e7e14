"""Embedding backends behind the `Embedder` protocol."""
