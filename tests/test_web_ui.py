"""End-to-end tests of the web UI: the real `archivist serve` on a temp SQLite store, driven by Debian's chromium.

Nothing is mocked: the server is a subprocess started from the CLI, ingestion runs the bundled embedding model,
answers stream over SSE from the extractive answerer. The browser is the system chromium (never a downloaded
one); without it the module is skipped. Set ARCHIVIST_UI_SCREENSHOTS=DIR to keep a screenshot of each view.
"""

from __future__ import annotations

import itertools
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

import httpx
import pytest

from live_server import wait_for_job

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


#: fingerprints of two retrieval configurations (what `archivist eval` hashes from the settings)
HYBRID_FP, BM25_FP = "3f2a9c1d7b6e", "b25e0c4d1a99"
#: (id, dataset, tag, fingerprint, finished at (UTC), ndcg@10): a hybrid configuration run weekly on two datasets,
#: and a bm25 configuration run twice on the day of the last hybrid run
EVAL_RUNS = [
    *(
        (f"hyb{i}{dataset[:3]}", dataset, "hybrid", HYBRID_FP, at, round(ndcg + offset, 4))
        for i, (at, ndcg) in enumerate(
            [("2026-10-01T12:00", 0.61), ("2026-10-08T12:00", 0.64), ("2026-10-15T09:00", 0.66)]
        )
        for dataset, offset in (("scifact", 0.0), ("nfcorpus", -0.28))
    ),
    ("bm25a", "scifact", "bm25", BM25_FP, "2026-10-15T15:30", 0.55),
    ("bm25b", "scifact", "bm25", BM25_FP, "2026-10-15T17:45", 0.56),
]


def _seed_eval_runs(store_url: str) -> None:
    """Store eval runs (what `archivist eval` would have left) so the Evals view has something to draw."""
    from archivist.store import open_store

    store = open_store(store_url)
    try:
        store.migrate()
        for run_id, dataset, tag, fingerprint, at, ndcg in EVAL_RUNS:
            store.save_eval_run(
                {
                    "id": run_id,
                    "kind": "retrieval",
                    "dataset": dataset,
                    "split": "test",
                    "tag": tag,
                    "created_at": f"{at}:00+00:00",
                    "fingerprint_hash": fingerprint,
                    "metrics": {"ndcg@10": ndcg, "recall@100": round(0.9 + (ndcg - 0.6) / 2, 4)},
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
    # UTC, so that the times the UI shows are those the runs were stored with.
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=server.base, timezone_id="UTC")
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
    expect(page.get_by_test_id("eval-row")).to_have_count(len(EVAL_RUNS))
    expect(page.get_by_test_id("evals-head")).to_contain_text("ndcg@10")
    expect(page.get_by_test_id("evals-metric")).to_have_value("ndcg@10")
    chart = page.get_by_test_id("evals-svg")
    expect(chart.locator("polyline")).to_have_count(3)  # one line per dataset and configuration
    expect(chart.get_by_test_id("evals-point")).to_have_count(len(EVAL_RUNS))
    expect(page.get_by_test_id("evals-legend")).to_contain_text("scifact")
    page.get_by_label("Metric").select_option("recall@100")
    expect(chart.get_by_test_id("evals-point")).to_have_count(len(EVAL_RUNS))
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


# ---------- issue 18: citations from segments, what a key can do, layout, conversation history ----------

#: a paper's passage that carries its own reference marks ("[3]", "[4]"): they are not our citations
PAPER = """\
# Outbreak notes

Clinical notes on the outbreak, kept by the ward team.

## Incubation period

The median incubation period of the virus is about 5.0 days [3]. Most patients show symptoms within 11.5 days of
exposure [4].

## Treatment

Patients with mild symptoms recover at home with rest and fluids.
"""
PAPER_QUESTION = "What is the median incubation period of the virus?"
FOLLOW_UP = "When do deploys happen?"
LONG_TITLE = "Quarterly operations review of the platform and infrastructure team, with appendices on capacity and cost"
LONG_SOURCE = "reports/2026/quarterly-operations-review-of-the-platform-and-infrastructure-team-with-all-appendices.md"
#: every text of a chart: its font size as drawn on screen, and whether it lies inside the chart
CHART_TEXTS = """svg => {
  const s = svg.getBoundingClientRect();
  return [...svg.querySelectorAll('text')].map((t) => {
    const r = t.getBoundingClientRect();
    return {text: [...t.childNodes].map((c) => c.textContent).join(' '), testid: t.dataset.testid || '',
      px: parseFloat(getComputedStyle(t).fontSize) * t.getScreenCTM().a, left: r.left, right: r.right,
      inside: r.left >= s.left - 1 && r.right <= s.right + 1 && r.top >= s.top - 1 && r.bottom <= s.bottom + 1};
  });
}"""
#: a table's box: whether it fits or scrolls, and where its last column ends once scrolled to the end
TABLE_REACH = """w => {
  const res = {overflow: getComputedStyle(w).overflowX, fits: w.scrollWidth <= w.clientWidth + 1};
  w.scrollLeft = w.scrollWidth;
  res.lastRight = w.querySelector('thead th:last-child').getBoundingClientRect().right;
  res.wrapRight = w.getBoundingClientRect().right;
  w.scrollLeft = 0;
  return res;
}"""


def _make_key(server: Server, name: str, scopes: str) -> str:
    """Create an API key with the CLI in the running server's store; return the key."""
    made = subprocess.run(
        [*_archivist(), "keys", "create", "--name", name, "--scopes", scopes, "--json", "--store", server.store_url],
        capture_output=True,
        text=True,
        cwd=server.log.parent,
        env=_env(),
        timeout=60,
    )
    assert made.returncode == 0, f"archivist keys create failed: {made.stderr}"
    return str(json.loads(made.stdout)["key"])


def _ingest(server: Server, collection: str, title: str, text: str, source: str | None = None) -> None:
    """Ingest a text document through the API (creating the collection if needed) and wait for its job."""
    with httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {server.key}"}, timeout=30) as client:
        made = client.post("/v1/collections", json={"name": collection})
        assert made.status_code in (200, 201, 409), made.text
        doc: dict[str, Any] = {"title": title, "text": text}
        if source:
            doc["source"] = source
        queued = client.post(f"/v1/collections/{collection}/documents", json=doc)
        assert queued.status_code == 202, queued.text
        job = wait_for_job(client, queued.json()["job_id"])
        assert job["status"] == "succeeded", job


def _ask(page: Any, question: str) -> dict[str, Any]:
    """Ask in the chat and wait for the checked answer; return the JSON body the UI sent."""
    with page.expect_request(lambda r: r.url.endswith("/v1/answer") and r.method == "POST") as sent:
        page.get_by_label("Question").fill(question)
        page.get_by_test_id("chat-submit").click()
    status = page.get_by_test_id("answer-status")
    expect(status).to_have_attribute("data-state", re.compile(r"^(ok|warn|error)$"), timeout=30_000)
    if status.get_attribute("data-state") == "error":
        pytest.fail(f"the answer failed: {page.get_by_test_id('answer-error').inner_text()}")
    body: dict[str, Any] = sent.value.post_data_json
    return body


def _inside(inner: dict[str, float], outer: dict[str, float]) -> bool:
    return (
        inner["x"] >= outer["x"] - 1
        and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + 1
        and inner["y"] >= outer["y"] - 1
        and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + 1
    )


def _box(locator: Any) -> dict[str, float]:
    box = locator.bounding_box()
    assert box is not None, f"{locator} is not rendered"
    return dict(box)


def _check_chart(page: Any, testid: str, width: int) -> list[dict[str, Any]]:
    """Assert a chart lies in the viewport with every label inside it and ≥ 10 px on screen; return its texts."""
    chart = page.get_by_test_id(testid)
    box = _box(chart)
    assert box["x"] >= 0 and box["x"] + box["width"] <= width + 1, f"{testid} at {box} leaves a {width}px screen"
    texts: list[dict[str, Any]] = chart.evaluate(CHART_TEXTS)
    assert texts, f"{testid} has no labels"
    small = [t for t in texts if t["px"] < 10]
    assert not small, f"{testid} labels under 10 px at {width}px: {small}"
    outside = [t["text"] for t in texts if not t["inside"]]
    assert not outside, f"{testid} labels cut off at {width}px: {outside}"
    xlabels = sorted((t for t in texts if t["testid"].endswith("xlabel")), key=lambda t: t["left"])
    assert xlabels, f"{testid} has no x labels"
    for a, b in itertools.pairwise(xlabels):
        assert a["right"] <= b["left"], f"{testid} x labels {a['text']!r} and {b['text']!r} overlap at {width}px"
    return texts


def _check_table(page: Any, testid: str, width: int) -> None:
    """Assert a table's box lies in the viewport and its last column can be reached (it fits, or it scrolls)."""
    wrap = page.get_by_test_id(testid)
    box = _box(wrap)
    assert box["x"] >= 0 and box["x"] + box["width"] <= width + 1, f"{testid} at {box} leaves a {width}px screen"
    reach = wrap.evaluate(TABLE_REACH)
    assert reach["fits"] or reach["overflow"] in ("auto", "scroll"), f"{testid} is cut off: {reach}"
    assert reach["lastRight"] <= reach["wrapRight"] + 1, f"{testid}'s last column cannot be reached: {reach}"


def test_citation_links_come_from_the_answers_segments(page: Any, server: Server) -> None:
    _ingest(server, "papers", "Outbreak notes", PAPER)
    status, expected = server.api("POST", "/v1/answer", {"question": PAPER_QUESTION, "collection": "papers"})
    assert status == 200, expected
    assert any("[3]" in c["quote"] for c in expected["citations"]), expected  # the paper's own mark is quoted

    _sign_in(page, server.key)
    page.get_by_test_id("chat-collection").select_option("papers")
    _ask(page, PAPER_QUESTION)
    answer = page.get_by_test_id("answer-text")
    expect(answer).to_contain_text("5.0 days")
    # Nothing in the answer is drawn from its text: every element in it is one of our citation links.
    drawn = answer.evaluate("a => [...a.querySelectorAll('*')].map((e) => e.dataset.testid || e.tagName)")
    assert set(drawn) <= {"citation-link"}, drawn
    links = answer.get_by_test_id("citation-link")
    segments = expected.get("segments")
    if segments is None:  # a server without structured citations: the text as it is, no links
        expect(links).to_have_count(0)
        assert _squash(answer.inner_text()) == _squash(expected["answer"])
        return
    cited = [s["n"] for s in segments if s["type"] == "citation"]
    assert cited, segments
    assert [int(n) for n in links.evaluate_all("ls => ls.map((l) => l.dataset.n)")] == cited
    whole = "".join(s["text"] if s["type"] == "text" else f"[{s['n']}]" for s in segments)
    assert _squash(answer.inner_text()) == _squash(whole)
    _shot(page, "citations")
    quotes = {c["n"]: c["quote"] for c in expected["citations"]}
    viewer = page.get_by_test_id("doc-viewer")
    for i in range(links.count()):  # each link opens its own source, highlighted
        link = links.nth(i)
        n = int(link.get_attribute("data-n") or 0)
        link.click()
        expect(viewer).to_be_visible()
        assert _squash(quotes[n]) in _squash(viewer.get_by_test_id("doc-highlight").inner_text())
        page.keyboard.press("Escape")
        expect(viewer).to_be_hidden()


def test_upload_and_delete_follow_what_the_server_says_a_key_can_do(page: Any, server: Server) -> None:
    _ingest(server, "roles", "Roles note", "Only the platform team may rotate the database credentials.")
    admin = _make_key(server, "boss", "admin")  # admin alone: the server grants it every scope
    reader = _make_key(server, "reader", "read")
    for key, may_write in ((admin, True), (reader, False)):
        _sign_in(page, key)
        page.get_by_test_id("nav-library").click()
        page.get_by_test_id("library-collection").select_option("roles")
        expect(page.get_by_test_id("document-row")).to_have_count(1)
        upload = page.get_by_test_id("upload-card")
        delete = page.get_by_test_id("document-delete")
        if may_write:
            expect(upload).to_be_visible()
            expect(delete).to_have_count(1)
            expect(page.get_by_test_id("collection-create")).to_be_visible()
        else:
            expect(upload).to_be_hidden()
            expect(delete).to_have_count(0)
            expect(page.get_by_test_id("collection-create")).to_be_hidden()
        page.get_by_test_id("signout").click()
        expect(page.get_by_test_id("view-signin")).to_be_visible()


def test_library_fits_its_card_and_lists_the_newest_first(page: Any, server: Server) -> None:
    _ingest(server, "shelf", LONG_TITLE, "The review covers capacity, cost and incidents.", source=LONG_SOURCE)
    _ingest(server, "shelf", "Zulu notes", "Written last, so listed first.", source="zz-latest.md")
    listed: list[str] = []
    page.on("request", lambda r: listed.append(r.url) if "/documents" in r.url and r.method == "GET" else None)
    _sign_in(page, server.key)
    page.get_by_test_id("nav-library").click()
    page.get_by_test_id("library-collection").select_option("shelf")
    rows = page.get_by_test_id("document-row")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("Zulu notes")  # the latest upload is on the first page, at the top
    assert listed and all("sort=newest" in url for url in listed), listed

    for width, height in ((1280, 860), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        wrap = page.get_by_test_id("documents-wrap")
        wrap_box = _box(wrap)
        if width == 1280:
            assert wrap.evaluate("w => w.scrollWidth <= w.clientWidth + 1"), "the documents table overflows"
        for i in range(2):
            box = _box(rows.nth(i).get_by_test_id("document-delete"))
            assert _inside(box, wrap_box), f"Delete at {box} is clipped by its table at {wrap_box} ({width}px)"
            assert box["x"] + box["width"] <= width, f"Delete at {box} is off a {width}px screen"
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        _shot(page, f"library-{width}")


def test_evals_chart_keeps_configurations_apart_and_reads_on_a_phone(page: Any, server: Server) -> None:
    _sign_in(page, server.key)
    page.get_by_test_id("nav-evals").click()
    expect(page.get_by_test_id("view-evals")).not_to_have_attribute("aria-busy", "true")
    chart = page.get_by_test_id("evals-svg")
    series = chart.get_by_test_id("evals-series")
    expect(series).to_have_count(3)
    for i in range(3):  # a line never joins runs of two configurations
        fingerprints = (
            series.nth(i).get_by_test_id("evals-point").evaluate_all("ps => ps.map((p) => p.dataset.fingerprint)")
        )
        assert len(set(fingerprints)) == 1, fingerprints
    legend = page.get_by_test_id("evals-legend")
    for label in ("nfcorpus · hybrid", "scifact · bm25", "scifact · hybrid"):
        expect(legend).to_contain_text(label)

    for width, height in ((1280, 860), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_function(
            "w => Math.abs(document.querySelector('[data-testid=evals-svg]').getBoundingClientRect().width"
            " - Number(document.querySelector('[data-testid=evals-svg]').getAttribute('width'))) < 1",
            arg=width,
        )
        texts = _check_chart(page, "evals-svg", width)
        xlabels = [t["text"] for t in texts if t["testid"] == "evals-xlabel"]
        assert len(set(xlabels)) == len(xlabels), f"x labels repeat at {width}px: {xlabels}"
        # The newest run is always labelled with its time, and at 1280 px so is every run of its day.
        assert "10-15 17:45" in xlabels, xlabels
        if width == 1280:
            assert {"10-15 09:00", "10-15 15:30", "10-15 17:45"} <= set(xlabels), xlabels
        _check_table(page, "evals-wrap", width)
        _shot(page, f"evals-{width}")

        page.get_by_test_id("nav-usage").click()
        expect(page.get_by_test_id("view-usage")).not_to_have_attribute("aria-busy", "true")  # drawn
        _check_chart(page, "usage-svg", width)
        _check_table(page, "usage-wrap", width)
        _shot(page, f"usage-{width}")
        page.get_by_test_id("nav-evals").click()
        expect(page.get_by_test_id("view-evals")).not_to_have_attribute("aria-busy", "true")


def test_conversation_thread_sends_history_survives_reload_and_starts_anew(page: Any, server: Server) -> None:
    _ingest(server, "thread", "Operations Handbook", HANDBOOK)
    status, me = server.api("GET", "/v1/me")
    assert status == 200, me
    storage_key = f"archivist.thread.{me['id']}.thread"
    _sign_in(page, server.key)
    page.get_by_test_id("chat-collection").select_option("thread")

    first = _ask(page, QUESTION)
    assert "history" not in first  # a first question has no earlier turns
    first_answer = page.get_by_test_id("answer-text").inner_text()
    assert "35 days" in first_answer
    second = _ask(page, FOLLOW_UP)
    assert [m["role"] for m in second["history"]] == ["user", "assistant"]
    assert second["history"][0]["content"] == QUESTION
    assert _squash(second["history"][1]["content"]) == _squash(first_answer)
    turns = page.get_by_test_id("thread-turn")
    expect(turns).to_have_count(1)  # the earlier turn, above the answer just given
    expect(turns.first.get_by_test_id("turn-question")).to_have_text(QUESTION)
    expect(page.get_by_test_id("thread-count")).to_have_text("(2 turns)")
    _shot(page, "thread")

    # The thread survives a reload, on the collection it belongs to, and its sources still open.
    page.reload()
    expect(page.get_by_test_id("chat-collection")).to_have_value("thread")
    expect(turns).to_have_count(2)
    expect(turns.nth(1).get_by_test_id("turn-question")).to_have_text(FOLLOW_UP)
    expect(page.get_by_test_id("answer-card")).to_be_hidden()
    turns.first.locator("summary").click()
    turns.first.get_by_test_id("turn-source").first.click()
    expect(page.get_by_test_id("doc-highlight")).to_contain_text("35 days")
    page.keyboard.press("Escape")
    third = _ask(page, "Who do escalations go to?")
    assert [m["content"] for m in third["history"] if m["role"] == "user"] == [QUESTION, FOLLOW_UP]

    # Each collection has its own conversation.
    page.get_by_test_id("chat-collection").select_option("__all__")
    expect(page.get_by_test_id("thread-wrap")).to_be_hidden()
    page.get_by_test_id("chat-collection").select_option("thread")
    expect(turns).to_have_count(3)

    # A new conversation forgets the thread: the next question goes alone.
    page.get_by_test_id("thread-new").click()
    expect(page.get_by_test_id("thread-wrap")).to_be_hidden()
    assert page.evaluate("k => localStorage.getItem(k)", storage_key) is None
    assert "history" not in _ask(page, QUESTION)

    # A long thread sends only its last 10 turns, oldest first.
    kept = [
        {"id": f"t{i}", "question": f"question {i}?", "collection": "thread", "answer": f"answer {i}.", "citations": []}
        for i in range(12)
    ]
    page.evaluate("([k, v]) => localStorage.setItem(k, v)", [storage_key, json.dumps(kept)])
    page.reload()
    expect(turns).to_have_count(12)
    sent = _ask(page, QUESTION)
    expected = [
        message
        for i in range(2, 12)
        for message in ({"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": f"answer {i}."})
    ]
    assert sent["history"] == expected

    # Long answers: only the latest turns that fit the server's 16 000 characters go, and the server takes them.
    long = [{"id": f"l{i}", "question": f"q{i}?", "answer": f"{i}" * 4000, "citations": []} for i in range(6)]
    page.evaluate("([k, v]) => localStorage.setItem(k, v)", [storage_key, json.dumps(long)])
    page.reload()
    sent = _ask(page, QUESTION)
    assert [m["content"] for m in sent["history"] if m["role"] == "user"] == ["q3?", "q4?", "q5?"]
    assert sum(len(m["content"]) for m in sent["history"]) <= 16_000

    # Signing out leaves no conversation behind in the browser.
    page.get_by_test_id("signout").click()
    assert page.evaluate("Object.keys(localStorage).filter((k) => k.startsWith('archivist.thread.'))") == []


def test_a_key_the_server_no_longer_accepts_leaves_no_conversation_behind(page: Any, server: Server) -> None:
    def cli(*args: str) -> Any:
        done = subprocess.run(
            [*_archivist(), *args, "--json", "--store", server.store_url],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    made = cli("keys", "create", "--name", "soon-revoked", "--scopes", "read")
    key, key_id = made["key"], made["id"]
    _sign_in(page, key)
    thread = f"archivist.thread.{key_id}.notes"
    turn = {"question": "What is kept?", "result": {"answer": "A quote of a document.", "citations": []}}
    page.evaluate("([k, v]) => localStorage.setItem(k, v)", [thread, json.dumps([turn])])
    cli("keys", "revoke", key_id)
    deadline = time.monotonic() + 30
    while True:  # a running server reads revocations within seconds
        page.reload()
        if page.get_by_test_id("view-signin").is_visible():
            break
        assert time.monotonic() < deadline, "the revoked key was still accepted"
        time.sleep(0.5)
    assert page.evaluate("k => localStorage.getItem(k)", thread) is None
    assert page.evaluate("() => localStorage.getItem('archivist.apiKey')") is None
