"""The OpenAPI document is the contract: it describes what the live server really sends.

A client's models are generated from the server's own `/openapi.json` (datamodel-code-generator, into tmp_path) and
every `/v1` operation is called by its operation id against the real server on 127.0.0.1; each response must carry
a status the operation documents and parse as the model documented for that status. The models are generated from
a strict copy of the document (an object's undeclared field is an error unless its schema says it is open), so a
field the server sends but does not document fails here, as does a documented one it stops sending.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse
from pydantic import BaseModel

from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.server.app import create_app
from archivist.server.auth import mint_api_key
from conftest import write_files
from live_server import serving
from test_server import ALPHA, _app

#: the operation ids clients are generated with: renaming one breaks every generated client
V1_OPERATIONS = {
    "search",
    "answer",
    "upload_document",
    "list_documents",
    "get_document",
    "delete_document",
    "get_job",
    "list_jobs",
    "list_collections",
    "create_collection",
    "list_eval_runs",
    "get_eval_run",
    "get_usage",
    "get_me",
    "create_agent_run",
    "list_agent_runs",
    "get_agent_run",
    "approve_agent_run",
    "resume_agent_run",
}
#: datamodel-code-generator's options: pydantic v2 models from an OpenAPI document, formatted without black
GENERATOR = ["--input-file-type", "openapi", "--output-model-type", "pydantic_v2.BaseModel", "--formatters", "builtin"]
EVAL_RUN: dict[str, Any] = {
    "id": "run0a1b2c3d4",
    "kind": "retrieval",
    "dataset": "scifact",
    "dataset_path": "/srv/data/scifact",
    "split": "test",
    "slice": None,
    "tag": "bm25",
    "created_at": "2026-12-01T10:00:00+00:00",
    "fingerprint": {"mode": "bm25"},
    "fingerprint_hash": "f00dfeed",
    "metrics": {"ndcg@10": 0.7, "recall@100": 0.9},
}


@dataclass
class Live:
    base: str
    admin: str
    reader: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, embedder: MiniLMEmbedder) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("openapi")
    with _app(root, embedder) as app:
        app.ingest([write_files(root / "alpha", ALPHA)], collection="alpha")
        app.store.save_eval_run(EVAL_RUN)
        admin = mint_api_key(app.store, "admin", ["admin"])[0]
        reader = mint_api_key(app.store, "reader", ["read"], ["alpha"])[0]
        with serving(create_app(app)) as base:
            yield Live(base, admin, reader)


@pytest.fixture(scope="module")
def spec(live: Live) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{live.base}/openapi.json").json()
    return document


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Yield (method, path, operation) for every operation of the document."""
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path, operation


# -- the document --------------------------------------------------------------------------------------------


def test_operation_ids_are_explicit_stable_and_unique(spec: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(spec)]
    assert len(ids) == len(set(ids)), ids
    v1 = {op["operationId"] for _, path, op in operations(spec) if path.startswith("/v1/")}
    assert v1 >= V1_OPERATIONS, V1_OPERATIONS - v1
    # FastAPI's generated ids end in the path and method (`search_v1_search_post`); ours are names.
    assert not [i for i in ids if i.endswith(("_get", "_post", "_delete")) or "_v1_" in i], ids


def test_every_error_is_documented_as_the_one_error_shape(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's {"detail": …}, never sent
    for method, path, op in operations(spec):
        if not path.startswith("/v1/") or "openai" in op["tags"]:
            continue  # the OpenAI-compatible routes answer in OpenAI's error shape, which they document
        responses = op["responses"]
        # Any /v1 call can lack a valid key, pass its rate limit, or outrun the server's time limit.
        assert {"401", "429", "504"} <= set(responses), (method, path)
        assert "Retry-After" in responses["429"]["headers"]
        for status, response in responses.items():
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
    by_id = {op["operationId"]: set(op["responses"]) for _, _, op in operations(spec)}
    assert {"400", "403", "409", "413", "422"} <= by_id["create_collection"]
    assert {"400", "403", "404", "413", "415", "422"} <= by_id["upload_document"]
    assert {"400", "403", "404", "413", "422"} <= by_id["search"] & by_id["answer"]
    assert {"403", "404"} <= by_id["get_document"] & by_id["get_job"] & by_id["get_eval_run"]
    assert "403" not in by_id["get_me"]  # every valid key may read itself


def test_every_success_has_a_schema(spec: dict[str, Any]) -> None:
    for _, path, op in operations(spec):
        for status, response in op["responses"].items():
            if not status.startswith("2") or path == "/metrics":
                continue
            content = response["content"]
            if "application/json" not in content:  # an event stream's success (agent runs): its events' schema
                assert content["text/event-stream"]["schema"]["$ref"].startswith("#/components/schemas/"), path
                continue
            schema = content["application/json"]["schema"]
            assert "$ref" in schema or schema.get("properties") or schema.get("additionalProperties"), (path, status)


def test_streamed_answers_are_described_event_by_event(spec: dict[str, Any]) -> None:
    content = spec["paths"]["/v1/answer"]["post"]["responses"]["200"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/Answer"}
    assert content["text/event-stream"]["schema"]["$ref"] == "#/components/schemas/AnswerEvent"
    schemas = spec["components"]["schemas"]
    mapping = schemas["AnswerEvent"]["discriminator"]["mapping"]
    assert set(mapping) == {"retrieval", "token", "citations", "done", "error"}
    data = {name: schemas[ref.rsplit("/", 1)[1]]["properties"]["data"] for name, ref in mapping.items()}
    assert data["done"] == {"$ref": "#/components/schemas/Answer"}
    assert data["error"] == {"$ref": "#/components/schemas/ErrorBody"}
    # Answers gain `segments` (text and citation marks): optional, so the contract holds with or without them.
    assert "segments" in schemas["Answer"]["properties"] and "segments" not in schemas["Answer"]["required"]


# -- a client generated from it, against the live server -----------------------------------------------------


def strict(spec: dict[str, Any]) -> dict[str, Any]:
    """Return the document with every object that does not say it is open closed to undeclared fields."""
    closed = copy.deepcopy(spec)

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(closed["components"]["schemas"])
    return closed


def generate_models(spec: dict[str, Any], folder: Path) -> ModuleType:
    """Generate pydantic models from an OpenAPI document with datamodel-code-generator; return them imported."""
    source, target = folder / "openapi.json", folder / "archivist_generated.py"
    source.write_text(json.dumps(spec))
    subprocess.run(
        [sys.executable, "-m", "datamodel_code_generator", "--input", str(source), "--output", str(target), *GENERATOR],
        check=True,
        capture_output=True,
    )
    module_spec = importlib.util.spec_from_file_location("archivist_generated", target)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules["archivist_generated"] = module  # where pydantic resolves the models' annotations
    module_spec.loader.exec_module(module)
    return module


class GeneratedClient:
    """Calls operations by id, at the method and path the document gives, and parses each response with the
    generated model the document names for its status (a status it does not list fails)."""

    def __init__(self, spec: dict[str, Any], models: ModuleType, http: httpx.Client) -> None:
        self.models = models
        self.http = http
        self.operations = {op["operationId"]: (method, path, op) for method, path, op in operations(spec)}

    def __call__(self, operation_id: str, path: dict[str, str] | None = None, **request: Any) -> tuple[int, Any]:
        method, template, op = self.operations[operation_id]
        response = self.http.request(method, template.format(**(path or {})), **request)
        documented = op["responses"].get(str(response.status_code))
        assert documented, f"{operation_id} answered {response.status_code}, not in its contract: {response.text}"
        return response.status_code, self.model(documented).model_validate_json(response.content)

    def model(self, response: dict[str, Any]) -> type[BaseModel]:
        ref = response["content"]["application/json"]["schema"]["$ref"]
        model: type[BaseModel] = getattr(self.models, ref.rsplit("/", 1)[1])
        return model


@pytest.fixture(scope="module")
def generated(spec: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    return generate_models(strict(spec), tmp_path_factory.mktemp("generated"))


def test_a_generated_client_reads_every_operation_of_the_live_server(
    live: Live, spec: dict[str, Any], generated: ModuleType
) -> None:
    admin = httpx.Client(base_url=live.base, headers={"Authorization": f"Bearer {live.admin}"}, timeout=60)
    with admin:
        call = GeneratedClient(spec, generated, admin)
        status, found = call("search", json={"query": "how long do cats sleep", "collection": "alpha", "k": 3})
        assert status == 200 and "sixteen hours" in found.hits[0].text
        hit = found.hits[0]

        status, answer = call("answer", json={"question": "How long do cats sleep?", "collection": "alpha"})
        assert status == 200 and not answer.refused and answer.citations[0].document == hit.document_id

        status, listed = call("list_documents", path={"collection": "alpha"}, params={"sort": "newest"})
        assert status == 200 and listed.total == 1 and listed.documents[0].id == hit.document_id
        status, document = call("get_document", path={"collection": "alpha", "document_id": hit.document_id})
        assert status == 200 and document.text[hit.start : hit.end] == hit.text

        status, accepted = call(
            "upload_document",
            path={"collection": "alpha"},
            files={"file": ("dogs.md", b"# Dogs\n\nDogs sleep about twelve hours a day.\n")},
            data={"metadata": json.dumps({"team": "pets"})},
        )
        assert status == 202
        job = wait(call, accepted.job_id)
        assert job.status.value == "succeeded", job
        [made] = job.result["documents"]
        status, uploaded = call("get_document", path={"collection": "alpha", "document_id": made["id"]})
        assert uploaded.metadata == {"team": "pets"} and uploaded.chunks
        status, text_job = call(
            "upload_document", path={"collection": "alpha"}, json={"title": "Birds", "text": "Birds sing at dawn."}
        )
        assert status == 202 and wait(call, text_job.job_id).status.value == "succeeded"
        status, jobs = call("list_jobs", params={"collection": "alpha"})
        assert {j.id for j in jobs.jobs} >= {accepted.job_id, text_job.job_id}
        status, deleted = call("delete_document", path={"collection": "alpha", "document_id": made["id"]})
        assert deleted.deleted == made["id"]

        status, collections = call("list_collections")
        assert "alpha" in [c.name for c in collections.collections]
        status, created = call("create_collection", json={"name": "beta", "description": "second"})
        assert status == 201 and created.name == "beta"
        status, me = call("get_me")
        assert me.can.admin and me.can.write and me.collections is None
        status, runs = call("list_eval_runs")
        assert [r.id for r in runs.runs] == [EVAL_RUN["id"]] and runs.runs[0].metrics == EVAL_RUN["metrics"]
        status, run = call("get_eval_run", path={"run_id": EVAL_RUN["id"][:6]})
        assert run.fingerprint == EVAL_RUN["fingerprint"]  # an open object: a run's own sections come along
        status, usage = call("get_usage")
        assert status == 200 and usage.rows and usage.rows[0].requests > 0

        # Errors arrive as the one documented shape, whatever the status.
        status, missing = call("get_document", path={"collection": "alpha", "document_id": "nope"})
        assert status == 404 and missing.error.code == "not_found" and missing.error.request_id
        status, taken = call("create_collection", json={"name": "beta"})
        assert status == 409 and taken.error.code == "conflict"
        status, invalid = call("search", json={"query": "cats", "k": 0})
        assert status == 422 and invalid.error.code == "validation_error"
        assert invalid.error.details[0].loc == ["body", "k"]
        status, wrong_type = call("upload_document", path={"collection": "alpha"}, content=b"x")
        assert status == 415 and wrong_type.error.code == "unsupported_media_type"

    with httpx.Client(base_url=live.base, headers={"Authorization": "Bearer ak_not-a-key"}) as stranger:
        status, refused = GeneratedClient(spec, generated, stranger)("search", json={"query": "cats"})
        assert status == 401 and refused.error.code == "unauthorized"
    with httpx.Client(base_url=live.base, headers={"Authorization": f"Bearer {live.reader}"}) as reader:
        status, denied = GeneratedClient(spec, generated, reader)(
            "upload_document", path={"collection": "alpha"}, json={"title": "T", "text": "x"}
        )
        assert status == 403 and denied.error.code == "forbidden"


def wait(call: GeneratedClient, job_id: str) -> Any:
    deadline = time.monotonic() + 60
    while True:
        _, job = call("get_job", path={"job_id": job_id})
        if job.status.value not in ("queued", "running") or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def test_a_streamed_answer_parses_event_by_event_as_documented(live: Live, generated: ModuleType) -> None:
    with (
        httpx.Client(base_url=live.base, headers={"Authorization": f"Bearer {live.admin}"}, timeout=60) as http,
        connect_sse(
            http, "POST", "/v1/answer", json={"question": "How long do cats sleep?", "collection": "alpha"}
        ) as source,
    ):
        events = [
            generated.AnswerEvent.model_validate({"event": sse.event, "data": json.loads(sse.data)}).root
            for sse in source.iter_sse()
        ]
    names = [e.event for e in events]
    assert names[0] == "retrieval" and names[-2:] == ["citations", "done"] and set(names[1:-2]) == {"token"}
    assert events[-1].data.answer == events[-2].data.answer and events[0].data.hits
