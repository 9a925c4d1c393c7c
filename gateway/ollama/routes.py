"""Routes of the Ollama API: parse, hand to the service, nothing else. Errors under ``/api/``
are written as ``{"error": "..."}`` by the app's handlers."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import PlainTextResponse, Response

from gateway.openai.routes import read_json

router = APIRouter()


def _json(obj: object) -> Response:
    return Response(orjson.dumps(obj), media_type="application/json")


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    return await request.app.state.ollama.chat(await read_json(request), request.state.request_id, request)


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    return await request.app.state.ollama.generate(await read_json(request), request.state.request_id, request)


@router.get("/api/tags")
async def tags(request: Request) -> Response:
    return _json(request.app.state.ollama.tags())


@router.post("/api/show")
async def show(request: Request) -> Response:
    return _json(request.app.state.ollama.show(await read_json(request)))


@router.get("/api/ps")
async def ps(request: Request) -> Response:
    return _json(request.app.state.ollama.ps())


@router.get("/api/version")
async def version(request: Request) -> Response:
    return _json(request.app.state.ollama.version())


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def root() -> Response:
    return PlainTextResponse("Ollama is running")  # what Ollama answers; some clients probe it
