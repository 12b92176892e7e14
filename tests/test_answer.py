"""Grounded answers end to end: real SQLite store, the bundled model, a loopback LLM, the CLI as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from archivist.answer.answerer import AnswerDone, Answerer, RetrievalDone
from archivist.answer.context import pack_context
from archivist.answer.prompts import load_prompt
from archivist.app import Archivist
from archivist.config import load_settings
from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.llm.base import TokenEvent
from archivist.store import open_store
from archivist.types import Hit
from conftest import DATASETS
from fake_servers import ChatServer

DOCS = {
    "gateway.md": (
        "# LLM gateway\n\nEvery model call goes through the gateway.\n\n## Rate limits\n\n"
        "When a provider returns 429, the gateway waits for the Retry-After delay and retries the call. "
        "After the retries are spent, it falls back to the next provider in the chain.\n"
    ),
    "backup.md": "# Backups\n\nRun the online backup nightly. Test a restore from the backup every month.\n",
    "tea.md": "# Tea\n\nGreen tea is brewed at 80 degrees for two minutes. Black tea takes boiling water.\n",
}
PASSAGE = re.compile(r'<passage id="(\d+)">\n(.*?)\n</passage>', re.DOTALL)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, embedder: MiniLMEmbedder) -> Path:
    root = tmp_path_factory.mktemp("answer")
    (root / "docs").mkdir()
    for name, text in DOCS.items():
        (root / "docs" / name).write_text(text)
    with app_for(root, embedder) as app:
        app.ingest([root / "docs"])
    return root


def app_for(root: Path, embedder: MiniLMEmbedder, **overrides: Any) -> Archivist:
    settings = load_settings(store=f"sqlite:///{root / 'store.db'}", **overrides)
    return Archivist(settings, open_store(settings.store), embedder)


def document_text(root: Path, source: str) -> str:
    return (root / "docs" / Path(source).name).read_text()


def test_extractive_answer_cites_the_right_document_with_exact_quotes(root: Path, embedder: MiniLMEmbedder) -> None:
    with app_for(root, embedder) as app:
        answer = Answerer.from_app(app).answer("What does the gateway do when a provider returns 429?")
    assert not answer.refused and answer.mode == "extractive"
    assert answer.citations and Path(answer.citations[0].source).name == "gateway.md"
    assert "Retry-After" in answer.citations[0].quote
    for c in answer.citations:
        # The quote is the document's own text at the span it names: nothing invented, nothing paraphrased.
        assert document_text(root, c.source)[c.span[0] : c.span[1]] == c.quote
        assert f"[{c.n}]" in answer.answer
    assert answer.support == 1.0 and answer.prompt_version == "extractive@1"
    assert re.fullmatch(r"[0-9a-f]{32}", answer.trace_id)


def test_unrelated_question_is_refused_with_the_closest_sources(root: Path, embedder: MiniLMEmbedder) -> None:
    with app_for(root, embedder) as app:
        answer = Answerer.from_app(app).answer("Who won the football world cup in 1966?")
    assert answer.refused and answer.citations == []
    assert answer.answer.startswith("The documents do not answer this question.")
    assert answer.sources  # where the search looked


def test_context_packing_merges_overlapping_chunks_and_keeps_the_budget() -> None:
    text = "alpha beta gamma delta epsilon zeta eta theta"

    def hit(cid: int, doc: str, a: int, b: int, score: float) -> Hit:
        return Hit(cid, doc, f"{doc}.md", doc, (), text[a:b], a, b, None, score)

    hits = [hit(1, "d1", 0, 22, 0.9), hit(2, "d2", 0, 10, 0.8), hit(3, "d1", 11, 35, 0.7), hit(4, "d3", 0, 40, 0.1)]
    passages = pack_context(hits, budget_tokens=16)
    assert [p.document_id for p in passages] == ["d1", "d2"]  # d3 is over the budget
    first = passages[0]
    assert len(first.segments) == 1 and first.text == text[0:35] and first.chunk_ids == [1, 3]


def test_a_citation_reports_the_section_its_sentence_is_in() -> None:
    text = "Retries back off.\n\nTokens are counted with cl100k."

    def hit(cid: int, a: int, b: int, section: str, page: int) -> Hit:
        return Hit(cid, "d1", "d1.md", "Guide", ("Guide", section), text[a:b], a, b, page, 1.0 / cid)

    # The best hit is in "Reliability"; a second hit of the same document is in "Token counts".
    passage = pack_context([hit(1, 0, 17, "Reliability", 1), hit(2, 19, len(text), "Token counts", 2)])[0]
    assert passage.locate(text.index("Tokens")) == (("Guide", "Token counts"), 2)
    assert passage.locate(0) == (("Guide", "Reliability"), 1)


def test_prompt_is_versioned_and_hashed() -> None:
    prompt = load_prompt()
    assert re.fullmatch(r"grounded_answer@1#[0-9a-f]{8}", prompt.id)
    assert "untrusted" in prompt.system and "{passages}" in prompt.user


def cli(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")}
    return subprocess.run(
        [sys.executable, "-m", "archivist.cli", *args],
        cwd=root,
        env={**base, "ARCHIVIST_STORE": f"sqlite:///{root / 'store.db'}", **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_cli_ask_json_shape(root: Path) -> None:
    proc = cli(root, "ask", "How often should a restore be tested?", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {"answer", "citations", "support", "refused", "usage", "prompt_version", "trace_id"} <= set(data)
    citation = data["citations"][0]
    assert set(citation) >= {"n", "document", "title", "heading_path", "page", "span", "quote"}
    assert Path(citation["source"]).name == "backup.md" and "restore" in citation["quote"]


def test_cli_ask_stream_prints_tokens_then_sources(root: Path) -> None:
    proc = cli(root, "ask", "How often should a restore be tested?", "--stream", "--json")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [e["type"] for e in events[:-1]] == ["token"] * (len(events) - 1) and len(events) > 2
    assert events[-1]["type"] == "done" and events[-1]["answer"]["citations"]
    assert "".join(e["text"] for e in events[:-1]).strip() == events[-1]["answer"]["answer"]
    plain = cli(root, "ask", "How often should a restore be tested?", "--stream")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.index("[1]") < plain.stdout.index("Sources")


UNSUPPORTED = "The gateway also encrypts every prompt with a quantum-safe cipher"


def respond(payload: dict[str, Any]) -> str:
    """Answer from the passage that mentions 429, cite it, and add one claim no passage supports."""
    user = next(m["content"] for m in payload["messages"] if m["role"] == "user")
    n = next(i for i, body in PASSAGE.findall(user) if "429" in body)
    claim = "When a provider returns 429, the gateway waits for the Retry-After delay and retries"
    return f"{claim} [{n}]. {UNSUPPORTED} [{n}]."


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer().running() as s:
        s.responder = respond
        yield s


def test_llm_answer_is_verified_and_the_unsupported_claim_dropped(
    root: Path, embedder: MiniLMEmbedder, server: ChatServer
) -> None:
    with app_for(root, embedder, llm_url=server.url, llm_model="m", llm_max_retries=0, llm_cache=False) as app:
        answerer = Answerer.from_app(app)
        answer = answerer.answer("What does the gateway do when a provider returns 429?")
        events = list(answerer.stream("What does the gateway do when a provider returns 429?"))
    assert answer.mode == "llm" and not answer.refused
    assert answer.prompt_version == load_prompt().id
    assert "Retry-After" in answer.answer and "quantum" not in answer.answer
    assert [u["text"] for u in answer.unsupported] == [UNSUPPORTED + "."]
    assert answer.support == pytest.approx(0.5)
    c = answer.citations[0]
    assert c.n == 1 and Path(c.source).name == "gateway.md" and "[1]" in answer.answer
    assert document_text(root, c.source)[c.span[0] : c.span[1]] == c.quote
    # Retrieved text went to the model fenced as data, under the versioned prompt.
    sent = server.requests[0]
    assert PASSAGE.search(sent["messages"][1]["content"]) and "untrusted" in sent["messages"][0]["content"]
    assert isinstance(events[0], RetrievalDone) and events[0].hits
    assert all(isinstance(e, TokenEvent) for e in events[1:-1]) and len(events) > 3
    final = events[-1]
    assert isinstance(final, AnswerDone) and final.answer.answer == answer.answer


COVIDQA = DATASETS / "covidqa"


@pytest.mark.skipif(not COVIDQA.exists(), reason=f"dataset not found at {COVIDQA}")
def test_eval_answers_on_a_covidqa_slice(tmp_path: Path) -> None:
    env = {"ARCHIVIST_EVAL_CACHE": str(tmp_path / "cache")}
    args = ["eval", "answers", str(COVIDQA), "--slice", "3:1", "--unanswerable", str(DATASETS / "pubmedqa")]
    proc = cli(tmp_path, *args, "--unanswerable-limit", "3", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["kind"] == "answers" and record["n_queries"] == 3
    assert record["fingerprint"]["prompt_versions"]["answer"] == "extractive@1"
    m = record["metrics"]
    for name in ("gold_doc_cited", "span_in_cited", "token_f1", "exact_match", "citation_precision"):
        assert 0.0 <= m[name] <= 1.0
    assert m["gold_doc_cited"] >= 2 / 3
    assert "refusal_precision_foreign" in m and "refusal_recall_foreign" in m
    runs = json.loads(cli(tmp_path, "eval", "runs", "--json", env=env).stdout)
    assert runs[0]["id"] == record["id"] and runs[0]["kind"] == "answers"
