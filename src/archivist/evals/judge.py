"""Faithfulness by LLM-as-judge: a model rates whether each claim of an answer is supported by its cited quotes.

The judge sees the answer's claims (split as verification splits them) and the quotes of the citations they mark,
fenced as untrusted data, under the versioned prompt `answer/prompts/judge_faithfulness.txt`, and gives each claim
a verdict (supported 1, partially 0.5, unsupported 0). A claim that cites nothing is unsupported without asking.
One sample's faithfulness is the mean over the answer's claims. The judge is sampled `samples` times at a
temperature above 0 (the gateway does not cache sampled calls), so its own noise can be measured and reported.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from archivist.answer.answerer import Answer
from archivist.answer.entailment import VERDICT_SUPPORT, Verdict
from archivist.answer.prompts import Prompt, load_prompt
from archivist.answer.verify import MIN_CLAIM_CHARS, split_claims
from archivist.guard.quote import quote
from archivist.llm.base import ChatRequest, Deadline, Message
from archivist.llm.errors import LLMError
from archivist.llm.gateway import Gateway
from archivist.llm.structured import generate_structured

DEFAULT_SAMPLES = 3
DEFAULT_TEMPERATURE = 0.7
#: completion tokens allowed per judged claim, plus a fixed allowance
TOKENS_PER_CLAIM = 40
BASE_TOKENS = 64


class ClaimRating(BaseModel):
    """The judge's verdict on one claim."""

    id: int = Field(description="the claim's id")
    verdict: Verdict


class FaithfulnessRating(BaseModel):
    """The judge's verdicts, one per claim."""

    claims: list[ClaimRating]


@dataclass(slots=True)
class Judgment:
    """One answer's judged faithfulness: a score per successful sample, and why the other samples failed."""

    scores: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: samples the gateway answered from its cache (only if it was built with cache_sampled=True)
    cached: int = 0

    @property
    def mean(self) -> float | None:
        """Return the mean over samples, or None when no sample succeeded."""
        return statistics.fmean(self.scores) if self.scores else None

    @property
    def variance(self) -> float:
        """Return the sample variance of the scores (0.0 with fewer than two)."""
        return statistics.variance(self.scores) if len(self.scores) > 1 else 0.0


class FaithfulnessJudge:
    """Rates answers' faithfulness through the gateway, `samples` times each."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        samples: int = DEFAULT_SAMPLES,
        temperature: float = DEFAULT_TEMPERATURE,
        prompt: Prompt | None = None,
        timeout_s: float | None = None,
        max_repairs: int = 1,
    ) -> None:
        if not gateway.routes:
            raise ValueError("the faithfulness judge needs a gateway with at least one provider")
        if samples < 1:
            raise ValueError("samples must be at least 1")
        if samples > 1 and temperature <= 0:
            raise ValueError("several samples need a temperature above 0, or they would all be the same answer")
        self.gateway = gateway
        self.samples = samples
        self.temperature = temperature
        self.prompt = prompt or load_prompt("judge_faithfulness")
        self.timeout_s = timeout_s
        self.max_repairs = max_repairs

    def fingerprint(self) -> dict[str, Any]:
        """Return what identifies this judge in an eval run."""
        return {
            "prompt_version": self.prompt.id,
            "models": [f"{r.llm.name}/{r.llm.model}" for r in self.gateway.routes],
            "samples": self.samples,
            "temperature": self.temperature,
        }

    def request(self, answer: Answer) -> tuple[ChatRequest | None, int, list[float]]:
        """Return the judge's request for an answer (None if no claim needs the model), how many claims it
        carries (ids 1…n), and the fixed scores: claims that cite nothing are unsupported (0.0) without asking."""
        quotes = {c.n: c.quote for c in answer.citations}
        claims = [c for c in split_claims(answer.answer) if len(c.text) >= MIN_CLAIM_CHARS]
        cited = [c for c in claims if any(n in quotes for n in c.cited)]
        fixed = [0.0] * (len(claims) - len(cited))
        if not cited:
            return None, 0, fixed
        used = sorted({n for c in cited for n in c.cited if n in quotes})
        rendered_claims = "\n\n".join(
            quote("claim", c.text, id=i, cites=",".join(str(n) for n in c.cited if n in quotes))
            for i, c in enumerate(cited, start=1)
        )
        rendered_quotes = "\n\n".join(quote("quote", quotes[n], id=n) for n in used)
        request = ChatRequest(
            messages=(
                Message("system", self.prompt.system),
                Message("user", self.prompt.render(claims=rendered_claims, quotes=rendered_quotes)),
            ),
            temperature=self.temperature,
            max_tokens=BASE_TOKENS + TOKENS_PER_CLAIM * len(cited),
            prompt_version=self.prompt.id,
        )
        return request, len(cited), fixed

    def judge(self, answer: Answer) -> Judgment:
        """Return the answer's faithfulness per sample (refusals and answers without claims are not judged)."""
        judgment = Judgment()
        if answer.refused:
            return judgment
        request, n_claims, fixed = self.request(answer)
        if request is None:
            if fixed:
                judgment.scores = [0.0] * self.samples  # only uncited claims: unfaithful, no judge needed
            return judgment
        for _ in range(self.samples):
            timeout = self.timeout_s or self.gateway.default_timeout_s
            try:
                result = generate_structured(
                    self.gateway,
                    request,
                    FaithfulnessRating,
                    deadline=Deadline.after(timeout),
                    max_repairs=self.max_repairs,
                )
            except LLMError as exc:
                judgment.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            verdicts: dict[int, str] = {}
            for r in result.value.claims:
                verdicts.setdefault(r.id, r.verdict)
            missing = [i for i in range(1, n_claims + 1) if i not in verdicts]
            if missing:
                judgment.errors.append(f"the judge gave no verdict for claim(s) {missing}")
                continue
            scores = [VERDICT_SUPPORT[verdicts[i]] for i in range(1, n_claims + 1)] + fixed
            judgment.scores.append(statistics.fmean(scores))
            judgment.cached += result.completion.cached
        return judgment


def judge_metrics(judgments: Mapping[str, Judgment], samples: int) -> dict[str, float]:
    """Return the judge's run metrics over the judged questions.

    `judge_faithfulness`: mean over questions of each question's mean over samples. `judge_faithfulness_sd`: the
    standard deviation, across the sample rounds, of the round's mean over questions — how much the reported mean
    moves when the judge is asked again (judge noise); absent with one sample. `judge_faithfulness_question_var`:
    the mean over questions of each question's variance across its samples.
    """
    judged = {q: j for q, j in judgments.items() if j.scores}
    if not judged:
        return {}
    metrics = {
        "judge_faithfulness": statistics.fmean(j.mean for j in judged.values() if j.mean is not None),
        "judge_faithfulness_question_var": statistics.fmean(j.variance for j in judged.values()),
    }
    rounds = [_round_mean([j.scores for j in judged.values()], s) for s in range(samples)]
    means = [m for m in rounds if m is not None]
    if len(means) > 1:
        metrics["judge_faithfulness_sd"] = statistics.stdev(means)
    return metrics


def _round_mean(scores: Sequence[Sequence[float]], s: int) -> float | None:
    values = [q[s] for q in scores if len(q) > s]
    return statistics.fmean(values) if values else None
