"""Prometheus metrics, one registry per app (so tests and several apps never share counters).

    oracle_requests_total{api,model,backend,status}        requests by outcome (backend "-": none was
                                                           reached; model "-": none could be read;
                                                           model "(unknown)": a name the registry does
                                                           not know, so clients cannot grow the label set)
    oracle_request_errors_total{api,status,error}          requests answered with an HTTP error, by the
                                                           error's code (model_not_found ...) or type
    oracle_request_seconds{api,model}                      whole request, first byte to last
    oracle_upstream_seconds{backend,model,phase}           phase = first_byte | total
    oracle_tokens_total{model,backend,kind}                kind = prompt | completion
    oracle_upstream_errors_total{backend,model,type}       every failed upstream attempt
    oracle_retries_total{backend}                          retried attempts
    oracle_fallbacks_total{from_model,to_model}            a request served by a fallback
    oracle_circuit_open{backend,upstream_model}            1 while a circuit is open
    oracle_in_flight                                       requests being served
    oracle_backend_requests{backend,state}                 in-process backends: requests in the batch
                                                           (running) and waiting for a place in it
    oracle_router_decisions_total{router,specialist}       routing decisions (router = embedding, gemini, cache, fallback ...)
    oracle_router_classifier_total{classifier,outcome}     classifier calls: outcome = ok or the error's class
    oracle_router_seconds{router}                          time to decide (classification, cache lookup)
    oracle_ab_assignments_total{experiment,arm}            online A/B: requests assigned to each arm
    oracle_store_rows_total{table}                         rows committed to the SQLite file (requests, feedback)
    oracle_store_dropped_total{table,reason}               rows not written: queue_full, closed, shutdown, invalid
    oracle_store_failures_total{error}                     failed write attempts (locked, unwritable), retried
    oracle_store_queue                                     rows waiting to be written
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from gateway.backends.base import Backend
    from gateway.store import RequestRecord, RequestStore

log = logging.getLogger("oracle_council.access")

UNKNOWN_MODEL = "(unknown)"  # the model label of a name the registry does not know
_ROUTER_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, known_models: Iterable[str] | None = None) -> None:
        # The names a model label may take (the registry's models, the router, the oracles);
        # None: any. A name a client sent that is not one of them is counted as UNKNOWN_MODEL.
        self.known_models = frozenset(known_models) if known_models is not None else None
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("oracle_requests", "Requests by API, model, backend and status",
                                ["api", "model", "backend", "status"], registry=r)
        self.request_errors = Counter("oracle_request_errors", "Requests answered with an HTTP error, by error code",
                                      ["api", "status", "error"], registry=r)
        self.request_seconds = Histogram("oracle_request_seconds", "Request latency (whole response)",
                                         ["api", "model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.upstream_seconds = Histogram("oracle_upstream_seconds", "Upstream latency by phase",
                                          ["backend", "model", "phase"], buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("oracle_tokens", "Tokens by model, backend and kind",
                              ["model", "backend", "kind"], registry=r)
        self.upstream_errors = Counter("oracle_upstream_errors", "Failed upstream attempts",
                                       ["backend", "model", "type"], registry=r)
        self.retries = Counter("oracle_retries", "Retried upstream attempts", ["backend"], registry=r)
        self.fallbacks = Counter("oracle_fallbacks", "Requests served by a fallback model",
                                 ["from_model", "to_model"], registry=r)
        self.circuit_open = Gauge("oracle_circuit_open", "1 while the deployment's circuit is open",
                                  ["backend", "upstream_model"], registry=r)
        self.in_flight = Gauge("oracle_in_flight", "Requests being served", registry=r)
        self.backend_requests = Gauge("oracle_backend_requests", "Requests an in-process backend holds, by state",
                                      ["backend", "state"], registry=r)
        self.router_decisions = Counter("oracle_router_decisions", "Routing decisions by router and specialist label",
                                        ["router", "specialist"], registry=r)
        self.router_classifier = Counter("oracle_router_classifier", "Classifier calls by outcome",
                                         ["classifier", "outcome"], registry=r)
        self.router_seconds = Histogram("oracle_router_seconds", "Time to a routing decision", ["router"],
                                        buckets=_ROUTER_BUCKETS, registry=r)
        self.ab_assignments = Counter("oracle_ab_assignments", "Online A/B: requests assigned to each arm",
                                      ["experiment", "arm"], registry=r)
        self.store_rows = Counter("oracle_store_rows", "Rows committed to the SQLite file", ["table"], registry=r)
        self.store_dropped = Counter("oracle_store_dropped", "Rows not written to the SQLite file",
                                     ["table", "reason"], registry=r)
        self.store_failures = Counter("oracle_store_failures", "Failed (retried) writes to the SQLite file",
                                      ["error"], registry=r)
        self.store_queue = Gauge("oracle_store_queue", "Rows waiting to be written to the SQLite file", registry=r)
        self.store: RequestStore | None = None  # set by the app when [state] is on

    def account(self, api: str, model: str, backend: str, status: str, usage: dict | None, start: float,
                request_id: str, record: RequestRecord | None = None, error: str | None = None) -> None:
        """Count a finished request (``start`` is its ``perf_counter``), write its access-log line,
        and queue its row for the request log when there is one. ``error`` is the code (or type)
        of the error the client was answered with, if it was."""
        end = time.perf_counter()
        elapsed = end - start
        if record is not None and self.store is not None:
            self.store.log_request(record.row(request_id, api, model, backend, status, usage, start, end, error))
        label = self.model_label(model)
        self.requests.labels(api, label, backend, status).inc()
        self.request_seconds.labels(api, label).observe(elapsed)
        if error is not None:
            self.request_errors.labels(api, status, error).inc()
        if usage:
            self.count_usage(label, backend, usage)
        if log.isEnabledFor(logging.INFO):
            log.info("%s api=%s model=%s backend=%s status=%s ms=%.1f%s", request_id, api, model, backend, status,
                     elapsed * 1000, "" if error is None else f" error={error}")

    def watch_backend(self, backend: Backend) -> None:
        """Publish the backend's load gauges (read at each scrape)."""
        for state, read in backend.load_gauges().items():
            self.backend_requests.labels(backend.name, state).set_function(read)

    def model_label(self, model: str) -> str:
        """``model`` as a label value: a known name (an Ollama tag such as ``:latest`` dropped),
        ``-``, or ``UNKNOWN_MODEL``."""
        known = self.known_models
        if known is None or model == "-" or model in known:
            return model
        base = model.partition(":")[0]
        return base if base in known else UNKNOWN_MODEL

    def count_usage(self, model: str, backend: str, usage: dict | None) -> None:
        if not isinstance(usage, dict):
            return
        for kind in ("prompt", "completion"):
            n = usage.get(f"{kind}_tokens")
            if isinstance(n, int) and n > 0:
                self.tokens.labels(model, backend, kind).inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
