"""PII detection and redaction (guard.pii): each kind found and replaced, checksums enforced, offsets true to the
text, everything offline, and the server's logs and request log free of the personal data requests carry."""

from __future__ import annotations

import io
import itertools
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.guard.pii import (
    PATTERN_KINDS,
    PiiDetector,
    PiiExtraMissing,
    PiiLogFilter,
    kind_counts,
    placeholder,
)
from archivist.ingest.document_filter import TextEdit, edit_text
from archivist.server.app import create_app
from archivist.server.auth import mint_api_key
from archivist.server.middleware import JsonLogFormatter
from archivist.store import open_store
from archivist.types import Block, Document, UsageError
from live_server import serving

# One sentence per kind, with the exact text the detector must find in it.
CASES = [
    ("EMAIL", "Write to jane.doe@example.com about it.", "jane.doe@example.com"),
    ("PHONE", "Call me on +1 415-555-0132 tomorrow.", "+1 415-555-0132"),
    ("CREDIT_CARD", "Charge card 4111 1111 1111 1111 please.", "4111 1111 1111 1111"),
    ("IBAN", "Pay into GB82 WEST 1234 5698 7654 32 by Friday.", "GB82 WEST 1234 5698 7654 32"),
    ("NATIONAL_ID", "My social security number is 536-90-4399.", "536-90-4399"),
    ("NATIONAL_ID", "Her health service number is 943 476 5919.", "943 476 5919"),
    ("PERSON", "Yesterday John Smith met the committee.", "John Smith"),
    ("LOCATION", "She moved to Berlin last spring.", "Berlin"),
    ("LOCATION", "The office is at 221 Baker Street now.", "221 Baker Street"),
    ("ORGANIZATION", "He has worked for Microsoft since 2010.", "Microsoft"),
]
EMAIL, CARD, NAME = "jane.doe@example.com", "4111 1111 1111 1111", "John Smith"


@pytest.fixture(scope="module")
def detector() -> PiiDetector:
    """Return the NER-level detector (the `pii` extra is installed for the tests), its model loaded once."""
    found = PiiDetector(ner=True)
    found.load()
    return found


@pytest.mark.parametrize(("kind", "text", "value"), CASES, ids=[f"{k}-{v}" for k, _, v in CASES])
def test_each_kind_is_found_at_its_offsets_and_redacted_to_its_placeholder(
    detector: PiiDetector, kind: str, text: str, value: str
) -> None:
    spans = [s for s in detector.find(text) if s.kind == kind]
    assert [text[s.start : s.end] for s in spans] == [value]
    assert 0 < spans[0].score <= 1
    redacted = detector.redact(text)
    assert value not in redacted
    assert redacted == text.replace(value, placeholder(spans[0].kind))


def test_the_regex_level_finds_the_patterned_kinds_without_the_model() -> None:
    patterns = PiiDetector(ner=False)
    assert patterns.level == "patterns" and patterns.kinds == PATTERN_KINDS
    for kind, text, value in CASES:
        if kind in PATTERN_KINDS and value != "943 476 5919":  # NHS numbers need Presidio's checksum recognizer
            assert [(s.kind, text[s.start : s.end]) for s in patterns.find(text)] == [(kind, value)], text
    assert patterns.find("Yesterday John Smith met the committee.") == []


@pytest.mark.parametrize("ner", [True, False], ids=["ner", "patterns"])
def test_numbers_failing_their_checksum_are_not_cards_or_ibans(detector: PiiDetector, ner: bool) -> None:
    which = detector if ner else PiiDetector(ner=False)
    for text in (
        "Charge card 4111 1111 1111 1112 please.",  # Luhn fails
        "Charge card 4111111111111112 please.",
        "Pay into GB82 WEST 1234 5698 7654 33 by Friday.",  # mod-97 fails
        "Pay into DE89370400440532013001 by Friday.",
    ):
        assert not [s for s in which.find(text) if s.kind in ("CREDIT_CARD", "IBAN")], text
    # The valid neighbours of those numbers are found.
    assert [s.kind for s in which.find("Pay into DE89370400440532013000 by Friday.")] == ["IBAN"]


def test_many_texts_in_one_batch_give_what_each_gives_alone(detector: PiiDetector) -> None:
    texts = [text for _, text, _ in CASES] + ["", "nothing personal here"]
    assert detector.find_many(texts) == [detector.find(t) for t in texts]
    assert detector.redact_many(texts) == [detector.redact(t) for t in texts]
    with pytest.raises(UsageError, match="not one string"):
        detector.find_many("one text")  # type: ignore[arg-type]


def test_overlapping_findings_become_one_placeholder_each_and_offsets_index_the_original(
    detector: PiiDetector,
) -> None:
    text = f"From {NAME} <{EMAIL}>, card {CARD}, to Ana Lima in Lisbon.\nThanks, {NAME}"
    spans = detector.find(text)
    assert all(a.end <= b.start for a, b in itertools.pairwise(spans))
    found = {(s.kind, text[s.start : s.end]) for s in spans}
    assert {("PERSON", NAME), ("EMAIL", EMAIL), ("CREDIT_CARD", CARD), ("LOCATION", "Lisbon")} <= found
    redacted = detector.redact(text)
    assert all(v not in redacted for v in (NAME, EMAIL, CARD, "Lisbon"))
    assert "<EMAIL>" in redacted and "<CREDIT_CARD>" in redacted and redacted.count("<PERSON>") >= 2


def test_the_functions_ingest_will_call_redact_a_document_and_keep_its_blocks(detector: PiiDetector) -> None:
    # At ingest (per collection, a later change): spans become edit_text edits, counts become metadata.
    text = f"# Contact\n\nWrite to {EMAIL} or ask {NAME}.\n\n## Billing\n\nCard {CARD} is on file.\n"
    blocks = [Block("heading", 0, 9), Block("paragraph", 11, 11 + len(f"Write to {EMAIL} or ask {NAME}."))]
    blocks.append(Block("paragraph", text.index("Card"), len(text) - 1))
    doc = Document(source="contact.md", title="Contact", text=text, media_type="text/markdown", blocks=blocks)
    (spans,) = detector.find_many([doc.text])
    redacted = edit_text(doc, [TextEdit(s.start, s.end, placeholder(s.kind)) for s in spans])
    assert redacted.text == detector.redact(text)
    assert [redacted.text[b.start : b.end] for b in redacted.blocks] == [
        "# Contact",
        "Write to <EMAIL> or ask <PERSON>.",
        "Card <CREDIT_CARD> is on file.",
    ]
    assert kind_counts(spans) == {"EMAIL": 1, "PERSON": 1, "CREDIT_CARD": 1}


def test_the_function_answers_will_call_redacts_the_answer_and_its_quotes_keeping_citation_marks(
    detector: PiiDetector,
) -> None:
    answer = f"The card on file is {CARD} [1], and {NAME} approved it [2]."
    quotes = [f"card {CARD} was charged", f"approved by {NAME} on Monday"]
    out = detector.redact_many([answer, *quotes])
    assert out[0] == "The card on file is <CREDIT_CARD> [1], and <PERSON> approved it [2]."
    assert out[1:] == ["card <CREDIT_CARD> was charged", "approved by <PERSON> on Monday"]


def test_bad_settings_are_refused_clearly() -> None:
    with pytest.raises(UsageError, match="between 0 and 1"):
        PiiDetector(threshold=1.5)
    with pytest.raises(UsageError, match="at least 1"):
        PiiDetector(batch_size=0)


def _run_python(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"), **env},
    )


def test_detection_runs_offline_and_writes_no_cache(tmp_path: Path) -> None:
    # Every connection is refused and recorded; a dead proxy stands in for any HTTP client that bypasses sockets.
    proc = _run_python(
        """
        import json, socket
        attempts = []
        def refuse(self, address, *args):
            attempts.append(repr(address))
            raise OSError("network disabled by the test")
        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        real_getaddrinfo = socket.getaddrinfo
        def no_dns(host, *args, **kwargs):
            attempts.append(f"dns {host}")
            raise socket.gaierror("network disabled by the test")
        socket.getaddrinfo = no_dns
        from archivist.guard.pii import PiiDetector
        spans = PiiDetector(ner=True).find("Mail jane.doe@example.co.uk or John Smith in Berlin.")
        print(json.dumps({"kinds": [s.kind for s in spans], "attempts": attempts}))
        """,
        tmp_path,
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["attempts"] == []
    assert result["kinds"] == ["EMAIL", "PERSON", "LOCATION"]
    # tldextract's default extractor would have cached the suffix list it fetched under the cache folder.
    assert not (tmp_path / "cache").exists()


def test_the_module_is_light_and_without_the_extra_the_regex_level_takes_over(tmp_path: Path) -> None:
    proc = _run_python(
        """
        import json, sys
        import archivist.guard.pii as pii
        heavy = sorted(m for m in ("spacy", "presidio_analyzer", "tldextract") if m in sys.modules)
        sys.modules["presidio_analyzer"] = None  # as if the pii extra were not installed
        fallback = pii.PiiDetector()
        try:
            pii.PiiDetector(ner=True)
            error = None
        except pii.PiiExtraMissing as exc:
            error = str(exc)
        print(json.dumps({"heavy": heavy, "level": fallback.level, "error": error,
                          "redacted": fallback.redact("mail jane.doe@example.com, card 4111 1111 1111 1111")}))
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["heavy"] == []
    assert result["level"] == "patterns"
    assert "pip install 'archivist[pii]'" in result["error"]
    assert result["redacted"] == "mail <EMAIL>, card <CREDIT_CARD>"
    assert issubclass(PiiExtraMissing, UsageError)


def _capture(detector: PiiDetector) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    handler.addFilter(PiiLogFilter(detector))
    log = logging.Logger("archivist.test-pii")
    log.addHandler(handler)
    return log, stream


def test_the_log_filter_redacts_messages_arguments_extras_and_tracebacks(detector: PiiDetector) -> None:
    log, stream = _capture(detector)
    log.info("lookup %s took %d ms (%.1f%%)", EMAIL, 12, 3.5)
    log.warning("card %s, name %s", CARD, NAME, extra={"path": f"/v1/people/{EMAIL}", "status": 404})
    log.info(f"query expansion failed for {NAME}")
    try:
        raise ValueError(f"no account for {EMAIL}")
    except ValueError:
        log.exception("request failed")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    text = stream.getvalue()
    assert EMAIL not in text and CARD not in text and NAME not in text
    assert lines[0]["message"] == "lookup <EMAIL> took 12 ms (3.5%)"
    assert lines[1]["message"] == "card <CREDIT_CARD>, name <PERSON>" and lines[1]["path"] == "/v1/people/<EMAIL>"
    assert lines[1]["status"] == 404
    assert lines[2]["message"] == "query expansion failed for <PERSON>"
    assert "ValueError: no account for <EMAIL>" in lines[3]["error"]


def _serve_and_log(tmp_path: Path, embedder: MiniLMEmbedder, redact: bool) -> tuple[str, bytes]:
    settings = load_settings(store=f"sqlite:///{tmp_path / 'store.db'}", pii_redact_logs=redact)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    # setLevel, not an assignment: it clears the loggers' cached isEnabledFor answers from earlier tests.
    level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        with Archivist(settings, open_store(settings.store), embedder) as app:
            key = mint_api_key(app.store, "admin", ["admin"])[0]
            with serving(create_app(app, run_jobs=False)) as base:
                headers = {"Authorization": f"Bearer {key}"}
                with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
                    question = f"Has {NAME} ({EMAIL}) paid with card {CARD}?"
                    assert client.post("/v1/search", json={"query": question, "k": 3}).status_code == 200
                    missing = client.get(f"/v1/collections/default/documents/{EMAIL} {CARD} {NAME}")
                    assert missing.status_code == 404
            rows = app.store.request_log(since="")
            assert {r.route for r in rows} >= {"/v1/search", "/v1/collections/{collection}/documents/{document_id}"}
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("store.db*"))
    return stream.getvalue(), stored


def test_the_server_logs_and_request_log_never_hold_the_pii_a_request_carries(
    tmp_path: Path, embedder: MiniLMEmbedder
) -> None:
    logged, stored = _serve_and_log(tmp_path, embedder, redact=True)
    assert "/v1/collections/default/documents/<EMAIL> <CREDIT_CARD> <PERSON>" in logged
    for value in (EMAIL, CARD, NAME):
        assert value not in logged
        assert value.encode() not in stored and value.encode("utf-16-le") not in stored


def test_log_redaction_can_be_turned_off(tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    logged, _ = _serve_and_log(tmp_path, embedder, redact=False)
    assert f"/v1/collections/default/documents/{EMAIL} {CARD} {NAME}" in logged
    # The app's filter came off the handlers with the app: nothing redacts this process's logs any more.
    assert not any(isinstance(f, PiiLogFilter) for h in logging.getLogger().handlers for f in h.filters)


@pytest.mark.parametrize("ner", [True, False], ids=["ner", "patterns"])
def test_an_international_phone_number_is_one_phone_span(detector: PiiDetector, ner: bool) -> None:
    which = detector if ner else PiiDetector(ner=False)
    # Before: the NER level read the last ten digits as a UK NHS number (their checksum passes) and left the
    # country code: "+1 <NATIONAL_ID>".
    assert which.redact("Call +1 415 555 0199 weekdays.") == "Call <PHONE> weekdays."
    assert which.redact("Call +44 20 7946 0958 or +1 (415) 555-0132.") == "Call <PHONE> or <PHONE>."
    # Without a country code a checksummed NHS number stays a national id.
    if ner:
        assert detector.redact("Her health service number is 943 476 5919.") == (
            "Her health service number is <NATIONAL_ID>."
        )


@pytest.mark.parametrize("redact", [True, False], ids=["redacted", "off"])
def test_archivist_worker_redacts_the_pii_in_its_log_lines(tmp_path: Path, redact: bool) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time
    from contextlib import closing

    from archivist.ingest.uploads import enqueue_upload
    from fake_servers import EmbeddingServer

    url = f"sqlite:///{tmp_path / 'store.db'}"
    with closing(open_store(url)) as store:
        store.create_collection("kb")
        # The job's source names a person by address: the worker logs it when it takes the job.
        job = enqueue_upload(store, "kb", "notes.txt", b"Owls sleep by day.", source=f"notes for {EMAIL} (draft).txt")
    with EmbeddingServer(dim=16).running() as emb:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")} | {
            "ARCHIVIST_STORE": url,
            **emb.env(),
            "ARCHIVIST_PII_REDACT_LOGS": "true" if redact else "false",
        }
        log_path = tmp_path / "worker.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "archivist.cli", "worker"], cwd=tmp_path, env=env, stdout=log, stderr=log
            )
            try:
                with closing(open_store(url)) as store:
                    deadline = time.monotonic() + 120
                    while (status := store.get_job(job.id).status) not in ("succeeded", "failed"):  # type: ignore[union-attr]
                        assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                        time.sleep(0.1)
                assert status == "succeeded", log_path.read_text()
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
    logged = log_path.read_text()
    assert f"ingesting notes for {'<EMAIL>' if redact else EMAIL} (draft).txt" in logged, logged
    assert (EMAIL in logged) is not redact
