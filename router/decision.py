"""The routing decision: the stable JSON contract of design.md section 3."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

RouterName = Literal["gemini", "embedding", "cache", "direct", "fallback"]


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    model: str
    specialist: str
    oracle: str
    task_type: str | None = None
    cross_domain: bool = False
    confidence: float = 1.0
    router: RouterName = "direct"
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def headers(self) -> dict[str, str]:
        """The ``x-oracle-*`` response headers that carry this decision."""
        return {
            "x-oracle-model": self.model,
            "x-oracle-specialist": self.specialist,
            "x-oracle-oracle": self.oracle,
            "x-oracle-router": self.router,
            "x-oracle-confidence": f"{self.confidence:.3f}",
        }
