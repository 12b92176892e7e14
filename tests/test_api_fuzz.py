"""Fuzz every operation of the API's own OpenAPI spec (schemathesis) against the real server on 127.0.0.1.

Every case carries an admin key, so the fuzzer gets past auth into the handlers. Requirements: no 5xx,
ever, and every error response has the documented shape `{"error": {"code", "message", "request_id"}}`.
Bounded (a few dozen examples per operation) and derandomized, so it is a stable CI test.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error

from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.server.app import create_app
from archivist.server.auth import mint_api_key
from live_server import serving
from test_server import ALPHA, _app

#: the admin key every fuzzed request carries (minted by the `fuzz_base` fixture)
_KEY: dict[str, str] = {}


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory: pytest.TempPathFactory, embedder: MiniLMEmbedder) -> Iterator[str]:
    # Its own store and server: what the fuzzer creates (collections, queued uploads) stays there.
    root = tmp_path_factory.mktemp("fuzz")
    folder = root / "alpha"
    folder.mkdir()
    for name, text in ALPHA.items():
        (folder / name).write_text(text)
    with _app(root, embedder) as app:
        app.ingest([folder], collection="alpha")
        _KEY["admin"] = mint_api_key(app.store, "fuzz-admin", ["admin"], rate_per_minute=1_000_000)[0]
        # run_jobs=False: uploads the fuzzer makes are queued, not embedded (keeps the run short and bounded).
        with serving(create_app(app, run_jobs=False)) as base:
            yield base


@pytest.fixture(scope="module")
def api_schema(fuzz_base: str) -> Any:
    return schemathesis.openapi.from_url(f"{fuzz_base}/openapi.json")


def error_shape(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Every 4xx/5xx carries `{"error": {"code", "message", "request_id"}}`, the id echoed in X-Request-ID."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"{case.operation.label}: {response.text[:300]}"
    error = body["error"]
    assert isinstance(error, dict), response.text[:300]
    for field in ("code", "message", "request_id"):
        assert isinstance(error.get(field), str) and error[field], f"error.{field} missing: {response.text[:300]}"
    request_ids = response.headers.get("x-request-id") or []
    assert error["request_id"] in request_ids, f"request_id {error['request_id']} not in X-Request-ID"
    return None


#: examples per operation and generation mode: bounded so the whole run takes well under a minute on 2 cores
MAX_EXAMPLES = 25


@pytest.mark.parametrize(
    ("mode", "pinned"),
    [
        (GenerationMode.POSITIVE, False),
        (GenerationMode.NEGATIVE, False),
        (GenerationMode.POSITIVE, True),
        (GenerationMode.NEGATIVE, True),
    ],
    ids=["positive", "negative", "positive-in-alpha", "negative-in-alpha"],
)
def test_api_fuzz(api_schema: Any, mode: GenerationMode, pinned: bool) -> None:
    # One Hypothesis test per operation (schemathesis' pytest loader `from_fixture` does not run under pytest 9),
    # derandomized: the same cases every run. Every operation runs even after another one failed.
    failures: dict[str, str] = {}
    examples: dict[str, int] = {}
    statuses: Counter[tuple[str, int]] = Counter()
    for result in api_schema.get_all_operations():
        operation = result.ok()
        # pinned: the path's {collection} is the real one, so the cases reach past the collection check
        path_parameters = {"collection": "alpha"} if pinned and "{collection}" in operation.path else None
        if pinned and path_parameters is None:
            continue
        examples[operation.label] = 0
        try:
            _fuzz(
                operation.as_strategy(generation_mode=mode, path_parameters=path_parameters),
                operation.label,
                examples,
                statuses,
            )
        except Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE and not operation.path.startswith("/v1/"), operation.label
            del examples[operation.label]  # nothing to get wrong: an operation without parameters or body
        except Exception as exc:
            failures[operation.label] = f"{type(exc).__name__}: {str(exc)[:1500]}"
    print(f"\nfuzzed ({mode}), examples per operation: {examples}\nstatuses: {sorted(statuses.items())}")
    assert not failures, "\n\n".join(f"{label}: {text}" for label, text in failures.items())
    assert len(examples) >= (4 if pinned else 13) and min(examples.values()) > 0, examples


def _fuzz(strategy: Any, label: str, examples: dict[str, int], statuses: Counter[tuple[str, int]]) -> None:
    headers = {"Authorization": f"Bearer {_KEY['admin']}"}

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Case) -> None:
        examples[label] += 1
        case.headers = {**(case.headers or {}), **headers}
        response = case.call(timeout=30)
        statuses[label, response.status_code] += 1
        case.validate_response(response, checks=[not_a_server_error, error_shape])

    fuzz()


# -- regressions for what the fuzzer found ---------------------------------------------------------


def test_huge_document_offset_is_a_422_not_a_500(fuzz_base: str) -> None:
    # Found by the fuzzer: an offset past SQLite's 64-bit integers raised OverflowError in the store (500).
    headers = {"Authorization": f"Bearer {_KEY['admin']}"}
    with httpx.Client(base_url=fuzz_base, headers=headers, timeout=30) as c:
        response = c.get("/v1/collections/alpha/documents", params={"offset": 63589620962068958162190336})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "validation_error" and error["request_id"] == response.headers["x-request-id"]
        assert c.get("/v1/collections/alpha/documents", params={"offset": 2**62}).json()["documents"] == []
