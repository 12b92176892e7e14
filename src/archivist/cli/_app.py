"""The app a command works with, opened from its options, with errors turned into exit codes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from archivist.cli._errors import fail
from archivist.types import ArchivistError, UsageError

if TYPE_CHECKING:
    from archivist.app import Archivist


@contextmanager
def open_app(store: str | None, *, existing: bool = False, **overrides: Any) -> Iterator[Archivist]:
    """Yield the app for a command (settings overridden by non-None options), turning errors into exit codes.

    `existing`: the command only reads, so a store that does not exist yet is an error (a mistyped path would
    otherwise be created empty and every search would find nothing).
    """
    # Imported here, not at the top: `archivist --help` and completion must not load numpy and the models.
    from archivist.app import Archivist
    from archivist.config import load_settings
    from archivist.store import store_exists

    try:
        settings = load_settings(store=store, **overrides)
        if existing and not store_exists(settings.store):
            raise ArchivistError(
                f"no store at {settings.store}: check --store or ARCHIVIST_STORE, or ingest documents there first "
                "(archivist ingest PATH)"
            )
        with Archivist.from_settings(settings) as archivist:
            yield archivist
    except UsageError as exc:
        fail(str(exc), 2)
    except ArchivistError as exc:
        # Store failures included: every backend reports them as our StoreError, never as its driver's error.
        fail(str(exc), 1)
