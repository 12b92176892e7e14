"""A thread-safe, bounded LRU of vectors by text: the one cache behind query and sentence vector reuse."""

from __future__ import annotations

import threading
from collections import OrderedDict

from archivist.embed.base import Vectors


class VectorLRU:
    """Remembers the vectors of the last `size` distinct texts; the least recently used go first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, Vectors] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, text: str) -> Vectors | None:
        """Return the text's vector if cached (marking it recently used), else None."""
        with self._lock:
            vector = self._items.get(text)
            if vector is not None:
                self._items.move_to_end(text)
            return vector

    def put(self, text: str, vector: Vectors) -> None:
        """Cache a text's vector, dropping the least recently used beyond `size`."""
        with self._lock:
            self._items[text] = vector
            self._items.move_to_end(text)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
