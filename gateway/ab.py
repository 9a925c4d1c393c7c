"""Online A/B: which arm a request for the control model (``oracle-council``) is served by.

The assignment is a pure function of the experiment's salt and the caller's identity:
``sha256(salt NUL identity)``, its first 8 bytes read as an integer in [0, 2**64), goes to the
treatment when it is below ``share * 2**64``. So the same caller always lands in the same arm,
on every instance behind a load balancer and across restarts, without shared state; changing
the salt (or the experiment's name, the default salt) reshuffles the callers.

The identity (``[ab] sticky_by``):

    auto      the request's ``user`` field, else its bearer API key, else the client address
    api_key   the bearer API key, else the client address
    user      the ``user`` field, else the client address

Only requests that name the control model are split: a model named directly is never moved.
The treatment arm skips the router and goes to the treatment model; the control arm is routed
as usual. Both carry ``x-oracle-ab-arm`` and ``x-oracle-ab-experiment``.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from gateway.config import ABSettings, GatewayConfig
from gateway.store import RequestRecord, pseudonym
from router.decision import RoutingDecision

Arm = Literal["control", "treatment"]
ARMS: tuple[Arm, Arm] = ("control", "treatment")
_SCALE = 1 << 64
_NO_HEADERS: dict[str, str] = {}


def bucket(salt: str, identity: str) -> float:
    """The caller's position in [0, 1): uniform over identities, fixed for a given salt."""
    digest = hashlib.sha256(f"{salt}\0{identity}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def assign(salt: str, identity: str, share: float) -> Arm:
    """``treatment`` for a ``share`` of the identities, ``control`` for the rest."""
    return "treatment" if bucket(salt, identity) < share else "control"


def bearer_key(http: Any) -> str | None:
    """The bearer token of a Starlette request, if it sent one."""
    if http is None:
        return None
    auth = http.headers.get("authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


def user_field(body: dict[str, Any]) -> str | None:
    user = body.get("user")
    return user if isinstance(user, str) and user else None


class Experiment:
    """The ``[ab]`` table, ready for the request path: one hash per request in the experiment."""

    def __init__(self, settings: ABSettings, config: GatewayConfig, *, metrics: Any = None) -> None:
        assert settings.share is not None, "validated by the config"
        self.name = settings.name
        self.control = settings.control
        self.treatment = settings.treatment
        self.share = settings.share
        self.salt = settings.salt or settings.name
        self._by_user = settings.sticky_by in ("auto", "user")
        self._by_key = settings.sticky_by in ("auto", "api_key")
        spec = config.model(settings.treatment)
        self.decision = RoutingDecision(model=settings.treatment, specialist=settings.treatment,
                                        oracle=spec.oracle if spec else "system", router="direct",
                                        reason=f"A/B experiment {settings.name!r}: treatment arm")
        self.headers: dict[str, dict[str, str]] = {
            arm: {"x-oracle-ab-arm": arm, "x-oracle-ab-experiment": settings.name} for arm in ARMS}
        self._counters = ({arm: metrics.ab_assignments.labels(settings.name, arm) for arm in ARMS}
                          if metrics is not None else None)

    def identity(self, body: dict[str, Any], http: Any, key: str | None) -> str:
        if self._by_user:
            user = user_field(body)
            if user is not None:
                return "user:" + user
        if self._by_key and key is not None:
            return "key:" + key
        client = getattr(http, "client", None)
        return "addr:" + (client.host if client is not None else "unknown")

    def arm(self, body: dict[str, Any], http: Any, key: str | None) -> Arm:
        """The arm of this request (which must be for ``self.control``), counted in the metrics."""
        arm = assign(self.salt, self.identity(body, http, key), self.share)
        if self._counters is not None:
            self._counters[arm].inc()
        return arm


class Tagger:
    """Per request, before routing: its arm (when it is in the experiment) and the record the
    request log completes when it finishes (when the log is on). Both services use one."""

    def __init__(self, experiment: Experiment | None, *, log: bool, id_salt: str = "oracle-council") -> None:
        self.experiment = experiment
        self.log = log
        self.id_salt = id_salt

    def headers(self, arm: Arm | None) -> dict[str, str]:
        """The A/B headers of a response in ``arm`` (none outside the experiment); not to be mutated."""
        return self.experiment.headers[arm] if arm is not None else _NO_HEADERS  # type: ignore[union-attr]

    def __call__(self, requested: str, body: dict[str, Any], http: Any) -> tuple[Arm | None, RequestRecord | None]:
        exp = self.experiment
        in_experiment = exp is not None and requested == exp.control
        if not in_experiment and not self.log:
            return None, None
        key = bearer_key(http)
        arm = exp.arm(body, http, key) if in_experiment else None  # type: ignore[union-attr]
        if not self.log:
            return arm, None
        user = user_field(body)
        return arm, RequestRecord(requested, experiment=exp.name if in_experiment else None,  # type: ignore[union-attr]
                                  arm=arm, user_hash=pseudonym(self.id_salt, user) if user else None,
                                  key_hash=pseudonym(self.id_salt, key) if key else None)
