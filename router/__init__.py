"""Routing: which specialist answers a prompt. ``router.decision.RoutingDecision`` is the
typed result every router returns (design.md section 3)."""
