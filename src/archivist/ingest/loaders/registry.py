"""The loaders by file suffix: `register_loader` fills the table, `load_path` and `supported_suffixes` read it.

The table is the one piece of module-level state in the loaders, on purpose. Like `codecs.register`, it maps
names to pure functions and is filled when modules are imported (each built-in format registers itself when this
package is imported; a plugin registers when it is imported): it holds no resource and no setting, so there is
nothing for `app.py` to build, configure or close, and every pipeline, worker and CLI command in a process reads
the same formats.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from archivist.ingest.loaders.reasons import Rejected, one_line
from archivist.ingest.loaders.source import LoadResult, SourceFile, source_for
from archivist.types import Document, Skipped

#: A loader turns one file into a document, or streams several (with a `Skipped` per bad record). It raises
#: `Rejected` to skip the file with a reason; any other exception skips it as "could not parse".
Loader = Callable[[SourceFile], Document | Iterable[Document | Skipped]]


@dataclass(frozen=True, slots=True)
class _Registration:
    load: Loader
    media_type: str


_LOADERS: dict[str, _Registration] = {}


def register_loader(suffixes: str | Iterable[str], fn: Loader, *, media_type: str, replace: bool = False) -> None:
    """Make `fn` the loader of files ending in the given suffixes (".csv"); raise ValueError if one is taken."""
    wanted = [suffixes] if isinstance(suffixes, str) else list(suffixes)
    # `load_path` looks up `Path.suffix`: anything it never returns (".tar.gz", "csv") would never match, and ""
    # (files without an extension) is no format.
    if not wanted or any(not suffix or Path("x" + suffix).suffix != suffix for suffix in wanted):
        raise ValueError(f"a loader's suffixes are file extensions such as '.csv' (got {wanted!r})")
    keys = [suffix.lower() for suffix in wanted]
    taken = [key for key in keys if key in _LOADERS]
    if taken and not replace:
        owners = ", ".join(f"'{key}' ({_name(_LOADERS[key].load)}, {_LOADERS[key].media_type})" for key in taken)
        raise ValueError(f"file type already has a loader: {owners}; pass replace=True to replace it")
    # Checked for every suffix before any is added: a refused registration changes nothing.
    for key in keys:
        _LOADERS[key] = _Registration(fn, media_type)


def supported_suffixes() -> frozenset[str]:
    """Return the file suffixes (lower case, with the dot) that have a loader."""
    return frozenset(_LOADERS)


def load_path(path: Path, *, max_file_bytes: int) -> LoadResult:
    """Return the documents in one file, or why it was skipped; never raises for bad input."""
    source = source_for(path)
    suffix = path.suffix.lower()
    registration = _LOADERS.get(suffix)
    if registration is None:
        return LoadResult(skipped=[Skipped(source, _unsupported_reason(suffix))])
    result = LoadResult()
    try:
        loaded = registration.load(SourceFile(path, source, registration.media_type, max_file_bytes))
        for item in [loaded] if isinstance(loaded, Document) else loaded:
            if isinstance(item, Document):
                result.documents.append(item)
            else:
                result.skipped.append(item)
    except Rejected as rejected:
        result.skipped.append(Skipped(source, str(rejected)))
    except Exception as error:  # a parser bug or exotic input must not abort a whole corpus
        result.skipped.append(Skipped(source, f"could not parse: {one_line(error)}"))
    return result


def _unsupported_reason(suffix: str) -> str:
    """Return the skip reason for a file type without a loader."""
    supported = ", ".join(sorted(_LOADERS))
    what = f"'{suffix}'" if suffix else "(no extension)"
    return f"unsupported file type {what} (supported: {supported})"


def _name(fn: Loader) -> str:
    """Return a loader's dotted name, for the error that says who holds a suffix."""
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
