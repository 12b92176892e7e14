"""How commands fail: a message on stderr and an exit code (1 failure, 2 bad usage)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn, TypeVar

import typer
from rich.markup import escape

from archivist.cli._output import err
from archivist.types import UsageError

T = TypeVar("T")
R = TypeVar("R")


def fail(message: str, code: int) -> NoReturn:
    """Print `message` as an error on stderr and exit with `code` (never returns)."""
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def usage(parse: Callable[[T], R], value: T) -> R:
    """Return `parse(value)`, or exit 2 with its message when the value is bad usage (before any store is opened)."""
    try:
        return parse(value)
    except UsageError as exc:
        fail(str(exc), 2)
