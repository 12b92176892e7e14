"""BM25 term counts as compact blobs (the terms themselves come from `archivist.text.analyzer`)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def encode_counts(term_ids: list[int], counts: list[int]) -> bytes:
    """Return term ids and their counts packed as little-endian int32 pairs."""
    arr = np.empty((len(term_ids), 2), dtype="<i4")
    arr[:, 0] = term_ids
    arr[:, 1] = counts
    return arr.tobytes()


def decode_counts(blob: bytes) -> npt.NDArray[np.int32]:
    """Return an (n, 2) array of (term id, count) from a packed blob."""
    return np.frombuffer(blob, dtype="<i4").reshape(-1, 2)
