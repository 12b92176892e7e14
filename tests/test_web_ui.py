"""End-to-end tests of the web UI: the real `archivist serve` on a temp SQLite store, driven by Debian's chromium.

Nothing is mocked: the server is a subprocess started from the CLI, ingestion runs the bundled embedding model,
answers stream over SSE from the extractive answerer. The browser is the system chromium (never a downloaded
one); without it the module is skipped. Set ARCHIVIST_UI_SCREENSHOTS=DIR to keep a screenshot of each view.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
expect = sync_api.expect

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
COLLECTION = "handbook"
HANDBOOK = """\
# Operations Handbook

How the platform team runs the service day to day.

## Backups

Database backups run every night at 02:00 UTC. Each backup is encrypted and copied to a second region.
Backups are kept for 35 days before they are deleted.

## Deploys

Deploys happen on Tuesdays and Thursdays after the change review meeting.
A failed deploy is rolled back by redeploying the previous image tag.

## On-call

The on-call engineer answers pages within 15 minutes, around the clock.
Escalations go to the team lead after 30 minutes without a fix.
Never paste markup such as <img src=x onerror="window.pwned=1"> into a status page.
"""
QUESTION = "How long are database backups kept?"
#: the sentence of HANDBOOK that answers QUESTION: the cited passage must contain it
ANSWER_TEXT = "Backups are kept for 35 days before they are deleted."
SCREENSHOTS = os.environ.get("ARCHIVIST_UI_SCREENSHOTS")


def _chromium() -> str:
    for candidate in (shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    if os.environ.get("ARCHIVIST_REQUIRE_BROWSER"):  # set by .ci/run, which installs it: never skip there
        pytest.fail("no Chromium found, and ARCHIVIST_REQUIRE_BROWSER is set")
    pytest.skip("no Chromium found: apt-get install chromium")


def _archivist() -> list[str]:
    script = Path(sys.executable).with_name("archivist")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "archivist.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    # Hermetic: no ARCHIVIST_* setting of the caller's (an LLM provider, another store) reaches the server.
    return {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")}


@dataclass
class Server:
    base: str
    key: str
    store_url: str
    log: Path

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call the JSON API with the test key; return (status, parsed body)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.key}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


def _seed_eval_runs(store_url: str) -> None:
    """Store a few eval runs (what `archivist eval` would have left) so the Evals view has something to draw."""
    from archivist.store import open_store

    store = open_store(store_url)
    try:
        store.migrate()
        for i, (day, ndcg) in enumerate([("2026-10-01", 0.61), ("2026-10-08", 0.64), ("2026-10-15", 0.66)]):
            for dataset, offset in (("scifact", 0.0), ("nfcorpus", -0.28)):
                store.save_eval_run(
                    {
                        "id": f"run{i}{dataset[:3]}",
                        "kind": "retrieval",
                        "dataset": dataset,
                        "split": "test",
                        "tag": f"v{i}",
                        "created_at": f"{day}T12:00:00+00:00",
                        "fingerprint_hash": f"fp{i}",
                        "metrics": {"ndcg@10": round(ndcg + offset, 4), "recall@100": round(0.9 + offset / 2, 4)},
                    }
                )
    finally:
        store.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Run `archivist serve` on a free loopback port against a fresh SQLite store, with an all-scopes key."""
    tmp = tmp_path_factory.mktemp("web-ui")
    store_url = f"sqlite:///{tmp / 'archivist.db'}"
    env = _env()
    create = ["keys", "create", "--name", "ui", "--scopes", "read,write,admin", "--json", "--store", store_url]
    made = subprocess.run(
        [*_archivist(), *create],
        capture_output=True,
        text=True,
        cwd=tmp,
        env=env,
        timeout=60,
    )
    assert made.returncode == 0, f"archivist keys create failed: {made.stderr}"
    key = json.loads(made.stdout)["key"]
    _seed_eval_runs(store_url)

    port = _free_port()
    log = tmp / "server.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*_archivist(), "serve", "--host", "127.0.0.1", "--port", str(port), "--store", store_url],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            env=env,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"archivist serve exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"archivist serve not healthy after 60 s:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)
        yield Server(base=base, key=key, store_url=store_url, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Launch the system chromium once for the module."""
    executable = _chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    """A fresh browser context (empty local storage) on the app; fails the test on any uncaught page error."""
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=server.base)
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    # The UI may reach this server only: a request anywhere else (a CDN, a font) is a bug.
    outside: list[str] = []
    pg.on("request", lambda req: None if req.url.startswith((server.base, "data:")) else outside.append(req.url))
    yield pg
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
    assert not outside, f"the UI fetched from outside its server: {outside}"


def _shot(pg: Any, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(Path(SCREENSHOTS) / f"ui-{name}.png"), full_page=True)


def _sign_in(pg: Any, key: str) -> None:
    pg.goto("/")
    pg.get_by_label("API key").fill(key)
    pg.get_by_test_id("signin-submit").click()
    expect(pg.get_by_test_id("view-chat")).to_be_visible()


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_a_wrong_key_is_rejected_and_a_good_one_signs_in(page: Any, server: Server) -> None:
    page.goto("/")
    expect(page.get_by_test_id("view-signin")).to_be_visible()
    page.get_by_label("API key").fill("ak_not_a_real_key")
    page.get_by_test_id("signin-submit").click()
    error = page.get_by_test_id("signin-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("401")
    expect(error.get_by_test_id("error-request-id")).not_to_be_empty()
    expect(page.get_by_test_id("nav")).to_be_hidden()
    assert page.evaluate("localStorage.getItem('archivist.apiKey')") is None
    _shot(page, "signin")

    page.get_by_label("API key").fill(server.key)
    page.get_by_label("API key").press("Enter")
    expect(page.get_by_test_id("me-name")).to_have_text("ui")
    expect(page.get_by_test_id("me-scopes")).to_contain_text("admin")
    expect(page.get_by_test_id("signin-error")).to_be_hidden()

    # The key survives a reload (local storage) and is gone after signing out.
    page.reload()
    expect(page.get_by_test_id("me-name")).to_have_text("ui")
    page.get_by_test_id("signout").click()
    expect(page.get_by_test_id("view-signin")).to_be_visible()
    assert page.evaluate("localStorage.getItem('archivist.apiKey')") is None


def test_upload_ask_open_citation_delete(page: Any, server: Server, tmp_path: Path) -> None:
    _sign_in(page, server.key)

    # Library: create the collection, upload a Markdown file, watch its job succeed.
    page.get_by_test_id("nav-library").click()
    page.get_by_label("Name").fill(COLLECTION)
    page.get_by_label("Description").fill("how the platform team runs the service")
    page.get_by_test_id("collection-create-submit").click()
    expect(page.get_by_test_id("collection-create-status")).to_contain_text(f"Created collection {COLLECTION}")
    expect(page.get_by_test_id("library-collection")).to_have_value(COLLECTION)

    doc = tmp_path / "handbook.md"
    doc.write_text(HANDBOOK, encoding="utf-8")
    page.get_by_label("File").set_input_files(str(doc))
    page.get_by_test_id("upload-submit").click()
    job = page.get_by_test_id("job").first
    expect(job.get_by_test_id("job-status")).to_have_attribute("data-status", "succeeded", timeout=60_000)
    expect(job.get_by_test_id("job-progress")).to_have_js_property("position", 1)
    expect(job.get_by_test_id("job-detail")).to_contain_text("1 added")
    row = page.get_by_test_id("document-row").filter(has_text="Operations Handbook")
    expect(row).to_have_count(1)
    _shot(page, "library")

    # Chat: the answer streams, then becomes the checked answer with a clickable citation.
    page.get_by_test_id("nav-chat").click()
    page.get_by_test_id("chat-collection").select_option(COLLECTION)
    page.get_by_label("Question").fill(QUESTION)
    page.get_by_test_id("chat-submit").click()
    link = page.get_by_test_id("citation-link").first
    expect(link).to_be_visible(timeout=30_000)
    answer = page.get_by_test_id("answer-text")
    assert int(answer.get_attribute("data-tokens") or 0) > 0, "no token event was shown while streaming"
    expect(answer).to_contain_text("35 days")
    expect(page.get_by_test_id("answer-error")).to_be_hidden()
    source = page.get_by_test_id("source-item").filter(has_text="Backups").first
    expect(source).to_be_visible()
    quote = _squash(source.get_by_test_id("source-quote").inner_text())
    assert "35 days" in quote
    _shot(page, "chat")

    # The citation opens the document with the cited span highlighted and in view.
    n = link.get_attribute("data-n")
    cited = page.get_by_test_id("source-item").and_(page.locator(f'[data-n="{n}"]'))
    cited_quote = _squash(cited.get_by_test_id("source-quote").inner_text())
    link.click()
    viewer = page.get_by_test_id("doc-viewer")
    expect(viewer).to_be_visible()
    mark = viewer.get_by_test_id("doc-highlight")
    expect(mark).to_be_in_viewport()
    assert cited_quote in _squash(mark.inner_text())
    body = viewer.get_by_test_id("doc-viewer-text")
    expect(body).to_contain_text("## Deploys")  # the whole document
    expect(body).to_contain_text('<img src=x onerror="window.pwned=1">')  # markup shown as text, never run
    expect(body.locator("img")).to_have_count(0)
    assert page.evaluate("window.pwned") is None
    _shot(page, "document")
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()

    # A question the document does not answer: refused plainly, with the closest sources to open.
    page.get_by_label("Question").fill("What is the boiling point of mercury on Venus?")
    page.get_by_label("Question").press("Enter")
    expect(page.get_by_test_id("answer-status")).to_have_attribute("data-state", "warn", timeout=30_000)
    expect(answer).to_have_class(re.compile(r"\brefused\b"))
    expect(page.get_by_test_id("citation-link")).to_have_count(0)
    expect(page.get_by_test_id("closest-source").first).to_contain_text("Operations Handbook")
    _shot(page, "refusal")

    # An API error in the middle of a chat (a collection that does not exist) is shown with its request id.
    page.get_by_test_id("chat-collection").evaluate("s => { s.add(new Option('gone', 'gone')); s.value = 'gone'; }")
    page.get_by_label("Question").fill(QUESTION)
    page.get_by_test_id("chat-submit").click()
    error = page.get_by_test_id("answer-error")
    expect(error.get_by_test_id("error-code")).to_have_text("not_found")
    expect(error.get_by_test_id("error-request-id")).not_to_be_empty()

    # Library: pasted text is ingested as a document too.
    page.get_by_test_id("nav-library").click()
    page.get_by_text("or paste text").click()
    page.get_by_label("Title").fill("Paste note")
    page.get_by_label("Text").fill("The staging cluster is rebuilt every Monday morning.")
    page.get_by_test_id("paste-submit").click()
    expect(page.get_by_test_id("job").first.get_by_test_id("job-status")).to_have_attribute(
        "data-status", "succeeded", timeout=30_000
    )
    expect(page.get_by_test_id("document-row")).to_have_count(2)

    # Delete both documents (after confirming): gone from the list and from the API.
    doc_id = row.get_attribute("data-id")
    page.on("dialog", lambda d: d.accept())
    row.get_by_test_id("document-delete").click()
    expect(row).to_have_count(0)
    page.get_by_test_id("document-row").get_by_test_id("document-delete").click()
    expect(page.get_by_test_id("document-row")).to_have_count(0)
    expect(page.get_by_test_id("documents-empty")).to_be_visible()
    status, body = server.api("GET", f"/v1/collections/{COLLECTION}/documents/{doc_id}")
    assert status == 404, body
    assert body["error"]["code"] == "not_found"


def test_evals_and_usage_views(page: Any, server: Server) -> None:
    with pytest.raises(urllib.error.HTTPError):  # a request with no valid key: logged under no key
        urllib.request.urlopen(urllib.request.Request(server.base + "/v1/me", headers={"X-API-Key": "nope"}))
    _sign_in(page, server.key)

    page.get_by_test_id("nav-evals").click()
    expect(page.get_by_test_id("eval-row")).to_have_count(6)
    expect(page.get_by_test_id("evals-head")).to_contain_text("ndcg@10")
    expect(page.get_by_test_id("evals-metric")).to_have_value("ndcg@10")
    chart = page.get_by_test_id("evals-svg")
    expect(chart.locator("polyline")).to_have_count(2)  # one line per dataset
    expect(chart.get_by_test_id("evals-point")).to_have_count(6)
    expect(page.get_by_test_id("evals-legend")).to_contain_text("scifact")
    page.get_by_label("Metric").select_option("recall@100")
    expect(chart.get_by_test_id("evals-point")).to_have_count(6)
    _shot(page, "evals")

    page.get_by_test_id("nav-usage").click()
    keys = page.get_by_test_id("usage-row").get_by_test_id("usage-key")
    expect(keys.filter(has_text=re.compile(r"^ui$"))).not_to_have_count(0)  # this module's own requests
    expect(keys.filter(has_text="(no key)")).not_to_have_count(0)  # the wrong key's 401s (admin sees all)
    expect(page.get_by_test_id("usage-svg").get_by_test_id("usage-bar")).not_to_have_count(0)
    _shot(page, "usage")

    # On a phone-sized screen no view scrolls sideways (wide tables scroll inside their own box).
    page.set_viewport_size({"width": 390, "height": 844})
    for view in ("chat", "library", "evals", "usage"):
        page.get_by_test_id(f"nav-{view}").click()
        expect(page.get_by_test_id(f"view-{view}")).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the {view} view is {width}px wide on a 390px screen"


def test_an_error_shows_its_request_id(page: Any, server: Server) -> None:
    _sign_in(page, server.key)
    page.get_by_test_id("nav-library").click()
    page.get_by_label("Name").fill("bad name with spaces")
    page.get_by_label("Name").evaluate("el => el.removeAttribute('pattern')")  # let the server judge it
    page.get_by_test_id("collection-create-submit").click()
    status = page.get_by_test_id("collection-create-status")
    expect(status.get_by_test_id("error-code")).to_have_text(re.compile(r"bad_request|validation_error"))
    expect(status.get_by_test_id("error-request-id")).not_to_be_empty()
