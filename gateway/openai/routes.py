"""Routes of the OpenAI API: parse, hand to the service, nothing else."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway import accounting
from gateway.errors import InvalidRequest, ModelNotFound
from gateway.openai.protocol import FeedbackRequest

router = APIRouter()


async def read_json(request: Request) -> object:
    body = await request.body()
    if not body:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON (or not UTF-8): {exc}") from None
    accounting.note_body(request.scope, parsed)  # the model name, should the request be refused
    return parsed


# Without /v1 too: clients that append /chat/completions to a bare base URL, and older YAZE
# builds that append /v1/chat/completions to an OPENAI_BASE_URL which already ends in /v1.
@router.post("/v1/chat/completions")
@router.post("/chat/completions", include_in_schema=False)
@router.post("/v1/v1/chat/completions", include_in_schema=False)
async def chat_completions(request: Request) -> Response:
    return await request.app.state.openai.chat_completions(await read_json(request), request.state.request_id,
                                                           request)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await request.app.state.openai.completions(await read_json(request), request.state.request_id, request)


@router.post("/v1/route")
async def route(request: Request) -> Response:
    decision = await request.app.state.openai.route(await read_json(request))
    return Response(orjson.dumps(decision.as_dict()), media_type="application/json")


_ERROR = {"application/json": {"schema": {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]},
        "code": {"type": ["string", "null"]}}}}}}}
_FEEDBACK_DOC = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": FeedbackRequest.model_json_schema()}}},
    "responses": {"200": {"description": "stored: {id, object, request_id}"},
                  "400": {"description": "invalid body", "content": _ERROR},
                  "404": {"description": "no request with this id in the request log", "content": _ERROR},
                  "501": {"description": "the request log is off ([state] enabled = false)", "content": _ERROR},
                  "503": {"description": "the request log could not take it in time", "content": _ERROR}},
}


@router.post("/v1/feedback", openapi_extra=_FEEDBACK_DOC)
async def feedback(request: Request) -> Response:
    return Response(orjson.dumps(await request.app.state.openai.feedback(await read_json(request))),
                    media_type="application/json")


@router.get("/v1/models")
@router.get("/models", include_in_schema=False)
@router.get("/v1/v1/models", include_in_schema=False)
async def list_models(request: Request) -> Response:
    created = request.app.state.started
    data = [{"id": name, "object": "model", "created": created, "owned_by": "oracle-council"}
            for name in request.app.state.resolver.model_ids()]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> Response:
    if model_id not in request.app.state.resolver.model_ids():
        raise ModelNotFound(f"model {model_id!r} does not exist; GET /v1/models lists the models", param="model")
    return Response(orjson.dumps({"id": model_id, "object": "model", "created": request.app.state.started,
                                  "owned_by": "oracle-council"}), media_type="application/json")

