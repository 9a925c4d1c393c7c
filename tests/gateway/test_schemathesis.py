"""Property-based bad input: schemathesis generates requests from the gateway's own OpenAPI
document (valid and invalid bodies, odd types, huge numbers, unicode) and sends them to the real
app over a socket. Whatever it sends, the gateway must answer without a 5xx of its own making and
with an error in the API's own shape. The upstream is the loopback server (echo), so every
accepted request really goes through dispatch and back."""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.serving import serve

# A bounded example count per operation: enough to hit every validator, fast enough for make test.
EXAMPLES = 50


def _config(base_url: str) -> str:
    return f"""
[router]
policy = "direct"

[[backends]]
name = "up"
kind = "openai"
base_url = "{base_url}"
retries = 0
timeouts = {{ connect = 1, read = 5, total = 10 }}

[[models]]
name = "euclid-asm"
oracle = "oracle-din"
backend = "up"
upstream_model = "echo"

[[models]]
name = "master-sword"
oracle = "system"
backend = "up"
upstream_model = "echo"
"""


@pytest.fixture(scope="module")
def gateway():
    from tests.conftest import ThreadedUpstream

    with ThreadedUpstream() as up, serve(_config(up.base_url)) as gw:
        yield gw


def test_openapi_documents_the_request_bodies(gateway):
    doc = httpx.get(gateway.url + "/openapi.json").json()
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    ref = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert {"messages", "model"} <= set(body["required"])
    assert "euclid-asm" in body["properties"]["model"]["anyOf"][0]["enum"]
    assert "requestBody" in doc["paths"]["/api/chat"]["post"]
    assert "requestBody" in doc["paths"]["/api/generate"]["post"]


def _operations(gateway):
    schema = schemathesis.openapi.from_url(gateway.url + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def _error_shape_ok(path: str, response) -> str | None:
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        return f"non-JSON error body: {response.text[:200]!r}"
    if path.startswith("/api/"):
        return None if isinstance(body.get("error"), str) else f"not an Ollama error: {body}"
    err = body.get("error")
    if not (isinstance(err, dict) and isinstance(err.get("message"), str) and isinstance(err.get("type"), str)):
        return f"not an OpenAI error: {body}"
    return None


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
                         ids=["valid-bodies", "invalid-bodies"])
def test_no_server_errors_and_errors_in_the_apis_shape(gateway, mode):
    operations = _operations(gateway)
    paths = {op.path for op in operations}
    assert {"/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate"} <= paths
    failures: list[str] = []
    seen: dict[int, int] = {}
    for op in operations:
        if mode is schemathesis.GenerationMode.NEGATIVE and op.method.upper() == "GET":
            continue  # nothing to get wrong in a body-less GET without parameters
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            # as generated (mostly unknown model names), then with a served model so the rest of
            # the body gets past the model lookup and into validation, routing and dispatch
            variants = [case.body]
            if isinstance(case.body, dict) and "model" in case.body:
                variants.append({**case.body, "model": "euclid-asm"})
            for body in variants:
                case.body = body
                response = case.call(base_url=gateway.url, timeout=15)
                seen[response.status_code] = seen.get(response.status_code, 0) + 1
                if response.status_code >= 500:
                    failures.append(f"{op.method.upper()} {op.path} -> {response.status_code}: "
                                    f"{response.text[:300]}\n  body: {str(body)[:300]}")
                elif problem := _error_shape_ok(op.path, response):
                    failures.append(f"{op.method.upper()} {op.path} -> {response.status_code}: {problem}")

        check()
    assert not failures, "\n".join(failures[:10])
    if mode is schemathesis.GenerationMode.POSITIVE:  # valid bodies for served models got answers
        assert seen.get(200, 0) > 100, seen
    else:  # invalid bodies were refused as the client's fault, whatever the model name
        assert seen.get(400, 0) > 100, seen
