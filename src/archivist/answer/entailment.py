"""Entailment check of a generated answer: the model judges whether each claim is supported by the text it cites.

One structured-output call per answer (`generate_structured`: JSON Schema, validation, bounded repair) carries
every checkable claim and the passages they cite, fenced as untrusted data, under the versioned prompt
`prompts/verify_claims.txt`. The verdicts then decide support; the similarity score of `verify.py` is computed
first and stays in place whenever this call fails, so the answerer can always fall back to it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from archivist.answer.context import Passage, render_passages
from archivist.answer.prompts import Prompt
from archivist.answer.sentences import Sentence, split_sentences
from archivist.answer.verify import MIN_CLAIM_CHARS, Claim
from archivist.guard.quote import quote
from archivist.llm.accounting import Budget
from archivist.llm.base import ChatRequest, Completion, Deadline, Message
from archivist.llm.gateway import Gateway
from archivist.llm.structured import generate_structured

Verdict = Literal["supported", "partially", "unsupported"]
#: the support score a verdict gives a claim (citations and `support` report it; only "supported" keeps a claim)
VERDICT_SUPPORT: dict[str, float] = {"supported": 1.0, "partially": 0.5, "unsupported": 0.0}
#: completion tokens allowed per judged claim (verdict + a quoted sentence), plus a fixed allowance
TOKENS_PER_CLAIM = 120
BASE_TOKENS = 64

_SPACE = re.compile(r"\s+")


class ClaimVerdict(BaseModel):
    """The judge's verdict on one claim."""

    id: int = Field(description="the claim's id")
    verdict: Verdict
    quote: str = Field(default="", description="the exact words of the cited text the verdict relies on")


class ClaimVerdicts(BaseModel):
    """The judge's verdicts, one per claim."""

    claims: list[ClaimVerdict]


@dataclass(frozen=True, slots=True)
class Entailment:
    """The verdicts by claim id (1-based position among the judged claims) and the completion they came from."""

    verdicts: dict[int, ClaimVerdict]
    completion: Completion
    repairs: int


def checkable(claims: Sequence[Claim], passages: Sequence[Passage]) -> list[Claim]:
    """Return the claims worth a verdict: long enough to state a fact and citing at least one existing passage."""
    numbers = {p.n for p in passages}
    return [c for c in claims if len(c.text) >= MIN_CLAIM_CHARS and any(n in numbers for n in c.cited)]


def entailment_request(prompt: Prompt, claims: Sequence[Claim], passages: Sequence[Passage]) -> ChatRequest:
    """Return the judge's request: the claims (id, cited numbers) and only the passages they cite, fenced."""
    cited = {n for c in claims for n in c.cited}
    rendered_claims = "\n\n".join(
        quote("claim", c.text, id=i, cites=",".join(str(n) for n in c.cited)) for i, c in enumerate(claims, start=1)
    )
    rendered_passages = render_passages([p for p in passages if p.n in cited])
    return ChatRequest(
        messages=(
            Message("system", prompt.system),
            Message("user", prompt.render(claims=rendered_claims, passages=rendered_passages)),
        ),
        temperature=0.0,
        max_tokens=BASE_TOKENS + TOKENS_PER_CLAIM * len(claims),
        prompt_version=prompt.id,
    )


def judge_entailment(
    gateway: Gateway,
    prompt: Prompt,
    claims: Sequence[Claim],
    passages: Sequence[Passage],
    *,
    deadline: Deadline | None = None,
    budget: Budget | None = None,
    max_repairs: int = 1,
) -> Entailment:
    """Return the model's verdict on each claim; raise LLMError (incl. StructuredOutputError) when it fails."""
    request = entailment_request(prompt, claims, passages)
    result = generate_structured(
        gateway, request, ClaimVerdicts, deadline=deadline, budget=budget, max_repairs=max_repairs
    )
    verdicts: dict[int, ClaimVerdict] = {}
    for v in result.value.claims:
        if 1 <= v.id <= len(claims):
            verdicts.setdefault(v.id, v)  # a repeated id keeps its first verdict
    return Entailment(verdicts, result.completion, result.repairs)


def _norm(text: str) -> str:
    return _SPACE.sub(" ", text).strip(" \t\n\"'“”‘’.…").lower()


def _quoted_sentence(quote: str, sentences: Sequence[Sentence]) -> Sentence | None:
    """Return the sentence that holds the judge's quote (or that the quote holds, for a multi-sentence quote)."""
    q = _norm(quote)
    if len(q) < 8:
        return None
    for s in sentences:
        text = _norm(s.text)
        if text and (q in text or text in q):
            return s
    return None


def apply_entailment(claims: Sequence[Claim], entailment: Entailment, passages: Sequence[Passage]) -> list[int]:
    """Set each judged claim's support from its verdict; return the ids the judge gave no verdict for.

    `claims` are the ones that were judged, in the order of their ids. A claim without a verdict keeps its
    similarity result. The judge's quote, when it is found in a cited passage, chooses the sentence that passage's
    citation quotes; otherwise the sentence closest by similarity stays.
    """
    by_n = {p.n: p for p in passages}
    missing: list[int] = []
    for i, claim in enumerate(claims, start=1):
        v = entailment.verdicts.get(i)
        if v is None:
            missing.append(i)
            continue
        claim.verdict = v.verdict
        claim.judge_quote = v.quote.strip()
        claim.support = VERDICT_SUPPORT[v.verdict]
        claim.supported = v.verdict == "supported"
        if claim.judge_quote:
            for n in claim.cited:
                if n in by_n:
                    found = _quoted_sentence(claim.judge_quote, split_sentences(by_n[n], prose_only=False))
                    if found is not None:
                        claim.evidence_by_passage[n] = found
                        claim.evidence = found
                        break
        if claim.supported:
            claim.reason = ""
        else:
            relies = f' (relies on "{claim.judge_quote}")' if claim.judge_quote else ""
            claim.reason = f"the model judged it {v.verdict} by the cited text{relies}"
    return missing
