"""The observability seam: `span(name, **attributes)` around each unit of work worth tracing.

Six points call it: the gateway's model call (`llm.chat`), hybrid retrieval (`retrieve.hybrid`), the search
pipeline (`search`), an answer (`answer`), the ingest of one document (`ingest.document`: loaded to chunks, with
its outcome; documents are embedded and written in groups, each group one `ingest.write`), and each call of the
embedding model (`embed`, kind `query` or `documents`; the server's latency histograms time it). Until a tracer is
installed with `use_tracer` (the tracing issue backs it with OpenTelemetry) a span costs one check and does nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol


class Span(Protocol):
    """A unit of work being timed: attributes learned along the way are added to it."""

    def set(self, **attributes: Any) -> None:
        """Add attributes to the span."""
        ...


class Tracer(Protocol):
    """What records spans (an OpenTelemetry adapter, a test's recorder)."""

    def span(self, name: str, attributes: dict[str, Any]) -> AbstractContextManager[Span]:
        """Return a context manager that opens a span, yields it and ends it (recording an escaping error)."""
        ...


class _NoSpan:
    def set(self, **attributes: Any) -> None:
        """Ignore the attributes: no tracer is installed."""


_NO_SPAN = _NoSpan()
# The process's tracer: tracing is process-wide, as OpenTelemetry's global tracer provider is.
_tracer: Tracer | None = None


def use_tracer(tracer: Tracer | None) -> Tracer | None:
    """Install a tracer for the process (None: spans do nothing again); return the one it replaces."""
    global _tracer
    previous, _tracer = _tracer, tracer
    return previous


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Span]:
    """Yield a span named `name` with these attributes around the block (a no-op span without a tracer)."""
    tracer = _tracer
    if tracer is None:
        yield _NO_SPAN
        return
    with tracer.span(name, attributes) as opened:
        yield opened
