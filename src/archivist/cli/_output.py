"""What commands print: the two consoles, JSON on stdout, warnings, confirmations and shortened text."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


def emit_json(data: Any) -> None:
    """Print `data` as the one JSON document on stdout (returns nothing)."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


def warn(message: str) -> None:
    """Print a warning on stderr (returns nothing)."""
    err.print(f"[yellow]warning:[/] {escape(message)}")


def emit_done(verb: str, item_id: str, as_json: bool) -> None:
    """Confirm that `verb` (deleted, revoked…) was done to `item_id`, as JSON or a line (returns nothing)."""
    if as_json:
        emit_json({verb: item_id})
    else:
        out.print(f"{verb} {item_id}")


def short(text: str, width: int) -> str:
    """Return `text` cut to `width` characters, ending in an ellipsis when cut."""
    return text if len(text) <= width else text[: width - 1] + "…"
