"""Checks of a model's answer before anyone sees it: does it leak our system prompt (or another secret), and does it
do what an injected passage asked instead of answering the question?

Leakage is measured by `benchmarks/guard_leakage.py` on Tensor Trust's prompt-extraction detection set
(docs/guards.md has the figures).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_WORD = re.compile(r"\w+")
#: a secret of at most this many words leaks only whole; a longer one leaks in part (its word trigrams)
SHORT_SECRET_WORDS = 4
#: the share of a long secret's word trigrams an output must repeat to leak it
LEAK_THRESHOLD = 0.25
# What a passage asks its reader to say: 'say "PWNED"', "respond with: HACKED", "reply only with 'yes'".
_PAYLOAD = re.compile(
    r"\b(?:say|respond|reply|answer|output|print|write|start|begin|end)\b(?:\s+(?:with|only|exactly|just|the "
    r"(?:word|phrase|text)))*\s*:?\s*(?:[\"'“‘`]([^\"'”’`\n]{1,80})[\"'”’`]|\b([A-Z][A-Z0-9_!]{2,40})\b)",
    re.IGNORECASE,
)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def leak_score(output: str, secret: str) -> float:
    """Return how much of `secret` the output repeats, in [0, 1]: a short secret (a password, an access code) 1.0
    when it appears whole (spacing, case and punctuation aside), else 0.0; a longer one (a system prompt) the share
    of its word trigrams the output contains."""
    words = _words(secret)
    if not words:
        # A secret of symbols only ("♿♿♿"): whole, without spaces.
        bare = "".join(secret.split())
        return float(bool(bare) and bare in "".join(output.split()))
    said = _words(output)
    if len(words) <= SHORT_SECRET_WORDS:
        return float(" ".join(words) in " ".join(said) or "".join(words) in "".join(said))
    grams = {tuple(words[i : i + 3]) for i in range(len(words) - 2)}
    found = {tuple(said[i : i + 3]) for i in range(len(said) - 2)}
    return len(grams & found) / len(grams)


# An output that tells its own instructions: "My instructions so far are:", "[Pre-prompt]", "the password is".
_DISCLOSES = re.compile(
    r"\b(?:my|these|the above)\s+(?:system\s+)?(?:instructions|rules|prompt|directives|guidelines)\b"
    r"|\bthe\s+(?:instructions|rules)\s+(?:so\s+far|above|I\s+(?:was|have\s+been)\s+given)\b"
    r"|\[\s*pre-?prompt\s*\]|\bpre-?prompt\b|\b(?:the|my)\s+(?:password|access\s+code|passcode|secret\s+code)\s+is\b"
    r"|\bI\s+(?:am|was)\s+(?:instructed|programmed|told)\s+to\b",
    re.IGNORECASE,
)


def discloses_instructions(output: str) -> bool:
    """Return whether the output speaks of its own instructions or secret ("my instructions are", "[Pre-prompt]",
    "the password is"): how a model that was talked into leaking its prompt usually starts."""
    return _DISCLOSES.search(output) is not None


def leaks(output: str, secrets: Iterable[str], threshold: float = LEAK_THRESHOLD) -> bool:
    """Return whether the output repeats any of the secrets (`leak_score` at or above `threshold`) or tells its
    own instructions (`discloses_instructions`)."""
    return discloses_instructions(output) or any(leak_score(output, s) >= threshold for s in secrets if s.strip())


def payloads(texts: Iterable[str]) -> list[str]:
    """Return what the texts ask their reader to say ('say "PWNED"' → "PWNED"), longest first."""
    found = {(m.group(1) or m.group(2)).strip() for t in texts for m in _PAYLOAD.finditer(t)}
    return sorted((p for p in found if len(p) >= 3), key=len, reverse=True)


def followed_payload(answer: str, asked: Sequence[str], question: str) -> str | None:
    """Return the first payload a flagged passage asked for that the answer says and the question did not ask
    about, or None."""
    said, asked_by_user = " ".join(_words(answer)), " ".join(_words(question))
    for payload in asked:
        words = " ".join(_words(payload))
        if words and f" {words} " in f" {said} " and f" {words} " not in f" {asked_by_user} ":
            return payload
    return None
