"""Progress of long work on stderr: bars on a terminal, otherwise a plain line every few seconds (logs, CI, pipes).

`ARCHIVIST_PROGRESS_EVERY` sets the seconds between plain lines (default 5); work that ends sooner prints none.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rich.markup import escape

from archivist.cli._errors import fail
from archivist.cli._output import err, short

#: `hook(stage, done, total, detail)`: `total` None while unknown, `detail` what is being worked on ("" for none)
StageHook = Callable[[str, int, int | None, str], None]

PROGRESS_EVERY_ENV = "ARCHIVIST_PROGRESS_EVERY"
DEFAULT_EVERY_S = 5.0


def progress_every() -> float:
    """Return the seconds between plain progress lines, from `ARCHIVIST_PROGRESS_EVERY`; exits 2 on a bad value."""
    raw = os.environ.get(PROGRESS_EVERY_ENV, "").strip()
    if not raw:
        return DEFAULT_EVERY_S
    try:
        every = float(raw)
    except ValueError:
        every = -1.0
    if not every > 0:
        fail(f"{PROGRESS_EVERY_ENV} must be a number of seconds above 0, not {raw!r}", 2)
    return every


@dataclass(slots=True)
class _Stage:
    name: str
    done: int
    total: int | None
    detail: str


class _Lines:
    """Prints the latest stage's counts every `every` seconds from a thread of its own, so a slow step shows too."""

    def __init__(self, every: float) -> None:
        self._every = every
        self._started = time.monotonic()
        self._latest: _Stage | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="archivist-progress", daemon=True)

    def update(self, stage: str, done: int, total: int | None, detail: str) -> None:
        with self._lock:
            self._latest = _Stage(stage, done, total, detail)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            with self._lock:
                stage = self._latest
            if stage is not None:
                err.print(self._line(stage), soft_wrap=True, highlight=False)

    def _line(self, stage: _Stage) -> str:
        elapsed = round(time.monotonic() - self._started)
        if stage.total:
            counts = f"{stage.done:,}/{stage.total:,} ({100 * stage.done // stage.total}%)"
        else:
            counts = f"{stage.done:,}"
        detail = f" · {escape(short(stage.detail, 60))}" if stage.detail else ""
        return f"{escape(stage.name)}: {counts} · {elapsed}s{detail}"

    def __enter__(self) -> _Lines:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def stage_progress() -> Iterator[StageHook]:
    """Yield a hook that shows each stage's progress on stderr: a transient bar per stage on a terminal, a line
    every ARCHIVIST_PROGRESS_EVERY seconds otherwise (none for work shorter than that)."""
    if not err.is_terminal:
        with _Lines(progress_every()) as lines:
            yield lines.update
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[detail]}", style="dim"),
        console=err,
        transient=True,
    ) as bars:
        tasks: dict[str, TaskID] = {}

        def hook(stage: str, done: int, total: int | None, detail: str) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(escape(stage), total=total, detail="")
            bars.update(tasks[stage], completed=done, total=total, detail=escape(short(detail, 50)))

        yield hook
