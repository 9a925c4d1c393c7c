"""From the model a client asked for to the model that answers, as a ``RoutingDecision``.

- a deployed model named directly is served as is (``router = "direct"``);
- a model of the registry that is not deployed follows its ``fallbacks``, then master-sword
  (``router = "fallback"``), and the decision says so;
- ``oracle-council`` asks for automatic routing: until a classifier is configured it goes to the
  router's default model (``router = "direct"``, and the reason says why);
- an oracle name (``oracle-din``) goes to that oracle's default model, else its first deployed
  specialist, else the default model.
"""

from __future__ import annotations

from typing import Any

from gateway.config import MASTER_SWORD, ROUTER_MODEL, GatewayConfig
from gateway.errors import ModelNotFound
from router.decision import RoutingDecision


class ModelResolver:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._deployed = {m.name: m for m in config.deployed_models}
        self._direct = {name: RoutingDecision(model=name, specialist=name, oracle=m.oracle, router="direct",
                                              reason="model named directly")
                        for name, m in self._deployed.items()}

    def model_ids(self) -> list[str]:
        """What ``/v1/models`` lists: deployed models, the router, the oracles."""
        return [*self._deployed, ROUTER_MODEL, *(o.name for o in self.config.oracles)]

    async def decide(self, requested: str, body: dict[str, Any]) -> RoutingDecision:
        direct = self._direct.get(requested)
        if direct is not None:
            return direct
        if requested == ROUTER_MODEL:
            return self._to_default(f"policy {self.config.router.policy!r}: no classifier, default model")
        oracle = self.config.oracle(requested)
        if oracle is not None:
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

    def _to_default(self, reason: str) -> RoutingDecision:
        name = self.config.default_model_name()
        if name is None:
            raise ModelNotFound("no model is deployed; add a [[models]] table with a backend", param="model")
        return RoutingDecision(model=name, specialist=name, oracle=self._deployed[name].oracle, router="direct",
                               reason=reason)
