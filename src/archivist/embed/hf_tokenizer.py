"""A `Tokenizer` backed by a Hugging Face `tokenizer.json` (the `tokenizers` library)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer


class HFTokenizer:
    """Counts and locates tokens with a model's own `tokenizer.json`."""

    def __init__(self, path: Path, max_tokens: int) -> None:
        self._counter = _HFTokenizer.from_file(str(path))
        # The shipped tokenizer.json bakes truncation/padding at 128: counting must see every token.
        self._counter.no_truncation()
        self._counter.no_padding()
        self.batch = _HFTokenizer.from_file(str(path))
        self.batch.enable_truncation(max_tokens)
        self.batch.enable_padding()

    def count(self, texts: Sequence[str]) -> list[int]:
        """Return the number of model tokens in each text (special tokens excluded)."""
        if not texts:
            return []
        encs = self._counter.encode_batch_fast(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encs]

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Return the character span of each model token of a text."""
        return [(int(a), int(b)) for a, b in self._counter.encode(text, add_special_tokens=False).offsets]
