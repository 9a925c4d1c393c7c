"""From the model a client asked for to the model that answers, as a ``RoutingDecision``.

- a deployed model named directly is served as is, and the router is never asked
  (``router = "direct"``);
- a model of the registry that is not deployed follows its ``fallbacks``, then master-sword
  (``router = "fallback"``), and the decision says so;
- ``oracle-council`` asks for automatic routing: with ``[router] policy = "direct"`` it goes to
  the default model; otherwise the router's cascade (router/cascade.py) classifies the prompt
  and its label is mapped onto a deployed model: the specialist itself, else its first deployed
  ``fallbacks`` entry, else master-sword, else the default model (the reason says which);
  out-of-scope prompts go to master-sword, else the default model;
- an oracle name (``oracle-din``) is classified the same way among that oracle's specialists
  (its ``default_model`` joins the chain before master-sword); with policy ``direct`` it goes to
  the oracle's default model, else its first deployed specialist, else the default model.

The router never fails a request: when no classifier can decide, or one raises something
unexpected, the default model answers with ``router = "fallback"`` and the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from gateway.config import MASTER_SWORD, ROUTER_MODEL, GatewayConfig, resolve_secret
from gateway.errors import ModelNotFound
from gateway.metrics import Metrics
from router.cascade import Cascade, CascadeOptions
from router.decision import RoutingDecision
from router.errors import NoDecision
from router.text import routed_text

log = logging.getLogger("oracle_council.router")


def cascade_options(config: GatewayConfig) -> CascadeOptions:
    """The router's own options from the ``[router]`` table (router/ never imports gateway/)."""
    r = config.router
    return CascadeOptions(
        policy=r.policy,  # type: ignore[arg-type]
        classifier=config.resolve_path(r.classifier) if r.classifier else None,
        embedding_model=r.embedding_model, embedding_threads=r.embedding_threads,
        gemini_api_key=resolve_secret(r.gemini_api_key), gemini_model=r.gemini_model,
        gemini_timeout=r.gemini_timeout, gemini_retries=r.gemini_retries, gemini_base_url=r.gemini_base_url,
        confidence_threshold=r.confidence_threshold, cross_domain_threshold=r.cross_domain_threshold,
        cache_size=r.cache_size, cache_ttl=r.cache_ttl)


class ModelResolver:
    def __init__(self, config: GatewayConfig, *, cascade: Cascade | None = None, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self._deployed = {m.name: m for m in config.deployed_models}
        self._direct = {name: RoutingDecision(model=name, specialist=name, oracle=m.oracle, router="direct",
                                              reason="model named directly")
                        for name, m in self._deployed.items()}
        if cascade is None and config.router.policy != "direct":
            cascade = Cascade(cascade_options(config), on_event=self._count_classifier)
        self.cascade = cascade

    def status(self) -> dict[str, Any]:
        """The router's state for ``/readyz``."""
        if self.cascade is None:
            return {"policy": "direct"}
        return self.cascade.status()

    def start(self) -> None:
        """Begin loading the classifiers in the background (called by the app's lifespan)."""
        if self.cascade is not None:
            self.cascade.start()

    def close(self) -> None:
        if self.cascade is not None:
            self.cascade.close()

    def model_ids(self) -> list[str]:
        """What ``/v1/models`` lists: deployed models, the router, the oracles."""
        return [*self._deployed, ROUTER_MODEL, *(o.name for o in self.config.oracles)]

    async def decide(self, requested: str, body: dict[str, Any]) -> RoutingDecision:
        direct = self._direct.get(requested)
        if direct is not None:
            return direct
        if requested == ROUTER_MODEL:
            if self.cascade is None:
                return self._to_default(f"policy {self.config.router.policy!r}: no classifier, default model")
            return await self._classify(body, within=None)
        oracle = self.config.oracle(requested)
        if oracle is not None:
            if self.cascade is not None:
                return await self._classify(body, within=oracle.name)
            target = oracle.default_model or next(
                (m.name for m in self.config.deployed_models if m.oracle == oracle.name), None)
            if target is None:
                return self._to_default(f"{oracle.name} has no deployed specialist")
            return RoutingDecision(model=target, specialist=target, oracle=oracle.name, router="direct",
                                   reason=f"{oracle.name}: its default specialist")
        spec = self.config.model(requested)
        if spec is not None:  # in the registry but not deployed
            for name in [*spec.fallbacks, MASTER_SWORD]:
                if name in self._deployed:
                    return RoutingDecision(model=name, specialist=requested, oracle=spec.oracle, router="fallback",
                                           reason=f"{requested} is not deployed; serving {name}")
            raise ModelNotFound(f"model {requested!r} is not deployed and has no deployed fallback", param="model")
        raise ModelNotFound(f"model {requested!r} does not exist; GET /v1/models lists the models", param="model")

    # -- automatic routing -----------------------------------------------------------------------
    async def _classify(self, body: dict[str, Any], *, within: str | None) -> RoutingDecision:
        assert self.cascade is not None
        start = time.perf_counter()
        text = routed_text(body, self.cascade.options.text)
        try:
            decision = self.map_to_deployed(await self.cascade.classify(text, within=within), within=within)
        except NoDecision as exc:
            decision = self._to_default(f"router: {exc.message}", router="fallback")
        except Exception:  # the router must never fail a request: log it, serve the default model
            log.exception("the router failed unexpectedly; serving the default model")
            decision = self._to_default("router error (see the gateway log)", router="fallback")
        if self.metrics is not None:
            self.metrics.router_decisions.labels(decision.router, decision.specialist).inc()
            self.metrics.router_seconds.labels(decision.router).observe(time.perf_counter() - start)
        return decision

    def map_to_deployed(self, decision: RoutingDecision, *, within: str | None = None) -> RoutingDecision:
        """The classifier's label onto a deployed model: itself, its fallbacks, master-sword, the default."""
        label_model = decision.model
        if label_model in self._deployed:
            return decision
        spec = self.config.model(label_model)
        chain = list(spec.fallbacks) if spec is not None else []
        oracle = self.config.oracle(within) if within else None
        if oracle is not None and oracle.default_model:
            chain.append(oracle.default_model)
        chain.append(MASTER_SWORD)
        for name in chain:
            if name in self._deployed:
                return dataclasses.replace(decision, model=name,
                                           reason=f"{decision.reason}; {label_model} is not deployed, serving {name}")
        default = self._to_default("")
        return dataclasses.replace(decision, model=default.model,
                                   reason=f"{decision.reason}; {label_model} is not deployed, serving the default "
                                          f"model {default.model}")

    def _count_classifier(self, classifier: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.router_classifier.labels(classifier, outcome).inc()

    def _to_default(self, reason: str, router: str = "direct") -> RoutingDecision:
        name = self.config.default_model_name()
        if name is None:
            raise ModelNotFound("no model is deployed; add a [[models]] table with a backend", param="model")
        return RoutingDecision(model=name, specialist=name, oracle=self._deployed[name].oracle,
                               router=router,  # type: ignore[arg-type]
                               reason=reason)
