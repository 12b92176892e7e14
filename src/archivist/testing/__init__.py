"""Test suites a backend or plugin reuses: the store contract (`archivist.testing.store`)."""
