"""Versioned prompt templates: files in the package, each with a version line and a content hash."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from archivist.guard.quote import quote
from archivist.types import UsageError

_SYSTEM_MARK = "--- system ---"
_USER_MARK = "--- user ---"
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True, slots=True)
class Prompt:
    """A prompt template: system text, a user template with `{placeholders}`, and its identity."""

    name: str
    version: str
    system: str
    user: str
    sha256: str

    @property
    def id(self) -> str:
        """Return the prompt's recorded identity: `name@version#hash8` (the hash catches unversioned edits)."""
        return f"{self.name}@{self.version}#{self.sha256[:8]}"

    def render_user(self, question: str, passages: str) -> str:
        """Return the user message with the question quoted as untrusted data and the quoted passages filled in."""
        return self.render(question=quote("question", question), passages=passages)

    def render(self, **values: str) -> str:
        """Return the user message with each `{name}` placeholder replaced by `values[name]`."""
        # One pass over the template, not str.format or chained replaces: values may hold braces, or text
        # such as "{passages}" that must not be filled in a second time.
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), self.user)


def parse_prompt(name: str, raw: str) -> Prompt:
    """Return the prompt parsed from a template file's text, or raise UsageError if it is malformed."""
    head, sep, rest = raw.partition("\n")
    if not head.startswith("version:") or not sep:
        raise UsageError(f"prompt {name!r} must start with a 'version: N' line")
    system_part, mark, user_part = rest.partition(_USER_MARK)
    if not mark or _SYSTEM_MARK not in system_part:
        raise UsageError(f"prompt {name!r} needs '{_SYSTEM_MARK}' and '{_USER_MARK}' sections")
    system = system_part.split(_SYSTEM_MARK, 1)[1].strip()
    return Prompt(
        name=name,
        version=head.split(":", 1)[1].strip(),
        system=system,
        user=user_part.strip(),
        sha256=hashlib.sha256(raw.encode("utf-8")).hexdigest(),
    )


def load_prompt(name: str = "grounded_answer") -> Prompt:
    """Return the packaged prompt template `answer/prompts/<name>.txt`."""
    path = resources.files("archivist.answer").joinpath("prompts", f"{name}.txt")
    if not path.is_file():
        raise UsageError(f"no packaged prompt named {name!r}")
    return parse_prompt(name, path.read_text(encoding="utf-8"))


#: the extractive answerer uses no prompt; this id is recorded so runs of both kinds are labelled alike
EXTRACTIVE_VERSION = "extractive@1"
