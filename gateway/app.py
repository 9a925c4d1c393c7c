"""The ASGI app: ``create_app(config)`` wires routes and error handling; the lifespan builds
the backends and services, and closes them on shutdown. Nothing happens at import time."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway import __version__, accounting, openapi
from gateway.ab import Experiment, Tagger
from gateway.backends import create_backend
from gateway.backends.base import Backend
from gateway.config import ROUTER_MODEL, GatewayConfig, resolve_secret
from gateway.dispatch import Dispatcher
from gateway.errors import GatewayError, InvalidRequest, ModelNotFound
from gateway.metrics import Metrics
from gateway.middleware import GatewayMiddleware, error_body
from gateway.ollama import routes as ollama_routes
from gateway.ollama.routes import router as ollama_router
from gateway.ollama.service import OllamaService
from gateway.openai import routes as openai_routes
from gateway.openai.routes import router as openai_router
from gateway.openai.service import OpenAIService
from gateway.routing import ModelResolver
from gateway.store import RequestStore
from gateway.yaze import YazeContext

log = logging.getLogger("oracle_council")

HEALTH_TIMEOUT = 5.0


def create_app(config: GatewayConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backends: dict[str, Backend] = {}
        resolver: ModelResolver | None = None
        store: RequestStore | None = None
        context = YazeContext(config.yaze, config) if config.yaze else None
        used = {d.backend for m in config.deployed_models for d in m.all_deployments()}
        try:
            for spec in config.backends:
                if spec.name in used:
                    backends[spec.name] = create_backend(spec, config)
            for b in backends.values():
                log.info("starting backend %s (%s)", b.name, b.kind)
                await b.start()
            if context is not None:
                await context.start()  # fetches YAZE's symbols in the background
            metrics = Metrics(known_models=[*(m.name for m in config.models), ROUTER_MODEL,
                                            *(o.name for o in config.oracles)])
            for b in backends.values():
                metrics.watch_backend(b)
            db = config.state_db_path()
            if db is not None:
                s = config.state
                store = RequestStore(db, queue_size=s.queue_size, batch_size=s.batch_size,
                                     flush_interval=s.flush_interval, busy_timeout=s.busy_timeout,
                                     shutdown_timeout=s.shutdown_timeout, metrics=metrics)
                store.start()  # opens the file on its own thread; a bad path is logged, never fatal
                metrics.store = store
                log.info("request log: %s", db)
            experiment = Experiment(config.ab, config, metrics=metrics) if config.ab.enabled else None
            if experiment is not None:
                log.info("A/B experiment %s: %.1f%% of %s traffic to %s (sticky by %s)", experiment.name,
                         experiment.share * 100, experiment.control, experiment.treatment, config.ab.sticky_by)
            tagger = Tagger(experiment, log=store is not None, id_salt=config.state.id_salt)
            resolver = ModelResolver(config, metrics=metrics)
            resolver.start()  # the router's classifiers load on a worker thread, off the event loop
            dispatcher = Dispatcher(config, backends, metrics)
            app.state.config = config
            app.state.backends = backends
            app.state.metrics = metrics
            app.state.resolver = resolver
            app.state.dispatcher = dispatcher
            app.state.yaze = context
            app.state.store = store
            app.state.experiment = experiment
            app.state.started = int(time.time())
            app.state.openai = OpenAIService(resolver, dispatcher, metrics, context=context, tagger=tagger,
                                             store=store)
            app.state.ollama = OllamaService(resolver, dispatcher, metrics, config, started=app.state.started,
                                             context=context, tagger=tagger)
            log.info("oracle-council %s ready: %d models on %d backends (%s)", __version__,
                     len(config.deployed_models), len(backends), config.source)
            yield
        finally:
            if resolver is not None:
                resolver.close()
            await asyncio.gather(*(b.aclose() for b in backends.values()), *([context.aclose()] if context else []),
                                 *([asyncio.to_thread(store.close)] if store else []), return_exceptions=True)

    app = FastAPI(title="oracle-council", version=__version__, lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)
    app.include_router(openai_router)
    app.include_router(ollama_router)
    _add_ops_routes(app)
    _add_error_handlers(app)
    openapi.install(app)
    keys = [k for k in (resolve_secret(v) for v in config.server.api_keys) if k]
    app.add_middleware(GatewayMiddleware, api_keys=keys, max_body=config.server.max_request_bytes,
                       serving=serving_paths())
    if config.server.cors_origins:  # outermost, so preflight requests need no API key
        from starlette.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=config.server.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["x-request-id", "x-oracle-model", "x-oracle-router",
                                                                 "x-oracle-confidence", "x-oracle-fallback",
                                                                 "x-oracle-ab-arm", "x-oracle-ab-experiment"])
    return app


# The serving endpoints and the ``api`` label of their metrics and request-log rows.
SERVING_APIS = {openai_routes.chat_completions: "chat", openai_routes.completions: "completion",
                ollama_routes.chat: "ollama_chat", ollama_routes.generate: "ollama_generate"}


def serving_paths() -> dict[str, str]:
    """Every path of a serving endpoint (aliases included), with its ``api`` label: the requests
    the middleware accounts for when they are answered with an error before being served. (The
    routers are included without a prefix, so their paths are the app's.)"""
    return {route.path: SERVING_APIS[route.endpoint] for router in (openai_router, ollama_router)
            for route in router.routes if getattr(route, "endpoint", None) in SERVING_APIS}


def _add_ops_routes(app: FastAPI) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        """Ready when the default model has a healthy deployment; every backend's state is listed,
        and the router's (its embedding classifier may still be loading: requests for
        ``oracle-council`` then wait for it, while every model named directly is served)."""
        backends: dict[str, Backend] = request.app.state.backends

        async def probe(b: Backend) -> dict:
            try:
                async with asyncio.timeout(HEALTH_TIMEOUT):
                    return (await b.health()).as_dict()
            except TimeoutError:
                return {"ok": False, "detail": f"health check took longer than {HEALTH_TIMEOUT:g} s", "models": []}

        results = dict(zip(backends, await asyncio.gather(*(probe(b) for b in backends.values()))))
        config: GatewayConfig = request.app.state.config
        default = config.default_model_name()
        spec = config.model(default) if default else None
        ready = bool(spec) and any(results.get(d.backend, {}).get("ok") for d in spec.all_deployments())
        body = {"status": "ready" if ready else "not_ready", "default_model": default, "backends": results,
                "router": request.app.state.resolver.status()}
        return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json")

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        m: Metrics = request.app.state.metrics
        return Response(m.render(), media_type=m.content_type)


def _add_error_handlers(app: FastAPI) -> None:
    def render(request: Request, exc: GatewayError) -> Response:
        accounting.note_error(request.scope, exc)  # for the accounting of a request refused before serving
        headers = {"retry-after": "1"} if exc.status_code in (429, 503) else {}
        headers.update(getattr(exc, "extra_headers", None) or {})  # e.g. the A/B arm of a failed request
        return Response(error_body(request.url.path, exc), status_code=exc.status_code,
                        media_type="application/json", headers=headers)

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        return render(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return render(request, InvalidRequest(f"{param}: {first['msg']}" if param else first["msg"], param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            err: GatewayError = ModelNotFound(f"no route {request.method} {request.url.path}", code="not_found")
        else:
            err = InvalidRequest(f"{request.method} {request.url.path}: {exc.detail}", code=str(exc.status_code))
            err.status_code = exc.status_code
        return render(request, err)
