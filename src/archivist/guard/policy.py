"""Guard policy on the query side, and the check of a question or agent task against it.

A policy says what happens to a question or task that the injection detector flags (`off`: nothing; `flag`: it is
answered with a warning naming the score; `block`: it is refused before anything runs) and whether answers are
redacted for personal data (`pii_answers`). It is resolved from the settings (`ARCHIVIST_GUARD_INJECTION`,
`ARCHIVIST_PII_REDACT_ANSWERS`), then the policy stored with each collection the request reaches, then the API key's:
the strictest value of each wins, so a key cannot loosen what a collection asks for, nor a collection a key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from archivist.config import Settings
from archivist.embed.base import Embedder
from archivist.guard.deobfuscate import plain_reading
from archivist.guard.injection import WINDOW_TOKENS, EmbeddedText, InjectionDetector
from archivist.text.sentences import sentence_spans
from archivist.types import ArchivistError

InjectionMode = Literal["off", "flag", "block"]
PiiMode = Literal["off", "redact"]
#: each setting's values, least strict first: the strictest of the levels wins
INJECTION_MODES: tuple[InjectionMode, ...] = ("off", "flag", "block")
PII_MODES: tuple[PiiMode, ...] = ("off", "redact")


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """What the query side does: with a flagged question or task (`injection`) and with PII in answers."""

    injection: InjectionMode = "flag"
    pii_answers: PiiMode = "off"
    #: where the injection value came from ("settings", "collection 'x'", "key k1"): said when a question is refused
    injection_from: str = "settings"

    def stricter(self, stored: Mapping[str, str] | None, source: str) -> GuardPolicy:
        """Return this policy tightened by a stored one ({"injection": …, "pii": …}); unknown values are ignored
        (the store validates them when they are written)."""
        if not stored:
            return self
        injection, origin = self.injection, self.injection_from
        asked = next((m for m in INJECTION_MODES if m == stored.get("injection")), None)
        if asked is not None and INJECTION_MODES.index(asked) > INJECTION_MODES.index(injection):
            injection, origin = asked, source
        pii: PiiMode = "redact" if stored.get("pii") == "redact" else self.pii_answers
        return GuardPolicy(injection, pii, origin)

    def to_dict(self) -> dict[str, str]:
        """Return the policy as JSON: injection, pii_answers and where the injection value came from."""
        return {"injection": self.injection, "pii_answers": self.pii_answers, "injection_from": self.injection_from}


def settings_policy(settings: Settings) -> GuardPolicy:
    """Return the policy the settings give, before any collection's or key's."""
    return GuardPolicy(settings.guard_injection, "redact" if settings.pii_redact_answers else "off")


def resolve_policy(
    base: GuardPolicy,
    collections: Iterable[tuple[str, Mapping[str, str] | None]] = (),
    key: tuple[str, Mapping[str, str] | None] | None = None,
) -> GuardPolicy:
    """Return the strictest of the base policy, each (collection name, stored policy) and the (key id, policy)."""
    policy = base
    for name, stored in collections:
        policy = policy.stricter(stored, f"collection {name!r}")
    if key is not None:
        policy = policy.stricter(key[1], f"key {key[0]}")
    return policy


@dataclass(frozen=True, slots=True)
class InjectionVerdict:
    """The detector's reading of a question or task: its score, the threshold, and whether it was flagged."""

    what: str
    score: float
    threshold: float

    @property
    def flagged(self) -> bool:
        """Return whether the score reached the threshold."""
        return self.score >= self.threshold

    def warning(self) -> str:
        """Return the warning a flagged question's answer carries."""
        article = "an" if self.what[:1] in "aeiou" else "a"
        return (
            f"the {self.what} reads as instructions to the model (prompt-injection score {self.score:.2f}, threshold "
            f"{self.threshold:.2f}): it was treated as {article} {self.what} about the documents, never followed"
        )


class InjectionBlocked(ArchivistError):
    """A question or task refused under an `injection=block` policy: nothing was run and nothing charged."""

    def __init__(self, verdict: InjectionVerdict, policy: GuardPolicy) -> None:
        self.verdict = verdict
        self.policy = policy
        super().__init__(
            f"the {verdict.what} was refused: it reads as instructions to the model (prompt-injection score "
            f"{verdict.score:.2f} ≥ threshold {verdict.threshold:.2f}) and the policy of {policy.injection_from} "
            f"blocks such {verdict.what}s (injection=block); ask about the documents in plain words"
        )


class QuestionGuard:
    """Checks questions and agent tasks with the injection detector, under a policy."""

    def __init__(
        self, detector: Callable[[], InjectionDetector], default: GuardPolicy, query_embedder: Embedder | None = None
    ) -> None:
        #: built on first use: a policy of `off` never loads the model
        self._detector = detector
        self.default = default
        #: the retriever's embedder when it is the detector's model: a question's vector is computed once, here,
        #: and the retriever takes it from that embedder's query cache
        self.query_embedder = query_embedder
        # A conversation's earlier questions are checked again with every turn (and a request's question by its
        # route, then by the answerer): each text is scored once.
        self._cached_score = lru_cache(maxsize=4096)(self._score)

    @property
    def detector(self) -> InjectionDetector:
        """Return the detector (loaded on first use)."""
        return self._detector()

    def check(self, text: str, policy: GuardPolicy | None = None, *, what: str = "question") -> InjectionVerdict | None:
        """Return the detector's verdict on a question or task (None when the policy is `off`); raise
        InjectionBlocked when it is flagged and the policy blocks."""
        policy = policy or self.default
        if policy.injection == "off":
            return None
        detector = self.detector
        verdict = InjectionVerdict(what, self.score(text), detector.threshold)
        if verdict.flagged and policy.injection == "block":
            raise InjectionBlocked(verdict, policy)
        return verdict

    def check_earlier(self, questions: Sequence[str], policy: GuardPolicy | None = None) -> InjectionVerdict | None:
        """Return the verdict on the highest-scoring of a conversation's earlier user questions (None when there are
        none or the policy is `off`); raise InjectionBlocked when it is flagged and the policy blocks: earlier turns
        reach the model's prompt as much as the question does."""
        policy = policy or self.default
        if policy.injection == "off" or not questions:
            return None
        threshold = self.detector.threshold
        verdict = max(
            (InjectionVerdict("earlier question", self.score(q), threshold) for q in questions), key=lambda v: v.score
        )
        if verdict.flagged and policy.injection == "block":
            raise InjectionBlocked(verdict, policy)
        return verdict

    def score(self, text: str) -> float:
        """Return the detector's score of a text: the highest of its own reading and its plain reading (lookalike
        letters, spacing and line breaks undone), reusing the query vector where one reading is one sentence."""
        return self._cached_score(text)

    def _score(self, text: str) -> float:
        detector = self.detector
        readings = [text.strip()]
        plain = plain_reading(text)
        if plain is not None:
            readings.append(plain)
        scores = []
        for reading in readings:
            embedder = self.query_embedder
            # One sentence within one window has one unit, the text: its query vector is all the detector needs.
            if (
                embedder is not None
                and len(sentence_spans(reading)) < 2
                and embedder.tokenizer.count([reading])[0] <= WINDOW_TOKENS
            ):
                scores += detector.score_embedded([EmbeddedText(reading, embedder.embed_query(reading))])
            else:
                scores += detector.score([reading])
        return max(scores)
