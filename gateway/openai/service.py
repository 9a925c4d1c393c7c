"""Serving logic of the OpenAI API: decide, dispatch, shape the answer, account for it."""

from __future__ import annotations

import time
from typing import Any, Literal

import orjson
from starlette.responses import Response, StreamingResponse

from gateway import toolcalls
from gateway.ab import Tagger
from gateway.accounting import failed
from gateway.dispatch import Dispatcher
from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.openai.protocol import ChatCompletionRequest, CompletionRequest, FeedbackRequest, validate
from gateway.routing import ModelResolver
from gateway.sse import sse_frames
from gateway.store import FeedbackDisabled, RequestStore, UnknownRequest
from gateway.yaze import YazeContext
from router.decision import RoutingDecision

Api = Literal["chat", "completion"]
FEEDBACK_TIMEOUT = 10.0  # seconds POST /v1/feedback waits for the request log to take it
_NO_TAGS = Tagger(None, log=False)


class OpenAIService:
    def __init__(self, resolver: ModelResolver, dispatcher: Dispatcher, metrics: Metrics, *,
                 context: YazeContext | None = None, tagger: Tagger | None = None,
                 store: RequestStore | None = None) -> None:
        self.resolver = resolver
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.context = context
        self.tag = tagger or _NO_TAGS
        self.store = store

    async def chat_completions(self, raw: Any, request_id: str, http: Any = None) -> Response:
        req = validate(ChatCompletionRequest, raw)
        return await self._serve("chat", raw, bool(req.stream), request_id, http)

    async def completions(self, raw: Any, request_id: str, http: Any = None) -> Response:
        req = validate(CompletionRequest, raw)
        return await self._serve("completion", raw, bool(req.stream), request_id, http)

    async def feedback(self, raw: Any) -> dict[str, Any]:
        """``POST /v1/feedback``: a score and/or thumbs (and a comment) for an earlier request."""
        req: FeedbackRequest = validate(FeedbackRequest, raw)  # type: ignore[assignment]
        if self.store is None:
            raise FeedbackDisabled("feedback needs the request log, which is off in this gateway's config "
                                   "([state] enabled = false)")
        fid = await self.store.add_feedback(req.request_id, score=req.score, thumbs=req.thumbs,
                                            comment=req.comment, timeout=FEEDBACK_TIMEOUT)
        if fid is None:
            raise UnknownRequest(f"no request with id {req.request_id!r} in the request log (the id is the "
                                 "x-request-id header of the response; a stream is logged when it ends)",
                                 param="request_id")
        return {"id": fid, "object": "feedback", "request_id": req.request_id}

    async def route(self, raw: Any) -> RoutingDecision:
        """The decision alone (``POST /v1/route``): nothing is generated."""
        req = validate(ChatCompletionRequest, raw)
        return await self.resolver.decide(req.model, raw)

    async def _serve(self, api: Api, raw: dict[str, Any], stream: bool, request_id: str, http: Any) -> Response:
        start = time.perf_counter()
        arm, record = self.tag(raw["model"], raw, http)
        self.metrics.in_flight.inc()
        decision: RoutingDecision | None = None
        try:
            if arm == "treatment":
                decision = self.tag.experiment.decision  # type: ignore[union-attr]
            else:
                decision = await self.resolver.decide(raw["model"], raw)
            if record is not None:
                record.router, record.specialist = decision.router, decision.specialist
            if self.context is not None and api == "chat":
                raw = await self.context.enrich(decision.model, raw)
            body = raw
            client_wants_usage = False
            if stream:  # always ask for usage (for metrics); hide it again if the client did not
                opts = raw.get("stream_options") or {}
                client_wants_usage = bool(opts.get("include_usage"))
                body = {**raw, "stream_options": {**opts, "include_usage": True}}
            served = await self.dispatcher.dispatch(decision.model, body, op=api, stream=stream)
            if record is not None:
                record.first_byte = time.perf_counter()
        except GatewayError as exc:
            failed(self.metrics, self.tag, exc, api=api, arm=arm, start=start, request_id=request_id, record=record,
                   model=decision.model if decision else str(raw.get("model", ""))[:64])
            raise
        except BaseException:
            self.metrics.in_flight.dec()
            raise
        headers = {**decision.headers(), **served.headers(), **self.tag.headers(arm)}
        name = served.model.name
        tools = toolcalls.requested_tools(raw) if api == "chat" else None

        if not stream:
            response = served.response or {}
            response["model"] = name
            if tools:
                toolcalls.rewrite_completion(response, tools)
            self.metrics.in_flight.dec()
            self.metrics.account(api, name, served.backend, "ok", response.get("usage"), start, request_id,
                                 record)
            return Response(orjson.dumps(response), media_type="application/json", headers=headers)

        calls = toolcalls.StreamRewriter(tools) if tools else None

        def rewrite(chunk: dict) -> dict | None:
            if not client_wants_usage and "usage" in chunk:
                if not chunk.get("choices"):
                    return None
                chunk = {k: v for k, v in chunk.items() if k != "usage"}
            if calls is not None and calls(chunk) is None:
                return None
            chunk["model"] = name
            return chunk

        def on_end(status: str, usage: dict | None) -> None:
            self.metrics.in_flight.dec()
            self.metrics.account(api, name, served.backend, status, usage, start, request_id, record)

        assert served.first is not None and served.rest is not None
        return StreamingResponse(sse_frames(served.first, served.rest, rewrite=rewrite, on_end=on_end),
                                 media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})


