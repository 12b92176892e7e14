"""The user's own tools, as the agent tests load them (`--tools tests/agent_tools.py:TOOLS`): side-effecting appends
to the file named by AGENT_TEST_FILE, one that needs approval, and one that is too slow for its time limit.

With AGENT_TEST_DIE_AFTER_EFFECT=1 an append kills its own process with SIGKILL right after writing its line: the
intent is committed, the effect happened, the outcome is not recorded (the crash a resume must survive).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from archivist.agent import tool


def _notes() -> Path:
    return Path(os.environ["AGENT_TEST_FILE"])


def _append(text: str, key: str) -> dict[str, Any]:
    with _notes().open("a", encoding="utf-8") as f:
        f.write(f"{key}\t{text}\n")
        f.flush()
        os.fsync(f.fileno())
    if os.environ.get("AGENT_TEST_DIE_AFTER_EFFECT") == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    return {"appended": text}


@tool(effect="side_effecting")
def append_line(text: str, idempotency_key: str) -> dict[str, Any]:
    """Append a line to the notes file.

    Args:
        text: The line to append.
    """
    return _append(text, idempotency_key)


@append_line.reconciler
def _settle_append(arguments: dict[str, Any], key: str) -> dict[str, Any]:
    # The key is written with the line: a line bearing it means the append happened; none means it did not, and it
    # is done now (once).
    lines = _notes().read_text(encoding="utf-8").splitlines() if _notes().exists() else []
    if any(line.startswith(f"{key}\t") for line in lines):
        return {"appended": arguments["text"]}
    return _append(arguments["text"], key)


@tool(effect="side_effecting")
def append_blind(text: str) -> dict[str, Any]:
    """Append a line to the notes file (no way to tell afterwards whether it did).

    Args:
        text: The line to append.
    """
    return _append(text, "blind")


@tool(effect="side_effecting", requires_approval=True)
def append_approved(text: str) -> dict[str, Any]:
    """Append a line to the notes file once a person approves.

    Args:
        text: The line to append.
    """
    return _append(text, "approved")


@tool(timeout_s=0.3)
def slow_lookup(topic: str) -> str:
    """Look a topic up in a slow external system.

    Args:
        topic: What to look up.
    """
    time.sleep(5)
    return f"about {topic}"


TOOLS = [append_line, append_blind, append_approved, slow_lookup]
