"""What every SQL backend shares: rows read into records, the text forms of JSON and times both store, and the
decorator that reports a driver's errors as our own `StoreError`."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from archivist.store.records import ChunkGuard
from archivist.types import StoreError

R = TypeVar("R")
C = TypeVar("C", bound=type)


def utc_now() -> str:
    """Return the current UTC time as the ISO text both backends store (seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def reader(cls: Callable[..., R], columns: str, **decode: Callable[[Any], Any]) -> Callable[[Sequence[Any]], R]:
    """Return a function building a `cls` record from a row of `columns` (a SELECT list; each column's last name,
    unquoted, is the field), passing the columns named in `decode` through their decoder first."""
    fields = [c.strip().rsplit(".", 1)[-1].strip('"') for c in columns.split(",")]
    decoded = [(f, decode[f]) for f in fields if f in decode]

    def read(row: Sequence[Any]) -> R:
        # A hot path (every search's hits): zip once, then decode only the few columns that need it.
        values = dict(zip(fields, row, strict=True))
        for field, dec in decoded:
            values[field] = dec(values[field])
        return cls(**values)

    return read


def json_or_none(value: str | None) -> Any:
    """Return a JSON column's value (None stays None)."""
    return json.loads(value) if value is not None else None


def json_tuple(value: str | None) -> tuple[Any, ...] | None:
    """Return a JSON array column as a tuple (None stays None)."""
    return tuple(json.loads(value)) if value is not None else None


def kept_clearances(
    guards: Sequence[ChunkGuard], hashes: Sequence[str], cleared: dict[str, tuple[str, str]]
) -> list[ChunkGuard]:
    """Return the guard verdicts to store for a document's new chunks: a chunk whose embedded text a person cleared
    in the version it replaces (`cleared`: {embed hash: (by, at)}) stays cleared and unflagged."""
    out = []
    for g, h in zip(guards, hashes, strict=True):
        if g.cleared_at is None and h in cleared:
            by, at = cleared[h]
            g = ChunkGuard(g.score, False, by, at)
        out.append(g)
    return out


#: what `update_job` may set on a job (besides its updated_at, always set)
JOB_FIELDS = frozenset(
    {"status", "done", "total", "result", "error", "payload", "attempts", "locked_until", "locked_by"}
)


def job_update_values(fields: dict[str, Any]) -> dict[str, Any]:
    """Return the column values an `update_job(**fields)` writes (JSON as text, updated_at now), or raise
    ValueError naming the fields a job does not have."""
    unknown = set(fields) - JOB_FIELDS
    if unknown:
        raise ValueError(f"update_job: unknown fields {sorted(unknown)}")
    values = {
        k: json.dumps(v, ensure_ascii=False) if k in ("result", "payload") and v is not None else v
        for k, v in fields.items()
    }
    values["updated_at"] = utc_now()
    return values


def reporting_our_errors(driver_error: type[Exception], describe: Callable[[Any], str] = str) -> Callable[[C], C]:
    """Return a class decorator making every public method raise our StoreError instead of the driver's errors
    (callers, and the contract suites every backend passes, never see a driver's exception); `describe` words one."""

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except driver_error as exc:
                # A conflict a caller can act on is raised as ConflictError by the method that expects it.
                raise StoreError(f"store error: {describe(exc)}") from exc

        return wrapper

    def decorate(cls: C) -> C:
        for name in dir(cls):
            member = getattr(cls, name)
            if not name.startswith("_") and callable(member) and not isinstance(member, type):
                setattr(cls, name, wrap(member))
        return cls

    return decorate
