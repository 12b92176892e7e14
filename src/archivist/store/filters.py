"""Filters on documents: key = value clauses (globs allowed), and the collections a request may read."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from archivist.types import UsageError

#: Filter keys every store understands; any other key names a document metadata field.
BUILTIN_FILTER_KEYS = ("source", "title", "document_id", "media_type", "collection")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
_GLOB_CHARS = frozenset("*?[")
_NUMBER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_INTEGER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)")


@dataclass(frozen=True, slots=True)
class FilterClause:
    """`key` equals `value`, or matches it as a glob when it holds *, ? or [."""

    key: str
    value: str

    @property
    def is_glob(self) -> bool:
        """Return whether the value is a glob pattern."""
        return any(c in _GLOB_CHARS for c in self.value)

    @property
    def number(self) -> int | float | None:
        """Return the value as a number when it is written as a finite JSON number (`2`, `-0.5`, `1e+20`), else
        None: such a value equals a numeric metadata value by number, whatever its spelling (`2` = `2.0`). An
        integer within 64 bits stays an exact int (ids of 19 digits must not compare as nearby doubles)."""
        if not _NUMBER_RE.fullmatch(self.value):
            return None
        if _INTEGER_RE.fullmatch(self.value) and -(2**63) <= int(self.value) < 2**63:
            return int(self.value)
        number = float(self.value)
        return number if math.isfinite(number) else None


@dataclass(frozen=True, slots=True)
class Filters:
    """Clauses ANDed across keys and ORed within one key; `scope`, when set, is the collections a request may read.

    The scope is its own clause, ANDed with everything and never merged with user clauses: a user clause on the
    same key can narrow what a request reads, never widen it.
    """

    clauses: tuple[FilterClause, ...] = ()
    scope: tuple[str, ...] | None = None

    def within(self, collections: Sequence[str]) -> Filters:
        """Return these filters limited to `collections` as well (an empty sequence reads nothing)."""
        allowed = tuple(dict.fromkeys(collections))
        if self.scope is not None:
            allowed = tuple(c for c in self.scope if c in allowed)
        return Filters(self.clauses, allowed)

    @classmethod
    def parse(cls, specs: Sequence[str]) -> Filters:
        """Return filters parsed from `key=value` strings, or raise UsageError on a malformed one."""
        clauses = []
        for spec in specs:
            key, sep, value = spec.partition("=")
            key = key.strip()
            if not sep or not key:
                raise UsageError(f"bad filter {spec!r}: expected key=value, e.g. source='docs/*.md'")
            if not _KEY_RE.match(key):
                raise UsageError(f"bad filter key {key!r}: use letters, digits, '_', '.', '-'")
            clauses.append(FilterClause(key, _value(key, value)))
        return cls(tuple(clauses))

    @classmethod
    def from_mapping(cls, mapping: dict[str, str], *, reserved: Sequence[str] = ()) -> Filters:
        """Return filters from {key: value} taken verbatim, or raise UsageError on a bad key or one that reads as
        a reserved key once stripped, case-folded and cut at '=' (so " Collection" or "collection=*" cannot pass)."""
        clauses = []
        for key, value in mapping.items():
            normal = key.partition("=")[0].strip().casefold()
            if normal in {r.casefold() for r in reserved}:
                raise UsageError(f"filter key {key!r} is reserved: {normal!r} is set by its own field, not in filters")
            if not _KEY_RE.match(key):
                raise UsageError(f"bad filter key {key!r}: use letters, digits, '_', '.', '-'")
            clauses.append(FilterClause(key, _value(key, value)))
        return cls(tuple(clauses))

    def by_key(self) -> dict[str, list[FilterClause]]:
        """Return the clauses grouped by key, in first-seen order."""
        grouped: dict[str, list[FilterClause]] = {}
        for c in self.clauses:
            grouped.setdefault(c.key, []).append(c)
        return grouped

    def __bool__(self) -> bool:
        return bool(self.clauses) or self.scope is not None


class FilterKeySource(Protocol):
    """What knows which filter keys name something: a store's documents."""

    def filter_keys(self, collections: Sequence[str] | None = None) -> set[str]:
        """Return the built-in keys and the metadata keys of documents in `collections` (None: every one)."""
        ...


def check_filter_keys(store: FilterKeySource, filters: Filters) -> None:
    """Raise UsageError when a filter names a key no document in the filters' scope has (the error lists only
    keys of that scope: another tenant's metadata keys are not shown, nor told apart from absent ones)."""
    if not filters.clauses:
        return
    known = store.filter_keys(filters.scope)
    unknown = sorted({c.key for c in filters.clauses} - known)
    if unknown:
        raise UsageError(f"unknown filter key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")


def _value(key: str, value: str) -> str:
    """Return a filter's value stripped, or raise UsageError for one no stored text can hold (a NUL character)."""
    if "\x00" in value:
        raise UsageError(f"bad filter value for {key!r}: it contains a NUL character, which no stored text holds")
    return value.strip()
