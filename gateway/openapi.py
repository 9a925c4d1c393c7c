"""The gateway's OpenAPI document, with the request bodies the routes really accept.

The routes read raw JSON (so a bad body gets the API's own error shape, not FastAPI's), which
leaves FastAPI's generated document without request bodies. This module adds them from the same
pydantic wire models the services validate with, and lists the served model names in each
``model`` field (any other name is still allowed and answered with 404). Clients and schemathesis
read the result at ``/openapi.json``.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}
_OLLAMA_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def _bodies() -> dict[str, tuple[Any, dict]]:
    from gateway.ollama import protocol as ollama
    from gateway.openai import protocol as openai

    return {
        "/v1/chat/completions": (openai.ChatCompletionRequest, _OPENAI_ERROR),
        "/v1/completions": (openai.CompletionRequest, _OPENAI_ERROR),
        "/v1/route": (openai.ChatCompletionRequest, _OPENAI_ERROR),
        "/api/chat": (ollama.ChatRequest, _OLLAMA_ERROR),
        "/api/generate": (ollama.GenerateRequest, _OLLAMA_ERROR),
        "/api/show": (ollama.ShowRequest, _OLLAMA_ERROR),
    }


def install(app: FastAPI) -> None:
    """Replace ``app.openapi`` with one that documents the request bodies (built once, cached;
    the model names come from the running app's resolver)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            resolver = getattr(app.state, "resolver", None)
            app.openapi_schema = build(app, resolver.model_ids() if resolver is not None else [])
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build(app: FastAPI, model_names: list[str]) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for path, (model, error) in _bodies().items():
        op = doc.get("paths", {}).get(path, {}).get("post")
        if op is None:
            continue
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            components.setdefault(name, sub)
        if model_names and "model" in schema.get("properties", {}):
            schema["properties"]["model"] = {
                "anyOf": [{"enum": list(model_names)}, copy.deepcopy(schema["properties"]["model"])],
                "description": "a served model (GET /v1/models lists them); another name gets 404",
            }
        components[model.__name__] = schema
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
        responses = op.setdefault("responses", {})
        for status, what in (("400", "invalid request"), ("404", "unknown model"), ("413", "body too large"),
                             ("502", "upstream failed"), ("503", "no deployment available"),
                             ("504", "upstream timed out")):
            responses.setdefault(status, {"description": what,
                                          "content": {"application/json": {"schema": error}}})
        responses.pop("422", None)
    return doc
