"""Accounting for the requests to the serving endpoints (``/v1/chat/completions``,
``/v1/completions``, ``/api/chat``, ``/api/generate`` and their aliases): each one gets exactly
one access-log line, one increment of ``oracle_requests_total`` (and of
``oracle_request_errors_total`` when the answer is an HTTP error) and one row of the request log,
all through ``Metrics.account``.

Two paths lead there:

- a request that a service takes on (its ``_serve``) is accounted for by the service: when it
  is answered, when its stream ends, or, when it fails before anything was sent, by ``failed``
  (shared by both APIs; it also puts the request's A/B headers on the error response);
- a request answered with an error before that — a body that is not JSON, a schema error, an
  unknown model on the Ollama API, a missing or wrong API key, a body over the size limit, a
  wrong method, an unexpected exception — is accounted for by ``GatewayMiddleware`` as the
  error's status goes out (``settle``): status ``error_<http status>``, backend ``-``, the model
  as the client sent it when the body could be read (``-`` and NULL otherwise), the error's
  code or type.

The middleware follows each request to a serving path with a ``Tracked`` in the ASGI scope's
state: ``read_json`` hangs the parsed body on it, the app's error handlers the error they
rendered, and the middleware the status it sent. Nothing here does I/O: a row goes through the
request log's queue, as any other.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError
from gateway.store import RequestRecord

if TYPE_CHECKING:
    from gateway.ab import Arm, Tagger
    from gateway.metrics import Metrics

log = logging.getLogger("oracle_council")

TRACKED = "oracle_council_tracked"  # the key of a request's ``Tracked`` in the scope's state
MAX_LOGGED_MODEL = 512  # characters of an unvalidated model name kept in the request log (the validated limit)
MAX_LABEL_MODEL = 64  # ... and in the metrics' model label, as for a request that failed in a service


class Tracked:
    """A request to a serving endpoint as the middleware follows it."""

    __slots__ = ("api", "body", "error", "start", "status")

    def __init__(self, api: str, start: float) -> None:
        self.api = api
        self.start = start  # perf_counter when the middleware received it
        self.body: Any = None  # the parsed JSON body, once read
        self.status: int | None = None  # the status sent, once sent
        self.error: GatewayError | None = None  # the error rendered, if one was


def _tracked(scope: dict) -> Tracked | None:
    state = scope.get("state")
    return state.get(TRACKED) if state else None


def note_body(scope: dict, body: Any) -> None:
    """The request's body parsed: where the model name of a rejected request is read from."""
    t = _tracked(scope)
    if t is not None:
        t.body = body


def note_error(scope: dict, exc: GatewayError) -> None:
    """The error the request is answered with (called as it is rendered)."""
    t = _tracked(scope)
    if t is not None:
        t.error = exc


def error_code(exc: GatewayError) -> str:
    """What the request log and ``oracle_request_errors_total`` call an error: its code
    (``model_not_found``, ``request_too_large`` ...), else its type (``invalid_request_error`` ...)."""
    return exc.code or exc.error_type


def requested_model(body: Any) -> str | None:
    """The model a body asks for, as the client sent it, if it is a non-empty string."""
    model = body.get("model") if isinstance(body, dict) else None
    return model[:MAX_LOGGED_MODEL] if isinstance(model, str) and model else None


def failed(metrics: Metrics, tag: Tagger, exc: GatewayError, *, api: str, model: str, arm: Arm | None,
           start: float, request_id: str, record: RequestRecord | None) -> None:
    """A request a service took on failed before anything was sent to the client: it leaves
    ``oracle_in_flight``, is counted and logged with its error, and the error response will
    carry its A/B arm's headers. The caller re-raises ``exc``."""
    metrics.in_flight.dec()
    metrics.account(api, model, "-", f"error_{exc.status_code}", None, start, request_id, record, error_code(exc))
    exc.accounted = True
    if arm is not None:
        exc.extra_headers = tag.headers(arm)  # type: ignore[attr-defined]


def settle(scope: dict, t: Tracked, *, crashed: bool = False) -> None:
    """Called by the middleware as a tracked request's error status (``t.status``) is about to
    be sent: account for the request unless a service already did. ``crashed``: the app raised
    an unexpected exception, which the server answers with a 500."""
    exc = t.error
    if exc is not None and exc.accounted:
        return
    metrics: Metrics | None = getattr(getattr(scope.get("app"), "state", None), "metrics", None)
    if metrics is None:
        return  # the app's lifespan has not started it
    model = requested_model(t.body)
    if exc is not None:
        error = error_code(exc)
    else:
        error = "server_error" if crashed else str(t.status)
    try:
        metrics.account(t.api, model[:MAX_LABEL_MODEL] if model else "-", "-", f"error_{t.status}", None, t.start,
                        scope["state"]["request_id"], RequestRecord(model) if metrics.store is not None else None,
                        error)
    except Exception:  # accounting must never turn into a failure of its own
        log.exception("could not account for request %s", scope["state"].get("request_id"))
