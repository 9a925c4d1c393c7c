"""The classifier interface and the registry of classifiers.

A classifier has one abstract method, ``score(texts)``: probabilities over the route labels
(router.taxonomy.ROUTE_LABELS), per-oracle scores and euclid-asm task types. One concrete
method, ``decide(scores)``, turns scores into a ``RoutingDecision`` the same way for every
classifier: the best label wins; the prompt is cross-domain (→ master-sword) when master-sword
is the best label or a second oracle scores at least ``cross_domain_threshold``; a request for
an oracle (``oracle-din``) chooses only among that oracle's specialists. With
``cross_domain_floor`` set, master-sword also needs the oracle scores to agree a little: when the
second-best oracle scores below the floor, the best single label wins instead (a long prompt
about one field, written in two fields' words, is not cross-domain). With
``out_of_scope_threshold`` set, ``out-of-scope`` wins exactly when its probability reaches the
threshold, whatever the other labels score, and never below it (the embedding classifier tunes
it on validation folds, like the other thresholds).

The decision's ``model`` is the label's own model (the specialist, or master-sword for
cross-domain and out-of-scope prompts); whether that model is deployed is the gateway's business.

Classifiers are registered by name in a plain dict (``CLASSIFIERS``); ``create(name, **options)``
builds one. Built-ins: ``embedding`` and ``gemini``.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from router.decision import RouterName, RoutingDecision
from router.errors import NoDecision
from router.taxonomy import MASTER_SWORD, OUT_OF_SCOPE, is_oracle, oracle_of, specialists_of


@dataclass(frozen=True, slots=True)
class Scores:
    labels: dict[str, float]                                  # route label -> probability (sums to 1)
    oracles: dict[str, float] = field(default_factory=dict)   # oracle -> P(the prompt needs it), multi-label
    task_types: dict[str, float] = field(default_factory=dict)  # euclid-asm task type -> probability
    note: str = ""                                            # extra words for the decision's reason


class Classifier(ABC):
    name: ClassVar[RouterName]
    cross_domain_threshold: float = 0.5     # a second oracle at or above it makes the prompt cross-domain
    master_sword_threshold: float | None = None  # P(master-sword) at or above it: cross-domain (None: argmax)
    cross_domain_floor: float | None = None  # master-sword needs a second oracle at or above it (None: no veto)
    out_of_scope_threshold: float | None = None  # P(out-of-scope) at or above it: out-of-scope (None: argmax)

    @abstractmethod
    def score(self, texts: Sequence[str]) -> list[Scores]:
        """Scores for each text, in order."""

    async def ascore(self, text: str) -> Scores:
        """``score`` off the event loop (in a worker thread); network classifiers override it."""
        return (await asyncio.to_thread(self.score, [text]))[0]

    def decide(self, scores: Scores, *, within: str | None = None) -> RoutingDecision:
        if within is not None:
            return self._decide_within(scores, within)
        labels = scores.labels
        if not labels:
            raise NoDecision("the classifier returned no scores")
        choice = labels  # what the best label is chosen on; confidences stay the classifier's
        if self.out_of_scope_threshold is not None and OUT_OF_SCOPE in labels:
            choice = {**labels, OUT_OF_SCOPE: 1.0 if labels[OUT_OF_SCOPE] >= self.out_of_scope_threshold else 0.0}
        best = max(choice, key=choice.__getitem__)
        p_ms = labels.get(MASTER_SWORD, 0.0)
        ranked = sorted(scores.oracles.items(), key=lambda kv: kv[1], reverse=True)
        second = ranked[1][1] if len(ranked) > 1 else 0.0
        vetoed = self.cross_domain_floor is not None and len(ranked) > 1 and second < self.cross_domain_floor
        if best == MASTER_SWORD and len(labels) > 1 and (
                vetoed or (self.master_sword_threshold is not None and p_ms < self.master_sword_threshold)):
            best = max((k for k in choice if k != MASTER_SWORD), key=choice.__getitem__)
        ms_hit = self.master_sword_threshold is not None and p_ms >= self.master_sword_threshold and not vetoed
        if best == MASTER_SWORD or ms_hit or (best != OUT_OF_SCOPE and second >= self.cross_domain_threshold):
            involved = [f"{o} {p:.2f}" for o, p in ranked if p >= min(self.cross_domain_threshold, 0.5)]
            return self._decision(MASTER_SWORD, max(p_ms, second), cross=True, scores=scores,
                                  reason="cross-domain" + (f": {', '.join(involved)}" if involved else ""))
        return self._decision(best, labels[best], cross=False, scores=scores, reason=f"{best} {labels[best]:.2f}")

    # -- helpers -------------------------------------------------------------------------------
    def _decide_within(self, scores: Scores, oracle: str) -> RoutingDecision:
        if not is_oracle(oracle):
            raise NoDecision(f"{oracle!r} is not an oracle")
        candidates = {s: scores.labels.get(s, 0.0) for s in specialists_of(oracle)}
        total = sum(candidates.values())
        if total <= 0:
            raise NoDecision(f"no specialist of {oracle} scored above zero")
        best = max(candidates, key=candidates.__getitem__)
        return self._decision(best, candidates[best] / total, cross=False, scores=scores,
                              reason=f"within {oracle}: {best} {candidates[best] / total:.2f}")

    def _decision(self, label: str, confidence: float, *, cross: bool, scores: Scores, reason: str) -> RoutingDecision:
        task = None
        if label == "euclid-asm" and scores.task_types:
            task = max(scores.task_types, key=scores.task_types.__getitem__)
        if scores.note:
            reason = f"{reason}; {scores.note}"
        model = label if label not in (MASTER_SWORD, OUT_OF_SCOPE) else MASTER_SWORD
        return RoutingDecision(model=model, specialist=label, oracle=oracle_of(label), task_type=task,
                               cross_domain=cross, confidence=round(float(confidence), 4), router=self.name,
                               reason=reason)

    def close(self) -> None:
        """Release threads and connections (idempotent)."""


# -- the registry ----------------------------------------------------------------------------------

ClassifierFactory = Callable[..., Classifier]
CLASSIFIERS: dict[str, ClassifierFactory] = {}


def register(name: str, factory: ClassifierFactory) -> None:
    if not name or not callable(factory):
        raise ValueError("register(name, factory) needs a name and a callable")
    if name in CLASSIFIERS and CLASSIFIERS[name] is not factory:
        raise ValueError(f"a classifier named {name!r} is already registered")
    CLASSIFIERS[name] = factory


def create(name: str, **options: Any) -> Classifier:
    try:
        factory = CLASSIFIERS[name]
    except KeyError:
        raise ValueError(f"unknown classifier {name!r}; known: {', '.join(sorted(CLASSIFIERS))}") from None
    return factory(**options)


def _embedding(**options: Any) -> Classifier:
    from router.embedding import EmbeddingClassifier

    return EmbeddingClassifier.open(**options)


def _gemini(**options: Any) -> Classifier:
    from router.gemini import GeminiClassifier

    return GeminiClassifier(**options)


register("embedding", _embedding)
register("gemini", _gemini)
