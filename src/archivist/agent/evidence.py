"""What the agent read, numbered, and its final answer's citations checked against it.

Every span of document text a tool returns (a dict with `document_id`, `start`, `end` and `text`: search hits,
document reads, an answer's citations, and a user tool's results of that shape) gets a reference number `ref`,
shown to the model with the result. The final answer cites them as [n]; each claim is checked against the text of the
spans it cites with `answer.verify`, the answerer's own check. A claim that cites nothing, or a number the agent
never read, or text that does not support it, is flagged in the result, never silently kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from archivist.answer.context import Passage, Segment
from archivist.answer.verify import split_claims, verify
from archivist.embed.base import Embedder
from archivist.guard.pii import PiiDetector
from archivist.guard.quote import undatamark

_SPAN_KEYS = frozenset({"document_id", "start", "end", "text"})


@dataclass(slots=True)
class Evidence:
    """The document spans a run has read, by reference number (1, 2, …, in the order first read)."""

    passages: dict[int, Passage] = field(default_factory=dict)
    _refs: dict[tuple[str, int, int], int] = field(default_factory=dict)

    def collect(self, result: Any) -> Any:
        """Return `result` with a `ref` added to every document span in it, numbering spans not seen before."""
        if isinstance(result, list):
            return [self.collect(item) for item in result]
        if not isinstance(result, dict):
            return result
        out = {k: self.collect(v) for k, v in result.items()}
        if out.keys() >= _SPAN_KEYS and isinstance(out["text"], str):
            key = (str(out["document_id"]), int(out["start"]), int(out["end"]))
            ref = self._refs.get(key)
            if ref is None:
                ref = self._refs[key] = len(self._refs) + 1
                self.passages[ref] = Passage(
                    n=ref,
                    document_id=key[0],
                    source=str(out.get("source", "")),
                    title=str(out.get("title", "")),
                    heading_path=(),
                    page=None,
                    score=1.0,
                    # Flagged text comes datamarked: its claims are checked against the words, not the marks.
                    segments=[Segment(key[1], key[2], undatamark(out["text"]))],
                )
            out["ref"] = ref
        return out


def check_answer(text: str, evidence: Evidence, embedder: Embedder) -> dict[str, Any]:
    """Return the final answer with its citations (the spans it cites) and each claim's check; unsupported claims
    are listed under `unsupported` with the reason."""
    claims = split_claims(text)
    checked = verify(claims, list(evidence.passages.values()), embedder)
    cited = sorted({n for c in claims for n in c.cited if n in evidence.passages})
    rows = [
        {"text": c.text, "cited": c.cited, "supported": c.supported, "support": c.support, "reason": c.reason}
        for c in checked.claims
    ]
    return {
        "answer": text,
        "citations": [
            {
                "n": n,
                "document_id": evidence.passages[n].document_id,
                "source": evidence.passages[n].source,
                "title": evidence.passages[n].title,
                "span": [evidence.passages[n].segments[0].start, evidence.passages[n].segments[0].end],
                "quote": evidence.passages[n].text,
            }
            for n in cited
        ],
        "claims": rows,
        "unsupported": [r for r in rows if not r["supported"]],
        "support": round(checked.support, 4),
        "verification": "similarity",
    }


def redact_result(result: dict[str, Any], pii: PiiDetector) -> dict[str, Any]:
    """Return a run's result with personal data replaced by placeholders in its answer, its citations' quotes and
    titles, and its claims (one batch)."""
    out = dict(result)
    places: list[tuple[dict[str, Any], str]] = [(out, "answer")] if isinstance(out.get("answer"), str) else []
    for name, fields in _REDACTED_ROWS.items():
        if isinstance(out.get(name), list):
            out[name] = rows = [dict(r) if isinstance(r, dict) else r for r in out[name]]
            places += [(r, f) for r in rows if isinstance(r, dict) for f in fields if isinstance(r.get(f), str)]
    for (row, f), text in zip(places, pii.redact_many([row[f] for row, f in places]), strict=True):
        row[f] = text
    return out


#: the lists of a run's result that hold text, and their fields that are redacted
_REDACTED_ROWS = {"citations": ("quote", "title"), "claims": ("text",), "unsupported": ("text",)}
